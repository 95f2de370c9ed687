"""Helpers shared by the benchmarks."""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """Return user + system CPU seconds of process `pid` (from /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def thread_cpu_seconds(pid: int, tid: int) -> float:
    """Return user + system CPU seconds of thread `tid` of process `pid` (from /proc)."""
    fields = Path(f"/proc/{pid}/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def rss_mib(pid: int, key: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    raise LookupError(key)


def percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)

    def pick(q: float) -> float:
        return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]

    return {"n": len(ordered), "p50": pick(0.5), "p99": pick(0.99), "max": ordered[-1],
            "mean": statistics.fmean(ordered)}


def wait_for(condition, timeout: float, step: float = 0.0002) -> float:
    """Poll `condition` tightly; return the monotonic time it first held. Raise TimeoutError."""
    deadline = time.monotonic() + timeout
    while True:
        now = time.monotonic()
        if condition():
            return now
        if now > deadline:
            raise TimeoutError("condition not met")
        time.sleep(step)


def ratio(value: float, baseline: float) -> float | None:
    return round(value / baseline, 4) if baseline else None
