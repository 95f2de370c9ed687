"""Metrics: what `[metrics]` costs, measured on two agents side by side in the same run.

Both agents run the same configuration (four checks, maintenance with a window, the agent-check),
one with `[metrics] listen`, one without. Over a quiet period, CPU and RSS of each; then the one
with metrics is scraped `scrapes` times in a row over keep-alive-less HTTP, as Prometheus does every
15 s: its CPU during the scrapes, less its own quiet rate over the same time, divided by the
scrapes, is the CPU per scrape; the wall time of each scrape and the body's size come with it.

`python3 -m bench --only metrics [--quick]`.
"""

from __future__ import annotations

import tempfile
import time
import urllib.request
from pathlib import Path

from tests.integration.agent_fixture import Agent, write_config
from tests.ports import PortInUse, address_in_use, candidate_port, start_with_ports
from tests.waiting import wait_until

from .common import cpu_seconds, percentiles, ratio, rss_mib

CHECKS = """
[checks.pretix]
type = "http"
url = "http://127.0.0.1:9/healthcheck/"
[checks.web2]
type = "http"
url = "http://127.0.0.1:9/healthcheck/"
[checks.web3]
type = "http"
url = "http://127.0.0.1:9/healthcheck/"
[checks.web4]
type = "http"
url = "http://127.0.0.1:9/healthcheck/"

[agent_check]
listen = "127.0.0.1:{agent_check_port}"
checks = ["pretix"]
"""
WINDOW = '[[maintenance.window]]\nstart = "Sun 22:00"\nend = "Mon 05:00"\n'


def _start(root: Path, metrics: bool) -> tuple[Agent, int | None]:
    """Start an agent in `root` (with a metrics listener if asked), on candidate ports."""
    def attempt(port: int) -> tuple[Agent, int | None]:
        metrics_port = candidate_port() if metrics else None
        extra = CHECKS.format(agent_check_port=port) + (f'\n[metrics]\nlisten = "127.0.0.1:{metrics_port}"\n'
                                                        if metrics else "")
        agent = Agent(root, write_config(root, extra, WINDOW), watchdog_usec=10_000_000)

        def ready() -> bool:
            if agent.notify.with_key("READY", "1"):
                return True
            if agent.process.poll() is not None:
                agent.stop()
                if address_in_use(agent.log()):
                    raise PortInUse(f"{port} or {metrics_port}")
                raise RuntimeError(f"the agent did not start:\n{agent.log()}")
            return False

        wait_until(ready, timeout=20, message=agent.log)
        return agent, metrics_port

    return start_with_ports(attempt, what="an agent")


def _scrape(port: int) -> tuple[float, int]:
    started = time.perf_counter()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        size = len(response.read())
    return time.perf_counter() - started, size


def run(quick: bool = False) -> dict:
    quiet = 5.0 if quick else 30.0
    scrapes = 100 if quick else 1000
    with tempfile.TemporaryDirectory() as off_dir, tempfile.TemporaryDirectory() as on_dir:
        off, _ = _start(Path(off_dir), metrics=False)
        on, port = _start(Path(on_dir), metrics=True)
        assert port is not None
        try:
            _scrape(port)  # the first render imports prometheus_client: part of RSS, not of a scrape
            time.sleep(1.0)  # let start-up settle before the quiet period is measured
            agents = {"metrics_off": off.process.pid, "metrics_on": on.process.pid}
            before = {name: cpu_seconds(pid) for name, pid in agents.items()}
            started = time.monotonic()
            time.sleep(quiet)
            elapsed = time.monotonic() - started
            cpu_quiet = {name: cpu_seconds(pid) - before[name] for name, pid in agents.items()}
            rss_quiet = {name: rss_mib(pid) for name, pid in agents.items()}

            cpu_before = cpu_seconds(on.process.pid)
            scrape_started = time.monotonic()
            timings, sizes = [], []
            for _ in range(scrapes):
                seconds, size = _scrape(port)
                timings.append(seconds)
                sizes.append(size)
            scrape_elapsed = time.monotonic() - scrape_started
            scrape_cpu = cpu_seconds(on.process.pid) - cpu_before
            own_quiet_rate = cpu_quiet["metrics_on"] / elapsed
            per_scrape = max(0.0, scrape_cpu - own_quiet_rate * scrape_elapsed) / scrapes
            rss_after = {name: rss_mib(pid) for name, pid in agents.items()}
        finally:
            on.stop()
            off.stop()
    cpu_percent = {name: round(seconds / elapsed * 100, 4) for name, seconds in cpu_quiet.items()}
    latency = percentiles([t * 1000 for t in timings])
    return {
        "quiet_seconds": round(elapsed, 2),
        "cpu_percent_of_core_quiet": cpu_percent,
        "cpu_quiet_ratio_on_to_off": ratio(cpu_quiet["metrics_on"], cpu_quiet["metrics_off"]),
        "rss_mib_quiet": {name: round(value, 2) for name, value in rss_quiet.items()},
        "rss_mib_after_scrapes": {name: round(value, 2) for name, value in rss_after.items()},
        "rss_ratio_on_to_off": ratio(rss_after["metrics_on"], rss_after["metrics_off"]),
        "scrapes": scrapes,
        "cpu_ms_per_scrape": round(per_scrape * 1000, 3),
        "scrape_cpu_percent_of_core_at_15s_interval": round(per_scrape / 15 * 100, 4),
        "scrape_latency_ms": {k: round(v, 3) if isinstance(v, float) else v for k, v in latency.items()},
        "scrape_bytes": max(sizes),
    }
