"""How fast a fault becomes a `failing` check, and what probing costs.

Fault to failing, per kind, as a ratio of the configured `interval x fall` (the floor any
fall-based detector has): a refused connection (Redis master killed), a hang (Redis SIGSTOPped,
caught by the probe's deadline; also against the bound `interval x fall + timeout + interval`
that tests/integration/test_daemon_checks.py once asserted), a replication lag crossing
`max_lag_bytes` (replay paused on a real standby, then a write larger than the threshold) and a
replica cut off from its primary (the fixture's cut_off_replica: the WAL receiver stops streaming;
also against `wal_receiver_timeout`, the slower way such a loss shows). The real runner and probes
run against the real servers; the state machine is the daemon's.

CPU per probe, per check type (PostgreSQL standby and primary, Redis, HTTP), with the connection
kept between probes (the product's probes, from make_probe) against a new connection for every
probe (the one-off `probe()` functions, which is how every probe ran before), in the same run:
nine real runners in this process at a 1 s interval at once (each type kept and fresh, and one
with a probe that does nothing: the runner's own share of each figure), each timed by the CPU
clocks of its own two threads and divided by the probes it delivered.

CPU of the daemon: four checks at a 1 s interval (the same four) for a quiet period, beside the
same daemon with no checks, in the same run; `cpu_per_probe_ms` includes the daemon's loop cycle
that every result triggers, shown apart as `of_which_main_loop_ms` (the main thread's CPU). The
HTTP server is an HTTP/1.1 keep-alive server that writes each answer in one piece, as nginx in
front of pretix does.
"""

from __future__ import annotations

import dataclasses
import functools
import random
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from pretix_agent.checks import health, postgres
from pretix_agent.checks import http as http_check
from pretix_agent.checks import redis as redis_check
from pretix_agent.checks.model import Deadline, ProbeResult, passed
from pretix_agent.checks.probes import make_probe, redis_probe_key
from pretix_agent.checks.runner import CheckRunner
from pretix_agent.config import CheckSpec, HttpCheck, PostgresCheck, RedisCheck
from tests.integration.agent_fixture import Agent, write_config
from tests.integration.http_fixture import KeepAliveHttpServer
from tests.integration.pg_fixture import PgReplicationCluster
from tests.integration.redis_fixture import RedisReplicationPair

from .common import cpu_seconds, percentiles, ratio, thread_cpu_seconds, wait_for

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


DAEMON_TARGET_MS = 1.0  # CPU per probe, on average over the four checks (issue 17)
TYPES = ("pg_standby", "pg_primary", "redis", "http")


def _thread_cpu(names: set[str]) -> dict[str, float]:
    """CPU seconds so far of this process's live threads with these names."""
    return {thread.name: time.clock_gettime(time.pthread_getcpuclockid(thread.ident))
            for thread in threading.enumerate() if thread.name in names and thread.ident is not None}


