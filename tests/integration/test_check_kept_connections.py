"""Kept connections against real servers: restarts, hangs and kills between and during probes.

Each probe object keeps one connection between probes (pretix_agent/checks/keeper.py). What must
hold, for PostgreSQL, Redis and HTTP alike: a server restarted between probes costs no failure
(the next probe reconnects); one SIGSTOPped while a probe waits on the kept connection costs one
timeout (soft) within the deadline, and the probe recovers on a new connection after SIGCONT; one
killed while the connection is idle is a hard failure at the next probe (refused at the
reconnect), as without kept connections; and 10,000 probes with a restart every 1,000 leave the
process with as many open descriptors as before. `opened` counts the connections a probe made.
"""

from __future__ import annotations

import dataclasses
import gc
import os
import signal
from collections.abc import Callable, Iterator

import pytest

from pretix_agent.checks import http as http_check
from pretix_agent.checks import postgres
from pretix_agent.checks import redis as redis_check
from pretix_agent.checks.model import Deadline, ProbeResult
from pretix_agent.checks.probes import make_probe
from pretix_agent.checks.runner import CheckRunner
from pretix_agent.config import CheckSpec, HttpCheck, PostgresCheck, RedisCheck, parse_duration, parse_size
from tests.waiting import wait_until

from . import pg_fixture, redis_fixture
from .check_helpers import run_like_the_runner
from .http_fixture import KeepAliveHttpServer

pytestmark = pytest.mark.integration

TIMEOUT = 1.0
MARGIN = 0.3  # how much later than its timeout a probe may return
LOOP_TIMEOUT = 5.0  # per probe in the 10,000-probe loops: they count descriptors, not speed
PROBES, RESTART_EVERY = 10_000, 1_000


def open_descriptors() -> int:
    gc.collect()  # a socket object no longer referenced but not yet collected is not a leak
    return len(os.listdir("/proc/self/fd"))


