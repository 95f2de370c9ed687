"""One connection per check, kept between probes: reused while sound, dropped when not.

A probe that opens a new connection every time pays for the TCP handshake, TLS, authentication
and the server's session start-up on every probe: most of a probe's CPU, on both sides. The
tools that watch PostgreSQL continuously (Patroni, pglookout) keep their connection open; so do
the probes here, through a `ConnectionKeeper`. It owns the rules that make reuse safe, so that a
kept connection changes what a probe costs and nothing of what it reports:

- A connection is kept only after an exchange that completed: a probe that timed out, was
  aborted (its socket shut down by the runner), lost its connection or hit a bug leaves its
  connection closed, never half-read for the next probe.
- A kept connection that the server closed while it was idle (restart, idle timeout, end of a
  keep-alive) is seen before use (it is readable although nothing was asked) and replaced in the
  same probe. One that breaks at its first request (the server closed it just then) is replaced
  once, within the same deadline. So a server that restarted between two probes costs no failure,
  and one that is gone is reported as with a new connection: refused at the reconnect is a hard
  failure, a timeout a soft one.
- `close()` is final: the idle connection is closed at once, one in use when its probe returns,
  and no probe after it connects again. The runner closes its probe when the check stops, which
  is what happens to every check on a reload and at shutdown.

The protocol details (what is "sound", what counts as lost) stay with each connection class
(checks/postgres.py, checks/redis.py, checks/http.py); this module has none and is tested with
hand-written fakes (tests/unit/test_check_keeper.py).
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from typing import Generic, Protocol, TypeVar

from .model import Deadline, ProbeStopped, unknown
from .sockets import SocketBreaker


class Connection(Protocol):
    """What the keeper needs of a connection. Making one does no I/O; `establish` does."""

    def establish(self, deadline: Deadline, breaker: SocketBreaker) -> None:
        """Connect and authenticate within `deadline`; `breaker.watch` the socket as soon as it
        exists. Raise ProbeStopped with the probe's result if that fails."""

    def socket(self) -> socket.socket | int | None:
        """What an abort shuts down while a probe uses the connection."""

    def stale(self) -> bool:
        """True if this idle connection must not carry another request (closed by the server,
        readable unasked). Never blocks."""

    def sound(self) -> bool:
        """True if the last exchange completed and left the connection ready for the next one."""

    def close(self) -> None:
        """Close it; idempotent; never blocks."""


class ConnectionLost(ProbeStopped):
    """The connection broke under a request (reset, closed by the server) rather than timing out.

    Raised by a probe's work: on a kept connection the keeper then retries once on a new one; on a
    new connection, `result` (what a probe without a kept connection would report) is the result.
    """


C = TypeVar("C", bound=Connection)
T = TypeVar("T")


class ConnectionKeeper(Generic[C]):
    """Keeps one connection between probes (see the module docstring). `new()` makes an unconnected
    connection (no I/O; it may raise ProbeStopped, e.g. for an invalid DSN). With `keep=False`
    every probe gets a new connection, closed after it: the cost of probing without a keeper, for
    the benchmark's baseline and for one-off probes."""

    def __init__(self, new: Callable[[], C], keep: bool = True):
        self._new = new
        self.keep = keep
        self._lock = threading.Lock()
        self._idle: C | None = None
        self._closed = False
        self.opened = 0  # connections made (the tests and the benchmark count reconnects with it)

    def run(self, deadline: Deadline, work: Callable[[C, Deadline], T]) -> T:
        """Return `work(connection, deadline)` on the kept connection, or on a new one if there is
        none or it went stale. Raise ProbeStopped with the probe's result if connecting or the work
        fails (after one more try on a new connection if the kept one was lost at once)."""
        connection = self._take()
        if connection is not None and connection.stale():
            connection.close()  # never watched by a breaker while idle: nothing can shut it down now
            connection = None
        if connection is None:
            return self._attempt(deadline, work, None)
        try:
            return self._attempt(deadline, work, connection)
        except ConnectionLost:
            if deadline.aborted or deadline.expired():
                raise
        return self._attempt(deadline, work, None)

    def close(self) -> None:
        """Close the idle connection now, the one in use when its probe ends; connect no more."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, None
        if idle is not None:
            idle.close()

    @property
    def closed(self) -> bool:
        return self._closed

    def has_idle(self) -> bool:
        """True if a connection is kept for the next probe."""
        return self._idle is not None

    def _take(self) -> C | None:
        with self._lock:
            if self._closed:
                raise ProbeStopped(unknown("the check was stopped"))
            idle, self._idle = self._idle, None
        return idle

    def _attempt(self, deadline: Deadline, work: Callable[[C, Deadline], T], connection: C | None) -> T:
        breaker = SocketBreaker(deadline)
        if connection is None:
            connection = self._new()
            self.opened += 1
            try:
                connection.establish(deadline, breaker)
            except BaseException:
                self._finish(connection, breaker, keep=False)
                raise
        else:
            breaker.watch(connection.socket)
        try:
            result = work(connection, deadline)
        except ConnectionLost:
            self._finish(connection, breaker, keep=False)
            raise
        except ProbeStopped:
            # The server answered, but not what the probe needs (a permission refused, say): the
            # connection decides whether the exchange completed.
            self._finish(connection, breaker, keep=True)
            raise
        except BaseException:
            self._finish(connection, breaker, keep=False)
            raise
        self._finish(connection, breaker, keep=True)
        return result

    def _finish(self, connection: C, breaker: SocketBreaker, keep: bool) -> None:
        # Release first: from then on an abort cannot shut this socket down, so what is checked
        # next stays true for the connection that is kept.
        aborted = breaker.release()
        keep = keep and self.keep and not aborted and connection.sound()
        if keep:
            with self._lock:
                if not self._closed:
                    self._idle = connection
                    return
        connection.close()
