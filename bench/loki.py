"""Shipping to Loki: throughput and CPU of the real shipper beside a naive one, and memory in a backlog.

All against the Loki receiver in a process of its own (count-only: it validates and counts, keeps
nothing), so its CPU is not ours:
- `shipper_list`: the shipper fed from a list of ready lines: the cost of batching, JSON, gzip, HTTP.
- `shipper_journal`: the shipper reading real journal files through journalctl (our CPU plus
  journalctl's), i.e. what a node pays per line.
- `naive`: one POST per line (uncompressed JSON over a kept-alive connection), as a quick script does.
- `backlog`: a child process ships a journal of a million lines (100,000 with quick) while Loki
  answers 503, then drains it; its peak RSS (VmHWM) shows the memory bound does not depend on the
  backlog. journalctl's own memory is reported apart (it maps the journal files; most of its RSS
  is page cache).

`python3 -m bench --only loki [--quick]`; the child is `python3 -m bench.loki backlog-child ...`.
"""

from __future__ import annotations

import argparse
import http.client
import json
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from pretix_agent.loki.entries import Entry, make_entry
from tests.integration.journal_files import MACHINE_ID, JournalWriter, available
from tests.loki_helpers import ListSource, loki_section

from .common import cpu_seconds, rss_mib

REPO = Path(__file__).resolve().parents[1]
LABELS = (("host", "bench"), ("service_name", "pretix-web"), ("unit", "pretix-web.service"))


def sample_line(i: int) -> str:
    """An nginx-like access line of ~120 bytes, varied enough that gzip does not flatter us."""
    return (f'10.0.{i % 7}.{i % 250} - - "GET /control/event/demo{i % 50}/orders/{i:07d}/ HTTP/1.1" '
            f'200 {1000 + i * 7919 % 9000} "-" "Mozilla/5.0 (X11; Linux x86_64)" rt=0.{i * 31 % 997:03d}')


# ---------------------------------------------------------------------------------------------
# The receiver in its own process.


