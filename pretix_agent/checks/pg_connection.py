"""One libpq connection driven in non-blocking mode, so that no call outlives its deadline.

Through psycopg's libpq layer (`psycopg.pq`): libpq ignores `connect_timeout` in non-blocking mode,
psycopg 3.1 waits forever without it and rounds it to whole seconds of at least 2, and a query to a
SIGSTOPped server never returns. Here every wait is bounded by the deadline, and the deadline's
abort shuts the socket down (checks/sockets.py, SocketBreaker). Used by the postgres check (kept
between probes by checks/keeper.py), by lock fencing and by the cluster's store. psycopg is
imported only when a connection is made.
"""

from __future__ import annotations

import re
import select
from collections.abc import Callable, Mapping
from typing import Any

from .keeper import ConnectionLost
from .model import Deadline, ProbeResult, ProbeStopped, failed, unknown
from .sockets import SocketBreaker, readable_now
from .text import one_line, scrub


def connection_factory(dsn: str, application_name: str) -> Callable[[], PgConnection]:
    """Parse `dsn` once; return what makes an unconnected PgConnection for it. For a DSN libpq
    cannot parse, every connection attempt fails with the reason (one line, no password)."""
    import psycopg
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    try:
        params: dict[str, Any] = conninfo_to_dict(dsn)
    except psycopg.Error as error:
        # libpq quotes the word or value it choked on, which may be part of a password
        text = re.sub(r'(after|value) "[^"]*"', r'\1 "…"', one_line(str(error)))
        invalid = failed(f"invalid DSN: {text}")

        def refuse() -> PgConnection:
            raise ProbeStopped(invalid)

        return refuse
    secrets = [str(params["password"])] if params.get("password") else []
    params.setdefault("application_name", application_name)
    conninfo = make_conninfo("", **params).encode()
    target = _target(params)
    return lambda: PgConnection(conninfo, target, secrets)


