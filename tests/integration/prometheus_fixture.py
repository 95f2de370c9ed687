"""A real Prometheus (Debian's `prometheus` package) in a temporary directory, scraping what a test gives it.

Plain classes, no pytest needed::

    with PrometheusServer(tmp_path, targets=["127.0.0.1:24568"], rule_files=[RULES]) as prometheus:
        prometheus.wait_for('pretix_agent_maintenance_on == 1')
        prometheus.query("pretix_agent_check_state")     # [{"metric": {...}, "value": [ts, "1"]}, ...]

It scrapes and evaluates every second (`scrape_interval: 1s`), keeps its TSDB in the directory, and
listens on a candidate port chosen outside the kernel's ephemeral range (see `candidate_port`): a
port from binding port 0 and closing it can be taken by any outbound connection before Prometheus
binds it. A port another test took on purpose shows as "address already in use", and Prometheus
starts again on a fresh one. The same helpers start the agent with a metrics listener
(`start_with_ports`).
"""

from __future__ import annotations

import collections
import json
import os
import random
import re
import signal
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from .processes import FixtureError, log_tail, pdeathsig, wait_until

PROMETHEUS = os.environ.get("PRETIX_AGENT_TEST_PROMETHEUS", "/usr/bin/prometheus")
T = TypeVar("T")


def prometheus_unavailable_reason() -> str | None:
    if not os.access(PROMETHEUS, os.X_OK):
        return f"{PROMETHEUS} not found (apt-get install prometheus, or set PRETIX_AGENT_TEST_PROMETHEUS)"
    return None


# ---------------------------------------------------------------------------------------------
# Ports for other processes: outside the ephemeral range, a fresh one when taken.

LOWEST = 20000  # below it live well-known ports a developer may run (5432, 6379, 8080, 9090 ...)
_IN_USE = re.compile(r"address already in use|cannot listen on .*address in use|eaddrinuse", re.IGNORECASE)
_handed_out: collections.deque[int] = collections.deque(maxlen=2000)


class PortInUse(Exception):
    """The process could not bind the port it was given; start it again with a fresh one."""


def ephemeral_low(path: str = "/proc/sys/net/ipv4/ip_local_port_range") -> int:
    try:
        return int(Path(path).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def candidate_port() -> int:
    """A random port from LOWEST up to the ephemeral range, not handed out before in this process."""
    high = ephemeral_low() - 1
    while True:
        port = random.randint(LOWEST, high)
        if port not in _handed_out:
            _handed_out.append(port)
            return port


def address_in_use(text: str) -> bool:
    return bool(_IN_USE.search(text))


def start_with_ports(start: Callable[[int], T], what: str, attempts: int = 8) -> T:
    """Call `start(port)` with candidate ports until it does not raise PortInUse."""
    clashes = []
    for _ in range(attempts):
        port = candidate_port()
        try:
            return start(port)
        except PortInUse as clash:
            clashes.append(f"{port}: {clash}")
    raise FixtureError(f"{what}: its port was in use at each of {attempts} attempts: " + "; ".join(clashes))


# ---------------------------------------------------------------------------------------------
# Prometheus


class PrometheusServer:
    def __init__(self, directory: Path, targets: Sequence[str], rule_files: Sequence[Path] = (),
                 job: str = "pretix-agent"):
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.targets = list(targets)
        self.rule_files = [str(path) for path in rule_files]
        self.job = job
        self.log_path = directory / "prometheus.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _write_config(self) -> Path:
        config = {"global": {"scrape_interval": "1s", "scrape_timeout": "900ms", "evaluation_interval": "1s"},
                  "rule_files": self.rule_files,
                  "scrape_configs": [{"job_name": self.job, "static_configs": [{"targets": self.targets}]}]}
        path = self.directory / "prometheus.yml"
        path.write_text(json.dumps(config, indent=1))  # JSON is YAML
        return path

    def start(self, timeout: float = 30.0) -> PrometheusServer:
        config = self._write_config()
        start_with_ports(lambda port: self._start_on(port, config, timeout), "prometheus")
        return self

    def _start_on(self, port: int, config: Path, timeout: float) -> None:
        self.port = port
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={self.directory / 'data'}",
                 f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=self.directory,
                preexec_fn=pdeathsig(signal.SIGTERM))

        def ready() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                tail = log_tail(self.log_path, 20)
                if address_in_use(tail):
                    self.process = None
                    raise PortInUse(tail.splitlines()[-1] if tail else "address in use")
                raise FixtureError(f"prometheus exited with {self.process.returncode}\n{tail}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as response:
                    return bool(response.status == 200)
            except OSError:
                return False

        try:
            wait_until(ready, timeout=timeout, what="prometheus to be ready", details=lambda: log_tail(self.log_path))
        except PortInUse:
            raise
        except Exception:
            self.stop()
            raise

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def __enter__(self) -> PrometheusServer:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    # -- the HTTP API --------------------------------------------------------------------------

    def api(self, path: str, **params: str) -> Any:
        """GET /api/v1/PATH; return its `data`. Raise FixtureError with Prometheus's error otherwise."""
        url = f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                document = json.loads(response.read())
        except urllib.error.HTTPError as error:
            document = json.loads(error.read() or b"{}")
        if document.get("status") != "success":
            raise FixtureError(f"prometheus refused {params}: {document.get('errorType')}: {document.get('error')}")
        return document["data"]

    def query(self, expression: str) -> list[dict[str, Any]]:
        """An instant query; its result (a vector's samples)."""
        data = self.api("query", query=expression)
        return list(data["result"]) if data["resultType"] == "vector" else [data["result"]]

    def values(self, expression: str) -> list[float]:
        return [float(sample["value"][1]) for sample in self.query(expression)]

    def wait_for(self, expression: str, timeout: float = 30.0) -> list[dict[str, Any]]:
        """Wait until `expression` has a result (a comparison filters, so `x == 1` waits for x to be 1)."""
        return wait_until(lambda: self.query(expression), timeout=timeout, what=f"prometheus: {expression}",
                          details=lambda: self._details())

    def _details(self) -> str:
        try:
            targets = self.api("targets")["activeTargets"]
            health = [(t["scrapeUrl"], t["health"], t.get("lastError")) for t in targets]
        except Exception as error:  # only for the message of a failed wait
            health = [str(error)]
        return f"targets: {health}\n{log_tail(self.log_path, 10)}"

    def wait_scraped(self, timeout: float = 30.0) -> None:
        """Wait until every target was scraped successfully."""
        def healthy() -> bool:
            targets = self.api("targets")["activeTargets"]
            return bool(targets) and all(target["health"] == "up" for target in targets)

        wait_until(healthy, timeout=timeout, what="prometheus to scrape its targets", details=self._details)

