"""The daemon's one event queue: anything may post, the main loop wakes at once.

A deque plus a self-pipe rather than queue.Queue: signal handlers post too, and a handler that
takes Queue's lock while the interrupted main thread holds it would deadlock. deque.append and
os.write are safe in a handler; the pipe's read end is what the loop waits on.
"""

from __future__ import annotations

import os
import select
from collections import deque


class Wakeup:
    def __init__(self) -> None:
        self._read, self._write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._pending: deque[str] = deque()

    def post(self, reason: str) -> None:
        """Queue `reason` and wake the loop. Safe from any thread and from signal handlers."""
        self._pending.append(reason)
        try:
            os.write(self._write, b"\0")
        except BlockingIOError:
            pass  # the pipe is full of wake-ups already; the loop will see the deque

    def wait(self, timeout: float | None, extra: tuple[int, ...] = ()) -> tuple[list[str], list[int]]:
        """Wait up to `timeout` seconds for a post or for one of `extra` fds to become readable.

        Return the posted reasons (oldest first) and the ready `extra` fds.
        """
        if timeout is not None:
            timeout = max(0.0, timeout)
        if self._pending:
            timeout = 0.0
        try:
            ready, _, _ = select.select([self._read, *extra], [], [], timeout)
        except InterruptedError:  # pragma: no cover - PEP 475 retries; kept for clarity
            ready = []
        if self._read in ready:
            try:
                while os.read(self._read, 4096):
                    pass
            except BlockingIOError:
                pass
        reasons = []
        while self._pending:
            reasons.append(self._pending.popleft())
        return reasons, [fd for fd in ready if fd != self._read]

    def close(self) -> None:
        os.close(self._read)
        os.close(self._write)
