"""A real Prometheus (Debian's `prometheus` package) in a temporary directory, scraping what a test gives it.

Plain classes, no pytest needed::

    with PrometheusServer(tmp_path, targets=["127.0.0.1:24568"], rule_files=[RULES]) as prometheus:
        prometheus.wait_for('pretix_agent_maintenance_on == 1')
        prometheus.query("pretix_agent_check_state")     # [{"metric": {...}, "value": [ts, "1"]}, ...]

It scrapes and evaluates every second (`scrape_interval: 1s`), keeps its TSDB in the directory, and
listens on a candidate port chosen outside the kernel's ephemeral range (tests/ports.py): a port
from binding port 0 and closing it can be taken by any outbound connection before Prometheus binds
it. A port another test took on purpose shows as "address already in use", and Prometheus starts
again on a fresh one.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tests.ports import PortInUse, address_in_use, start_with_ports

from .processes import FixtureError, log_tail, pdeathsig, wait_until

PROMETHEUS = os.environ.get("PRETIX_AGENT_TEST_PROMETHEUS", "/usr/bin/prometheus")


def prometheus_unavailable_reason() -> str | None:
    if not os.access(PROMETHEUS, os.X_OK):
        return f"{PROMETHEUS} not found (apt-get install prometheus, or set PRETIX_AGENT_TEST_PROMETHEUS)"
    return None


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
        start_with_ports(lambda port: self._start_on(port, config, timeout), what="prometheus")
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

