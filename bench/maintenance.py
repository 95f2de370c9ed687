"""Latency from a lock, and from a hand deletion, to the marker being right.

The agent reacts through inotify. The baseline is the timer approach it replaces: a reconciler
that looks every second, run against the same files in the same run.
"""

from __future__ import annotations

import tempfile
import threading
from pathlib import Path

from tests.integration.agent_fixture import Agent, write_config

from .common import percentiles, ratio, wait_for


class PollingReconciler:
    """The seed's approach, made fair: every `period` seconds, make the marker follow the lock."""

    def __init__(self, lock: Path, marker: Path, period: float = 1.0):
        self.lock, self.marker, self.period = lock, marker, period
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stopped.wait(self.period):
            if self.lock.exists() and not self.marker.exists():
                self.marker.write_text("on\n")
            elif not self.lock.exists() and self.marker.exists():
                self.marker.unlink()

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join()


def _trials(lock: Path, marker: Path, trials: int, timeout: float) -> dict:
    import time

    lock_latency, restore_latency = [], []
    for _ in range(trials):
        start = time.monotonic()
        lock.touch()
        lock_latency.append(wait_for(marker.exists, timeout) - start)
        start = time.monotonic()
        marker.unlink()
        restore_latency.append(wait_for(marker.exists, timeout) - start)
        lock.unlink()
        wait_for(lambda: not marker.exists(), timeout)
    return {"lock_to_marker_s": percentiles(lock_latency), "hand_delete_to_restored_s": percentiles(restore_latency)}


def run(trials: int = 200, baseline_trials: int = 200) -> dict:
    with tempfile.TemporaryDirectory() as directory:
        root = Path(directory)
        agent = Agent(root, write_config(root))
        try:
            agent.wait_ready()
            measured = _trials(agent.lock, agent.marker, trials, timeout=5.0)
        finally:
            agent.stop()
    with tempfile.TemporaryDirectory() as directory:
        root = Path(directory)
        poller = PollingReconciler(root / "maintenance.lock", root / "maintenance")
        try:
            baseline = _trials(root / "maintenance.lock", root / "maintenance", baseline_trials, timeout=5.0)
        finally:
            poller.stop()
    out = {"agent": measured, "baseline_1s_poller": baseline, "ratio_p50": {}, "ratio_p99": {}}
    for key in measured:
        for q in ("p50", "p99"):
            out[f"ratio_{q}"][key] = ratio(measured[key][q], baseline[key][q])
    out["target"] = {"p99_s_below": 0.05}
    out["meets_target"] = all(measured[key]["p99"] < 0.05 for key in measured)
    for section in (measured, baseline):
        for stats in section.values():
            for name, value in stats.items():
                if isinstance(value, float):
                    stats[name] = round(value, 6)
    return out
