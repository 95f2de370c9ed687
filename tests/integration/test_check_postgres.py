"""The PostgreSQL probe against a real primary and streaming replica (tests/integration/pg_fixture.py).

The probe logs in as the fixture's role `agent`, which is only a member of pg_monitor and needs a
password: what docs/checks.md asks operators to create.
"""

from __future__ import annotations

import dataclasses
import socket
import time
from collections.abc import Iterator
from functools import partial

import pytest

from pretix_agent.checks import postgres
from pretix_agent.checks.model import Deadline
from pretix_agent.config import PostgresCheck, parse_duration, parse_size
from tests.ports import refused_port
from tests.waiting import wait_until

from . import pg_fixture
from .check_helpers import GARBAGE, garbage_server, run_like_the_runner

pytestmark = pytest.mark.integration

_reason = pg_fixture.pg_unavailable_reason()
if _reason:
    pytest.skip(_reason, allow_module_level=True)

TIMEOUT = 1.0
MARGIN = 0.3  # how much later than its timeout a probe may return


@pytest.fixture(scope="module")
def pg() -> Iterator[pg_fixture.PgReplicationCluster]:
    with pg_fixture.PgReplicationCluster() as cluster:
        yield cluster


@pytest.fixture
def healthy(pg):
    """Every test starts (and leaves the cluster) streaming and caught up."""
    pg.wait_streaming(timeout=15)
    pg.wait_caught_up(timeout=15)
    yield pg
    for server in pg.servers:
        server.sigcont()
    if pg.replay_pause_state() != "not paused":
        pg.resume_replay()
    pg.reconnect_replica(timeout=15)


def check(dsn: str, **changes) -> PostgresCheck:
    base = PostgresCheck(dsn=dsn, primary_dsn="", role="any", max_lag_bytes=parse_size("16MiB"),
                         max_lag_seconds=parse_duration("30s"))
    return dataclasses.replace(base, **changes)


def probe(options: PostgresCheck, timeout: float = TIMEOUT):
    return postgres.probe(options, Deadline(timeout))


def replay_age(pg) -> float:
    return float(pg.scalar("SELECT extract(epoch FROM now() - pg_last_xact_replay_timestamp())", server="replica"))


# ---------------------------------------------------------------------------------------------
# roles and lag


def test_primary_passes_as_writable_and_lists_the_streaming_replica(healthy):
    result = probe(check(healthy.dsn(), role="primary"))
    assert result.outcome == "pass", result.reason
    assert result.reason.startswith("primary, writable, 1 standby: replica (streaming")
    (standby,) = result.values["standbys"]
    assert standby["name"] == "replica" and standby["state"] == "streaming"
    assert standby["client_addr"].startswith("127.0.0.1")


def test_caught_up_replica_on_an_idle_primary_stays_passing_with_time_lag_zero(healthy):
    options = check(healthy.dsn(server="replica"), role="standby", max_lag_seconds=parse_duration("2s"))
    watch_until = time.monotonic() + 4.0
    samples = []
    while time.monotonic() < watch_until:
        samples.append(probe(options))
        time.sleep(0.25)  # sampling over a period, not synchronisation
    assert [r.outcome for r in samples] == ["pass"] * len(samples), [r.reason for r in samples if r.outcome != "pass"]
    assert {r.values["lag_seconds"] for r in samples} == {0.0}
    assert {r.values["lag_bytes"] for r in samples} == {0}
    # The naive measure, now() - pg_last_xact_replay_timestamp(), would have failed by now:
    assert replay_age(healthy) > 2.0


def test_paused_replay_under_write_load_fails_with_the_lag_and_passes_again_after_resume(healthy):
    options = check(healthy.dsn(server="replica"), max_lag_bytes=parse_size("1MiB"),
                    max_lag_seconds=parse_duration("2s"))
    healthy.pause_replay(timeout=10)
    healthy.write_load(5000, payload_bytes=200)  # ~1.5 MB of WAL
    result = wait_until(lambda: (r := probe(options)).values.get("lag_bytes", 0) > 1_000_000 and r,
                        timeout=10, message="the replica to receive the write load")
    assert result.outcome == "fail"
    assert result.reason.startswith("replay paused, ")
    assert "behind received WAL (max 1.0 MiB)" in result.reason
    assert result.values["replay_paused"] is True
    assert result.values["lag_seconds"] > 0  # behind: the age of the last replayed commit
    assert result.values["receiver_status"] == "streaming"

    healthy.resume_replay()
    passing = wait_until(lambda: (r := probe(options)).outcome == "pass" and r, timeout=10,
                         message="the probe to pass after resume")
    assert passing.values["lag_bytes"] < parse_size("1MiB")
    assert passing.values["replay_paused"] is False


