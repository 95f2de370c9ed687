"""Breaking a probe's blocking socket call from another thread when its deadline is up.

A SIGSTOPped server accepts TCP connections (the kernel completes the handshake) and then answers
nothing; some library calls wait for that answer with no timeout of their own. Shutting the socket
down (not closing it: the descriptor stays valid, so it cannot be reused under the probe's feet)
makes the blocked call return at once with an error the probe then reports as a timeout.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import ssl
import threading
from collections.abc import Callable

from .model import Deadline

# What a breaker shuts down: a socket object or a raw descriptor (libpq's), or None (not yet open).
SocketSource = Callable[[], "socket.socket | int | None"]


class SocketBreaker:
    """Shuts down the socket `source()` returns when `deadline` aborts, until `release()`.

    Usage: `watch(source)` before the first blocking call, `release()` before the connection is
    closed or kept for the next probe. Both take the same lock as the abort hook, so an abort that
    comes after `release()` touches nothing: a closed descriptor's number may already belong to
    another thread's socket, and a kept connection must not be shut down under the next probe.
    An abort before `watch()` is remembered and applied by `watch()`; `release()` says whether one
    came, since a socket that was shut down is of no use any more, whatever the probe saw.
    """

    def __init__(self, deadline: Deadline):
        self._lock = threading.Lock()
        self._source: SocketSource | None = None
        self._aborted = False
        self._released = False
        deadline.on_abort(self._abort)

    def watch(self, source: SocketSource) -> None:
        with self._lock:
            if self._released:
                return
            self._source = source
            if self._aborted:
                _shutdown(source)

    def release(self) -> bool:
        """Stop watching; return True if the deadline aborted before (the socket may be shut down)."""
        with self._lock:
            self._released = True
            self._source = None
            return self._aborted

    def _abort(self) -> None:
        with self._lock:
            self._aborted = True
            if self._source is not None and not self._released:
                _shutdown(self._source)


def readable_now(target: socket.socket | int | None) -> bool:
    """True if `target` has something to read right now, or is gone: an idle connection that is
    readable was closed by its server (end of stream, reset) or holds bytes nobody asked for, and
    either way must not carry the next request. Never blocks."""
    if target is None:
        return True
    if isinstance(target, ssl.SSLSocket) and target.pending():
        return True
    try:
        descriptor = target if isinstance(target, int) else target.fileno()
        if descriptor < 0:
            return True
        poller = select.poll()
        poller.register(descriptor, select.POLLIN)
        return bool(poller.poll(0))  # POLLIN, or POLLHUP/POLLERR, which poll reports unasked
    except (OSError, ValueError):
        return True


def _shutdown(source: SocketSource) -> None:
    with contextlib.suppress(Exception):  # gone, not a socket, not connected: nothing left to break
        target = source()
        if isinstance(target, socket.socket):
            target.shutdown(socket.SHUT_RDWR)
        elif isinstance(target, int) and target >= 0:
            # Wrap a duplicate, so closing the wrapper leaves the owner's descriptor open.
            with socket.socket(fileno=os.dup(target)) as duplicate:
                duplicate.shutdown(socket.SHUT_RDWR)
