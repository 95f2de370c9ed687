"""The shipper against the Loki receiver, with real journal files and a real journalctl.

Time is scaled: min_backoff 10 ms and max_backoff 200 ms stand for promtail's 500 ms and 5 min.
With those settings promtail's 10 retries (its default max_retries) would end after
10+20+40+80+160+200*5 ms = 1.31 s, and it would drop the batch; the outages below last 3 s (more than
twice that, and more than 10 retries), and every line must still arrive, in order per stream.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import time
from collections import defaultdict
from pathlib import Path

import pytest

from pretix_agent.loki.journal import CURSOR_FILE, MAX_JSON_LINE, READ_CHUNK, JournalSource
from pretix_agent.loki.memory import MemorySource
from pretix_agent.loki.shipper import LokiShipper, heartbeat_deadline
from tests.integration.journal_files import MACHINE_ID, JournalWriter, available
from tests.integration.loki_receiver import LokiReceiver
from tests.loki_helpers import loki_section
from tests.waiting import wait_until

pytestmark = pytest.mark.integration
needs_journal = pytest.mark.skipif(not available(), reason="needs journalctl and /lib/systemd/systemd-journal-remote "
                                                           "(apt-get install systemd-journal-remote)")

PROMTAIL_GIVE_UP = 0.01 + 0.02 + 0.04 + 0.08 + 0.16 + 0.2 * 5  # seconds, at our scaled backoff
OUTAGE = 3.0
AGENT = "pretix-agent.service"


@pytest.fixture
def receiver():
    with LokiReceiver() as running:
        yield running


@pytest.fixture
def journal(tmp_path) -> JournalWriter:
    return JournalWriter(tmp_path / "journal")


@pytest.fixture
def ship(tmp_path, receiver, journal):
    """Start shippers (journal source by default) on one state directory; stop them afterwards."""
    running: list[LokiShipper] = []

    def start(source=None, heartbeat=None, state_dir: Path | None = None, **overrides) -> LokiShipper:
        settings = {"url": receiver.url, "batch_wait": 0.05, "min_backoff": 0.01, "max_backoff": 0.2,
                    "timeout": 2.0, "tenant": "pretix", **overrides}
        if source is None:
            source = JournalSource(extra_args=("--directory", str(journal.directory)), machine_id=MACHINE_ID,
                                   since=0, restart_delay=0.1)
        shipper = LokiShipper(loki_section(**settings), "node1", state_dir or tmp_path, source,
                              heartbeat=heartbeat, own_unit=AGENT)
        shipper.start()
        running.append(shipper)
        return shipper

    yield start
    for shipper in running:
        shipper.stop(1.0)


def per_stream(records) -> dict[str, list[str]]:
    streams: dict[str, list[str]] = defaultdict(list)
    for record in records:
        streams[record["labels"].get("unit", "-")].append(record["line"])
    return dict(streams)


def write_lines(journal: JournalWriter, count: int, prefix: str, unit: str = AGENT) -> list[str]:
    lines = [f"{prefix} {i:05d}" for i in range(count)]
    journal.append(lines, unit=unit)
    return lines


# ---------------------------------------------------------------------------------------------
# what arrives, and how


def test_lines_arrive_gzipped_as_json_with_the_tenant_and_only_the_static_labels(ship, receiver):
    source = MemorySource()
    ship(source=source, env="prod")
    for i in range(50):
        source.put(f"event {i}")
    records = receiver.wait_for_lines(50)
    assert [r["line"] for r in records] == [f"event {i}" for i in range(50)]
    assert {json.dumps(r["labels"], sort_keys=True) for r in records} == {
        json.dumps({"env": "prod", "host": "node1", "service_name": "pretix-agent"}, sort_keys=True)}
    assert {r["tenant"] for r in records} == {"pretix"}
    for push in receiver.pushes():
        assert (push.status, push.content_type, push.content_encoding) == (204, "application/json", "gzip")


@needs_journal
def test_journal_lines_of_the_agent_and_the_configured_units_arrive_with_their_labels(ship, receiver, journal):
    agent_stamps = journal.append(["agent.started", "maintenance.enabled why=lock"], unit=AGENT)
    journal.append(["GET /healthcheck/ 200"], unit="pretix-web.service")
    journal.append(["not shipped"], unit="other.service")
    journal.append(["Started pretix-web.service - pretix web."], unit="init.scope",
                   extra={"UNIT": "pretix-web.service", "_PID": "1"})
    journal.append(["another machine's line"], unit="pretix-web.service", machine_id="f" * 32)
    journal.append(["worker ready"], unit="nginx.service")
    ship(units=("pretix-web", "nginx.service"), env="prod")
    records = receiver.wait_for_lines(5)
    assert per_stream(records) == {
        "pretix-agent.service": ["agent.started", "maintenance.enabled why=lock"],
        "pretix-web.service": ["GET /healthcheck/ 200", "Started pretix-web.service - pretix web."],
        "nginx.service": ["worker ready"],
    }
    labels = {r["labels"]["unit"]: r["labels"] for r in records}
    assert labels["pretix-agent.service"] == {"host": "node1", "service_name": "pretix-agent", "env": "prod",
                                              "unit": "pretix-agent.service"}
    assert labels["pretix-web.service"]["service_name"] == "pretix-web"
    assert labels["nginx.service"]["service_name"] == "nginx"
    # The journal's time, in nanoseconds (the last three digits tell apart lines of one microsecond).
    assert [int(r["ts"]) // 1000 for r in records[:2]] == agent_stamps


@needs_journal
def test_journal_lines_carry_their_level_and_the_agents_event_name_as_structured_metadata(ship, receiver, journal):
    journal.append(["check.failing check=db"], unit=AGENT, priority=3, extra={"PRETIX_AGENT_EVENT": "check.failing"})
    journal.append(["maintenance.marker_restored why=lock"], unit=AGENT, priority=4)  # via the stream: no field
    journal.append(["Traceback (most recent call last):"], unit="pretix-web.service", priority=3)
    journal.append(["GET /healthcheck/ 200"], unit="pretix-web.service", priority=6)
    ship(units=("pretix-web",))
    records = receiver.wait_for_lines(4)
    assert [(r["line"].split(" ")[0], r["metadata"]) for r in records] == [
        ("check.failing", {"level": "error", "event": "check.failing"}),
        ("maintenance.marker_restored", {"level": "warning", "event": "maintenance.marker_restored"}),
        ("Traceback", {"level": "error"}),
        ("GET", {"level": "info"}),
    ]


@needs_journal
def test_with_structured_metadata_off_an_older_loki_takes_every_line(ship, journal):
    with LokiReceiver(allow_structured_metadata=False) as older:
        journal.append(["check.failing check=db"], unit=AGENT, priority=3)
        ship(url=older.url, structured_metadata=False)
        records = older.wait_for_lines(1)
        assert records[0]["metadata"] == {} and all(push.status == 204 for push in older.pushes())


@needs_journal
def test_entries_appended_while_following_are_shipped_within_a_batch_wait(ship, receiver, journal):
    shipper = ship()
    expected = []
    for round_number in range(3):
        expected += write_lines(journal, 5, f"round {round_number}")
        began = time.monotonic()
        receiver.wait_for_lines(len(expected))
        assert time.monotonic() - began < 2.0
    assert receiver.texts() == expected
    wait_until(lambda: shipper.status()["shipped_lines"] == 15, message="the last answer counted")


# ---------------------------------------------------------------------------------------------
# outages


def outage_of(receiver: LokiReceiver) -> tuple[int, float]:
    """Return (failed pushes, seconds from the first failure to the first success after it)."""
    pushes = receiver.pushes()
    failed = [p for p in pushes if p.status != 204]
    recovered = next(p for p in pushes if p.status == 204 and p.at > failed[0].at)
    return len(failed), recovered.at - failed[0].at


@needs_journal
def test_a_500_storm_longer_than_promtails_give_up_loses_nothing(ship, receiver, journal):
    receiver.fail_for(OUTAGE, status=500)
    agent = write_lines(journal, 200, "agent")
    web = write_lines(journal, 100, "web", unit="pretix-web.service")
    shipper = ship(units=("pretix-web.service",))
    wait_until(lambda: shipper.status()["failed_pushes"] >= 3, message="failures")
    agent += write_lines(journal, 100, "agent during the outage")
    records = receiver.wait_for_lines(400, timeout=OUTAGE + 10)
    assert per_stream(records) == {"pretix-agent.service": agent, "pretix-web.service": web}
    failures, lasted = outage_of(receiver)
    assert failures > 10 and lasted > 2 * PROMTAIL_GIVE_UP
    assert shipper.status()["drops"] == {"rejected_400": 0, "rejected_413": 0, "truncated": 0, "unsent_at_stop": 0,
                                         "queue_full": 0}


@needs_journal
def test_refused_connections_longer_than_promtails_give_up_lose_nothing(ship, receiver, journal):
    receiver.refuse()
    expected = write_lines(journal, 300, "line")
    shipper = ship()
    began = time.monotonic()
    wait_until(lambda: shipper.status()["failed_pushes"] > 10 and time.monotonic() - began > OUTAGE,
               timeout=OUTAGE + 10, message="an outage of more than 10 retries")
    status = shipper.status()
    assert status["last_error"] == "connection refused" and status["state"] == "retrying"
    expected += write_lines(journal, 100, "more")
    receiver.accept()
    assert [r["line"] for r in receiver.wait_for_lines(400, timeout=10)] == expected
    wait_until(lambda: shipper.status()["state"] == "idle", message="idle again")


@needs_journal
def test_a_restart_in_the_middle_of_an_outage_loses_nothing_and_duplicates_are_only_exact_ones(
        ship, receiver, journal):
    # Loki stores the first batch but its answer never comes (a timeout), then fails for a while.
    receiver.script(["store-then-hang"])
    receiver.fail_for(60.0, status=503)
    expected = write_lines(journal, 50, "before")
    first = ship(timeout=0.3)
    wait_until(lambda: first.status()["failed_pushes"] >= 3, message="the first shipper failing")
    assert len(receiver.lines()) == 50  # stored, but the shipper does not know it
    expected += write_lines(journal, 50, "during")
    assert first.stop(0.2)
    second = ship(timeout=0.3)
    wait_until(lambda: second.status()["failed_pushes"] >= 2, message="the second shipper failing")
    expected += write_lines(journal, 50, "after the restart")
    receiver.fail_for(0)
    records = receiver.wait_for_lines(150, timeout=10)
    wait_until(lambda: second.status()["state"] == "idle", message="idle again")
    assert [r["line"] for r in receiver.lines()] == expected
    assert receiver.duplicates == 50  # the first batch, sent again with identical labels, times and text
    assert len({(r["ts"], r["line"]) for r in records}) == 150


@needs_journal
def test_a_restart_after_everything_was_accepted_sends_nothing_twice(ship, receiver, journal, tmp_path):
    expected = write_lines(journal, 20, "first")
    first = ship()
    receiver.wait_for_lines(20)
    wait_until(lambda: (tmp_path / CURSOR_FILE).exists(), message="the cursor")
    assert first.stop(1.0)
    expected += write_lines(journal, 5, "second")
    ship()
    receiver.wait_for_lines(25)
    assert receiver.texts() == expected and receiver.duplicates == 0


@needs_journal
def test_the_cursor_is_written_only_after_loki_accepted_the_batch(ship, receiver, journal, tmp_path):
    receiver.fail_for(60.0)
    write_lines(journal, 10, "line")
    shipper = ship()
    wait_until(lambda: shipper.status()["failed_pushes"] >= 3, message="failures")
    assert not (tmp_path / CURSOR_FILE).exists()
    receiver.fail_for(0)
    receiver.wait_for_lines(10)
    last = subprocess.run(["journalctl", "--directory", str(journal.directory), "-o", "json", "--merge",
                           f"--unit={AGENT}", "--lines=1"], capture_output=True, check=True).stdout
    wait_until(lambda: (tmp_path / CURSOR_FILE).exists(), message="the cursor")
    assert (tmp_path / CURSOR_FILE).read_text().strip() == json.loads(last)["__CURSOR"]


@needs_journal
def test_lines_of_a_previous_boot_after_the_cursor_are_shipped(ship, receiver, journal):
    # journalctl --follow alone filters on the newest boot: a Loki outage across a reboot would
    # lose the old boot's last lines. --merge lifts that filter.
    expected = write_lines(journal, 5, "boot one")
    first = ship()
    receiver.wait_for_lines(5)
    wait_until(lambda: first.status()["source_status"]["cursor"] is not None, message="the cursor")
    assert first.stop(1.0)
    expected += write_lines(journal, 5, "boot one, while Loki was down")
    journal.new_boot()
    expected += write_lines(journal, 5, "boot two")
    ship()
    receiver.wait_for_lines(15)
    assert receiver.texts() == expected


# ---------------------------------------------------------------------------------------------
# answers other than success


@needs_journal
def test_a_400_drops_that_batch_counts_it_and_later_batches_arrive(ship, receiver, journal):
    receiver.max_line_bytes = 100
    write_lines(journal, 2, "fine")
    journal.append(["x" * 200], unit=AGENT)
    shipper = ship()
    wait_until(lambda: shipper.status()["drops"]["rejected_400"] == 3, message="the refused batch")
    status = shipper.status()
    assert "Max entry size '100' bytes exceeded" in status["last_error"]
    assert receiver.texts() == ["fine 00000", "fine 00001"]  # Loki kept the valid lines of the batch
    later = write_lines(journal, 3, "later")
    receiver.wait_for_lines(5)
    assert receiver.texts()[2:] == later


@needs_journal
def test_413_splits_the_batch_until_every_part_fits(ship, receiver, journal):
    receiver.max_body_bytes = 1500
    expected = [os.urandom(32).hex() for _ in range(200)]  # incompressible: 200 lines need several pushes
    journal.append(expected, unit=AGENT)
    shipper = ship()
    receiver.wait_for_lines(200, timeout=20)
    assert receiver.texts() == expected
    statuses = [p.status for p in receiver.pushes()]
    assert 413 in statuses and statuses.count(204) > 3
    assert shipper.status()["drops"]["truncated"] == 0


@needs_journal
def test_413_for_a_single_line_truncates_it_with_a_marker(ship, receiver, journal):
    receiver.max_body_bytes = 2000
    huge = os.urandom(10000).hex()  # 20000 bytes, incompressible
    journal.append([huge, "next"], unit=AGENT)
    shipper = ship()
    records = receiver.wait_for_lines(2, timeout=20)
    assert records[0]["line"] == huge[:2500] + "…[truncated 17500 bytes]"
    assert records[1]["line"] == "next"
    assert shipper.status()["drops"]["truncated"] == 1


def test_401_holds_the_batch_reports_it_and_ships_once_the_token_is_right(tmp_path, capsys):
    token = tmp_path / "token"
    token.write_text("wrong-token\n")
    source = MemorySource()
    with LokiReceiver(bearer_token="right-token") as receiver:
        section = loki_section(url=receiver.url, bearer_token_file=token, batch_wait=0.05, min_backoff=0.01,
                               max_backoff=0.2)
        shipper = LokiShipper(section, "node1", tmp_path, source)
        shipper.start()
        try:
            source.put("held line")
            status = wait_until(lambda: (s := shipper.status())["holding"] and s, message="holding")
            assert status["hold_reason"] == "HTTP 401: unauthorized" and status["state"] == "holding"
            wait_until(lambda: shipper.status()["failed_pushes"] >= 3, message="slow retries")
            assert receiver.lines() == [] and status["drops"]["rejected_400"] == 0
            token.write_text("right-token\n")  # the file is read again before each retry while holding
            receiver.wait_for_lines(1)
            wait_until(lambda: shipper.status()["holding"] is False, message="the hold lifted")
        finally:
            shipper.stop(1.0)
    output = capsys.readouterr()
    assert "wrong-token" not in output.out + output.err and "right-token" not in output.out + output.err


# ---------------------------------------------------------------------------------------------
# bounded memory, hangs, journalctl trouble


@needs_journal
def test_memory_stays_bounded_while_loki_is_down_because_the_journal_keeps_the_lines(ship, receiver, journal):
    batch_size = 16 * 1024
    total = 20_000
    expected = [f"line {i:06d} " + "p" * 80 for i in range(total)]  # ~100 bytes each, 2 MB in all
    journal.append(expected, unit=AGENT)
    receiver.refuse()
    shipper = ship(batch_size=batch_size)
    bound = batch_size + READ_CHUNK + 2 * 1024  # a batch, a chunk of journalctl's output, a line carried over
    samples = []
    for _ in range(10):
        count = len(samples)
        wait_until(lambda c=count: shipper.status()["failed_pushes"] > c, message="another failure")
        samples.append(shipper.status())
    assert max(s["buffered_bytes"] for s in samples) <= bound
    assert max(s["buffered_lines"] for s in samples) <= batch_size // 90 + 1
    assert samples[-1]["shipped_lines"] == 0
    receiver.accept()
    assert [r["line"] for r in receiver.wait_for_lines(total, timeout=60)] == expected
    assert MAX_JSON_LINE >= 1024 * 1024  # the bound for entries of any length: see docs/logs.md


@needs_journal
def test_a_hung_loki_times_out_retries_and_the_heartbeat_keeps_beating(ship, receiver, journal):
    beats: list[float] = []
    receiver.script(["hang", "hang"])
    write_lines(journal, 3, "line")
    shipper = ship(timeout=0.5, heartbeat=lambda: beats.append(time.monotonic()))
    receiver.wait_for_lines(3, timeout=10)
    assert "no answer within 0.5 s" in shipper.status()["last_error"]
    gaps = [b - a for a, b in itertools.pairwise(beats)]
    assert max(gaps) < heartbeat_deadline(shipper.section)
    assert max(gaps) < 0.5 + 1.5
    receiver.release()


@needs_journal
def test_stop_during_a_hung_push_returns_within_its_flush_timeout(ship, receiver, journal):
    receiver.script(["hang"])
    write_lines(journal, 3, "line")
    shipper = ship(timeout=30.0)
    wait_until(lambda: receiver.pushes(), message="the hung push")
    began = time.monotonic()
    assert shipper.stop(0.3)
    assert time.monotonic() - began < 1.5
    receiver.release()


@needs_journal
def test_binary_and_oversized_journal_entries_are_shipped_readably_and_in_order(ship, receiver, journal):
    huge = "h" * (MAX_JSON_LINE + 100_000)
    journal.append(["before", b"bin\xffary", huge, "after"], unit=AGENT)
    shipper = ship()
    records = receiver.wait_for_lines(4, timeout=20)
    lines = [r["line"] for r in records]
    assert lines[0] == "before" and lines[1] == "bin\ufffdary" and lines[3] == "after"
    assert lines[2].startswith("h" * 60_000) and "…[truncated " in lines[2] and len(lines[2]) < 70_000
    assert shipper.status()["source_status"]["oversized_entries"] == 1


@needs_journal
def test_an_unusable_cursor_falls_back_to_the_start_time(ship, receiver, journal, tmp_path):
    (tmp_path / CURSOR_FILE).write_text("s=nonsense;i=1\n")
    expected = write_lines(journal, 3, "line")
    ship()
    receiver.wait_for_lines(3, timeout=10)
    assert receiver.texts() == expected


@needs_journal
def test_journalctl_killed_is_started_again_from_where_it_was(ship, receiver, journal):
    expected = write_lines(journal, 5, "first")
    shipper = ship()
    receiver.wait_for_lines(5)
    pid = shipper.status()["source_status"]["journalctl_pid"]
    os.kill(pid, signal.SIGKILL)  # the journalctl this test's shipper started
    wait_until(lambda: shipper.status()["source_status"]["journalctl_restarts"] == 1, message="a restart")
    expected += write_lines(journal, 5, "second")
    receiver.wait_for_lines(10, timeout=10)
    assert receiver.texts() == expected and receiver.duplicates == 0


def test_a_missing_journalctl_is_reported_and_retried_without_stopping_the_shipper(ship):
    source = JournalSource(journalctl=("/nonexistent/journalctl",), restart_delay=0.05)
    shipper = ship(source=source)
    status = wait_until(lambda: (s := shipper.status()["source_status"])["last_journalctl_problem"] and s,
                        message="the problem reported")
    assert status["last_journalctl_problem"] == "cannot run /nonexistent/journalctl: No such file or directory"
    assert shipper.alive()


@needs_journal
def test_a_journalctl_that_fails_at_once_is_restarted_ever_more_slowly(ship, journal):
    source = JournalSource(extra_args=("--no-such-option",), machine_id=MACHINE_ID, since=0, restart_delay=0.05)
    shipper = ship(source=source)
    status = wait_until(lambda: (s := shipper.status()["source_status"])["journalctl_restarts"] >= 3 and s,
                        message="three restarts")
    assert status["journalctl_restart_delay"] >= 0.2
    assert "unrecognized option" in status["last_journalctl_problem"]
