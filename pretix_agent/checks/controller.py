"""Health checks as the daemon runs them: a runner thread per check, states advanced in the loop.

Probes run off the main loop (checks/runner.py), each with its deadline, and hand their results
over through a queue that wakes the loop; `systemd` checks are judged on every D-Bus signal. The
loop advances the states (checks/health.py, pure) and hands them to the controllers that follow
(haproxy, agent-check) in the same cycle.
"""

from __future__ import annotations

import dataclasses
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timezone

from .. import status
from ..adapters.dbus import SharedConnection
from ..config import CheckSpec, Config
from ..controller import Change, Controller, Facts, Services, Swap, Worker
from ..events import Event
from . import health
from .health import CheckState
from .model import Deadline, Probe, ProbeResult, unknown
from .runner import ABORT_GRACE, CheckRunner
from .units import UnitChecks


@dataclass(frozen=True)
class Observed:
    states: Mapping[str, CheckState]
    results: tuple[tuple[str, ProbeResult], ...]  # oldest first
    specs: Mapping[str, CheckSpec]


@dataclass(frozen=True)
class Step:
    states: Mapping[str, CheckState]
    changed: frozenset[str]  # checks whose state changed (their `since` moves)
    events: tuple[Event, ...]
    sentence: str


def advance(seen: Observed) -> Step:
    """Pure: the new states after the results, the events, and the clause for the daemon's sentence."""
    states, events = health.apply_results(seen.states, seen.results, seen.specs)
    states = {name: state for name, state in states.items() if name in seen.specs}
    changed = frozenset(name for name, state in states.items()
                        if name not in seen.states or seen.states[name].state != state.state)
    everyone = {**{name: CheckState() for name in seen.specs}, **states}  # never probed yet: unknown
    return Step(states, changed, tuple(events), health.summary(everyone))


def check_status(spec: CheckSpec, state: CheckState, since: str | None) -> status.Check:
    """One check's entry in the status document."""
    last = state.last
    return status.Check(
        type=spec.type, state=state.state, interval=spec.interval, timeout=spec.timeout, fall=spec.fall,
        rise=spec.rise, since=since, reason=None if last is None else last.reason,
        outcome=None if last is None else last.outcome, hard=None if last is None else last.hard,
        values={} if last is None else dict(last.values), probes=state.probes,
        failure=state.why() if state.state != health.PASSING and state.failure is not None else None,
        duration_seconds=None if last is None or last.seconds is None else round(last.seconds, 6),
        passes=state.passes)


def _constant(result: ProbeResult) -> Callable[[Deadline], ProbeResult]:
    return lambda _deadline: result


class ChecksController(Controller[Observed, Step]):
    name = "checks"
    section = "checks"

    def __init__(self, services: Services, bus: SharedConnection):
        super().__init__(services)
        self.results: deque[tuple[str, ProbeResult]] = deque()  # appended by runner and D-Bus threads
        self.units = UnitChecks(self._deliver, services.emit, bus)
        self.bus = bus
        self.specs: dict[str, CheckSpec] = {}
        self.runners: dict[str, CheckRunner] = {}
        self.states: dict[str, CheckState] = {}
        self.since: dict[str, str] = {}

    def _deliver(self, name: str, result: ProbeResult) -> None:
        """From a runner's or the D-Bus thread: stamp the result with the time it arrived, queue it and
        wake the loop."""
        self.results.append((name, dataclasses.replace(result, at=time.monotonic())))
        self.services.wake(f"check:{name}")

    def prepare(self, config: Config) -> Change:
        new = {spec.name: spec for spec in config.checks}
        leaving = [name for name, spec in self.specs.items() if new.get(name) != spec]
        coming = [spec for name, spec in new.items() if self.specs.get(name) != spec]
        unavailable: list[Event] = []
        prepared: dict[str, tuple[CheckRunner, Worker]] = {}
        for spec in coming:
            if spec.type == "systemd":
                continue  # its probe comes from the unit watcher, set up at commit
            probe: Probe
            try:
                from .probes import make_probe  # psycopg and redis load only when such checks exist

                probe = make_probe(spec)
            except Exception as error:  # a missing library makes the check unknown, not the reload fail
                reason = f"cannot run a {spec.type} check: {type(error).__name__}: {error}"
                unavailable.append(Event("check.unavailable", "error", {"check": spec.name, "error": reason}))
                probe = _constant(unknown(reason))
            worker = Worker(f"check-{spec.name}", lambda: True, spec.interval + spec.timeout + ABORT_GRACE + 5)
            runner = CheckRunner(spec, probe, self._deliver, worker.beat)
            worker.alive = runner.alive
            prepared[spec.name] = (runner, worker)

        def commit() -> None:
            self._stop_runners(leaving)
            for event in unavailable:
                self.services.emit(event)
            unit_probes = self.units.configure(config.checks)
            if self.units.watching():
                self.workers.put(Worker("dbus", self.bus.alive))
            for spec in coming:
                if spec.name in unit_probes:
                    worker = Worker(f"check-{spec.name}", lambda: True, spec.interval + spec.timeout + ABORT_GRACE + 5)
                    runner = CheckRunner(spec, unit_probes[spec.name], self._deliver, worker.beat)
                    worker.alive = runner.alive
                    prepared[spec.name] = (runner, worker)
            self.specs = new
            for name, (runner, worker) in prepared.items():
                self.runners[name] = runner
                self.workers.put(worker)
                runner.start()

        return Swap(commit)

    def _stop_runners(self, names: list[str]) -> None:
        runners = [self.runners.pop(name) for name in names if name in self.runners]
        for runner in runners:  # all at once, so stopping n checks takes one timeout, not n
            runner.request_stop()
        for runner in runners:
            runner.stop()
            self.workers.remove(f"check-{runner.spec.name}")
        for name in names:
            self.states.pop(name, None)
            self.since.pop(name, None)

    def observe(self, facts: Facts) -> Observed:
        results = []
        while self.results:
            results.append(self.results.popleft())
        return Observed(dict(self.states), tuple(results), dict(self.specs))

    def decide(self, observation: Observed) -> Step:
        return advance(observation)

    def act(self, decision: Step, facts: Facts) -> Facts:
        for event in decision.events:
            self.services.emit(event)
        when = facts.now.astimezone(timezone.utc).isoformat(timespec="seconds")
        for name in decision.changed:
            self.since[name] = when
        self.states = dict(decision.states)
        return dataclasses.replace(facts, checks=dict(self.states))

    def status(self) -> dict[str, status.Check]:
        return {name: check_status(spec, self.states.get(name, CheckState()), self.since.get(name))
                for name, spec in sorted(self.specs.items())}

    def stop(self) -> None:
        self._stop_runners(list(self.runners))
        self.units.stop()

