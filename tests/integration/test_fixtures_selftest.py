"""Self-test of the real PostgreSQL and Redis fixtures (pg_fixture.py, redis_fixture.py)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import psycopg
import pytest
import redis

from . import pg_fixture, redis_fixture

pytestmark = pytest.mark.integration

_pg_reason = pg_fixture.pg_unavailable_reason()
_redis_reason = redis_fixture.redis_unavailable_reason()
needs_pg = pytest.mark.skipif(_pg_reason is not None, reason=_pg_reason or "")
needs_redis = pytest.mark.skipif(_redis_reason is not None, reason=_redis_reason or "")


def process_states(pids: Iterable[int]) -> dict[int, str]:
    """pid -> state letter (R, S, T = stopped, ...); processes that are gone are left out."""
    return {pid: state for pid in pids if (state := pg_fixture.process_state(pid)) is not None}


# --------------------------------------------------------------------------------------------- PostgreSQL


@pytest.fixture(scope="module")
def pg() -> Iterator[pg_fixture.PgReplicationCluster]:
    if _pg_reason:
        pytest.skip(_pg_reason)
    with pg_fixture.PgReplicationCluster() as cluster:
        yield cluster


@needs_pg
def test_primary_and_replica_start_and_the_replica_streams(pg):
    # How long that takes is a benchmark figure (bench/fixtures.py), not a test's business.
    print("PostgreSQL startup timings (s):", {k: round(v, 3) for k, v in pg.timings.items()})
    assert pg.wal_receiver_status() == "streaming"
    assert pg.scalar("SELECT pg_is_in_recovery()", server="replica") is True
    assert pg.scalar("SELECT pg_is_in_recovery()") is False
    assert pg.scalar("SELECT state FROM pg_stat_replication WHERE application_name = 'replica'") == "streaming"


@needs_pg
def test_a_row_written_on_the_primary_becomes_visible_on_the_replica(pg):
    row_id = pg.write_load(10)
    pg.wait_replica_has_row(row_id, timeout=10)
    assert pg.replica_has_row(row_id)


@needs_pg
def test_the_agent_role_logs_in_with_its_password_has_only_pg_monitor_and_a_wrong_password_is_refused(pg):
    with psycopg.connect(pg.dsn()) as conn:
        user, is_super, monitor = conn.execute(
            "SELECT current_user, rolsuper, pg_has_role(current_user, 'pg_monitor', 'member')"
            " FROM pg_roles WHERE rolname = current_user"
        ).fetchone()
        assert (user, is_super, monitor) == ("agent", False, True)
        # pg_monitor is enough to see the replication positions on the primary ...
        sent_lsn = conn.execute("SELECT sent_lsn FROM pg_stat_replication").fetchone()[0]
        assert sent_lsn is not None
    # ... and the WAL receiver on the replica
    with psycopg.connect(pg.dsn(server="replica")) as conn:
        assert conn.execute("SELECT status FROM pg_stat_wal_receiver").fetchone()[0] == "streaming"
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(pg.dsn(password="wrong-password"))
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(pg.dsn(server="replica", password="wrong-password"))


@needs_pg
def test_paused_replay_keeps_the_replay_lsn_still_while_the_receive_lsn_advances_under_write_load(pg):
    pg.wait_caught_up(timeout=10)
    pg.pause_replay(timeout=10)
    try:
        before = pg.replica_lsns()
        pg.write_load(5000, payload_bytes=200)  # ~1.5 MB of WAL
        pg_fixture.wait_until(
            lambda: pg.lsn_diff(pg.replica_lsns()["receive"], before["receive"]) > 1_000_000,
            timeout=10,
            what="the replica to receive the write load",
        )
        after = pg.replica_lsns()
        assert after["replay"] == before["replay"]
        assert pg.lsn_diff(after["receive"], after["replay"]) > 1_000_000
        assert pg.wal_receiver_status() == "streaming"
    finally:
        pg.resume_replay()
    pg.wait_caught_up(timeout=10)
    assert pg.replay_pause_state() == "not paused"
    lsns = pg.replica_lsns()
    assert pg.lsn_diff(lsns["replay"], after["receive"]) >= 0


@needs_pg
def test_cut_off_replica_stops_streaming_at_once_and_reconnect_replica_restores_it(pg):
    try:
        noticed_after = pg.cut_off_replica(timeout=10)
        print(f"cut_off_replica noticed after {noticed_after:.3f}s")  # the figure: bench/fixtures.py
        # What matters: noticed by the changed conninfo, not by the walreceiver's timeout expiring.
        assert noticed_after < wal_receiver_timeout(pg)
        assert pg.wal_receiver_status() != "streaming"
        pg_fixture.wait_until(
            lambda: not pg.execute("SELECT 1 FROM pg_stat_replication"),
            timeout=10,
            what="the primary to lose its walsender",
        )
        assert pg.scalar("SELECT pg_is_in_recovery()", server="replica") is True  # still answers
    finally:
        pg.reconnect_replica(timeout=15)
    assert pg.wal_receiver_status() == "streaming"
    pg.wait_caught_up(timeout=10)


@needs_pg
def test_a_sigstopped_replica_does_not_answer_until_sigcont(pg):
    pids = pg.replica.pids()
    assert len(pids) > 3  # postmaster, startup, walreceiver, checkpointer, ...
    pg.replica.sigstop()
    try:
        # A backend that exited between listing and stopping stays a zombie (Z): its parent, the
        # postmaster, is stopped and cannot reap it. Every process still running must be stopped.
        assert set(process_states(pids).values()) - {"Z"} == {"T"}
        t = time.monotonic()
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(pg.dsn(server="replica", connect_timeout=2))
        assert time.monotonic() - t >= 1.5  # it hung until connect_timeout, it was not refused
    finally:
        pg.replica.sigcont()
    assert "T" not in process_states(pids).values()
    with psycopg.connect(pg.dsn(server="replica")) as conn:
        assert conn.execute("SELECT 1").fetchone()[0] == 1
    pg.wait_streaming(timeout=15)
    pg.wait_caught_up(timeout=15)


def wal_receiver_timeout(pg) -> float:
    return int(pg.scalar("SELECT setting FROM pg_settings WHERE name = 'wal_receiver_timeout'",
                         server="replica")) / 1000


@needs_pg
def test_a_sigstopped_primary_is_noticed_by_the_replica_after_wal_receiver_timeout(pg):
    timeout_s = wal_receiver_timeout(pg)
    pg.primary.sigstop()
    try:
        assert set(process_states(pg.primary.pids()).values()) == {"T"}
        noticed_after = pg.wait_not_streaming(timeout=timeout_s + 10)
        print(f"SIGSTOPped primary noticed after {noticed_after:.2f}s (wal_receiver_timeout={timeout_s}s)")
        assert timeout_s - 1 <= noticed_after <= timeout_s + 3
    finally:
        pg.primary.sigcont()
    pg.wait_streaming(timeout=15)
    pg.wait_caught_up(timeout=10)


@needs_pg
def test_killing_the_primary_ends_streaming_at_once_and_a_restarted_primary_is_streamed_from_again():
    cluster = pg_fixture.PgReplicationCluster().start()
    try:
        pids = pg_fixture.track(cluster.all_known_pids())
        primary_pids = pg_fixture.track(cluster.primary.pids())
        base_dir = cluster.base_dir
        port = cluster.primary.port
        cluster.primary.kill()
        assert not pg_fixture.any_alive(primary_pids)
        assert cluster.wait_not_streaming(timeout=5) < 2
        assert cluster.scalar("SELECT pg_is_in_recovery()", server="replica") is True  # still answers
        cluster.primary.start()  # crash recovery, same port
        assert cluster.primary.port == port
        cluster.wait_streaming(timeout=15)
        cluster.wait_caught_up(timeout=10)
        pids |= pg_fixture.track(cluster.all_known_pids())
    finally:
        cluster.close()
    assert not pg_fixture.any_alive(pids)
    assert not base_dir.exists()
    cluster.close()  # idempotent


@needs_pg
def test_close_stops_sigstopped_servers_too():
    cluster = pg_fixture.PgReplicationCluster().start()
    try:
        pids = pg_fixture.track(cluster.all_known_pids())
        cluster.primary.sigstop()
        assert cluster.replica is not None
        cluster.replica.sigstop()
        assert set(process_states(pid for pid, _ in pids).values()) == {"T"}
    finally:
        t = time.monotonic()
        cluster.close()
    assert time.monotonic() - t < 10
    assert not pg_fixture.any_alive(pids)


# -------------------------------------------------------------------------------------------------- Redis


@pytest.fixture(scope="module")
def rp() -> Iterator[redis_fixture.RedisReplicationPair]:
    if _redis_reason:
        pytest.skip(_redis_reason)
    with redis_fixture.RedisReplicationPair() as pair:
        yield pair


@needs_redis
def test_redis_master_and_replica_start_and_a_key_set_on_the_master_becomes_visible_on_the_replica(rp):
    print("Redis startup timings (s):", {k: round(v, 3) for k, v in rp.timings.items()})  # bench/fixtures.py
    assert rp.master_link_status() == "up"
    assert rp.url() == f"redis://127.0.0.1:{rp.master.port}/0"
    with redis.Redis.from_url(rp.url()) as master:
        master.set("selftest:key", "hello")
    rp.wait_replicated("selftest:key", "hello", timeout=5)
    with redis.Redis.from_url(rp.replica_url()) as replica:
        assert replica.get("selftest:key") == b"hello"
    with redis.Redis.from_url(rp.master.unix_url()) as via_socket:
        assert via_socket.ping()


@needs_redis
def test_the_replica_is_a_read_only_endpoint_so_a_write_probe_fails(rp):
    with redis.Redis.from_url(rp.readonly_url(), socket_timeout=2) as replica:
        assert replica.get("anything") is None  # reads work
        with pytest.raises(redis.exceptions.ReadOnlyError):
            replica.set("selftest:probe", "x")


@needs_redis
def test_with_maxmemory_set_fill_makes_writes_fail_with_oom(rp):
    try:
        rp.set_maxmemory(rp.used_memory() + 2_000_000)
        with pytest.raises(redis.exceptions.ResponseError, match=r"^OOM"):
            rp.fill(8_000_000)
        with rp.client() as c, pytest.raises(redis.exceptions.ResponseError, match=r"^OOM"):
            c.set("selftest:probe", "x")
        assert rp.fill(8_000_000, stop_on_oom=True) < 8_000_000
    finally:
        rp.set_maxmemory(0)
        rp.clear_fill()
    with rp.client() as c:
        assert c.set("selftest:probe", "x")


@needs_redis
def test_fake_celery_messages_are_kombu_shaped_counted_by_llen_and_the_oldest_is_at_the_tail(rp):
    pushed = rp.push_celery_messages("mail", 3, args=("order-1",), kwargs={"to": "a@example.org"})
    rp.push_celery_messages("checkout", 2)
    with rp.client() as c:
        assert c.llen("mail") == 3
        assert c.llen("checkout") == 2
        oldest = json.loads(c.lindex("mail", -1))
        newest = json.loads(c.lindex("mail", 0))
        c.delete("mail", "checkout")
    assert oldest == pushed[0]
    assert newest == pushed[-1]
    assert oldest["headers"]["eta"] is None
    assert oldest["headers"]["expires"] is None
    assert oldest["headers"]["id"] == oldest["properties"]["correlation_id"]
    assert oldest["properties"]["delivery_tag"]
    assert oldest["properties"]["delivery_info"] == {"exchange": "", "routing_key": "mail"}
    assert oldest["content-type"] == "application/json"
    args, kwargs, embed = redis_fixture.decode_celery_body(oldest)
    assert (args, kwargs) == (["order-1"], {"to": "a@example.org"})
    assert set(embed) == {"callbacks", "errbacks", "chain", "chord"}
    assert redis_fixture.celery_queue_key("mail", 5) == "mail:4"  # pretix: sep ":", steps 0, 4, 8
    assert redis_fixture.celery_queue_key("mail", 5, redis_fixture.KOMBU_SEP, redis_fixture.KOMBU_PRIORITY_STEPS) \
        == "mail\x06\x163"


@needs_redis
def test_a_sigstopped_redis_master_times_out_clients_and_the_replica_notices_after_repl_timeout(rp):
    repl_timeout = int(rp.client().config_get("repl-timeout")["repl-timeout"])
    rp.sigstop("master")
    try:
        assert process_states([rp.master.pid]) == {rp.master.pid: "T"}
        with rp.client(timeout=0.5) as c, pytest.raises(redis.exceptions.TimeoutError):
            c.ping()
        noticed_after = rp.wait_link("down", timeout=repl_timeout + 10)
        print(f"SIGSTOPped Redis master noticed after {noticed_after:.2f}s (repl-timeout={repl_timeout}s)")
        assert repl_timeout - 1 <= noticed_after <= repl_timeout + 3
    finally:
        rp.sigcont("master")
    with rp.client() as c:
        assert c.ping()
    rp.wait_link("up", timeout=10)


@needs_redis
def test_kill_master_takes_the_replica_link_down_a_restarted_master_brings_it_up_and_close_leaves_nothing():
    pair = redis_fixture.RedisReplicationPair().start()
    try:
        pids = redis_fixture.track(pair.pids())
        base_dir = pair.base_dir
        master_pid = pair.master.pid
        pair.kill_master()
        assert not redis_fixture.pid_alive(master_pid)
        assert pair.wait_link("down", timeout=5) < 2
        pair.master.start()  # same port: the replica reconnects by itself
        pair.wait_link("up", timeout=10)
        pids |= redis_fixture.track(pair.pids())
        pair.sigstop("replica")  # close() must cope with a stopped server
    finally:
        pair.close()
    assert not redis_fixture.any_alive(pids)
    assert not base_dir.exists()
    pair.close()  # idempotent


def test_the_postgresql_binaries_are_the_newest_installed_unless_the_environment_names_others(tmp_path):
    from .pg_fixture import installed_pg_bindir

    assert installed_pg_bindir(None, tmp_path) == tmp_path / "15" / "bin"  # none: Debian 12's, named in the skip
    for version in ("15", "17", "9", "common"):
        (tmp_path / version / "bin").mkdir(parents=True)
        (tmp_path / version / "bin" / "initdb").touch()
    (tmp_path / "18" / "bin").mkdir(parents=True)  # a client-only package: no initdb
    assert installed_pg_bindir(None, tmp_path) == tmp_path / "17" / "bin"
    assert installed_pg_bindir("/opt/pg/bin", tmp_path) == Path("/opt/pg/bin")
