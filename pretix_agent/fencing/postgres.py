"""The primary, as lock fencing sees it: one look at its advisory locks, and a guarded terminate.

One connection is kept open between rounds (a new one every round would cost an authentication
every second and show up in the primary's log); it is dropped after any failure and opened again
at the next round. Every query, and connecting, has its own deadline of `timeout`: the connection is
the postgres check's non-blocking `PgConnection`, its socket shut when a deadline aborts, so a hung
or black-holed primary costs one timeout per round, never a stall. psycopg is imported only when a
connection is opened.

The role needs `pg_read_all_stats` (to see other roles' session states) and `pg_signal_backend`
(to terminate them); pg_locks and pg_blocking_pids() are open to every role.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from ..checks.model import UNKNOWN, Deadline, ProbeStopped, failed
from ..checks.pg_connection import PgConnection, connection_factory
from ..checks.sockets import SocketBreaker
from .model import AdvisoryLock, Backend, Fence, LockKey, Outcome, Snapshot

# One statement, so the locks and the sessions are read as close together as the server allows.
# Ages are measured against now(), the statement's start, which is taken before pg_stat_activity's
# snapshot: an age can only come out a little short, never long, so a session is never fenced early.
# pg_blocking_pids() takes the lock manager's locks, so it runs only for rows that wait.
SNAPSHOT_SQL = """
SELECT l.pid, l.database, l.classid, l.objid, l.objsubid, l.mode, l.granted,
       CASE WHEN l.granted THEN NULL ELSE array_to_string(pg_blocking_pids(l.pid), ',') END,
       a.pid, a.state, extract(epoch FROM now() - a.state_change)::float8, a.state_change::text,
       extract(epoch FROM now() - a.xact_start)::float8, a.backend_type, a.datname, a.usename,
       a.application_name, host(a.client_addr), a.client_port
  FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid
 WHERE l.locktype = 'advisory'
"""

# Terminate only if the session is still in the very idle episode that was seen: same pid, same
# state_change, still idle in transaction. A worker that woke up between the look and now, committed
# and started a new request on the same connection is left alone.
TERMINATE_SQL = """
SELECT pg_terminate_backend(pid)
  FROM pg_stat_activity
 WHERE pid = $1::int AND state_change = $2::timestamptz
   AND state IN ('idle in transaction', 'idle in transaction (aborted)')