def test_cut_off_replica_fails_as_not_streaming_although_nothing_is_left_to_replay(healthy):
    options = check(healthy.dsn(server="replica"))
    started = time.monotonic()
    healthy.cut_off_replica(timeout=10)
    result = wait_until(lambda: (r := probe(options)).outcome == "fail" and r, timeout=10,
                        message="the probe to see the replica cut off")
    noticed_after = time.monotonic() - started
    print(f"cut-off replica reported failing {noticed_after:.3f} s after the cut")  # the figure: bench/checks.py
    # Seen through the WAL receiver's state at once, not because its timeout expired meanwhile.
    timeout_ms = healthy.scalar("SELECT setting FROM pg_settings WHERE name = 'wal_receiver_timeout'", server="replica")
    assert noticed_after < int(timeout_ms) / 1000
    assert result.reason.startswith("WAL receiver not streaming")
    assert result.values["lag_bytes"] == 0  # receive == replay: it looks caught up
    assert result.values["receiver_status"] != "streaming"
    assert not result.hard
    healthy.reconnect_replica(timeout=15)
    wait_until(lambda: probe(options).outcome == "pass", timeout=10, message="the probe to pass again")


def test_standby_measured_against_its_primary_and_the_primary_gone_only_leaves_that_lag_unknown(healthy):
    options = check(healthy.dsn(server="replica"), primary_dsn=healthy.dsn())
    result = probe(options)
    assert result.outcome == "pass", result.reason
    assert result.values["primary_lag_bytes"] is not None
    assert result.values["primary_lsn"] is not None

    with refused_port() as port:
        unreachable = dataclasses.replace(options, primary_dsn=f"host=127.0.0.1 port={port} user=agent")
        result = probe(unreachable)
    assert result.outcome == "pass"
    assert result.values["primary_lag_bytes"] is None
    assert "lag to the primary not measured: primary_dsn: connection to server at" in result.reason
    assert "Connection refused" in result.reason


def test_a_hung_primary_costs_the_standby_probe_no_timeout(healthy):
    options = check(healthy.dsn(server="replica"), primary_dsn=healthy.dsn())
    healthy.primary.sigstop()
    try:
        run = run_like_the_runner(partial(postgres.probe, options), TIMEOUT)
    finally:
        healthy.primary.sigcont()
    assert run.ended and not run.aborted  # it returned before its deadline on its own
    assert run.result is not None and run.result.outcome == "pass", run.result
    assert "primary_dsn: timeout" in run.result.reason


def test_expecting_a_primary_but_finding_a_server_in_recovery_fails_as_not_writable(healthy):
    result = probe(check(healthy.dsn(server="replica"), role="primary"))
    assert result.outcome == "fail"
    assert result.reason == "not writable: in recovery (a standby), expected a primary"


def test_expecting_a_standby_but_finding_the_primary_fails(healthy):
    result = probe(check(healthy.dsn(), role="standby"))
    assert result.outcome == "fail"
    assert result.reason == "is a primary (not in recovery), expected a standby"


def test_a_primary_made_read_only_fails_as_not_writable(healthy):
    healthy.execute("ALTER SYSTEM SET default_transaction_read_only = on")
    healthy.execute("SELECT pg_reload_conf()")
    try:
        result = wait_until(lambda: (r := probe(check(healthy.dsn(), role="primary"))).outcome == "fail" and r,
                            timeout=5, message="the reload to take effect")
    finally:
        healthy.execute("ALTER SYSTEM RESET default_transaction_read_only")
        healthy.execute("SELECT pg_reload_conf()")
    assert result.reason.startswith("not writable: transaction_read_only is on")


# ---------------------------------------------------------------------------------------------
# hung servers: the probe returns at its deadline, and an abort frees it at once


def test_sigstopped_standby_fails_as_timeout_within_the_timeout_and_leaves_no_thread(healthy):
    healthy.replica.sigstop()
    try:
        run = run_like_the_runner(partial(postgres.probe, check(healthy.dsn(server="replica"))), TIMEOUT)
    finally:
        healthy.replica.sigcont()
    print(f"SIGSTOPped standby: probe returned after {run.seconds:.3f} s (timeout {TIMEOUT} s)")
    assert run.ended
    assert run.result is not None and run.result.outcome == "fail"
    assert run.result.reason.startswith("timeout: no answer from 127.0.0.1:")
    assert not run.result.hard
    assert TIMEOUT - 0.05 <= run.seconds <= TIMEOUT + MARGIN


