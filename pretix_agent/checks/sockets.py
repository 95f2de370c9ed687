"""Breaking a probe's blocking socket call from another thread when its deadline is up.

A SIGSTOPped server accepts TCP connections (the kernel completes the handshake) and then answers
nothing; some library calls wait for that answer with no timeout of their own. Shutting the socket
down (not closing it: the descriptor stays valid, so it cannot be reused under the probe's feet)
makes the blocked call return at once with an error the probe then reports as a timeout.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from collections.abc import Callable

from .model import Deadline

# What a breaker shuts down: a socket object or a raw descriptor (libpq's), or None (not yet open).
SocketSource = Callable[[], "socket.socket | int | None"]


class SocketBreaker:
    """Shuts down the socket `source()` returns when `deadline` aborts, until `release()`.

    Usage: `watch(source)` before the first blocking call, `release()` before the connection is
    closed. Both take the same lock as the abort hook, so an abort that comes after `release()`
    touches nothing: a closed descriptor's number may already belong to another thread's socket.
    An abort before `watch()` is remembered and applied by `watch()`.
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

    def release(self) -> None:
        with self._lock:
            self._released = True
            self._source = None

    def _abort(self) -> None:
        with self._lock:
            self._aborted = True
            if self._source is not None and not self._released:
                _shutdown(self._source)


def _shutdown(source: SocketSource) -> None:
    with contextlib.suppress(Exception):  # gone, not a socket, not connected: nothing left to break
        target = source()
        if isinstance(target, socket.socket):
            target.shutdown(socket.SHUT_RDWR)
        elif isinstance(target, int) and target >= 0:
            # Wrap a duplicate, so closing the wrapper leaves the owner's descriptor open.
            with socket.socket(fileno=os.dup(target)) as duplicate:
                duplicate.shutdown(socket.SHUT_RDWR)