class ReceiverProcess:
    def __init__(self) -> None:
        # --port 0: the receiver picks a port outside the ephemeral range itself (retrying if it is
        # taken) and names its URL on the first line of stderr.
        self._stderr = tempfile.TemporaryFile()
        self.process = subprocess.Popen([sys.executable, "-m", "tests.integration.loki_receiver", "--port", "0",
                                         "--count-only"], cwd=REPO, stderr=self._stderr)
        deadline = time.monotonic() + 20
        while not (match := re.search(rb"listening on (http://[0-9.]+:(\d+))/", self._said())):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the Loki receiver did not start: {self._said().decode(errors='replace')}")
            time.sleep(0.05)
        self.url = match.group(1).decode()
        self.port = int(match.group(2))
        while True:
            try:
                with urllib.request.urlopen(self.url + "/ready", timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def _said(self) -> bytes:
        self._stderr.seek(0)
        return self._stderr.read()

    def call(self, path: str, document: dict | None = None) -> dict:
        data = None if document is None else json.dumps(document).encode()
        request = urllib.request.Request(self.url + path, data=data, method="GET" if data is None else "POST",
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as response:
            body = response.read()
        return json.loads(body) if body else {}

    def count(self) -> int:
        return int(self.call("/test/count")["lines"])

    def reset(self) -> None:
        self.call("/test/reset", {})

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(10)
        self._stderr.close()


def wait_for(condition, timeout: float, step: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("benchmark condition not met")
        time.sleep(step)


def per_10k(cpu: float, lines: int) -> float:
    return round(cpu / lines * 10_000, 4)


# ---------------------------------------------------------------------------------------------
# Throughput.


def ship_list(receiver: ReceiverProcess, entries: list[Entry], state_dir: Path) -> dict:
    from pretix_agent.loki.shipper import LokiShipper

    receiver.reset()
    source = ListSource()
    source.add(entries)
    shipper = LokiShipper(loki_section(url=receiver.url), "bench", state_dir, source)
    cpu_before, began = time.process_time(), time.monotonic()
    shipper.start()
    wait_for(lambda: source.position == len(entries), 600)
    shipper.stop(60)  # sends the last, partial batch at once instead of after batch_wait
    wait_for(lambda: receiver.count() >= len(entries), 60)
    elapsed, cpu = time.monotonic() - began, time.process_time() - cpu_before
    status = shipper.status()
    return {"lines": len(entries), "seconds": round(elapsed, 3), "lines_per_second": round(len(entries) / elapsed),
            "cpu_seconds_per_10k_lines": per_10k(cpu, len(entries)), "pushes": status["pushes"],
            "mean_lines_per_push": round(len(entries) / max(1, status["pushes"]))}


def ship_journal(receiver: ReceiverProcess, directory: Path, lines: int, state_dir: Path) -> dict:
    from pretix_agent.loki.journal import JournalSource
    from pretix_agent.loki.shipper import LokiShipper

    receiver.reset()
    source = JournalSource(extra_args=("--directory", str(directory)), machine_id=MACHINE_ID, since=0)
    # batch_wait 0.1 s: the last, partial batch would otherwise wait the default 1 s inside the timing.
    section = loki_section(url=receiver.url, units=("pretix-web.service",), batch_wait=0.1)
    shipper = LokiShipper(section, "bench", state_dir, source)
    cpu_before, began = time.process_time(), time.monotonic()
    shipper.start()
    journalctl_cpu = 0.0
    deadline = time.monotonic() + 600
    while shipper.shipped_lines < lines:
        pid = source.process.pid if source.process is not None else None
        if pid is not None:
            try:
                journalctl_cpu = cpu_seconds(pid)
            except OSError:
                pass
        if time.monotonic() > deadline:
            raise TimeoutError("journal benchmark did not finish")
        time.sleep(0.02)
    elapsed, cpu = time.monotonic() - began, time.process_time() - cpu_before
    shipper.stop(10)
    return {"lines": lines, "seconds": round(elapsed, 3), "lines_per_second": round(lines / elapsed),
            "cpu_seconds_per_10k_lines": per_10k(cpu + journalctl_cpu, lines),
            "of_which_journalctl": per_10k(journalctl_cpu, lines), "pushes": shipper.pushes}


def naive(receiver: ReceiverProcess, lines: int) -> dict:
    """One POST per line, the way a quick script ships logs."""
    receiver.reset()
    connection = http.client.HTTPConnection("127.0.0.1", receiver.port, timeout=10)
    labels = dict(LABELS)
    cpu_before, began = time.process_time(), time.monotonic()
    for i in range(lines):
        body = json.dumps({"streams": [{"stream": labels, "values": [[str(time.time_ns()), sample_line(i)]]}]})
        connection.request("POST", "/loki/api/v1/push", body=body, headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        response.read()
        if response.status != 204:
            raise RuntimeError(f"naive push answered {response.status}")
    elapsed, cpu = time.monotonic() - began, time.process_time() - cpu_before
    connection.close()
    assert receiver.count() == lines
    return {"lines": lines, "seconds": round(elapsed, 3), "lines_per_second": round(lines / elapsed),
            "cpu_seconds_per_10k_lines": per_10k(cpu, lines), "pushes": lines}


# ---------------------------------------------------------------------------------------------
# Memory during a backlog.


def _status_value(pid: int, key: str) -> float | None:
    try:
        return rss_mib(pid, key)
    except (OSError, LookupError):
        return None


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(child) for child in (task / "children").read_text().split()]
        except OSError:
            continue
    return found


def backlog(receiver: ReceiverProcess, directory: Path, lines: int, outage: float, state_dir: Path) -> dict:
    receiver.reset()
    receiver.call("/test/fail_for", {"seconds": 86400, "status": 503})
    child = subprocess.Popen([sys.executable, "-m", "bench.loki", "backlog-child", "--url", receiver.url,
                              "--directory", str(directory), "--state-dir", str(state_dir)],
                             cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        peak_outage = 0.0
        journalctl: int | None = None
        began = time.monotonic()
        while time.monotonic() - began < outage:
            peak_outage = max(peak_outage, _status_value(child.pid, "VmRSS") or 0.0)
            journalctl = journalctl or next(iter(_children(child.pid)), None)
            time.sleep(0.05)
        receiver.call("/test/fail_for", {"seconds": 0})
        drain_began = time.monotonic()
        peak_drain = 0.0
        journal_hwm = journal_anon = None
        while receiver.count() < lines:
            peak_drain = max(peak_drain, _status_value(child.pid, "VmRSS") or 0.0)
            if journalctl is not None:
                journal_hwm = _status_value(journalctl, "VmHWM") or journal_hwm
                anon = _status_value(journalctl, "RssAnon")
                journal_anon = max(journal_anon or 0.0, anon or 0.0)
            if time.monotonic() - drain_began > 1200:
                raise TimeoutError("the backlog did not drain")
            time.sleep(0.05)
        drained = time.monotonic() - drain_began
        hwm = _status_value(child.pid, "VmHWM")
    finally:
        child.send_signal(signal.SIGTERM)
        out, _ = child.communicate(timeout=60)
    report = json.loads(out.strip().splitlines()[-1]) if out.strip() else {}
    return {"lines": lines, "outage_seconds": outage,
            "shipper_peak_rss_mib": round(hwm or 0.0, 1),
            "shipper_peak_rss_during_outage_mib": round(peak_outage, 1),
            "shipper_peak_rss_while_draining_mib": round(peak_drain, 1),
            "journalctl_peak_rss_mib": None if journal_hwm is None else round(journal_hwm, 1),
            "journalctl_peak_anon_rss_mib": None if journal_anon is None else round(journal_anon, 1),
            "drain_seconds": round(drained, 2), "drain_lines_per_second": round(lines / drained),
            "failed_pushes_during_outage": report.get("failed_pushes"),
            "max_buffered_bytes_seen": report.get("max_buffered_bytes")}


def backlog_child(url: str, directory: str, state_dir: str) -> int:
    """In the child: ship the journal until SIGTERM; print one JSON line with what we saw."""
    from pretix_agent.adapters import logs
    from pretix_agent.loki.journal import JournalSource
    from pretix_agent.loki.shipper import LokiShipper

    logs.configure("warning", "console", stream=sys.stderr)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    source = JournalSource(extra_args=("--directory", directory), machine_id=MACHINE_ID, since=0)
    section = loki_section(url=url, units=("pretix-web.service",), min_backoff=0.05, max_backoff=0.5)
    shipper = LokiShipper(section, "bench", Path(state_dir), source)
    shipper.start()
    max_buffered = 0
    while not stop.wait(0.05):
        max_buffered = max(max_buffered, shipper.status()["buffered_bytes"])
    shipper.stop(5)
    print(json.dumps({"failed_pushes": shipper.failed_pushes, "max_buffered_bytes": max_buffered}), flush=True)
    return 0


def baseline_rss() -> float:
    """RSS of a python3 that has imported the shipper and nothing else."""
    process = subprocess.Popen([sys.executable, "-c", "import pretix_agent.loki, time; print(1, flush=True); "
                                "time.sleep(60)"], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        process.stdout.readline()
        return round(rss_mib(process.pid), 1)
    finally:
        process.kill()
        process.wait()


# ---------------------------------------------------------------------------------------------


def run(quick: bool = False) -> dict:
    """Run every part (a million-line backlog, or 100,000 with quick); return one dict of results."""
    if not available():
        return {"skipped": "needs journalctl and systemd-journal-remote (apt-get install systemd-journal-remote)"}
    import structlog

    from pretix_agent.adapters import logs

    saved = structlog.get_config()
    logs.configure("warning", "console", stream=sys.stderr)  # stdout carries the results
    try:
        return _run(quick)
    finally:
        structlog.configure(**saved)


def _run(quick: bool) -> dict:
    list_lines = 50_000 if quick else 300_000
    journal_lines = 20_000 if quick else 100_000
    naive_lines = 1_000 if quick else 5_000
    backlog_lines = 100_000 if quick else 1_000_000
    root = Path(tempfile.mkdtemp(prefix="bench-loki-"))
    for name in ("state-list", "state-journal", "state-big"):
        (root / name).mkdir()
    receiver = ReceiverProcess()
    try:
        stamp = time.time_ns()
        entries = [make_entry(LABELS, stamp + i, sample_line(i)) for i in range(list_lines)]
        shipper_list = ship_list(receiver, entries, root / "state-list")
        del entries
        writer = JournalWriter(root / "journal-small")
        writer.append([sample_line(i) for i in range(journal_lines)], unit="pretix-web.service")
        shipper_journal = ship_journal(receiver, writer.directory, journal_lines, root / "state-journal")
        naive_result = naive(receiver, naive_lines)
        big = JournalWriter(root / "journal-big")
        began = time.monotonic()
        for start in range(0, backlog_lines, 100_000):
            big.append([sample_line(i) for i in range(start, min(backlog_lines, start + 100_000))],
                       unit="pretix-web.service")
        written = time.monotonic() - began
        backlog_result = backlog(receiver, big.directory, backlog_lines, 3.0 if quick else 10.0, root / "state-big")
        backlog_result["journal_write_seconds"] = round(written, 1)
        backlog_result["baseline_python_rss_mib"] = baseline_rss()
    finally:
        receiver.close()
        shutil.rmtree(root, ignore_errors=True)
    return {
        "shipper_list": shipper_list,
        "shipper_journal": shipper_journal,
        "naive_one_post_per_line": naive_result,
        "speedup_lines_per_second": round(shipper_list["lines_per_second"] / naive_result["lines_per_second"], 1),
        "cpu_ratio_naive_over_shipper": round(naive_result["cpu_seconds_per_10k_lines"]
                                              / max(1e-9, shipper_list["cpu_seconds_per_10k_lines"]), 1),
        "backlog": backlog_result,
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m bench.loki")
    sub = parser.add_subparsers(dest="command", required=True)
    child = sub.add_parser("backlog-child")
    child.add_argument("--url", required=True)
    child.add_argument("--directory", required=True)
    child.add_argument("--state-dir", required=True)
    sub.add_parser("run").add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    if args.command == "backlog-child":
        return backlog_child(args.url, args.directory, args.state_dir)
    print(json.dumps(run(args.quick), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
