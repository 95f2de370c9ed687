"""How long the real-component fixtures take to start: what every integration test run pays.

Each fixture is started and closed a few times: the PostgreSQL primary with a streaming replica (its
own breakdown: template copy, primary start, base backup, replica start, streaming), the Redis
master with its replica, haproxy with two backends, nginx with the maintenance snippet. Also how
soon the fixture's `cut_off_replica()` sees the replica stop streaming, beside the
`wal_receiver_timeout` a lost primary would otherwise take to show.

Baseline, in the same run: starting and reaping `/bin/true` (what one process start costs on this
machine now). The start-up bounds the self-tests once asserted are kept as `target`.
"""

from __future__ import annotations

import statistics
import subprocess
import time
from collections.abc import Callable
from typing import Any

from tests.integration.haproxy_fixture import HaproxyFixture, haproxy_unavailable_reason
from tests.integration.nginx_fixture import NginxServer, StubUpstream, nginx_available
from tests.integration.pg_fixture import PgReplicationCluster, pg_unavailable_reason
from tests.integration.redis_fixture import RedisReplicationPair, redis_unavailable_reason

from .common import percentiles, ratio

TARGETS = {"postgres_total_s_below": 15.0, "redis_total_s_below": 10.0, "cut_off_noticed_s_below": 3.0}


def _seconds(start: Callable[[], Any], close: Callable[[Any], None]) -> float:
    began = time.monotonic()
    started = start()
    took = time.monotonic() - began
    close(started)
    return took


def _process_start(trials: int = 20) -> float:
    """p50 seconds to start and reap /bin/true."""
    seconds = []
    for _ in range(trials):
        began = time.monotonic()
        subprocess.run(["/bin/true"], check=True, timeout=10)
        seconds.append(time.monotonic() - began)
    return statistics.median(seconds)


def _summary(seconds: list[float], baseline: float) -> dict[str, Any]:
    stats = percentiles(seconds)
    return {"seconds": {k: round(v, 4) if isinstance(v, float) else v for k, v in stats.items()},
            "ratio_p50_to_process_start": ratio(stats["p50"], baseline)}


def _postgres(trials: int, baseline: float) -> dict[str, Any]:
    totals: list[float] = []
    breakdown: dict[str, list[float]] = {}
    noticed: list[float] = []
    receiver_timeout = None
    for _ in range(trials):
        with PgReplicationCluster() as cluster:
            totals.append(cluster.timings["total"])
            for step, seconds in cluster.timings.items():
                breakdown.setdefault(step, []).append(seconds)
            noticed.append(cluster.cut_off_replica(timeout=30))
            cluster.reconnect_replica()
            receiver_timeout = int(cluster.scalar(
                "SELECT setting FROM pg_settings WHERE name = 'wal_receiver_timeout'", server="replica")) / 1000
    cut_off = percentiles(noticed)
    return {
        "start": _summary(totals, baseline),
        "breakdown_p50_s": {step: round(statistics.median(values), 4) for step, values in breakdown.items()},
        "cut_off_replica_noticed": {
            "seconds": {k: round(v, 4) if isinstance(v, float) else v for k, v in cut_off.items()},
            "ratio_max_to_wal_receiver_timeout": ratio(cut_off["max"], receiver_timeout or 0.0),
            "wal_receiver_timeout_s": receiver_timeout},
        "meets_target": max(totals) < TARGETS["postgres_total_s_below"]
        and cut_off["max"] < TARGETS["cut_off_noticed_s_below"],
    }


def _redis(trials: int, baseline: float) -> dict[str, Any]:
    totals: list[float] = []
    for _ in range(trials):
        with RedisReplicationPair() as pair:
            totals.append(pair.timings["total"])
    return {**_summary(totals, baseline), "meets_target": max(totals) < TARGETS["redis_total_s_below"]}


def _haproxy(trials: int, baseline: float) -> dict[str, Any]:
    seconds = [_seconds(lambda: HaproxyFixture(servers=2).start(), lambda hx: hx.close()) for _ in range(trials)]
    return _summary(seconds, baseline)


def _nginx(trials: int, baseline: float) -> dict[str, Any]:
    with StubUpstream() as upstream:
        seconds = [_seconds(lambda: NginxServer(upstream.port).start(), lambda server: server.stop())
                   for _ in range(trials)]
    return _summary(seconds, baseline)


def run(quick: bool = False) -> dict[str, Any]:
    heavy, light = (1, 3) if quick else (3, 10)
    baseline = _process_start()
    results: dict[str, Any] = {"process_start_p50_s": round(baseline, 5), "target": TARGETS}
    for name, unavailable, measure, trials in (
            ("postgres", pg_unavailable_reason(), _postgres, heavy),
            ("redis", redis_unavailable_reason(), _redis, heavy),
            ("haproxy", haproxy_unavailable_reason(), _haproxy, light),
            ("nginx", None if nginx_available() else "nginx not installed", _nginx, light)):
        results[name] = {"skipped": unavailable} if unavailable else measure(trials, baseline)
    return results
