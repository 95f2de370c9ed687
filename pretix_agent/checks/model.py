"""What a probe returns, and how a runner can abort it.

A probe is a function `probe(deadline) -> ProbeResult`. It never raises for anything the checked
system does (refused connections, timeouts, garbage, missing permissions): failures are values.
"Could not measure" is `unknown` with a reason, never a fake zero.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

PASS = "pass"
FAIL = "fail"
UNKNOWN = "unknown"


@dataclass(frozen=True)
class ProbeResult:
    """One probe's outcome: `pass`, `fail` or `unknown`; one line for people; measured values.

    `hard` marks failures that mean the service is gone (connection refused, process or unit
    not running), as opposed to soft ones (timeouts of an overloaded node): haproxy acts on hard
    failures at once and on soft ones only when another server can take the load.
    """

    outcome: str
    reason: str
    values: Mapping[str, Any] = field(default_factory=dict)
    hard: bool = False
    # Monotonic time the result arrived (stamped by the daemon when it is delivered, not by the
    # probe): haproxy's decision waits until every check of a backend has reported since the first
    # one failed, and needs to know when each did.
    at: float | None = None

    def __post_init__(self) -> None:
        if self.outcome not in (PASS, FAIL, UNKNOWN):
            raise ValueError(f"outcome must be pass, fail or unknown, not {self.outcome!r}")


def passed(reason: str, **values: Any) -> ProbeResult:
    return ProbeResult(PASS, reason, values)


def failed(reason: str, hard: bool = False, **values: Any) -> ProbeResult:
    return ProbeResult(FAIL, reason, values, hard)


def unknown(reason: str, **values: Any) -> ProbeResult:
    return ProbeResult(UNKNOWN, reason, values)


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
