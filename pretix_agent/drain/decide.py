"""Why this node is drained, and when logind may go on with a shutdown (pure: no I/O, no clock).

A drain request (the file) drains the node until `pretix-agentctl ready`. A shutdown drains it
from logind's PrepareForShutdown(true) on, for `[agent] shutdown_drain_time`, after which the
delay lock is released and logind goes on; the node stays drained until it is down (or the
shutdown is cancelled: PrepareForShutdown(false)). A shutdown drain is never written to the file,
so a rebooted node does not come back drained.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..events import Event
from ..maintenance.decide import LockInfo

SHUTDOWN_REASON = "system shutdown"


@dataclass(frozen=True)
class Shutdown:
    draining: bool = False
    release_at: float | None = None  # monotonic: when the delay lock is let go (None: not waiting)


@dataclass(frozen=True)
class Observation:
    request: LockInfo  # the drain file
    signals: tuple[bool, ...]  # PrepareForShutdown's argument, each one since the last cycle, oldest first
    shutdown: Shutdown  # as the last cycle left it
    now: float  # monotonic
    drain_time: float


@dataclass(frozen=True)
class Decision:
    shutdown: Shutdown
    reason: str | None  # why the node is drained now, or None
    release: bool  # let logind go on now
    flush: bool  # ask the log shipper to send at once: the logs of a shutdown drain go out within it
    events: tuple[Event, ...]
    sentence: str


def request_reason(request: LockInfo) -> str | None:
    """The words for a drain request: its reason, else who asked, else "requested"; None if none."""
    if not request.present:
        return None
    return request.reason or (f"requested by {request.by}" if request.by else "requested")


def decide(seen: Observation) -> Decision:
    """Given the drain request, logind's signals and the shutdown state, return what to do."""
    shutdown, events, flush, release = seen.shutdown, [], False, False
    for preparing in seen.signals:
        if preparing and not shutdown.draining:
            shutdown, flush = Shutdown(True, seen.now + seen.drain_time), True
            events.append(Event("shutdown_drain.started", "warning", {"seconds": seen.drain_time}))
        elif not preparing and shutdown.draining:
            shutdown = Shutdown()
            events.append(Event("shutdown_drain.cancelled", "info", {
                "detail": "the shutdown was cancelled: this node takes requests"}))
    if shutdown.release_at is not None and seen.now >= shutdown.release_at:
        # Logged before the lock goes, so the journal reads in cause-and-effect order.
        shutdown, release, flush = Shutdown(True, None), True, True
        events.append(Event("shutdown_drain.released", "info", {"detail": "drained; logind may go on with the "
                                                                          "shutdown"}))
    reason = SHUTDOWN_REASON if shutdown.draining else request_reason(seen.request)
    return Decision(shutdown, reason, release, flush, tuple(events), f"draining: {reason}" if reason else "")