def probe_many(probe: Callable[[Deadline], ProbeResult], restart: Callable[[int], None]) -> list[str]:
    """Run PROBES probes, calling restart(n) before every RESTART_EVERY-th; return the reasons of
    those that did not pass."""
    problems = []
    for number in range(PROBES):
        if number and number % RESTART_EVERY == 0:
            restart(number // RESTART_EVERY)
        result = probe(Deadline(LOOP_TIMEOUT))
        if result.outcome != "pass":
            problems.append(f"probe {number}: {result.reason}")
    return problems


# ---------------------------------------------------------------------------------------------
# PostgreSQL

_pg_reason = pg_fixture.pg_unavailable_reason()


@pytest.fixture(scope="module")
def pg() -> Iterator[pg_fixture.PgReplicationCluster]:
    if _pg_reason:
        pytest.skip(_pg_reason)
    with pg_fixture.PgReplicationCluster() as cluster:
        yield cluster


@pytest.fixture
def healthy(pg):
    """Every test starts (and leaves the cluster) running, streaming and caught up."""
    pg.wait_streaming(timeout=15)
    yield pg
    for server in pg.servers:
        server.sigcont()
        if not server.running:
            server.start()
    pg.wait_streaming(timeout=30)
    pg.wait_caught_up(timeout=30)


def pg_check(dsn: str, **changes) -> PostgresCheck:
    base = PostgresCheck(dsn=dsn, primary_dsn="", role="any", max_lag_bytes=parse_size("16MiB"),
                         max_lag_seconds=parse_duration("30s"))
    return dataclasses.replace(base, **changes)


def pg_sessions(pg, check_name: str, server: str = "primary") -> list[tuple]:
    """The agent's sessions of one check on a server: (state, backend_xid, backend_xmin) each."""
    return pg.execute("SELECT state, backend_xid::text, backend_xmin::text FROM pg_stat_activity"
                      " WHERE application_name = %s", [f"pretix-agent check {check_name}"], server=server)


def test_a_postgres_probe_keeps_one_idle_session_named_after_its_check_holding_no_snapshot(healthy):
    kept = postgres.PostgresProbe(pg_check(healthy.dsn(), role="primary"), check_name="named")
    try:
        for _ in range(3):
            assert kept(Deadline(TIMEOUT)).outcome == "pass"
        assert kept.server.opened == 1
        # autocommit: between probes the session is idle, with no transaction id and no snapshot
        assert pg_sessions(healthy, "named") == [("idle", None, None)]
    finally:
        kept.close()
    wait_until(lambda: not pg_sessions(healthy, "named"), 10, message="the session to end after close()")


def test_a_postgres_server_restarted_between_probes_costs_no_failure(healthy):
    kept = postgres.PostgresProbe(pg_check(healthy.dsn(), role="primary"), check_name="restart")
    try:
        assert kept(Deadline(TIMEOUT)).outcome == "pass"
        descriptors = open_descriptors()
        healthy.primary.stop()
        healthy.primary.start()
        result = kept(Deadline(TIMEOUT))
        assert result.outcome == "pass", result.reason
        assert kept.server.opened == 2
        assert open_descriptors() == descriptors
    finally:
        kept.close()


def test_a_postgres_server_killed_while_idle_is_a_hard_failure_at_the_next_probe_then_recovers(healthy):
    descriptors = open_descriptors()
    kept = postgres.PostgresProbe(pg_check(healthy.dsn(), role="primary"), check_name="killed")
    try:
        assert kept(Deadline(TIMEOUT)).outcome == "pass"
        healthy.primary.kill()
        result = kept(Deadline(TIMEOUT))
        assert result.outcome == "fail" and result.hard, result
        assert result.reason.endswith("failed: Connection refused")
        assert open_descriptors() == descriptors  # the dead connection is closed, nothing else is held
        healthy.primary.start()
        assert kept(Deadline(TIMEOUT)).outcome == "pass"
    finally:
        kept.close()


def test_a_postgres_server_stopped_under_a_kept_connection_times_out_softly_then_recovers(healthy):
    kept = postgres.PostgresProbe(pg_check(healthy.dsn(server="replica"), role="standby"), check_name="stopped")
    try:
        assert kept(Deadline(TIMEOUT)).outcome == "pass"
        healthy.replica.sigstop()
        try:
            run = run_like_the_runner(kept, TIMEOUT)
        finally:
            healthy.replica.sigcont()
        print(f"SIGSTOPped standby, kept connection: probe returned after {run.seconds:.3f} s")
        assert run.ended and run.result is not None
        assert run.result.outcome == "fail" and not run.result.hard
        assert run.result.reason.startswith(f"timeout: no answer from 127.0.0.1:{healthy.replica.port} within 1 s "
                                            "(query)")
        assert run.seconds <= TIMEOUT + MARGIN
        assert not kept.server.has_idle()  # dropped, never reused half-read
        result = kept(Deadline(TIMEOUT))
        assert result.outcome == "pass", result.reason
        assert kept.server.opened == 2
        wait_until(lambda: len(pg_sessions(healthy, "stopped", server="replica")) == 1, 10,
                   message="the abandoned session to end once the server runs again")
    finally:
        kept.close()


def test_a_kept_primary_dsn_connection_reconnects_after_the_primary_restarts(healthy):
    options = pg_check(healthy.dsn(server="replica"), primary_dsn=healthy.dsn(), role="standby")
    kept = postgres.PostgresProbe(options, check_name="lag")
    try:
        first = kept(Deadline(TIMEOUT))
        assert first.outcome == "pass" and first.values["primary_lag_bytes"] is not None, first
        assert len(pg_sessions(healthy, "lag", server="primary")) == 1
        healthy.primary.stop()
        healthy.primary.start()
        healthy.wait_streaming(timeout=30)
        result = kept(Deadline(TIMEOUT))
        assert result.outcome == "pass" and result.values["primary_lag_bytes"] is not None, result
        assert kept.primary is not None and kept.primary.opened == 2
        assert kept.server.opened == 1  # the standby's own connection was not touched
    finally:
        kept.close()


def test_ten_thousand_postgres_probes_with_a_restart_every_thousand_leave_no_descriptor_behind(healthy):
    baseline = open_descriptors()
    kept = postgres.PostgresProbe(pg_check(healthy.dsn(), role="primary"), check_name="many")

    def restart(count: int) -> None:
        if count % 2:
            healthy.primary.kill()  # a crash: crash recovery at the start
        else:
            healthy.primary.stop()
        healthy.primary.start()

    try:
        assert kept(Deadline(TIMEOUT)).outcome == "pass"
        with_connection = open_descriptors()
        problems = probe_many(kept, restart)
        assert problems == []
        assert kept.server.opened == PROBES // RESTART_EVERY
        assert open_descriptors() == with_connection
        assert len(pg_sessions(healthy, "many")) == 1
    finally:
        kept.close()
    assert open_descriptors() == baseline
    wait_until(lambda: not pg_sessions(healthy, "many"), 10, message="the session to end after close()")


def test_stopping_the_runner_closes_its_kept_postgres_connection(healthy):
    baseline = open_descriptors()
    spec = CheckSpec("runner", "postgres", 0.05, TIMEOUT, 3, 2, pg_check(healthy.dsn(), role="primary"))
    results: list[ProbeResult] = []
    runner = CheckRunner(spec, make_probe(spec), lambda name, result: results.append(result))
    runner.start()
    try:
        wait_until(lambda: len(results) >= 5, 15, message="five results")
        assert {result.outcome for result in results} == {"pass"}
        assert len(pg_sessions(healthy, "runner")) == 1
    finally:
        runner.stop()
    assert open_descriptors() == baseline
    wait_until(lambda: not pg_sessions(healthy, "runner"), 10, message="the session to end after stop()")


# ---------------------------------------------------------------------------------------------
# Redis

KEY = "pretix-agent:probe:test:kept"


@pytest.fixture(scope="module")
def redis_master() -> Iterator[redis_fixture.RedisReplicationPair]:
    reason = redis_fixture.redis_unavailable_reason()
    if reason:
        pytest.skip(reason)
    with redis_fixture.RedisReplicationPair(with_replica=False) as pair:
        yield pair


@pytest.fixture
def redis_pair(redis_master):
    """Every test starts (and leaves the master) running."""
    yield redis_master
    redis_master.sigcont()
    if not redis_master.master.running:
        redis_master.master.start()


def redis_probe(url: str, name: str) -> redis_check.RedisProbe:
    options = RedisCheck(url=url, write_probe=True, max_latency=0.25, max_memory_ratio=0.95, max_master_io=30.0,
                         queues=("default",), max_queue_length=1000)
    return redis_check.RedisProbe(options, probe_key=KEY, check_name=name)


def redis_clients(pair, name: str) -> list[dict]:
    with pair.client() as client:
        return [c for c in client.client_list() if c.get("name") == f"pretix-agent:check:{name}"]


def test_a_redis_probe_keeps_one_connection_named_after_its_check(redis_pair):
    kept = redis_probe(redis_pair.url(), "named")
    try:
        for _ in range(3):
            assert kept(Deadline(TIMEOUT)).outcome == "pass"
        assert kept.keeper.opened == 1
        assert len(redis_clients(redis_pair, "named")) == 1
    finally:
        kept.close()
    wait_until(lambda: not redis_clients(redis_pair, "named"), 10, message="the connection to end after close()")


def test_a_redis_server_restarted_between_probes_costs_no_failure(redis_pair):
    kept = redis_probe(redis_pair.url(), "restart")
    try:
        assert kept(Deadline(TIMEOUT)).outcome == "pass"
        descriptors = open_descriptors()
        redis_pair.master.stop()
        redis_pair.master.start()
        result = kept(Deadline(TIMEOUT))
        assert result.outcome == "pass", result.reason
        assert kept.keeper.opened == 2
        assert open_descriptors() == descriptors
    finally:
        kept.close()


def test_a_redis_server_killed_while_idle_is_a_hard_failure_at_the_next_probe_then_recovers(redis_pair):
    descriptors = open_descriptors()
    kept = redis_probe(redis_pair.url(), "killed")
    try:
        assert kept(Deadline(TIMEOUT)).outcome == "pass"
        redis_pair.kill_master()
        result = kept(Deadline(TIMEOUT))
        assert result.outcome == "fail" and result.hard, result
        assert result.reason == f"Error 111 connecting to 127.0.0.1:{redis_pair.master.port}. Connection refused."
        assert open_descriptors() == descriptors
        redis_pair.master.start()
        assert kept(Deadline(TIMEOUT)).outcome == "pass"
    finally:
        kept.close()


def test_a_redis_server_stopped_under_a_kept_connection_times_out_softly_then_recovers(redis_pair):
    kept = redis_probe(redis_pair.url(), "stopped")
    try:
        assert kept(Deadline(TIMEOUT)).outcome == "pass"
        redis_pair.sigstop()
        try:
            run = run_like_the_runner(kept, TIMEOUT)
        finally:
            redis_pair.sigcont()
        print(f"SIGSTOPped Redis, kept connection: probe returned after {run.seconds:.3f} s")
        assert run.ended and run.result is not None
        assert run.result.outcome == "fail" and not run.result.hard
        assert run.result.reason.startswith(f"timeout: no answer from 127.0.0.1:{redis_pair.master.port}/0 within 1 s "
                                            "(PING)")
        assert run.seconds <= TIMEOUT + MARGIN
        assert not kept.keeper.has_idle()
        result = kept(Deadline(TIMEOUT))
        assert result.outcome == "pass", result.reason
        assert kept.keeper.opened == 2
        wait_until(lambda: len(redis_clients(redis_pair, "stopped")) == 1, 10,
                   message="the abandoned connection to end once the server runs again")
    finally:
        kept.close()


def test_ten_thousand_redis_probes_with_a_restart_every_thousand_leave_no_descriptor_behind(redis_pair):
    baseline = open_descriptors()
    kept = redis_probe(redis_pair.url(), "many")

    def restart(count: int) -> None:
        if count % 2:
            redis_pair.kill_master()
        else:
            redis_pair.master.stop()
        redis_pair.master.start()

    try:
        assert kept(Deadline(TIMEOUT)).outcome == "pass"
        with_connection = open_descriptors()
        assert probe_many(kept, restart) == []
        assert kept.keeper.opened == PROBES // RESTART_EVERY
        assert open_descriptors() == with_connection
        assert len(redis_clients(redis_pair, "many")) == 1
    finally:
        kept.close()
    assert open_descriptors() == baseline


# ---------------------------------------------------------------------------------------------
# HTTP


@pytest.fixture
def web() -> Iterator[KeepAliveHttpServer]:
    with KeepAliveHttpServer() as server:
        yield server


def http_probe(url: str) -> http_check.HttpProbe:
    return http_check.HttpProbe(HttpCheck(url=url, host="tickets.example.org", verify_tls=True))


def opened(probe: http_check.HttpProbe) -> int:
    assert probe.keeper is not None
    return probe.keeper.opened


def test_an_http_probe_keeps_its_connection_alive_where_the_server_allows_it(web):
    kept, closing, big = http_probe(web.url()), http_probe(web.url("/close/")), http_probe(web.url("/big/"))
    try:
        for _ in range(3):
            for probe in (kept, closing, big):
                result = probe(Deadline(TIMEOUT))
                assert result.outcome == "pass", result.reason
        assert opened(kept) == 1
        assert opened(closing) == 3  # "Connection: close": a new connection every time, no failure
        assert opened(big) == 3  # the rest of a body longer than the probe reads is never read as an answer
    finally:
        for probe in (kept, closing, big):
            probe.close()


def test_a_kept_http_connection_the_server_closes_at_the_next_request_costs_a_reconnect_not_a_failure(web):
    kept = http_probe(web.url("/once-per-connection/"))
    try:
        results = [kept(Deadline(TIMEOUT)) for _ in range(4)]
        assert [r.outcome for r in results] == ["pass"] * 4, [r.reason for r in results]
        assert opened(kept) == 4  # each kept connection went unanswered and was replaced at once
    finally:
        kept.close()


def test_an_http_server_restarted_between_probes_costs_no_failure(web):
    kept = http_probe(web.url())
    try:
        assert kept(Deadline(TIMEOUT)).outcome == "pass"
        descriptors = open_descriptors()
        web.stop()
        web.start()
        result = kept(Deadline(TIMEOUT))
        assert result.outcome == "pass", result.reason
        assert opened(kept) == 2
        assert open_descriptors() == descriptors
    finally:
        kept.close()


def test_an_http_server_killed_while_idle_is_a_hard_failure_at_the_next_probe_then_recovers(web):
    descriptors = open_descriptors()
    kept = http_probe(web.url())
    try:
        assert kept(Deadline(TIMEOUT)).outcome == "pass"
        web.kill()
        result = kept(Deadline(TIMEOUT))
        assert result.outcome == "fail" and result.hard, result
        assert result.reason == f"connection refused by 127.0.0.1:{web.port}"
        assert open_descriptors() == descriptors
        web.start()
        assert kept(Deadline(TIMEOUT)).outcome == "pass"
    finally:
        kept.close()


def test_an_http_server_stopped_under_a_kept_connection_times_out_softly_then_recovers(web):
    kept = http_probe(web.url())
    try:
        assert kept(Deadline(TIMEOUT)).outcome == "pass"
        web.sigstop()
        try:
            run = run_like_the_runner(kept, TIMEOUT)
        finally:
            web.sigcont()
        print(f"SIGSTOPped HTTP server, kept connection: probe returned after {run.seconds:.3f} s")
        assert run.ended and run.result is not None
        assert run.result.outcome == "fail" and not run.result.hard
        assert run.result.reason == (f"timeout: no answer from 127.0.0.1:{web.port} within 1 s "
                                     "(waiting for the answer)")
        assert run.seconds <= TIMEOUT + MARGIN
        result = kept(Deadline(TIMEOUT))
        assert result.outcome == "pass", result.reason
        assert opened(kept) == 2
    finally:
        kept.close()


def test_ten_thousand_http_probes_with_a_restart_every_thousand_leave_no_descriptor_behind(web):
    baseline = open_descriptors()
    kept = http_probe(web.url())

    def restart(count: int) -> None:
        if count % 2:
            web.kill()
        else:
            web.stop()
        web.start()

    try:
        assert kept(Deadline(TIMEOUT)).outcome == "pass"
        with_connection = open_descriptors()
        assert probe_many(kept, restart) == []
        assert opened(kept) == PROBES // RESTART_EVERY
        assert open_descriptors() == with_connection
    finally:
        kept.close()
    assert open_descriptors() == baseline


# ---------------------------------------------------------------------------------------------
# In the daemon: a reload and a stop close the kept connections (the runner closes its probe)


def test_a_reload_and_a_stop_of_the_daemon_close_the_kept_connections(agent_factory, redis_pair):
    check = f"""
[checks.cache]
type = "redis"
url = "{redis_pair.url()}"
interval = "300ms"
timeout = "200ms"
"""
    agent = agent_factory(check)
    agent.wait_status(lambda d: d["checks"].get("cache", {}).get("state") == "passing")
    assert len(redis_clients(redis_pair, "cache")) == 1
    agent.config.write_text(agent.config.read_text().replace("[checks.cache]", "[checks.sessions]"))
    agent.signal(signal.SIGHUP)
    agent.wait_status(lambda d: d["checks"].get("sessions", {}).get("state") == "passing")
    wait_until(lambda: not redis_clients(redis_pair, "cache"), 10, message="the removed check's connection to close")
    assert len(redis_clients(redis_pair, "sessions")) == 1
    assert agent.stop() == 0
    assert not redis_clients(redis_pair, "sessions")  # closed before the daemon exited
