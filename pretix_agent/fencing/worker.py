"""Lock fencing, acted on: a thread that looks at the primary's advisory locks, asks `decide`, and
terminates the hung holders.

It runs beside the main loop because every query may block up to its timeout, and a hung primary
must never delay maintenance mode or the systemd watchdog. It looks every `interval`; when it sees
a holder that others wait for but that has not been idle for `max_hold` yet, it looks again the
moment that holder passes `max_hold`, so a fence comes max_hold (plus one query) after the holder
went quiet, not up to a whole interval later. A primary it cannot reach is a reported failure (the
status, and one event per episode), never an exception out of the thread.

Callbacks: `log_event(Event)` for every event, `report(FencingStatus)` after every round, `beat()`
after every round (the daemon's proof of progress). The shape follows HaproxyController.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable

from ..config import LockFencingSection
from ..events import Event
from ..status import FenceReport
from .decide import after_terminate, decide
from .model import Fence, FencingStatus, Memory, Outcome
from .postgres import Primary, Unreachable

# How much later than the exact max_hold crossing the next look is taken: the database measures
# ages from the statement's start, so a look at exactly the crossing could still see max_hold.
RECHECK_MARGIN = 0.02


class LockFencer:
    def __init__(self, section: LockFencingSection, log_event: Callable[[Event], None],
                 report: Callable[[FencingStatus], None], beat: Callable[[], None],
                 primary: Primary | None = None, wall_clock: Callable[[], float] = time.time):
        self.section = section
        self.log_event = log_event
        self.report = report
        self.beat = beat
        self.primary = primary or Primary(section.dsn, section.timeout)
        self.wall_clock = wall_clock
        self.memory = Memory()
        self.status = FencingStatus(enabled=True, enforce=section.enforce)
        self._unreachable = False
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lock-fencing", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self) -> None:
        """Stop within about one timeout: the query in flight is aborted (its socket shut down)."""
        self._stopped.set()
        self.primary.abort()
        self._thread.join(timeout=self.section.timeout * 2 + 1)
        if not self._thread.is_alive():
            self.primary.close()

    def _run(self) -> None:
        while not self._stopped.is_set():
            wait = self.round()
            self.beat()
            self._stopped.wait(wait)

    def round(self) -> float:
        """Look, decide, act once; report. Return the seconds until the next look."""
        try:
            snapshot = self.primary.observe()
        except Unreachable as error:
            if self._stopped.is_set():
                return 0.0  # stop() aborted the query: not the primary's fault, nothing to report
            self._failed(str(error))
            return self.section.interval
        if self._unreachable:
            self._unreachable = False
            self.log_event(Event("lock_fencing.reachable", "info", {
                "detail": "the primary answers again; lock fencing looks at its locks again"}))
        decision = decide(snapshot, self.section, self.memory)
        self.memory = decision.memory
        for event in decision.events:
            self.log_event(event)
        status = dataclasses.replace(self.status, connected=True, error=None, sentence=decision.sentence,
                                     last_round=self.wall_clock(), rounds=self.status.rounds + 1)
        for fence in decision.first_seen:  # a dry run: reported, not acted on
            status = dataclasses.replace(status, would_fence_total=status.would_fence_total + 1,
                                         last_fence=self._fence_report(fence, "would_terminate"))
        if self.section.enforce:
            for fence in decision.fences:
                if self._stopped.is_set():
                    break
                status = self._terminate(fence, status)
        self.status = status
        self.report(status)
        if decision.recheck_in is None:
            return self.section.interval
        return min(self.section.interval, decision.recheck_in + RECHECK_MARGIN)

    def _terminate(self, fence: Fence, status: FencingStatus) -> FencingStatus:
        outcome = self.primary.terminate(fence)
        self.memory, event = after_terminate(self.memory, fence, outcome, self.section)
        if event is not None:
            self.log_event(event)
        if outcome.kind == "terminated":
            if event is None:
                return status  # signalled again before it had exited: still the one fence
            return dataclasses.replace(status, fences_total=status.fences_total + 1,
                                       last_fence=self._fence_report(fence, "terminated"))
        if outcome.kind == "moved_on":
            return status
        return dataclasses.replace(status, failures_total=status.failures_total + 1,
                                   error=_outcome_text(outcome))

    def _fence_report(self, fence: Fence, outcome: str) -> FenceReport:
        return FenceReport(pid=fence.pid, client_addr=fence.backend.client_addr,
                           application_name=fence.backend.application_name, lock_key=fence.keys[0].describe(),
                           held_for=round(fence.held_for, 3), waiters=len(fence.waiters), outcome=outcome,
                           at=self.wall_clock())

    def _failed(self, error: str) -> None:
        if not self._unreachable:
            self._unreachable = True
            self.log_event(Event("lock_fencing.unreachable", "error", {
                "error": error, "detail": "cannot look at the primary's locks: no session is fenced until it "
                                          "answers again"}))
        self.status = dataclasses.replace(self.status, connected=False, error=error,
                                          sentence=f"primary unreachable: {error}", last_round=self.wall_clock(),
                                          rounds=self.status.rounds + 1)
        self.report(self.status)


def _outcome_text(outcome: Outcome) -> str:
    return f"terminate {outcome.kind}: {outcome.detail}" if outcome.detail else f"terminate {outcome.kind}"
