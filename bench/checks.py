"""How fast a fault becomes a `failing` check, and what probing costs.

Fault to failing, per kind, as a ratio of the configured `interval x fall` (the floor any
fall-based detector has): a refused connection (Redis master killed), a hang (Redis SIGSTOPped,
caught by the probe's deadline; also against the bound `interval x fall + timeout + interval`
that tests/integration/test_daemon_checks.py once asserted), a replication lag crossing
`max_lag_bytes` (replay paused on a real standby, then a write larger than the threshold) and a
replica cut off from its primary (the fixture's cut_off_replica: the WAL receiver stops streaming;
also against `wal_receiver_timeout`, the slower way such a loss shows). The real runner and probes
run against the real servers; the state machine is the daemon's.

CPU: the daemon probing four checks at a 1 s interval (PostgreSQL standby and primary, Redis,
HTTP) for a quiet period, beside the same daemon with no checks, in the same run.
"""

from __future__ import annotations

import random
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from pretix_agent.checks import health
from pretix_agent.checks.probes import make_probe
from pretix_agent.checks.runner import CheckRunner
from pretix_agent.config import CheckSpec, PostgresCheck, RedisCheck
from tests.integration.agent_fixture import Agent, write_config
from tests.integration.pg_fixture import PgReplicationCluster
from tests.integration.redis_fixture import RedisReplicationPair

from .common import cpu_seconds, percentiles, ratio

INTERVAL, TIMEOUT, FALL, RISE = 0.5, 0.3, 2, 1


def _random_phase() -> None:
    """Inject the fault at a random point of the probe cycle: waiting for a state change returns
    right after a probe, and a fault injected then would always meet the worst case."""
    time.sleep(random.uniform(0, INTERVAL))


class Watch:
    """Runs one check with the real runner and records when it turns failing or passing."""

    def __init__(self, spec: CheckSpec):
        self.spec = spec
        self.state = health.CheckState()
        self.changed = threading.Condition()
        self.runner = CheckRunner(spec, make_probe(spec), self._deliver)

    def _deliver(self, _name, result) -> None:
        with self.changed:
            self.state = health.advance(self.state, result, self.spec.fall, self.spec.rise)
            self.changed.notify_all()

    def wait_for(self, state: str, timeout: float = 30.0) -> float:
        deadline = time.monotonic() + timeout
        with self.changed:
            while self.state.state != state:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{self.spec.name} never became {state}: {self.state}")
                self.changed.wait(left)
        return time.monotonic()


def _spec(name: str, kind: str, options) -> CheckSpec:
    return CheckSpec(name, kind, INTERVAL, TIMEOUT, FALL, RISE, options)


def _redis_options(url: str) -> RedisCheck:
    return RedisCheck(url=url, write_probe=True, max_latency=0.25, max_memory_ratio=0.95, max_master_io=30.0,
                      queues=(), max_queue_length=1000)


def _refused_and_hang(trials: int) -> dict:
    refused, hang = [], []
    for _ in range(trials):
        with RedisReplicationPair(with_replica=False) as pair:
            watch = Watch(_spec("redis", "redis", _redis_options(pair.url())))
            watch.runner.start()
            try:
                watch.wait_for("passing")
                _random_phase()
                pair.sigstop()
                start = time.monotonic()
                hang.append(watch.wait_for("failing") - start)
                pair.sigcont()
                watch.wait_for("passing")
                _random_phase()
                pair.kill_master()
                start = time.monotonic()
                refused.append(watch.wait_for("failing") - start)
            finally:
                watch.runner.stop()
    return {"refused": refused, "hang": hang}


