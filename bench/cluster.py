"""Latency from `lock --cluster` to the marker on every node, and from `unlock --cluster` to its removal.

Three real agents and PostgreSQL (primary + replica) on loopback (tests/integration/cluster_fixture.py).
Each trial drops the request file into the first node's state directory, exactly as
`pretix-agentctl lock --cluster` writes it (so Python's start-up is not counted), and times until
every node's marker exists: the request picked up through inotify, carried out against PostgreSQL,
NOTIFYed, read by every node's worker, mirrored into its lock file and acted on by its maintenance
controller. The baseline is the same agents without LISTEN, polling at `reconcile_interval`, in
the same run.
"""

from __future__ import annotations

import random
import secrets
import tempfile
import time
from pathlib import Path

from pretix_agent import config
from pretix_agent.adapters import files
from pretix_agent.cluster.model import LOCK, UNLOCK, Request
from pretix_agent.cluster.request import encode, request_path
from tests.integration.cluster_fixture import ClusterRig

from .common import percentiles, ratio

TARGET_P99 = 0.2


def _ask(rig: ClusterRig, action: str) -> float:
    """Write a request as ctl does; return the monotonic time it appeared."""
    conf = config.load(rig.configs[0])
    now = time.time()
    wanted = Request(id=secrets.token_hex(8), action=action, by="bench", at=now, host=conf.agent.node,
                     expires_at=now + 60)
    path = request_path(conf)
    deadline = time.monotonic() + 30
    while path.exists():  # the last one is still being taken
        if time.monotonic() > deadline:
            raise TimeoutError("the previous request was never taken")
        time.sleep(0.001)
    started = time.monotonic()
    if not files.create_exclusive(path, encode(wanted)):
        raise RuntimeError("a request file appeared meanwhile")
    return started


def _until(markers: list[Path], present: bool, timeout: float) -> list[float]:
    """Poll the markers tightly; return the monotonic time each first was as wanted."""
    seen: dict[int, float] = {}
    deadline = time.monotonic() + timeout
    while len(seen) < len(markers):
        now = time.monotonic()
        for index, marker in enumerate(markers):
            if index not in seen and marker.exists() == present:
                seen[index] = now
        if now > deadline:
            raise TimeoutError(f"markers not {'there' if present else 'gone'} after {timeout} s: {sorted(seen)}")
        time.sleep(0.0002)
    return [seen[index] for index in range(len(markers))]


def _trials(rig: ClusterRig, trials: int, timeout: float, spread: float) -> dict:
    """`spread`: a random pause of up to this long before each request, so that requests fall at
    random moments of the nodes' polling cycles, as an operator's would, not in step with them."""
    markers = [rig.marker(index) for index in range(rig.count)]
    every_lock, each_lock, every_unlock = [], [], []
    for _ in range(trials):
        time.sleep(random.uniform(0, spread))
        started = _ask(rig, LOCK)
        times = _until(markers, True, timeout)
        every_lock.append(max(times) - started)
        each_lock.extend(t - started for t in times)
        time.sleep(random.uniform(0, spread))
        started = _ask(rig, UNLOCK)
        every_unlock.append(max(_until(markers, False, timeout)) - started)
    return {"lock_to_marker_on_every_node_s": percentiles(every_lock),
            "lock_to_marker_per_node_s": percentiles(each_lock),
            "unlock_to_marker_gone_on_every_node_s": percentiles(every_unlock)}


def _rounded(section: dict) -> dict:
    return {key: {name: round(value, 6) if isinstance(value, float) else value for name, value in stats.items()}
            for key, stats in section.items()}


def run(trials: int = 100, baseline_trials: int = 20) -> dict:
    with tempfile.TemporaryDirectory() as directory, ClusterRig(Path(directory), netns=False) as rig:
        measured = _trials(rig, trials, timeout=10.0, spread=0.05)
        agent = config.load(rig.configs[0])
    # The baseline: the same agents polling at their own backstop, reconcile_interval, without LISTEN.
    interval = agent.agent.reconcile_interval
    with tempfile.TemporaryDirectory() as directory, ClusterRig(
            Path(directory), netns=False, listen=False, heartbeat=f"{interval:g}s",
            timeout=f"{min(1.0, interval / 2):g}s") as rig:
        baseline = _trials(rig, baseline_trials, timeout=4 * interval + 10, spread=interval)
    key = f"baseline_polling_{interval:g}s"
    out = {"agent_listen_notify": _rounded(measured), key: _rounded(baseline), "ratio_p50": {}, "ratio_p99": {},
           "nodes": 3, "trials": trials, "baseline_trials": baseline_trials,
           "agent_heartbeat_s": agent.cluster.heartbeat_interval if agent.cluster else None}
    for name in measured:
        for q in ("p50", "p99"):
            out[f"ratio_{q}"][name] = ratio(measured[name][q], baseline[name][q])
    out["target"] = {"lock_to_marker_on_every_node_p99_s_below": TARGET_P99}
    out["meets_target"] = measured["lock_to_marker_on_every_node_s"]["p99"] < TARGET_P99
    return out