class PgConnection:
    """One libpq connection, driven in non-blocking mode so that no call outlives its deadline.
    Raises ProbeStopped for anything the server (or the network) does wrong; ConnectionLost
    (checks/keeper.py) when the connection broke under a query."""

    def __init__(self, conninfo: bytes, target: str, secrets: list[str]):
        import psycopg
        from psycopg import pq

        self._pq = pq
        self._error_class = psycopg.Error
        self._conninfo = conninfo
        self.target = target
        self._secrets = secrets
        self._pgconn: Any = None
        self._broken = False  # an exchange did not complete: never reuse

    # -- the keeper's protocol

    def establish(self, deadline: Deadline, breaker: SocketBreaker) -> None:
        pq = self._pq
        self._pgconn = pq.PGconn.connect_start(self._conninfo)
        breaker.watch(self.socket)
        # libpq's contract: poll as if PQconnectPoll had just said "writing", wait for what it
        # says next, until OK or FAILED (the socket may change between attempts; ask each time).
        status = pq.PollingStatus.WRITING
        if self._pgconn.status == pq.ConnStatus.BAD:
            status = pq.PollingStatus.FAILED
        while status != pq.PollingStatus.OK:
            if status == pq.PollingStatus.FAILED:
                raise ProbeStopped(self._connect_failure(deadline))
            self._wait(deadline, read=status == pq.PollingStatus.READING, phase="connecting")
            try:
                status = self._pgconn.connect_poll()
            except self._error_class:
                status = pq.PollingStatus.FAILED
        self._pgconn.nonblocking = 1

    def socket(self) -> int | None:
        try:
            return int(self._pgconn.socket)
        except Exception:
            return None

    def stale(self) -> bool:
        return not self.sound() or readable_now(self.socket())

    def sound(self) -> bool:
        pq, pgconn = self._pq, self._pgconn
        return (not self._broken and pgconn is not None and pgconn.status == pq.ConnStatus.OK
                and pgconn.transaction_status == pq.TransactionStatus.IDLE)

    def close(self) -> None:
        if self._pgconn is not None:
            self._pgconn.finish()  # sends Terminate; never blocks on a socket buffer this empty
            self._pgconn = None

    def quiet(self) -> None:
        """Drop the server's notices ("... already exists, skipping") instead of libpq's default of
        printing them on stderr."""
        self._pgconn.notice_handler = lambda _result: None

    def notifications(self, channel: str) -> list[str]:
        """The payloads of the NOTIFYs on `channel` received so far (reading what the socket holds,
        without waiting). Raise ConnectionLost if the connection is gone."""
        try:
            self._pgconn.consume_input()
        except self._error_class:
            text = _clean(one_line(self._scrub(self._pgconn.error_message.decode("utf-8", "replace"))))
            raise ConnectionLost(failed(f"connection lost: {text or 'the server closed it'}",
                                        target=self.target)) from None
        payloads = []
        while (notification := self._pgconn.notifies()) is not None:
            if notification.relname.decode("utf-8", "replace") == channel:
                payloads.append(notification.extra.decode("utf-8", "replace"))
        return payloads

    # -- queries

    @property
    def server_version(self) -> int:
        return int(self._pgconn.server_version)

    def row(self, sql: str, deadline: Deadline) -> tuple[str | None, ...]:
        rows = self.rows(sql, deadline)
        if len(rows) != 1:
            raise ProbeStopped(unknown(f"expected one row, got {len(rows)}: {sql}"))
        return rows[0]

    def rows(self, sql: str, deadline: Deadline, params: tuple[str, ...] = ()) -> list[tuple[str | None, ...]]:
        """Run one query (with text parameters $1, $2, ... if given); return its rows as text (None
        for NULL)."""
        pq, pgconn = self._pq, self._pgconn
        result_rows: list[tuple[str | None, ...]] = []
        error: str | None = None
        self._broken = True  # until every result of this query has been read
        try:
            if params:
                pgconn.send_query_params(sql.encode(), [param.encode() for param in params])
            else:
                pgconn.send_query(sql.encode())
            while pgconn.flush():
                self._wait(deadline, read=False, phase="query")
            while True:
                pgconn.consume_input()
                if pgconn.is_busy():
                    self._wait(deadline, read=True, phase="query")
                    continue
                result = pgconn.get_result()
                if result is None:
                    break
                if result.status == pq.ExecStatus.TUPLES_OK:
                    result_rows = [
                        tuple(None if (v := result.get_value(r, c)) is None else v.decode("utf-8", "replace")
                              for c in range(result.nfields))
                        for r in range(result.ntuples)
                    ]
                elif result.status != pq.ExecStatus.COMMAND_OK:
                    error = error or result.error_message.decode("utf-8", "replace")
        except self._error_class as lost:
            if self._aborted(deadline):
                raise ProbeStopped(self._timeout(deadline, "query")) from None
            text = self._scrub(pgconn.error_message.decode("utf-8", "replace") or str(lost))
            raise ConnectionLost(failed(f"connection lost: {_clean(one_line(text))}", target=self.target)) from None
        if pgconn.status != pq.ConnStatus.OK:
            # The server said why it hangs up ("terminating connection due to administrator command")
            # and did: the connection is lost, not the measurement refused.
            text = self._scrub(error or pgconn.error_message.decode("utf-8", "replace"))
            raise ConnectionLost(failed(f"connection lost: {_clean(one_line(text))}", target=self.target))
        self._broken = False
        if error is not None:
            # A query the server refuses (permission denied, recovery ended between two queries):
            # the server is there, but this probe could not measure it.
            raise ProbeStopped(unknown(f"cannot measure: {_clean(one_line(self._scrub(error)))}",
                                       target=self.target))
        return result_rows

    # -- waiting and failing

    def _wait(self, deadline: Deadline, read: bool, phase: str) -> None:
        """Wait until the socket is readable (or writable); raise ProbeStopped at the deadline."""
        if self._aborted(deadline):
            raise ProbeStopped(self._timeout(deadline, phase))
        try:
            fd = self._pgconn.socket
        except Exception:
            return  # no socket: let libpq report why on the next call
        poller = select.poll()
        poller.register(fd, select.POLLIN if read else select.POLLOUT)
        ready = poller.poll(deadline.remaining() * 1000)
        if not ready or self._aborted(deadline):
            raise ProbeStopped(self._timeout(deadline, phase))

    def _connect_failure(self, deadline: Deadline) -> ProbeResult:
        if self._aborted(deadline):
            return self._timeout(deadline, "connecting")
        message = self._scrub(self._pgconn.error_message.decode("utf-8", "replace"))
        attempts = [line for line in message.splitlines() if line.strip() and not line[0].isspace()]
        # "Connection refused" (TCP) and "No such file or directory" (Unix socket) mean nothing
        # listens there: the server is gone. Everything else (authentication, "starting up", "too
        # many clients", name resolution) is soft.
        gone = bool(attempts) and all(line.rstrip().endswith(("Connection refused", "No such file or directory"))
                                      for line in attempts)
        text = "; ".join(_clean(one_line(line)) for line in attempts) or "connection failed"
        return failed(text, hard=gone, target=self.target)

    @staticmethod
    def _aborted(deadline: Deadline) -> bool:
        return deadline.aborted or deadline.expired()

    def _timeout(self, deadline: Deadline, phase: str) -> ProbeResult:
        self._broken = True
        return failed(f"timeout: no answer from {self.target} within {deadline.timeout:.3g} s ({phase})",
                      target=self.target)

    def _scrub(self, text: str) -> str:
        return scrub(text, self._secrets)


def _target(params: Mapping[str, Any]) -> str:
    host = params.get("host") or params.get("hostaddr") or "local socket"
    return f"{host}:{params.get('port') or 5432}"


def _clean(line: str) -> str:
    # 'failed: FATAL:  password authentication failed' -> 'failed: password authentication failed'
    return re.sub(r"\b(?:FATAL|ERROR|PANIC):\s+", "", line.strip())