def _replica_faults(trials: int) -> tuple[list[float], list[float], float]:
    """Lag crossing and cut-off trials on one cluster; also its wal_receiver_timeout in seconds."""
    threshold = 1024 * 1024
    out, cut_off = [], []
    with PgReplicationCluster() as cluster:
        options = PostgresCheck(dsn=cluster.dsn(server="replica"), primary_dsn="", role="standby",
                                max_lag_bytes=threshold, max_lag_seconds=3600.0)
        watch = Watch(_spec("replica", "postgres", options))
        watch.runner.start()
        try:
            for _ in range(trials):
                cluster.wait_caught_up()
                watch.wait_for("passing")
                cluster.pause_replay()
                _random_phase()
                start_lsn = cluster.current_wal_lsn()
                cluster.write_load(rows=2 * threshold // 200, payload_bytes=200)  # one commit, > threshold
                start = time.monotonic()
                crossed = cluster.lsn_diff(cluster.current_wal_lsn(), start_lsn)
                out.append(watch.wait_for("failing") - start)
                assert crossed > threshold
                cluster.resume_replay()
            for _ in range(trials):
                cluster.wait_caught_up()
                watch.wait_for("passing")
                _random_phase()
                start = time.monotonic()
                cluster.cut_off_replica()
                cut_off.append(watch.wait_for("failing") - start)
                cluster.reconnect_replica()
            receiver_timeout = int(cluster.scalar(
                "SELECT setting FROM pg_settings WHERE name = 'wal_receiver_timeout'", server="replica")) / 1000
        finally:
            watch.runner.stop()
    return out, cut_off, receiver_timeout


class _Healthcheck(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"OK")

    def log_message(self, *args) -> None:
        pass


def _cpu(seconds: float) -> dict:
    http = ThreadingHTTPServer(("127.0.0.1", 0), _Healthcheck)
    threading.Thread(target=http.serve_forever, daemon=True).start()
    try:
        with PgReplicationCluster() as cluster, RedisReplicationPair(with_replica=False) as pair:
            checks = f"""
[checks.standby]
type = "postgres"
dsn = "{cluster.dsn(server='replica')}"
interval = "1s"
timeout = "500ms"
[checks.primary]
type = "postgres"
dsn = "{cluster.dsn(server='primary')}"
interval = "1s"
timeout = "500ms"
[checks.redis]
type = "redis"
url = "{pair.url()}"
interval = "1s"
timeout = "500ms"
[checks.web]
type = "http"
url = "http://127.0.0.1:{http.server_address[1]}/healthcheck/"
interval = "1s"
timeout = "500ms"
"""
            measured = {}
            for name, extra in (("no_checks", ""), ("four_checks", checks)):
                with tempfile.TemporaryDirectory() as directory:
                    root = Path(directory)
                    agent = Agent(root, write_config(root, extra))
                    try:
                        try:
                            agent.wait_ready(30)
                        except AssertionError:
                            raise RuntimeError(f"the daemon did not start:\n{agent.log()}") from None
                        if extra:
                            agent.wait_status(lambda d: all(c["state"] == "passing" for c in d["checks"].values()),
                                              timeout=30)
                        before, started = cpu_seconds(agent.process.pid), time.monotonic()
                        time.sleep(seconds)  # the quiet period being measured
                        elapsed = time.monotonic() - started
                        measured[name] = (cpu_seconds(agent.process.pid) - before) / elapsed * 100
                    finally:
                        agent.stop()
    finally:
        http.shutdown()
        http.server_close()
    return {
        "seconds": seconds,
        "four_checks_cpu_percent_of_core": round(measured["four_checks"], 3),
        "no_checks_cpu_percent_of_core": round(measured["no_checks"], 3),
        "cpu_per_probe_ms": round((measured["four_checks"] - measured["no_checks"]) * 10 / 4, 3),
    }


def run(quick: bool = False) -> dict:
    trials = 3 if quick else 20
    floor = INTERVAL * FALL
    faults = _refused_and_hang(trials)
    faults["lag_crossing"], faults["cut_off_replica"], receiver_timeout = _replica_faults(trials)
    detection = {}
    for kind, seconds in faults.items():
        stats = percentiles(seconds)
        detection[kind] = {
            "seconds": {k: round(v, 4) if isinstance(v, float) else v for k, v in stats.items()},
            "ratio_to_interval_x_fall": {"p50": ratio(stats["p50"], floor), "p99": ratio(stats["p99"], floor)},
        }
    hang_bound = floor + TIMEOUT + INTERVAL
    detection["hang"]["ratio_to_bound"] = {"bound_s": hang_bound,
                                           "max": ratio(percentiles(faults["hang"])["max"], hang_bound)}
    detection["cut_off_replica"]["ratio_to_wal_receiver_timeout"] = {
        "wal_receiver_timeout_s": receiver_timeout,
        "max": ratio(percentiles(faults["cut_off_replica"])["max"], receiver_timeout)}
    return {
        "config": {"interval_s": INTERVAL, "timeout_s": TIMEOUT, "fall": FALL, "interval_x_fall_s": floor},
        "fault_to_failing": detection,
        "cpu": _cpu(5.0 if quick else 30.0),
    }
