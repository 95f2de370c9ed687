"""Lock fencing against a real PostgreSQL (tests/integration/pg_fixture.py) and pretix-like clients
in their own processes (tests/integration/lock_clients.py).

The agent's role is made as docs/lock_fencing.md tells operators to: pg_signal_backend and
pg_read_all_stats, nothing else. pretix's sessions use a plain role, `pretix`, in its own database.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Iterator

import pytest
from psycopg import sql

from pretix_agent.config import LockFencingSection
from pretix_agent.events import Event
from pretix_agent.fencing.model import FencingStatus
from pretix_agent.fencing.worker import LockFencer
from tests.waiting import wait_until

from . import pg_fixture
from .lock_clients import APPLICATION_NAME, LockClient

pytestmark = pytest.mark.integration

_reason = pg_fixture.pg_unavailable_reason()
if _reason:
    pytest.skip(_reason, allow_module_level=True)

FENCING_ROLE, FENCING_PASSWORD = "pretix_agent_fencing", "fencing-test-password"
BLIND_ROLE = "fencing_without_stats"  # pg_signal_backend only: cannot see other roles' session states
KEY = (17 << 16) | 2  # pretix's key for quota 17 (lock index 0)

ROWS = "seats"


@pytest.fixture(scope="module")
def pg() -> Iterator[pg_fixture.PgReplicationCluster]:
    with pg_fixture.PgReplicationCluster(with_replica=False) as cluster:
        primary = cluster.primary
        primary.execute("CREATE ROLE pretix LOGIN")
        primary.execute("CREATE DATABASE pretix OWNER pretix")
        # docs/lock_fencing.md, "The database role", word for word but the password:
        primary.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
            sql.Identifier(FENCING_ROLE), sql.Literal(FENCING_PASSWORD)))
        primary.execute(f"GRANT pg_signal_backend, pg_read_all_stats TO {FENCING_ROLE}")
        primary.execute(f"CREATE ROLE {BLIND_ROLE} LOGIN IN ROLE pg_signal_backend")
        pretix_owner = primary.superuser_dsn(dbname="pretix")
        import psycopg
        with psycopg.connect(pretix_owner, autocommit=True) as conn:
            conn.execute(f"CREATE TABLE {ROWS} (id int PRIMARY KEY)")
            conn.execute(f"INSERT INTO {ROWS} VALUES (1), (2)")
            conn.execute(f"ALTER TABLE {ROWS} OWNER TO pretix")
        yield cluster


def pretix_dsn(pg) -> str:
    return pg.primary.tcp_dsn("pretix", dbname="pretix")


def agent_dsn(pg, role: str = FENCING_ROLE) -> str:
    return pg.primary.tcp_dsn(role, FENCING_PASSWORD if role == FENCING_ROLE else None)


def section(pg, **changes) -> LockFencingSection:
    base = LockFencingSection(dsn=agent_dsn(pg), max_hold=2.0, interval=1.0, timeout=0.5, enforce=True,
                              databases=("pretix",), users=("pretix",))
    return dataclasses.replace(base, **changes)


class Watched:
    """A LockFencer in this process, with what it said."""

    def __init__(self, options: LockFencingSection):
        self.events: list[Event] = []
        self.statuses: list[FencingStatus] = []
        self.beats = 0
        self._lock = threading.Lock()
        self.fencer = LockFencer(options, self._event, self._report, self._beat)

    def _event(self, event: Event) -> None:
        with self._lock:
            self.events.append(event)

    def _report(self, status: FencingStatus) -> None:
        with self._lock:
            self.statuses.append(status)

    def _beat(self) -> None:
        self.beats += 1

    def named(self, name: str) -> list[Event]:
        with self._lock:
            return [event for event in self.events if event.name == name]

    @property
    def status(self) -> FencingStatus:
        with self._lock:
            return self.statuses[-1]

    def wait_round_after(self, moment: float, timeout: float = 15.0) -> FencingStatus:
        """Wait for a round that began after wall-clock `moment`; return its status."""
        return wait_until(lambda: self.statuses and (self.status.last_round or 0) > moment and self.status,
                          timeout=timeout, message=lambda: f"a round after {moment}: {self.statuses[-1:]}")


@pytest.fixture
def watched() -> Iterator[list[Watched]]:
    started: list[Watched] = []
    yield started
    for one in started:
        one.fencer.stop()
        assert not one.fencer.alive()


def start(watched: list[Watched], options: LockFencingSection) -> Watched:
    one = Watched(options)
    watched.append(one)
    one.fencer.start()
    wait_until(lambda: one.statuses, timeout=15, message="the first round")
    return one


@pytest.fixture
def clients(pg) -> Iterator[list[LockClient]]:
    started: list[LockClient] = []
    yield started
    for client in started:
        client.close()
    # A backend outlives its killed client while it runs a statement (pg_sleep) or until it notices
    # the closed socket: end them all, so no lock leaks into the next test.
    def gone() -> bool:
        pg.primary.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
                           [APPLICATION_NAME])
        return not pg.primary.scalar("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
                                     [APPLICATION_NAME])
    wait_until(gone, timeout=10, message="the test clients' sessions to end")


def client(clients: list[LockClient], mode: str, dsn: str, *args: str) -> LockClient:
    one = LockClient(mode, dsn, *args)
    clients.append(one)
    return one


def backend_alive(pg, pid: int) -> bool:
    return bool(pg.primary.scalar("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", [pid]))


def waiting_on_lock(pg, pid: int) -> bool:
    return bool(pg.primary.scalar("SELECT count(*) FROM pg_locks WHERE pid = %s AND NOT granted", [pid]))


def hold(pg, clients, *args: str) -> tuple[LockClient, int]:
    holder = client(clients, "hold", pretix_dsn(pg), *args)
    (pid,) = holder.expect("ready")
    return holder, int(pid)


def wait_for(pg, clients, *args: str) -> tuple[LockClient, int]:
    waiter = client(clients, "wait", pretix_dsn(pg), *args)
    (pid,) = waiter.expect("waiting")
    wait_until(lambda: waiting_on_lock(pg, int(pid)), timeout=10, message="the waiter to wait for the lock")
    return waiter, int(pid)


# ---------------------------------------------------------------------------------------------
# What is fenced.


def test_a_stopped_client_holding_an_advisory_lock_is_terminated_and_the_waiter_gets_it_within_max_hold_and_an_interval(
        pg, clients, watched):
    options = section(pg)  # the defaults: max_hold 2 s, interval 1 s
    fencing = start(watched, options)
    holder, holder_pid = hold(pg, clients, "--advisory", str(KEY), "--shared", str((3 << 16) | 1))
    holder.sigstop()  # a hung gunicorn worker, inside its order transaction
    waiter = client(clients, "wait", pretix_dsn(pg), "--advisory", str(KEY), "--retry-for", "20")
    waiter.expect("waiting")
    outcome, seconds, attempts = waiter.line(timeout=30).split()
    assert outcome == "acquired"
    assert float(seconds) <= options.max_hold + options.interval + 1.0, (seconds, attempts, fencing.events)

    # The waiter can get the lock before the worker, back from pg_terminate_backend, has said so.
    (event,) = wait_until(lambda: fencing.named("lock_fencing.terminated"), timeout=10, message="the event")
    assert event.level == "warning"
    fields = event.fields
    assert fields["pid"] == holder_pid and fields["client_addr"] == "127.0.0.1" and fields["user"] == "pretix"
    assert fields["lock_key"] == str(KEY) and fields["pretix_object"] == "quota 17"
    assert (fields["classid"], fields["objid"], fields["objsubid"]) == (0, KEY, 1)
    assert fields["waiters"] == 1 and fields["held_for"] > options.max_hold
    assert fields["application_name"] == APPLICATION_NAME
    assert not backend_alive(pg, holder_pid)
    status = wait_until(lambda: fencing.status.fences_total and fencing.status, timeout=10, message="the status")
    assert status.connected and status.fences_total == 1 and status.would_fence_total == 0
    assert status.last_fence is not None and status.last_fence.pid == holder_pid
    assert holder.stopped  # the client itself was never touched: only its database session


def test_a_dry_run_terminates_nothing_and_reports_the_session_once(pg, clients, watched):
    options = section(pg, enforce=False, max_hold=1.0, interval=0.5, timeout=0.4)
    fencing = start(watched, options)
    holder, holder_pid = hold(pg, clients, "--advisory", str(KEY))
    holder.sigstop()
    wait_for(pg, clients, "--advisory", str(KEY), "--retry-for", "30")
    (event,) = wait_until(lambda: fencing.named("lock_fencing.would_terminate"), timeout=15,
                          message="the dry run's finding")
    assert event.fields["pid"] == holder_pid and event.fields["waiters"] == 1
    reported = fencing.status.rounds
    fencing.wait_round_after(time.time() + 2 * options.interval)
    assert fencing.status.rounds > reported + 1
    assert len(fencing.named("lock_fencing.would_terminate")) == 1  # once per episode, not per round
    assert fencing.named("lock_fencing.terminated") == []
    assert backend_alive(pg, holder_pid)
    assert fencing.status.would_fence_total == 1 and fencing.status.fences_total == 0
    assert fencing.status.sentence.startswith(f"would terminate (dry run) pid {holder_pid}")


# ---------------------------------------------------------------------------------------------
# What is never fenced. Each waits until the fencer has looked well after the holder would have
# passed max_hold, then checks that the holder's session is still there.

LEFT_ALONE = dict(max_hold=1.0, interval=0.5, timeout=0.4)


def looked_long_enough(fencing: Watched, since: float, options: LockFencingSection) -> FencingStatus:
    return fencing.wait_round_after(since + options.max_hold + 2 * options.interval)


def test_a_statement_running_while_it_holds_an_advisory_lock_is_left_alone(pg, clients, watched):
    options = section(pg, **LEFT_ALONE)
    fencing = start(watched, options)
    _, holder_pid = hold(pg, clients, "--advisory", str(KEY), "--then", "active:60")
    wait_for(pg, clients, "--advisory", str(KEY), "--retry-for", "30")
    since = time.time()
    status = looked_long_enough(fencing, since, options)
    assert backend_alive(pg, holder_pid)
    assert fencing.events == []
    assert f"pid {holder_pid} is running a statement, left alone" in status.sentence


def test_a_session_idle_in_transaction_holding_only_a_row_lock_is_left_alone(pg, clients, watched):
    options = section(pg, **LEFT_ALONE)
    fencing = start(watched, options)
    holder, holder_pid = hold(pg, clients, "--row", f"{ROWS}:1")
    holder.sigstop()
    wait_for(pg, clients, "--row", f"{ROWS}:1", "--retry-for", "30")
    since = time.time()
    status = looked_long_enough(fencing, since, options)
    assert backend_alive(pg, holder_pid)
    assert fencing.events == []
    assert status.sentence == "nothing to fence: no advisory lock held"


def test_a_session_holding_an_advisory_lock_nobody_waits_for_is_left_alone(pg, clients, watched):
    options = section(pg, **LEFT_ALONE)
    fencing = start(watched, options)
    holder, holder_pid = hold(pg, clients, "--advisory", str(KEY))
    holder.sigstop()
    since = time.time()
    status = looked_long_enough(fencing, since, options)
    assert backend_alive(pg, holder_pid)
    assert fencing.events == []
    assert status.sentence == "nothing to fence: 1 advisory lock held, none waited for"


def test_a_holder_of_a_role_not_listed_in_users_is_left_alone(pg, clients, watched):
    options = section(pg, users=("someone_else",), **LEFT_ALONE)
    fencing = start(watched, options)
    holder, holder_pid = hold(pg, clients, "--advisory", str(KEY))
    holder.sigstop()
    wait_for(pg, clients, "--advisory", str(KEY), "--retry-for", "30")
    status = looked_long_enough(fencing, time.time(), options)
    assert backend_alive(pg, holder_pid)
    assert fencing.events == []
    assert f"pid {holder_pid} is role pretix, not watched" in status.sentence


def test_without_pg_read_all_stats_a_holder_is_never_fenced_and_the_missing_grant_is_said(pg, clients, watched):
    options = section(pg, dsn=agent_dsn(pg, BLIND_ROLE), **LEFT_ALONE)
    fencing = start(watched, options)
    holder, holder_pid = hold(pg, clients, "--advisory", str(KEY))
    holder.sigstop()
    wait_for(pg, clients, "--advisory", str(KEY), "--retry-for", "30")
    status = looked_long_enough(fencing, time.time(), options)
    assert backend_alive(pg, holder_pid)
    (event,) = fencing.named("lock_fencing.state_hidden")
    assert event.fields["pid"] == holder_pid and "pg_read_all_stats" in event.fields["detail"]
    assert [e.name for e in fencing.events] == ["lock_fencing.state_hidden"]
    assert "the role needs pg_read_all_stats" in status.sentence


def test_a_superusers_session_cannot_be_terminated_and_the_refusal_is_one_error_event(pg, clients, watched):
    options = section(pg, users=(), databases=(), **LEFT_ALONE)
    fencing = start(watched, options)
    holder = client(clients, "hold", pg.primary.superuser_dsn(), "--advisory", str(KEY))
    holder_pid = int(holder.expect("ready")[0])
    holder.sigstop()
    waiter = client(clients, "wait", pg.primary.superuser_dsn(), "--advisory", str(KEY), "--retry-for", "30")
    waiter.expect("waiting")
    (event,) = wait_until(lambda: fencing.named("lock_fencing.terminate_failed"), timeout=15,
                          message="the refused terminate")
    assert event.fields["pid"] == holder_pid and event.fields["outcome"] == "refused"
    assert "superuser" in event.fields["error"]
    looked_long_enough(fencing, time.time(), options)
    assert len(fencing.named("lock_fencing.terminate_failed")) == 1
    assert fencing.status.failures_total >= 2  # retried every round, said once
    assert backend_alive(pg, holder_pid)


# ---------------------------------------------------------------------------------------------
# A primary that is gone or hangs.


def test_a_stopped_primary_is_reported_once_the_worker_stays_alive_and_recovers_when_it_returns(pg, watched):
    options = section(pg, **LEFT_ALONE)
    fencing = start(watched, options)
    assert fencing.status.connected
    pg.primary.stop()
    try:
        wait_until(lambda: not fencing.status.connected, timeout=15, message="the worker to notice")
        beats = fencing.beats
        wait_until(lambda: fencing.beats >= beats + 3, timeout=15, message="rounds to go on")
        assert fencing.fencer.alive()
        (event,) = fencing.named("lock_fencing.unreachable")
        assert event.level == "error" and event.fields["error"] == fencing.status.error
        assert fencing.status.sentence.startswith("primary unreachable: ")
    finally:
        pg.primary.start()
    wait_until(lambda: fencing.status.connected, timeout=15, message="the worker to reconnect")
    assert [e.name for e in fencing.events] == ["lock_fencing.unreachable", "lock_fencing.reachable"]


def test_a_hung_primary_costs_one_timeout_per_round_and_stop_still_returns(pg, watched):
    options = section(pg, **LEFT_ALONE)
    fencing = start(watched, options)
    pg.primary.sigstop()
    try:
        wait_until(lambda: not fencing.status.connected, timeout=15, message="the worker to notice the hang")
        assert "timeout: no answer from 127.0.0.1" in (fencing.status.error or "")
        beats = fencing.beats
        wait_until(lambda: fencing.beats >= beats + 3, timeout=15, message="rounds to go on while it hangs")
        fencing.fencer.stop()
        assert not fencing.fencer.alive()
    finally:
        pg.primary.sigcont()
    assert len(fencing.named("lock_fencing.unreachable")) == 1


def test_a_wrong_password_is_an_unreachable_primary_whose_error_never_shows_the_password(pg, watched):
    secret = "wrong-secret-4711"
    fencing = start(watched, section(pg, dsn=pg.dsn(password=secret), **LEFT_ALONE))
    (event,) = wait_until(lambda: fencing.named("lock_fencing.unreachable"), timeout=15, message="the failure")
    assert "password authentication failed" in event.fields["error"]
    assert not fencing.status.connected and fencing.status.error == event.fields["error"]
    assert secret not in repr(fencing.events) and secret not in repr(fencing.statuses)


# ---------------------------------------------------------------------------------------------
# In the daemon.


def test_the_daemon_fences_a_stopped_holder_and_says_so_in_status_with_the_secret_in_a_passfile(
        pg, clients, tmp_path):
    from .agent_fixture import Agent, ctl, write_config

    passfile = tmp_path / "pgpass"
    passfile.write_text(f"127.0.0.1:{pg.primary.port}:*:{FENCING_ROLE}:{FENCING_PASSWORD}\n")
    passfile.chmod(0o600)
    dsn = pg.primary.tcp_dsn(FENCING_ROLE)  # no password: libpq reads the passfile
    config = write_config(tmp_path, f'[lock_fencing]\ndsn = "{dsn}"\ndatabases = ["pretix"]\nusers = ["pretix"]\n')
    agent = Agent(tmp_path, config, env={"PGPASSFILE": str(passfile)})
    try:
        agent.wait_ready()
        agent.wait_status(lambda d: (d.get("lock_fencing") or {}).get("connected") is True, timeout=15)
        holder, holder_pid = hold(pg, clients, "--advisory", str(KEY))
        holder.sigstop()
        waiter = client(clients, "wait", pretix_dsn(pg), "--advisory", str(KEY), "--retry-for", "20")
        waiter.expect("waiting")
        assert waiter.line(timeout=30).split()[0] == "acquired"
        document = agent.wait_status(lambda d: d["lock_fencing"]["fences_total"] == 1, timeout=15)
        assert document["lock_fencing"]["last_fence"]["pid"] == holder_pid
        assert "lock_fencing.terminated" in agent.log()
        shown = ctl(config, "status")
        assert "lock fencing: enforcing, watching the primary, 1 fenced" in shown.stdout, shown.stdout
        assert FENCING_PASSWORD not in agent.log() + shown.stdout
    finally:
        agent.stop()