def test_abort_frees_a_probe_waiting_on_a_stopped_server_long_before_its_timeout(healthy):
    healthy.replica.sigstop()
    try:
        run = run_like_the_runner(partial(postgres.probe, check(healthy.dsn(server="replica"))),
                                  timeout=30.0, abort_after=0.5)
    finally:
        healthy.replica.sigcont()
    print(f"aborted connect: probe returned {run.seconds - 0.5:.3f} s after the abort")
    assert run.aborted and run.ended
    assert run.seconds < 0.5 + MARGIN
    assert run.result is not None and run.result.reason.startswith("timeout:")


def test_abort_frees_a_query_sent_to_a_server_stopped_after_the_connection_was_made(healthy):
    kept = postgres.PostgresProbe(check(healthy.dsn(server="replica")), check_name="abort")
    try:
        assert kept(Deadline(TIMEOUT)).outcome == "pass"  # the connection is made and kept
        healthy.replica.sigstop()
        try:
            run = run_like_the_runner(kept, timeout=30.0, abort_after=0.5)
        finally:
            healthy.replica.sigcont()
        print(f"aborted query: returned {run.seconds - 0.5:.3f} s after the abort")
        assert run.aborted and run.ended
        assert run.seconds < 0.5 + MARGIN
        assert run.result is not None and run.result.reason.startswith("timeout:")
        assert "(query)" in run.result.reason
        assert not kept.server.has_idle()  # the half-read connection was dropped, not kept
    finally:
        kept.close()


# ---------------------------------------------------------------------------------------------
# bad DSNs: one clear line each, hard where nothing is there, never the password


def test_a_wrong_password_fails_softly_and_never_shows_the_password(healthy):
    result = probe(check(healthy.dsn(password="wrong-Secret-42")))
    assert result.outcome == "fail"
    assert result.reason.endswith('failed: password authentication failed for user "agent"')
    assert not result.hard
    assert "wrong-Secret-42" not in repr(result)
    assert healthy.agent_password not in repr(probe(check(healthy.dsn(dbname="no_such_db"))))


def test_a_refused_port_is_a_hard_failure():
    with refused_port() as port:
        result = probe(check(f"host=127.0.0.1 port={port} user=agent password=Pw-in-dsn"))
    assert result.outcome == "fail" and result.hard
    assert result.reason == f'connection to server at "127.0.0.1", port {port} failed: Connection refused'
    assert "Pw-in-dsn" not in repr(result)


def test_a_missing_socket_file_is_a_hard_failure(tmp_path):
    result = probe(check(f"host={tmp_path} user=agent"))
    assert result.outcome == "fail" and result.hard
    assert result.reason.endswith("failed: No such file or directory")


def test_a_database_that_does_not_exist_fails_softly_with_the_servers_words(healthy):
    result = probe(check(healthy.dsn(dbname="no_such_db")))
    assert result.outcome == "fail" and not result.hard
    assert result.reason.endswith('failed: database "no_such_db" does not exist')


def test_a_port_where_something_listens_but_never_answers_times_out_softly():
    with socket.create_server(("127.0.0.1", 0)) as silent:  # the kernel accepts; nobody speaks
        port = silent.getsockname()[1]
        started = time.monotonic()
        result = probe(check(f"host=127.0.0.1 port={port} user=agent sslmode=disable"))
        seconds = time.monotonic() - started
    assert result.outcome == "fail" and not result.hard
    assert result.reason == f"timeout: no answer from 127.0.0.1:{port} within 1 s (connecting)"
    assert seconds <= TIMEOUT + MARGIN


def test_no_traceback_and_one_line_in_every_reason_above(healthy):
    bad = [check(healthy.dsn(password="x")), check("host=127.0.0.1 port=1 user=agent"), check("host=x garbage"),
           check("postgresql://agent:pw@127.0.0.1:1/postgres")]
    for options in bad:
        reason = probe(options).reason
        assert "\n" not in reason and "Traceback" not in reason, reason


@pytest.mark.parametrize("payload", GARBAGE)
def test_something_else_answering_on_the_port_fails_softly_in_one_line(payload):
    with garbage_server(payload) as port:
        result = probe(check(f"host=127.0.0.1 port={port} user=agent sslmode=disable"))
    assert result.outcome == "fail" and not result.hard
    assert result.reason.startswith(f'connection to server at "127.0.0.1", port {port} failed: ')
    assert result.reason.isprintable()
