"""What a probe returns, and how a runner can abort it.

A probe is a callable `probe(deadline) -> ProbeResult`. It never raises for anything the checked
system does (refused connections, timeouts, garbage, missing permissions): failures are values.
"Could not measure" is `unknown` with a reason, never a fake zero. A probe that keeps a connection
between probes (checks/keeper.py) also has `close()` (`ConnectedProbe`); its runner owns it and
closes it when the check stops, and a plain function, which keeps nothing, needs none.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Protocol

# The model itself lives in check_results.py; these names are re-exported for the probes.
from ..check_results import FAIL, PASS, UNKNOWN, ProbeResult, failed, passed, unknown

__all__ = ["FAIL", "PASS", "UNKNOWN", "Deadline", "Probe", "ProbeResult", "ProbeStopped", "failed", "passed",
           "unknown"]


class ProbeStopped(Exception):
    """Ends a probe early with its result (a failure or unknown) already decided."""

    def __init__(self, result: ProbeResult):
        super().__init__(result.reason)
        self.result = result


class Deadline:
    """The time a probe may take, and the hooks that abort its blocking calls when it is up.

    A probe passes `remaining()` as the timeout of every blocking call, and registers with
    `on_abort` how to break the call that could still hang (shutting down its socket, say): a
    SIGSTOPped server accepts TCP connections and then answers nothing, and not every library
    turns that into a timeout. The runner calls `abort()` when the deadline has passed.
    """

    def __init__(self, timeout: float, clock: Callable[[], float] = time.monotonic):
        self.timeout = timeout
        self._clock = clock
        self.expires_at = clock() + timeout
        self._closers: list[Callable[[], None]] = []
        self._lock = threading.Lock()
        self.aborted = False

    def remaining(self, floor: float = 0.001) -> float:
        """Seconds left (at least `floor`, so it can be passed as a timeout)."""
        return max(floor, self.expires_at - self._clock())

    def expired(self) -> bool:
        return self._clock() >= self.expires_at

    def on_abort(self, closer: Callable[[], None]) -> None:
        with self._lock:
            if not self.aborted:
                self._closers.append(closer)
                return
        closer()

    def abort(self) -> None:
        with self._lock:
            self.aborted = True
            closers, self._closers = self._closers, []
        for closer in closers:
            try:
                closer()
            except Exception:  # an abort hook must never take the runner down
                pass


Probe = Callable[[Deadline], ProbeResult]


class ConnectedProbe(Protocol):
    """A probe that owns a connection kept between probes: called like any probe (never two calls
    at once), closed once when its check stops. `close()` may come from another thread while a
    call still runs (a probe hung past its abort): the connection is then closed when that call
    returns, and no later call opens a new one."""

    def __call__(self, deadline: Deadline) -> ProbeResult: ...

    def close(self) -> None: ...


def close_probe(probe: Probe) -> None:
    """Close `probe`'s connection if it keeps one; a plain function keeps none."""
    close = getattr(probe, "close", None)
    if callable(close):
        close()
