"""Maintenance mode as the daemon runs it: the files observed, decided on, and kept right.

Woken by inotify on the files' directory (milliseconds after a lock or a hand edit), by a
wall-clock timer at the next window edge (which also fires when the clock is set), and by the
daemon's backstop. Essential: if its cycle fails, systemd's watchdog is withheld, because a daemon
that can no longer keep nginx's marker right is worth restarting.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from .. import status
from ..adapters.clock import WallTimer
from ..checks.health import FAILING, UNKNOWN, CheckState
from ..config import Config, MaintenanceSection
from ..controller import Change, Controller, Facts, MaintenanceFact, Services, Swap
from ..errors import AgentError, ConfigError, ConfigProblem
from ..events import Event
from ..schedule import Schedule
from . import files
from .decide import Decision, LockInfo, Observation, State
from .decide import decide as decide_maintenance

if TYPE_CHECKING:
    from ..adapters.inotify import FileWatcher


@dataclass(frozen=True)
class Observed:
    schedule: Schedule
    files: Observation
    previous: State | None
    watch_problems: tuple[str, ...]


@dataclass(frozen=True)
class Step:
    decision: Decision
    lock: LockInfo
    rewatch: bool  # the inotify watch is gone (directory removed or replaced): set it up again

    @property
    def sentence(self) -> str:
        return self.decision.sentence


def on_failing(seen: Observation, names: tuple[str, ...], checks: Mapping[str, CheckState]) -> Observation:
    """The observation with what the `on_failing` checks say (the checks controller ran before)."""
    if not names:
        return seen
    states = {name: checks.get(name, CheckState()).state for name in names}
    return dataclasses.replace(seen, failing_checks=tuple(n for n in names if states[n] == FAILING),
                               undecided_checks=tuple(n for n in names if states[n] == UNKNOWN))


def plan(observed: Observed) -> Step:
    """Pure: what the files and the windows call for, and whether the watch must be set up again."""
    decision = decide_maintenance(observed.schedule, observed.files, observed.previous)
    return Step(decision, observed.files.lock, rewatch=bool(observed.watch_problems))


class MaintenanceController(Controller[Observed, Step]):
    name = "maintenance"
    section = "maintenance"
    essential = True

    def __init__(self, services: Services, clock_offset: float = 0.0):
        super().__init__(services)
        self.clock_offset = clock_offset  # test hook: the daemon's idea of "now" is shifted by this
        self.settings: MaintenanceSection | None = None
        self.node = ""
        self.schedule: Schedule | None = None
        self.watcher: FileWatcher | None = None
        self.watch_problems: tuple[str, ...] = ()
        self.watch_lost = False  # said so in the log (once per episode)
        self.previous: State | None = None
        self.decision: Decision | None = None
        self.lock: LockInfo | None = None
        self.failures: list[str] = []
        self.timer: WallTimer | None = None

    @classmethod
    def check(cls, config: Config) -> list[ConfigProblem]:
        section = config.maintenance
        return [config.problem(("maintenance", key), f"directory {path.parent} does not exist: create it or "
                               f"change [maintenance] {key}")
                for key, path in (("marker", section.marker), ("lock", section.lock)) if not path.parent.is_dir()]

    def prepare(self, config: Config) -> Change:
        problems = self.check(config)
        if problems:
            raise ConfigError(problems)
        new = config.maintenance
        schedule = Schedule(new.windows, new.timezone)
        if self.timer is None:
            self.timer = WallTimer()
        old = self.settings
        if old is not None and (old.marker, old.lock) == (new.marker, new.lock):
            return Swap(lambda: self._adopt(config, schedule))
        watcher = self._watcher(new)
        try:
            watcher.start()  # OSError only if the directories vanished since the check
        except OSError as error:
            raise AgentError(f"cannot watch {new.marker.parent}: {error.strerror or error}") from None

        def commit() -> None:
            self._stop_watcher()
            self.watcher = watcher
            self.workers.add("file-watcher", watcher.alive)
            self._adopt(config, schedule)

        return Swap(commit, watcher.stop)

    def _watcher(self, section: MaintenanceSection) -> FileWatcher:
        from ..adapters.inotify import FileWatcher  # watchdog loads only when the daemon runs

        return FileWatcher((section.marker, section.lock), self.services.wake)

    def _adopt(self, config: Config, schedule: Schedule) -> None:
        self.settings, self.node, self.schedule = config.maintenance, config.agent.node, schedule

    def observe(self, facts: Facts) -> Observed:
        assert self.settings is not None and self.schedule is not None
        if self.watcher is not None:
            self.watch_problems = tuple(self.watcher.intact())
        seen = on_failing(files.observe(self.settings, facts.now), self.settings.on_failing, facts.checks)
        return Observed(self.schedule, seen, self.previous, self.watch_problems)

    def decide(self, observation: Observed) -> Step:
        return plan(observation)

    def act(self, decision: Step, facts: Facts) -> Facts:
        assert self.settings is not None
        failures = files.apply(self.settings, decision.decision, facts.now, self.node)
        if failures != self.failures:  # once per episode, not at every evaluation
            for failure in failures:
                self.services.emit(Event("maintenance.apply_failed", "error", {"error": failure}))
            if not failures:
                self.services.emit(Event("maintenance.apply_recovered", "info", {
                    "detail": "the marker and lock are as decided again"}))
        self.failures = failures
        if not failures:  # the state did not change as decided: announcing it would be a lie
            for event in decision.decision.events:
                self.services.emit(event)
            self.previous = decision.decision.state
        self.decision, self.lock = decision.decision, decision.lock
        if self.timer is not None:
            boundary = decision.decision.next_boundary
            self.timer.arm(boundary.timestamp() - self.clock_offset if boundary is not None else None)
        if decision.rewatch:
            self._rewatch()
        state = decision.decision.state
        return dataclasses.replace(facts, maintenance=MaintenanceFact(state.on, state.cause))

    def reconcile(self, facts: Facts) -> tuple[Facts, str]:
        facts, sentence = super().reconcile(facts)
        return facts, sentence + (f"; FAILED: {self.failures[0]}" if self.failures else "")

    def _rewatch(self) -> None:
        """Set the watch up again; one event when it is lost and one when it is back."""
        assert self.settings is not None
        lost = self.watch_problems
        self._stop_watcher()
        watcher = self._watcher(self.settings)
        try:
            watcher.start()
        except OSError as error:
            problems: tuple[str, ...] = (f"cannot watch: {error.strerror or error}",)
        else:
            self.watcher = watcher
            self.workers.add("file-watcher", watcher.alive)
            problems = tuple(watcher.intact())
        if not self.watch_lost:
            self.services.emit(Event("maintenance.watch_lost", "warning", {
                "problem": "; ".join(lost), "detail": "changes of the lock and marker are seen by the backstop "
                "only until the watch is set up again"}))
        self.watch_lost = bool(problems)
        if not problems:
            self.services.emit(Event("maintenance.watch_restored", "info", {"directories": ",".join(
                sorted({str(self.settings.marker.parent), str(self.settings.lock.parent)}))}))
        self.watch_problems = problems

    def _stop_watcher(self) -> None:
        if self.watcher is not None:
            self.watcher.stop()
            self.watcher = None
            self.workers.remove("file-watcher")

    def fds(self) -> Mapping[int, Callable[[], str]]:
        return {} if self.timer is None else {self.timer.fileno(): self._timer_fired}

    def _timer_fired(self) -> str:
        assert self.timer is not None
        try:
            outcome = self.timer.read()
        except OSError as error:  # never seen; the cycle that follows re-arms the timer either way
            self.services.emit(Event("clock.timer_failed", "error", {"error": error.strerror or str(error)}))
            return "timer"
        if outcome == "clock_set":
            self.services.emit(Event("clock.set", "warning", {
                "detail": "the wall clock was set; re-evaluating the schedule"}))
            return "clock"
        return "boundary" if outcome == "expired" else "timer"

    def degraded(self) -> list[str]:
        if not self.watch_problems:
            return []
        return [f"maintenance files are not watched ({'; '.join(self.watch_problems)}): changes are seen by the "
                "backstop only until the watch is set up again"]

    def status(self) -> status.Maintenance:
        assert self.settings is not None
        return maintenance_status(self.settings, self.decision, self.failures, self.previous, self.lock,
                                  "; ".join(self.watch_problems) or "ok")

    def stop(self) -> None:
        self._stop_watcher()
        if self.timer is not None:
            self.timer.close()
            self.timer = None


def maintenance_status(section: MaintenanceSection, decision: Decision | None, failures: list[str],
                       state: State | None, lock: LockInfo | None, watch: str) -> status.Maintenance:
    """Return the `maintenance` section of the status document."""
    base = status.Maintenance(marker=str(section.marker), lock_file=str(section.lock), timezone=section.timezone.key,
                              windows=[status.WindowText(str(w.start), str(w.end)) for w in section.windows],
                              watch=watch)
    if decision is None:
        return base

    def moment(value: datetime | None) -> status.Moment | None:
        if value is None:
            return None
        return status.Moment(utc=value.astimezone(timezone.utc).isoformat(timespec="seconds"),
                             local=value.astimezone(section.timezone).isoformat(timespec="seconds"))

    return dataclasses.replace(
        base, on=decision.state.on, cause=decision.state.cause, applied=not failures and state == decision.state,
        errors=list(failures), inside_window=decision.inside_window, window_until=moment(decision.window_until),
        next_change=moment(decision.next_change), sentence=decision.sentence,
        lock=None if lock is None else holder(lock))


def holder(lock: LockInfo) -> status.Holder:
    return status.Holder(present=lock.present, id=lock.lock_id, by=lock.by, at=lock.at, reason=lock.reason,
                         host=lock.host, problem=lock.problem, origin=lock.origin)