"""


class Unreachable(Exception):
    """The primary could not be looked at; the message says why (no password in it)."""


class Primary:
    """The connection to the primary, kept between rounds; used from the worker thread only,
    except `abort()`, which any thread may call to end a blocked query at once."""

    def __init__(self, dsn: str, timeout: float, connect: Callable[[], PgConnection] | None = None):
        self.dsn = dsn
        self.timeout = timeout
        self._connect = connect
        self._session: PgConnection | None = None
        self._own_pid = 0
        self._lock = threading.Lock()
        self._deadline: Deadline | None = None
        self._aborted = False

    @property
    def connected(self) -> bool:
        return self._session is not None

    def abort(self) -> None:
        """From any thread: end the query in flight (its socket is shut down) and any later one."""
        with self._lock:
            self._aborted = True
            deadline = self._deadline
        if deadline is not None:
            deadline.abort()

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None

    def observe(self) -> Snapshot:
        """One look at the advisory locks and their sessions. Raise Unreachable if it fails."""
        for attempt in (1, 2):
            reused = self._session is not None
            deadline = self._new_deadline()
            try:
                rows = self._query(SNAPSHOT_SQL, deadline)
            except ProbeStopped as stop:
                self.close()
                # A kept connection the server closed meanwhile (a restart, idle_session_timeout)
                # fails at once: try a new one before calling the primary unreachable. A timeout is
                # not retried: the round would take twice as long for the same answer.
                if attempt == 1 and reused and not deadline.expired() and not deadline.aborted:
                    continue
                raise Unreachable(stop.result.reason) from None
            return parse_snapshot(self._own_pid, rows)
        raise AssertionError("unreachable")

    def terminate(self, fence: Fence) -> Outcome:
        """pg_terminate_backend(fence.pid), guarded by the episode, within its own deadline."""
        if fence.backend.state_change is None:
            return Outcome("refused", "the session's state_change is unknown")
        try:
            rows = self._query(TERMINATE_SQL, self._new_deadline(), (str(fence.pid), fence.backend.state_change))
        except ProbeStopped as stop:
            if stop.result.outcome == UNKNOWN:
                # The server answered with an error (a superuser's session, a missing privilege): the
                # connection is fine. PgConnection words it as a measurement; say it as the server did.
                return Outcome("refused", stop.result.reason.removeprefix("cannot measure: "))
            self.close()
            return Outcome("failed", stop.result.reason)
        if not rows:
            return Outcome("moved_on")
        if rows[0][0] == "t":
            return Outcome("terminated")
        return Outcome("refused", "pg_terminate_backend returned false (no such backend any more)")

    def _new_deadline(self) -> Deadline:
        deadline = Deadline(self.timeout)
        with self._lock:
            self._deadline = deadline
            aborted = self._aborted
        if aborted:
            deadline.abort()
        return deadline

    def _query(self, sql: str, deadline: Deadline, params: tuple[str, ...] = ()) -> list[tuple[str | None, ...]]:
        """Run one query on the kept connection (opened first if there is none) within a deadline."""
        connection, deadline = self._connected(deadline)
        breaker = SocketBreaker(deadline)  # a deadline that aborts shuts the socket: nothing blocks on
        breaker.watch(connection.socket)
        try:
            return connection.rows(sql, deadline, params)
        finally:
            breaker.release()

    def _connected(self, deadline: Deadline) -> tuple[PgConnection, Deadline]:
        """The kept connection and the deadline its next query has (a whole new one after connecting)."""
        if deadline.aborted:
            raise ProbeStopped(failed("stopping"))
        if self._session is not None and self._session.stale():
            self.close()  # the server closed it while it was idle (a restart): open a new one
        if self._session is None:
            try:
                connection = (self._connect or connection_factory(self.dsn, "pretix-agent lock fencing"))()
            except ImportError:
                raise ProbeStopped(failed("lock fencing needs psycopg 3: apt install python3-psycopg")) from None
            breaker = SocketBreaker(deadline)
            try:
                connection.establish(deadline, breaker)
                (own_pid,) = connection.row("SELECT pg_backend_pid()", deadline)
            except BaseException:
                connection.close()
                raise
            finally:
                breaker.release()
            self._session, self._own_pid = connection, int(own_pid or 0)
            deadline = self._new_deadline()
        return self._session, deadline


def parse_snapshot(own_pid: int, rows: list[tuple[str | None, ...]]) -> Snapshot:
    """Given SNAPSHOT_SQL's rows (text, None for NULL), return the Snapshot they describe."""
    backends: dict[int, Backend] = {}
    locks = []
    for (pid, database, classid, objid, objsubid, mode, granted, blocked_by, activity_pid, state, state_age,
         state_change, xact_age, backend_type, datname, usename, application_name, client_addr, client_port) in rows:
        if pid is None:
            continue  # a prepared transaction holds it: no session to terminate
        number = int(pid)
        key = LockKey(int(database or 0), int(classid or 0), int(objid or 0), int(objsubid or 0))
        blockers = tuple(int(p) for p in blocked_by.split(",") if p) if blocked_by else ()
        locks.append(AdvisoryLock(number, key, mode or "", granted == "t", blockers))
        # No pg_stat_activity row at all (its pid is visible to every role, unlike the rest): the
        # session ended between the two views. Nobody to terminate.
        if number not in backends and activity_pid is not None:
            backends[number] = Backend(
                pid=number, state=state, state_age=_float(state_age), xact_age=_float(xact_age),
                state_change=state_change, backend_type=backend_type, database=datname, user=usename,
                application_name=application_name or "", client_addr=client_addr,
                client_port=None if client_port is None else int(client_port))
    return Snapshot(own_pid, backends, tuple(locks))


def _float(text: str | None) -> float | None:
    return None if text is None else float(text)