def _per_type(seconds: float) -> dict:
    """Every check type twice, kept and fresh, plus a runner with an empty probe: nine runners at a
    1 s interval at once, their starts spread over the second. Each runner's own threads (its
    scheduler and its probe thread) are timed, so the nine figures do not mix."""
    with PgReplicationCluster() as cluster, RedisReplicationPair(with_replica=False) as pair, \
            KeepAliveHttpServer() as web:
        specs = {
            "pg_standby": _spec("pg_standby", "postgres", PostgresCheck(
                dsn=cluster.dsn(server="replica"), primary_dsn="", role="standby", max_lag_bytes=16 << 20,
                max_lag_seconds=30.0)),
            "pg_primary": _spec("pg_primary", "postgres", PostgresCheck(
                dsn=cluster.dsn(), primary_dsn="", role="primary", max_lag_bytes=16 << 20, max_lag_seconds=30.0)),
            "redis": _spec("redis", "redis", _redis_options(pair.url())),
            "http": _spec("http", "http", HttpCheck(url=web.url("/healthcheck/"), host="tickets.example.org",
                                                    verify_tls=True)),
        }
        probes: dict[str, Callable[[Deadline], ProbeResult]] = {"empty": lambda _deadline: passed("nothing measured")}
        for name, spec in specs.items():
            probes[f"{name}.kept"] = make_probe(spec)  # the product's probe
        probes["pg_standby.fresh"] = functools.partial(postgres.probe, specs["pg_standby"].options)
        probes["pg_primary.fresh"] = functools.partial(postgres.probe, specs["pg_primary"].options)
        probes["redis.fresh"] = functools.partial(redis_check.probe, specs["redis"].options,
                                                  probe_key=redis_probe_key("redis"))
        probes["http.fresh"] = functools.partial(http_check.probe, specs["http"].options)

        results: dict[str, list[ProbeResult]] = {name: [] for name in probes}
        runners = {name: CheckRunner(dataclasses.replace(specs["http"], name=name, interval=1.0, timeout=0.5),
                                     probe, lambda check, result: results[check].append(result))
                   for name, probe in probes.items()}
        for number, runner in enumerate(runners.values()):
            time.sleep(1.0 / len(runners) * (number > 0))  # spread the starts over the interval
            runner.start()
        try:
            wait_for(lambda: all(len(delivered) >= 2 for delivered in results.values()), 30, step=0.05)  # warm
            threads = {f"{kind}-{name}" for name in runners for kind in ("check", "probe")}
            counts, cpu = {n: len(r) for n, r in results.items()}, _thread_cpu(threads)
            time.sleep(seconds)  # the period being measured
            counts = {n: len(r) - counts[n] for n, r in results.items()}
            cpu = {n: seconds_now - cpu[n] for n, seconds_now in _thread_cpu(threads).items()}
        finally:
            for runner in runners.values():
                runner.request_stop()
            for runner in runners.values():
                runner.stop()
        failing = [f"{name}: {r.reason}" for name, rs in results.items() for r in rs if r.outcome != "pass"]
        if failing:
            raise RuntimeError(f"a probe did not pass: {failing[0]}")

        def ms_per_probe(name: str) -> float:
            return (cpu[f"check-{name}"] + cpu[f"probe-{name}"]) / counts[name] * 1000

        out: dict = {"interval_s": 1.0, "seconds": seconds,
                     "runner_with_an_empty_probe_ms": round(ms_per_probe("empty"), 4)}
        for name in TYPES:
            kept, fresh = ms_per_probe(f"{name}.kept"), ms_per_probe(f"{name}.fresh")
            out[name] = {"kept_ms": round(kept, 4), "fresh_ms": round(fresh, 4), "kept_to_fresh": ratio(kept, fresh),
                         "probes": {"kept": counts[f"{name}.kept"], "fresh": counts[f"{name}.fresh"]},
                         "kept_connections_opened": _connections_opened(probes[f"{name}.kept"])}
        kept_average = sum(out[name]["kept_ms"] for name in TYPES) / len(TYPES)
        fresh_average = sum(out[name]["fresh_ms"] for name in TYPES) / len(TYPES)
        out["average_of_four"] = {"kept_ms": round(kept_average, 4), "fresh_ms": round(fresh_average, 4),
                                  "kept_to_fresh": ratio(kept_average, fresh_average)}
    return out


def _connections_opened(probe: object) -> int:
    keepers = [getattr(probe, name, None) for name in ("server", "primary", "keeper")]
    return sum(keeper.opened for keeper in keepers if keeper is not None)


def _daemon_cpu(seconds: float) -> dict:
    with PgReplicationCluster() as cluster, RedisReplicationPair(with_replica=False) as pair, \
            KeepAliveHttpServer() as web:
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
url = "{web.url('/healthcheck/')}"
interval = "1s"
timeout = "500ms"
"""
        measured, main_loop = {}, {}
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
                    pid = agent.process.pid
                    before, loop_before = cpu_seconds(pid), thread_cpu_seconds(pid, pid)
                    started = time.monotonic()
                    time.sleep(seconds)  # the quiet period being measured
                    elapsed = time.monotonic() - started
                    measured[name] = (cpu_seconds(pid) - before) / elapsed * 100
                    # The main thread runs the daemon's loop: one cycle (decide, publish the status) per result.
                    main_loop[name] = (thread_cpu_seconds(pid, pid) - loop_before) / elapsed * 100
                finally:
                    agent.stop()
    per_probe_ms = (measured["four_checks"] - measured["no_checks"]) * 10 / 4
    loop_ms = (main_loop["four_checks"] - main_loop["no_checks"]) * 10 / 4
    return {
        "seconds": seconds,
        "four_checks_cpu_percent_of_core": round(measured["four_checks"], 3),
        "no_checks_cpu_percent_of_core": round(measured["no_checks"], 3),
        "cpu_per_probe_ms": round(per_probe_ms, 3),
        "of_which_main_loop_ms": round(loop_ms, 3),
        "of_which_check_threads_ms": round(per_probe_ms - loop_ms, 3),
        "target_cpu_per_probe_ms": DAEMON_TARGET_MS,
        "ratio_to_target": ratio(per_probe_ms, DAEMON_TARGET_MS),
    }


def _cpu(seconds: float, per_type_seconds: float) -> dict:
    return {**_daemon_cpu(seconds), "per_type": _per_type(per_type_seconds)}


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
        "cpu": _cpu(5.0 if quick else 30.0, 5.0 if quick else 30.0),
    }
