"""Running a probe the way the check runner does, and measuring how it ended.

`run_like_the_runner` starts the probe in its own thread with a Deadline, waits `timeout`, then
calls `deadline.abort()` (which shuts the probe's sockets down) and waits a short grace. The
result says how long the probe thread took and whether it ended at all: a probe that only returns
because it was aborted still returns, one that hangs past the grace is a bug.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

from pretix_agent.checks.model import Deadline, Probe, ProbeResult

ABORT_GRACE = 0.5  # what the runner gives an aborted probe (pretix_agent.checks.runner.ABORT_GRACE)


@dataclass
class Run:
    result: ProbeResult | None  # None: the probe thread had not returned after the grace
    seconds: float  # from start until the probe thread returned (or gave up waiting)
    aborted: bool  # abort() was called because the probe was still running at its deadline
    thread: threading.Thread

    @property
    def ended(self) -> bool:
        return not self.thread.is_alive()


def run_like_the_runner(probe: Probe, timeout: float, abort_after: float | None = None,
                        grace: float = ABORT_GRACE) -> Run:
    """Run `probe` with a Deadline of `timeout` s; abort it after `abort_after` s (default: at the
    deadline) if it is still running; wait at most `grace` s more."""
    deadline = Deadline(timeout)
    box: list[ProbeResult] = []
    finished = threading.Event()

    def work() -> None:
        try:
            box.append(probe(deadline))
        finally:
            finished.set()

    started = time.monotonic()
    thread = threading.Thread(target=work, name="probe-under-test", daemon=True)
    thread.start()
    aborted = not finished.wait(timeout if abort_after is None else abort_after)
    if aborted:
        deadline.abort()
        finished.wait(grace)
    seconds = time.monotonic() - started
    thread.join(0.01)
    return Run(box[0] if box else None, seconds, aborted, thread)


@contextlib.contextmanager
def garbage_server(payload: bytes) -> Iterator[int]:
    """A TCP server on 127.0.0.1 that answers whatever it is sent with `payload` and hangs up:
    something that is not the server a probe expects. Yields its port."""
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        while True:
            try:
                peer, _ = listener.accept()
            except OSError:
                return  # listener closed
            with peer, contextlib.suppress(OSError):
                peer.settimeout(2)
                peer.recv(4096)
                peer.sendall(payload)
                peer.shutdown(socket.SHUT_WR)
                peer.recv(4096)  # until the client hangs up (or 2 s)

    thread = threading.Thread(target=serve, name="garbage-server", daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        with contextlib.suppress(OSError):
            listener.shutdown(socket.SHUT_RDWR)  # wakes the accept(); close() alone would not
        listener.close()
        thread.join(3)
        assert not thread.is_alive()


GARBAGE = [b"HTTP/1.0 400 Bad Request\r\n\r\n", b"\x00\xff\xfe\x01 binary noise\r\n", b"+OK\r\n", b"*3\r\n:1\r\n"]
