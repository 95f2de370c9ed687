"""The cluster's PostgreSQL: one connection kept open (LISTEN), a deadline on every call.

Built on the non-blocking libpq connection of the postgres check (checks/postgres.py,
`PgConnection`): every wait is bounded, whatever the server or the network does. Each call has a
deadline of its own (`timeout`), whose abort shuts the socket, so one connection serves many calls.

A multi-host DSN is tried one host at a time, each with its own deadline, in the order given, and
`target_session_attrs=read-write` is checked by libpq per host: libpq's own walk through the hosts
bounds each attempt by `connect_timeout` only in blocking mode, so in non-blocking mode a powered-off
first host (no answer at all, not even a refusal) would use up the whole deadline, and a failover
to the second host would never be seen.

Only the daemon runs this (ctl never connects): the DSN holds no password; libpq reads it from the
passfile, and no error text carries it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..checks.model import UNKNOWN, Deadline, ProbeStopped
from ..checks.pg_connection import connection_factory
from ..checks.sockets import SocketBreaker
from ..config import ClusterSection
from ..errors import AgentError
from . import schema
from .model import NodeState, Outcome, Request, View


class StoreError(AgentError):
    """A call to the cluster's database failed: one line, no secret. `refused`: the server answered
    and refused the statement (a missing right, say): the connection is fine."""

    def __init__(self, message: str, refused: bool = False):
        super().__init__(message)
        self.refused = refused


class Connection:
    """A PgConnection that stays open: a deadline of its own for every call, LISTEN, and the
    notifications it receives."""

    def __init__(self, dsn: str, deadline: Deadline, new_deadline: Callable[[float], Deadline]):
        self.pg = connection_factory(dsn, "pretix-agent cluster")()
        breaker = SocketBreaker(deadline)
        try:
            self.pg.establish(deadline, breaker)
        except BaseException:
            self.pg.close()
            raise
        finally:
            breaker.release()
        self.pg.quiet()
        self.target = self.pg.target
        self._new_deadline = new_deadline

    def call(self, sql: str, timeout: float) -> list[tuple[str | None, ...]]:
        """Run `sql` (one or more statements); return the rows of the last result that has rows."""
        deadline = self._new_deadline(timeout)
        breaker = SocketBreaker(deadline)
        breaker.watch(self.pg.socket)
        try:
            return self.pg.rows(sql, deadline)
        except ProbeStopped as stop:
            # "unknown" when the server refused the statement, "fail" when the connection failed
            # (lost, timed out).
            refused = stop.result.outcome == UNKNOWN
            reason = stop.result.reason.removeprefix("cannot measure: ")
            raise StoreError(f"refused by the database: {reason}" if refused else reason, refused) from None
        finally:
            breaker.release()

    def fileno(self) -> int:
        socket = self.pg.socket()
        if socket is None:
            raise StoreError("no connection")
        return socket

    def notifications(self) -> list[str]:
        """The payloads of the notifications received so far (reading what the socket holds)."""
        try:
            return self.pg.notifications(schema.CHANNEL)
        except ProbeStopped as lost:
            raise StoreError(lost.result.reason) from None

    def close(self) -> None:
        self.pg.close()


def host_dsns(dsn: str, passfile: Path | None) -> list[tuple[str, str]]:
    """Given a (multi-host) DSN, return one (target, DSN) per host, in order, as libpq would try them."""
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    params: dict[str, Any] = conninfo_to_dict(dsn)
    if passfile is not None:
        params["passfile"] = str(passfile)

    def split(key: str) -> list[str]:
        return str(params[key]).split(",") if params.get(key) not in (None, "") else []

    hosts, addresses, ports = split("host"), split("hostaddr"), split("port")
    count = max(len(hosts), len(addresses), 1)
    out = []
    for index in range(count):
        one = dict(params)
        for key, values in (("host", hosts), ("hostaddr", addresses), ("port", ports)):
            if values:
                one[key] = values[index] if len(values) == count else values[0]
        target = f"{one.get('host') or one.get('hostaddr') or 'local socket'}:{one.get('port') or 5432}"
        out.append((target, make_conninfo("", **one)))
    return out


CALLS_PER_HOST = 4  # connecting, the session's settings (and LISTEN), the clock, the schema


class ClusterStore:
    """The agent's view of the cluster's database. Every method may raise StoreError only."""

    def __init__(self, settings: ClusterSection, wall: Callable[[], float] = time.time):
        self.settings = settings
        self.wall = wall  # the daemon's wall clock, to measure its skew against the server's
        self.connection: Connection | None = None
        self.server: str | None = None
        self.schema_ok = False
        self.clock_offset: float | None = None
        self._deadline: Deadline | None = None
        self._aborted = False

    @property
    def connected(self) -> bool:
        return self.connection is not None

    def connect(self) -> None:
        """Connect to the first host that takes us (a primary, with read-write), LISTEN, measure
        the clock and look for the schema. Raise StoreError naming every host's failure. Takes at
        most CALLS_PER_HOST timeouts per host."""
        self.close()
        failures = []
        timeout = self.settings.timeout
        for target, dsn in host_dsns(self.settings.dsn, self.settings.passfile):
            if self._aborted:
                raise StoreError("stopping")
            deadline = self._new_deadline(timeout)
            try:
                connection = Connection(dsn, deadline, self._new_deadline)
            except ProbeStopped as stop:
                failures.append(stop.result.reason if target in stop.result.reason else f"{target}: "
                                f"{stop.result.reason}")
                continue
            try:
                setup = [f"SET statement_timeout = {int(timeout * 1000)}", "SET client_min_messages = warning"]
                if self.settings.listen:
                    setup.append(schema.listen())
                connection.call(";\n".join(setup), timeout)
                self._measure(connection)
                self.schema_ok = connection.call(schema.schema_present(), timeout) == [("t",)]
            except StoreError as error:
                connection.close()
                failures.append(f"{target}: {error}")
                continue
            self.connection, self.server = connection, connection.target
            return
        raise StoreError("; ".join(failures) + self._passfile_hint(failures))

    def _passfile_hint(self, failures: list[str]) -> str:
        passfile = self.settings.passfile
        if passfile is None or not any("password" in failure for failure in failures):
            return ""
        if not os.access(passfile, os.R_OK):
            return f" (the passfile {passfile} does not exist or this user cannot read it)"
        return ""

    def _measure(self, connection: Connection) -> float:
        """Return the server's clock; remember this host's offset from it (midpoint of the call)."""
        before = self.wall()
        rows = connection.call(schema.server_clock(), self.settings.timeout)
        after = self.wall()
        server = float(rows[0][0] or 0.0)
        self.clock_offset = (before + after) / 2 - server
        return server

    def _call(self, sql: str) -> list[tuple[str | None, ...]]:
        if self.connection is None:
            raise StoreError("not connected")
        try:
            return self.connection.call(sql, self.settings.timeout)
        except StoreError as error:
            if not error.refused:
                self.close()
            raise

    def check_schema(self) -> bool:
        self.schema_ok = self._call(schema.schema_present()) == [("t",)]
        return self.schema_ok

    def sync(self, state: NodeState | None, announce: bool) -> View:
        """Publish this node's row (if `state`), NOTIFY the others (if `announce`), read the view."""
        statements = []
        if state is not None:
            statements.append(schema.heartbeat(self.settings.name, state, self.clock_offset))
        if announce:
            statements.append(schema.notify("node", self.settings.name))
        statements.append(schema.read(self.settings.name))
        before = self.wall()
        rows = self._call(";\n".join(statements))
        after = self.wall()
        try:
            view = schema.view_from_json(rows[0][0] or "")
        except (IndexError, ValueError) as error:
            raise StoreError(f"unexpected answer to the cluster query: {error}") from None
        self.clock_offset = (before + after) / 2 - view.server_now
        return view

    def execute(self, request: Request) -> Outcome:
        """Carry out a ctl request; the outcome says what changed."""
        name, now = self.settings.name, self.wall()
        if request.action == "lock":
            rows = self._call(schema.lock(name, request.id, request.by, request.reason, request.host))
            lock = schema.lock_from_row(rows[0]) if rows else None
            if lock is None:
                raise StoreError("the lock was not recorded (no row came back)")
            if lock.id == request.id:
                return Outcome(request.id, request.action, True, f"cluster locked {lock.describe()}", True, lock, now)
            return Outcome(request.id, request.action, True, f"the cluster is already locked {lock.describe()}; "
                           "nothing changed", False, lock, now)
        if request.action == "unlock":
            rows = self._call(schema.unlock(name, request.by))
            if not rows:
                return Outcome(request.id, request.action, True, "the cluster was not locked; nothing changed",
                               done_at=now)
            ended = schema.lock_from_row(rows[0])
            was = f" (was locked {ended.describe()})" if ended is not None else ""
            return Outcome(request.id, request.action, True, f"cluster unlocked{was}", True, ended, now)
        if request.action == "forget":
            assert request.node is not None
            rows = self._call(schema.forget(name, request.node))
            if not rows:
                return Outcome(request.id, request.action, True, f"no node {request.node} in cluster {name}; "
                               "nothing changed", done_at=now)
            return Outcome(request.id, request.action, True, f"forgot node {request.node} (it reappears "
                           "if its agent still runs)", True, done_at=now)
        self._call(schema.SCHEMA)
        self.schema_ok = True
        return Outcome(request.id, request.action, True, f"the agent's schema is ready on {self.server}", True,
                       done_at=now)

    def notifications(self) -> list[str]:
        if self.connection is None:
            return []
        try:
            return self.connection.notifications()
        except StoreError:
            self.close()
            raise

    def fileno(self) -> int | None:
        if self.connection is None:
            return None
        try:
            return self.connection.fileno()
        except Exception:  # libpq has no socket (connection gone): poll nothing, the next call says why
            return None

    def _new_deadline(self, seconds: float) -> Deadline:
        """A deadline for the next call, aborted at once if the store is stopping."""
        deadline = Deadline(seconds)
        self._deadline = deadline
        if self._aborted:
            deadline.abort()
        return deadline

    def abort(self) -> None:
        """From another thread: break the call in progress (its socket is shut down), try no other host."""
        self._aborted = True
        if self._deadline is not None:
            self._deadline.abort()

    def close(self) -> None:
        if self.connection is not None:
            self.connection.close()
            self.connection, self.server = None, None
