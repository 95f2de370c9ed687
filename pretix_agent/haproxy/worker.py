"""haproxy, acted on: a worker thread that reads haproxy's state, asks `decide`, and sends the changes.

It runs beside the main loop because every Runtime API exchange may block up to its timeout,
and a hung haproxy must never delay maintenance mode or the systemd watchdog. The main loop hands
it the latest check states (`update`, numbered: each report says which inputs it was decided on),
which wakes it at once; otherwise it looks every
`interval`, so drift, reloads and restarts are seen within one interval. A reload or restart shows
as a new process identity in `show info`; since the decision is level-triggered, re-applying the
desired state needs nothing special beyond noticing. After every change the agent writes
`show servers state` into haproxy's server-state file (when configured), so a reload at any moment
loads what the agent set.

What the agent took out is remembered in the state directory, so after a daemon restart it still
puts back its own changes, and only its own. The flap damping and the shared causes are kept in
memory only: a restarted daemon starts every server at damping level 0.

A server with `shutdown_sessions` taken out gets `shutdown sessions server B/S` in the same
exchange, right after its `set server ... state`, so no new session can reach it in between.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..adapters import files
from ..check_results import CheckState
from ..config import HaproxySection, HaproxyServer
from ..errors import FileWriteError
from ..events import Event
from ..status import HaproxyServer as HaproxyServerStatus
from .decide import Actual, Decision, Memory, ServerReport, SetState, decide, remember
from .runtime import RuntimeApi, RuntimeApiError, ServerState, set_state_command, shutdown_sessions_command

MEMORY_FILE = "haproxy.json"


@dataclass(frozen=True)
class Report:
    """What the worker last saw and did, and for which inputs (`generation`)."""

    generation: int
    reachable: bool
    error: str | None
    process: str | None
    sentence: str
    held: list[str]
    servers: list[HaproxyServerStatus]
    taken_out: list[str]
    shared: dict[str, str]  # backend -> the shared cause that keeps its servers in
    changes: dict[str, int] = field(default_factory=dict)  # since the worker started, by the state set
    change_failures: int = 0


def load_memory(path: Path) -> Memory:
    """Read what the agent took out; a missing or unreadable file means nothing (said by the caller)."""
    state = files.read_small(path)
    if not state.present or state.content is None:
        return Memory()
    try:
        document = json.loads(state.content)
        taken_out = frozenset((str(b), str(s)) for b, s in document["taken_out"])
    except (ValueError, KeyError, TypeError):
        return Memory()
    return Memory(taken_out=taken_out)


def actual_from(states: list[ServerState]) -> dict[tuple[str, str], Actual]:
    """haproxy's servers as `decide` sees them. A server at weight 0 (an agent-check drain, say)
    takes no new load, so it does not count as up for the min_ready guard."""
    return {(s.backend, s.server): Actual(s.admin, s.up and s.weight > 0) for s in states}


def server_status(report: ServerReport, server: HaproxyServer | None, now: float,
                  wall: float) -> HaproxyServerStatus:
    """One server for the status document; the monotonic end of a hold becomes wall-clock time."""
    until = None
    if report.hold_until is not None:
        until = datetime.fromtimestamp(wall + (report.hold_until - now), timezone.utc).isoformat(timespec="seconds")
    return HaproxyServerStatus(report.backend, report.server, report.actual, report.up, report.desired, report.why,
                               report.level, report.hold, until, list(server.checks) if server else [],
                               bool(server and server.local))


def commands_for(actions: tuple[SetState, ...]) -> tuple[list[str], list[tuple[int, str]]]:
    """The Runtime API commands for `actions`, and which action and kind ("set" or "shutdown") each
    command carries out."""
    commands: list[str] = []
    owners: list[tuple[int, str]] = []
    for index, action in enumerate(actions):
        commands.append(set_state_command(action.backend, action.server, action.state))
        owners.append((index, "set"))
        if action.shutdown_sessions:
            commands.append(shutdown_sessions_command(action.backend, action.server))
            owners.append((index, "shutdown"))
    return commands, owners


class HaproxyWorker:
    def __init__(self, section: HaproxySection, state_dir: Path, report: Callable[[Report], None],
                 log_event: Callable[[Event], None], beat: Callable[[], None],
                 report_within: Mapping[str, float] | None = None):
        self.section = section
        self.report_within = dict(report_within or {})
        self.api = RuntimeApi(section.socket, section.timeout)
        self.memory_path = state_dir / MEMORY_FILE
        self.memory = load_memory(self.memory_path)
        self.report = report
        self.log_event = log_event
        self.beat = beat
        self._checks: Mapping[str, CheckState] = {}
        self._drain: str | None = None
        self._generation = 0  # of the inputs handed over by update()
        self._wake = threading.Event()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="haproxy", daemon=True)
        self._identity: Any = None
        self._error: str | None = None
        self._unreachable = False
        self.changes: dict[str, int] = {}  # state changes haproxy took, by the state set (for metrics)
        self.change_failures = 0

    def start(self) -> None:
        self._thread.start()

    def alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self) -> None:
        self._stopped.set()
        self._wake.set()
        self._thread.join(timeout=self.section.timeout * 3 + 1)

    def update(self, checks: Mapping[str, CheckState], drain: str | None, generation: int = 0) -> None:
        """From the main loop: the latest check states and drain request, numbered; wakes the thread."""
        self._checks, self._drain, self._generation = dict(checks), drain, generation
        self._wake.set()

    def _run(self) -> None:
        while not self._stopped.is_set():
            self._wake.clear()
            wait = self.cycle()
            self.beat()
            self._wake.wait(wait)

    def cycle(self) -> float:
        """Observe, decide, act once. Return how long to wait before the next look: the interval, or
        less when something waits (settling, a flap's hold, the rate limit) and is due sooner."""
        checks, drain, generation = self._checks, self._drain, self._generation
        try:
            identity = self.api.process_identity()
            states = self.api.servers_state()
        except RuntimeApiError as error:
            self._failed(str(error), generation)
            return self.section.interval
        if self._unreachable:
            self._unreachable = False
            self.log_event(Event("haproxy.reachable", "info", {"socket": self.section.socket}))
        if self._identity is not None and identity != self._identity:
            self.log_event(Event("haproxy.reloaded", "warning", {
                "old": str(self._identity), "new": str(identity),
                "detail": "haproxy restarted or reloaded: re-applying the desired state"}))
        self._identity = identity
        now = time.monotonic()
        decision = decide(self.section, checks, actual_from(states), self.memory, now, drain, self.report_within)
        applied, failures = self._apply(decision)
        for action in applied:
            self.changes[action.state] = self.changes.get(action.state, 0) + 1
        self.change_failures += len(failures)
        for event in decision.events:
            self.log_event(event)
        old_taken = self.memory.taken_out
        self.memory = remember(self.memory, decision, applied, now, self.section)
        if applied:
            self._save(old_taken)
        for failure in failures:
            self.log_event(Event("haproxy.command_failed", "error", {"error": failure}))
        self._error = failures[0] if failures else None
        # haproxy accepted the applied changes: the report says what it does now, not what it did.
        done = {(a.backend, a.server): a.state for a in applied}
        reports = [replace(r, actual=done.get((r.backend, r.server), r.actual)) for r in decision.reports]
        wall = time.time()
        configured = {(server.backend, server.server): server for server in self.section.servers}
        self.report(Report(generation, True, failures[0] if failures else None, str(identity), decision.sentence,
                           sorted(f"{b}/{s}" for b, s in decision.held),
                           [server_status(report, configured.get((report.backend, report.server)), now, wall)
                            for report in reports],
                           sorted(f"{b}/{s}" for b, s in self.memory.taken_out), dict(decision.shared),
                           dict(self.changes), self.change_failures))
        return self._next_look(decision, now)

    def _next_look(self, decision: Decision, now: float) -> float:
        interval = self.section.interval
        if decision.wake_at is not None:
            return max(0.01, min(interval, decision.wake_at - now))
        return min(1.0, interval) if decision.deferred else interval

    def _apply(self, decision: Decision) -> tuple[list[SetState], list[str]]:
        """Send the decision's changes in one exchange (1,000 servers stay one round trip, not a
        thousand); log each. Return the actions haproxy accepted and the failures in words."""
        commands, owners = commands_for(decision.actions)
        outcomes: list[RuntimeApiError | None]
        try:
            outcomes = self.api.run_silent(commands) if commands else []
        except RuntimeApiError as exchange_failed:
            outcomes = [exchange_failed] * len(commands)
        applied: list[SetState] = []
        failures: list[str] = []
        for (index, kind), refused in zip(owners, outcomes, strict=True):
            action = decision.actions[index]
            if refused is not None:
                failures.append(str(refused))
            elif kind == "set":
                applied.append(action)
                self.log_event(Event("haproxy.server_state_changed", "warning" if action.state != "ready" else "info",
                                     {"backend": action.backend, "server": action.server, "state": action.state,
                                      "reason": action.reason}))
            else:
                self.log_event(Event("haproxy.sessions_shut", "warning", {
                    "backend": action.backend, "server": action.server,
                    "detail": "closed the sessions haproxy held to it, so its clients reconnect elsewhere"}))
        return applied, failures

    def _save(self, old_taken: frozenset[tuple[str, str]]) -> None:
        if self.section.state_file is not None:
            try:
                self.api.save_server_state(self.section.state_file)
            except (RuntimeApiError, FileWriteError, OSError) as error:
                self.log_event(Event("haproxy.state_file_failed", "error", {
                    "file": str(self.section.state_file), "error": str(error),
                    "detail": "a reload now would forget what the agent set until it re-applies it"}))
        if self.memory.taken_out != old_taken:
            data = json.dumps({"taken_out": sorted(self.memory.taken_out)}) + "\n"
            try:
                files.write_atomic(self.memory_path, data.encode(), mode=0o644)
            except FileWriteError as error:
                self.log_event(Event("haproxy.memory_failed", "error", {"error": str(error)}))

    def _failed(self, error: str, generation: int) -> None:
        self._unreachable = True
        if error != self._error:
            self.log_event(Event("haproxy.unreachable", "error", {
                "socket": self.section.socket, "error": error,
                "detail": "haproxy's servers are left as they are until the socket answers"}))
        self._error = error
        self.report(Report(generation, False, error, None, f"haproxy unreachable: {error}", [], [], sorted(
            f"{b}/{s}" for b, s in self.memory.taken_out), {}, dict(self.changes), self.change_failures))
