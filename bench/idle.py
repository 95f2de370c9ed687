"""The idle daemon's memory and CPU over a quiet period, beside a bare python3 process."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.integration.agent_fixture import Agent, write_config

from .common import cpu_seconds, ratio, rss_mib


def run(seconds: float = 30.0) -> dict:
    with tempfile.TemporaryDirectory() as directory:
        root = Path(directory)
        agent = Agent(root, write_config(root), watchdog_usec=10_000_000)
        baseline = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(86400)"])
        try:
            agent.wait_ready()
            time.sleep(1.0)  # let start-up settle before the quiet period is measured
            pids = {"agent": agent.process.pid, "baseline": baseline.pid}
            cpu_before = {name: cpu_seconds(pid) for name, pid in pids.items()}
            started = time.monotonic()
            time.sleep(seconds)
            elapsed = time.monotonic() - started
            cpu = {name: (cpu_seconds(pid) - cpu_before[name]) / elapsed * 100 for name, pid in pids.items()}
            rss = {name: rss_mib(pid) for name, pid in pids.items()}
        finally:
            baseline.kill()
            baseline.wait()
            agent.stop()
    return {
        "seconds": round(elapsed, 2),
        "agent_rss_mib": round(rss["agent"], 2),
        "baseline_rss_mib": round(rss["baseline"], 2),
        "rss_ratio": ratio(rss["agent"], rss["baseline"]),
        "agent_cpu_percent_of_core": round(cpu["agent"], 4),
        "baseline_cpu_percent_of_core": round(cpu["baseline"], 4),
        "target": {"rss_mib_below": 40, "cpu_percent_below": 0.5},
        "meets_target": rss["agent"] < 40 and cpu["agent"] < 0.5,
    }
