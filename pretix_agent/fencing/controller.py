"""Lock fencing as the daemon runs it: a worker thread watches the primary; the loop reports it.

Every query has a deadline and runs on the worker's thread, so a hung or unreachable primary never
blocks the loop. Not essential: a failure here is reported and isolated; restarting the daemon
would not make an unreachable primary answer.
"""

from __future__ import annotations

from dataclasses import dataclass

from .. import status
from ..config import Config, LockFencingSection
from ..controller import Change, Controller, Facts, Services, Swap, Worker
from .model import DISABLED
from .worker import LockFencer


@dataclass(frozen=True)
class Said:
    sentence: str


def summary(seen: status.LockFencing) -> Said:
    """Pure: the clause for the daemon's sentence: quiet while all is well, loud while the primary
    cannot be watched."""
    if not seen.enabled:
        return Said("")
    if seen.error:
        return Said(f"lock fencing: primary not watched ({seen.error})")
    return Said("")


class FencingController(Controller[status.LockFencing, Said]):
    name = "lock_fencing"
    section = "lock_fencing"

    def __init__(self, services: Services):
        super().__init__(services)
        self.settings: LockFencingSection | None = None
        self.fencer: LockFencer | None = None
        self.latest: status.LockFencing = DISABLED

    def prepare(self, config: Config) -> Change:
        new = config.lock_fencing
        if new == self.settings:
            return Swap()

        def commit() -> None:
            self._stop_fencer()
            self.settings, self.latest = new, DISABLED
            if new is None:
                return
            worker = Worker("lock-fencing", lambda: True, new.interval + 10 * new.timeout + 5)
            fencer = LockFencer(new, self.services.emit, self._reported, worker.beat)
            worker.alive = fencer.alive
            self.fencer, self.latest = fencer, fencer.status
            self.workers.put(worker)
            fencer.start()

        return Swap(commit)

    def _reported(self, seen: status.LockFencing) -> None:
        """From the worker's thread, after every round."""
        changed = (seen.error, seen.fences_total, seen.would_fence_total) != (
            self.latest.error, self.latest.fences_total, self.latest.would_fence_total)
        self.latest = seen
        if changed:
            self.services.wake("lock_fencing")

    def observe(self, facts: Facts) -> status.LockFencing:
        return self.latest

    def decide(self, observation: status.LockFencing) -> Said:
        return summary(observation)

    def act(self, decision: Said, facts: Facts) -> Facts:
        return facts

    def degraded(self) -> list[str]:
        if self.settings is None or not self.latest.error:
            return []
        return [f"lock fencing cannot watch the primary: {self.latest.error}"]

    def status(self) -> status.LockFencing | None:
        return None if self.settings is None else self.latest

    def _stop_fencer(self) -> None:
        if self.fencer is not None:
            self.fencer.stop()
            self.fencer = None
            self.workers.remove("lock-fencing")

    def stop(self) -> None:
        self._stop_fencer()
