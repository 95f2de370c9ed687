"""haproxy control as the daemon runs it: the loop hands the gating check states to the worker.

Every Runtime API exchange may block up to its timeout, so the exchanges happen on the worker's
thread (worker.py); the loop only hands over what changed (numbered) and reads back the worker's
report. A report decided on older inputs is not passed off as current: until the worker has acted
on the latest check states, the sentence says it is acting on them. New inputs that differ from
the report's only in a probe's details (a latency, the time it arrived) keep its sentence: every
probe hands new inputs over, and a sentence flipping to "acting" and back twice per probe would
log `loop.decided` twice per probe.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from .. import status
from ..check_results import PASSING, CheckState
from ..config import Config, HaproxySection
from ..controller import Change, Controller, Facts, Services, Swap, Worker
from ..errors import ConfigError, ConfigProblem
from .worker import HaproxyWorker, Report


@dataclass(frozen=True)
class Inputs:
    checks: Mapping[str, CheckState]  # only the checks that gate a server
    drain: str | None  # only when a server is `local`


@dataclass(frozen=True)
class Observed:
    inputs: Inputs
    handed: Inputs | None  # what the worker has
    generation: int  # of `handed`
    report: Report | None
    reported: Inputs | None = None  # the inputs `report` was decided on, if still known


@dataclass(frozen=True)
class Handover:
    inputs: Inputs | None  # None: the worker has them already
    generation: int
    sentence: str


def gating_view(checks: Mapping[str, CheckState]) -> dict[str, CheckState]:
    """The part of the gating checks' states haproxy's decision reads. While every one passes, a
    probe's latency, count or time changes nothing there, and handing every probe over would cost a
    Runtime API round trip each time; once one fails, every report counts (the settle time waits
    for each check to report again), so all of them go over, only their counters dropped."""
    if all(state.state == PASSING and not state.probe_failed() for state in checks.values()):
        return {name: CheckState(state=PASSING) for name in checks}
    return {name: dataclasses.replace(state, probes=0, since_probe=0, misses=0) for name, state in checks.items()}


def inputs_for(section: HaproxySection, checks: Mapping[str, CheckState], drain: str | None) -> Inputs:
    gating = {name for server in section.servers for name in (*server.checks, *server.shared_checks)}
    local = any(server.local for server in section.servers)
    return Inputs(gating_view({name: state for name, state in checks.items() if name in gating}),
                  drain if local else None)


def report_within(config: Config) -> dict[str, float]:
    """Per check, the longest time between two of its results: a probe starts every interval and
    reports within its timeout."""
    return {spec.name: spec.interval + spec.timeout for spec in config.checks}


def verdicts(inputs: Inputs) -> tuple[object, ...]:
    """What a decision turns on: each check's state and its latest probe's outcome, and the drain."""
    return (sorted((name, state.state, state.last.outcome if state.last else None)
                   for name, state in inputs.checks.items()), inputs.drain)


def hand_over(seen: Observed) -> Handover:
    """Pure: whether the worker needs new inputs, and the sentence that is true right now."""
    inputs, generation = (seen.inputs, seen.generation + 1) if seen.inputs != seen.handed else (None, seen.generation)
    report = seen.report
    if report is None:
        return Handover(inputs, generation, "haproxy: not looked at yet")
    if report.generation == generation or (
            seen.reported is not None and verdicts(seen.reported) == verdicts(seen.inputs)):
        return Handover(inputs, generation, report.sentence)
    return Handover(inputs, generation, "haproxy: acting on new check states")


class HaproxyControl(Controller[Observed, Handover]):
    name = "haproxy"
    section = "haproxy"

    def __init__(self, services: Services):
        super().__init__(services)
        self.settings: HaproxySection | None = None
        self.state_dir: Path | None = None
        self.within: dict[str, float] = {}
        self.worker: HaproxyWorker | None = None
        self.report: Report | None = None
        self.handed: Inputs | None = None
        self.generation = 0
        self.sent: dict[int, Inputs] = {}  # generation -> the inputs handed with it, until reported on

    @classmethod
    def check(cls, config: Config) -> list[ConfigProblem]:
        section = config.haproxy
        if section is None or not section.socket.startswith("/") or section.state_file is None:
            return []
        if not section.state_file.parent.is_dir():
            return [config.problem(("haproxy", "state_file"), f"directory {section.state_file.parent} does not "
                                   "exist: create it (haproxy.cfg's server-state-file lives there) or change it")]
        return []

    def prepare(self, config: Config) -> Change:
        problems = self.check(config)
        if problems:
            raise ConfigError(problems)
        new, state_dir, within = config.haproxy, config.agent.state_dir, report_within(config)
        if (new, state_dir, within) == (self.settings, self.state_dir, self.within):
            return Swap()
        worker = None
        if new is not None:
            worker = HaproxyWorker(new, state_dir, self._reported, self.services.emit, lambda: None, within)

        def commit() -> None:
            self._stop_worker()
            self.settings, self.state_dir, self.worker, self.report, self.handed = new, state_dir, worker, None, None
            self.sent = {}
            self.within = within
            if worker is not None:
                assert new is not None
                beat = Worker("haproxy", worker.alive, new.interval + 3 * new.timeout + 5)
                worker.beat = beat.beat
                self.workers.put(beat)
                worker.start()
                self.services.wake("haproxy")

        return Swap(commit)

    def _reported(self, report: Report) -> None:
        """From the worker's thread: its latest view; wakes the loop so status and sentence show it."""
        self.report = report
        self.services.wake("haproxy")

    def observe(self, facts: Facts) -> Observed:
        assert self.settings is not None
        report = self.report
        if report is not None:  # older generations will never be reported on again
            self.sent = {number: inputs for number, inputs in self.sent.items() if number >= report.generation}
        return Observed(inputs_for(self.settings, facts.checks, facts.drain), self.handed, self.generation, report,
                        self.sent.get(report.generation) if report is not None else None)

    def decide(self, observation: Observed) -> Handover:
        return hand_over(observation)

    def act(self, decision: Handover, facts: Facts) -> Facts:
        if decision.inputs is not None and self.worker is not None:
            self.handed, self.generation = decision.inputs, decision.generation
            self.sent[decision.generation] = decision.inputs
            self.worker.update(decision.inputs.checks, decision.inputs.drain, decision.generation)
        return facts

    def reconcile(self, facts: Facts) -> tuple[Facts, str]:
        if self.settings is None:
            return facts, ""
        return super().reconcile(facts)

    def status(self) -> status.Haproxy | None:
        if self.settings is None:
            return None
        report = self.report
        if report is None:
            return status.Haproxy(socket=self.settings.socket, pending=True)
        return status.Haproxy(socket=self.settings.socket, reachable=report.reachable, error=report.error,
                              process=report.process, sentence=report.sentence, held=report.held,
                              servers=report.servers, taken_out=report.taken_out, shared=report.shared,
                              pending=report.generation != self.generation, changes=report.changes,
                              change_failures=report.change_failures)

    def _stop_worker(self) -> None:
        if self.worker is not None:
            self.worker.stop()
            self.worker = None
            self.workers.remove("haproxy")

    def stop(self) -> None:
        self._stop_worker()
