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
puts back its own changes, and only its own.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..adapters import files
from ..check_results import CheckState
from ..config import HaproxySection
from ..errors import FileWriteError
from ..events import Event
from ..status import HaproxyServer as HaproxyServerStatus
from .decide import Actual, Memory, SetState, decide, remember
from .runtime import RuntimeApi, RuntimeApiError, ServerState

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


class HaproxyWorker:
    def __init__(self, section: HaproxySection, state_dir: Path, report: Callable[[Report], None],
                 log_event: Callable[[Event], None], beat: Callable[[], None]):
        self.section = section
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
            deferred = self.cycle()
            self.beat()
            # Waiting for hold_down or the rate limit: look again soon rather than a full interval.
            self._wake.wait(min(1.0, self.section.interval) if deferred else self.section.interval)

    def cycle(self) -> bool:
        """Observe, decide, act once. Return True if a change was deferred (damping)."""
        checks, drain, generation = self._checks, self._drain, self._generation
        try:
            identity = self.api.process_identity()
            states = self.api.servers_state()
        except RuntimeApiError as error:
            self._failed(str(error), generation)
            return False
        if self._unreachable:
            self._unreachable = False
            self.log_event(Event("haproxy.reachable", "info", {"socket": self.section.socket}))
        if self._identity is not None and identity != self._identity:
            self.log_event(Event("haproxy.reloaded", "warning", {
                "old": str(self._identity), "new": str(identity),
                "detail": "haproxy restarted or reloaded: re-applying the desired state"}))
        self._identity = identity
        now = time.monotonic()
        decision = decide(self.section, checks, actual_from(states), self.memory, now, drain)
        applied: list[SetState] = []
        failures: list[str] = []
        outcomes: list[RuntimeApiError | None]
        try:
            # One exchange for every change: 1,000 servers stay one round trip, not a thousand.
            outcomes = self.api.set_server_states([(a.backend, a.server, a.state) for a in decision.actions])
        except RuntimeApiError as exchange_failed:
            outcomes = [exchange_failed] * len(decision.actions)
        for action, refused in zip(decision.actions, outcomes, strict=True):
            if refused is not None:
                failures.append(str(refused))
                continue
            applied.append(action)
            self.changes[action.state] = self.changes.get(action.state, 0) + 1
            self.log_event(Event("haproxy.server_state_changed", "warning" if action.state != "ready" else "info", {
                "backend": action.backend, "server": action.server, "state": action.state, "reason": action.reason}))
        for event in decision.events:
            self.log_event(event)
        old_taken = self.memory.taken_out
        self.memory = remember(self.memory, applied, decision.held, now, self.section.hold_down)
        if applied:
            self._save(old_taken)
        self.change_failures += len(failures)
        for failure in failures:
            self.log_event(Event("haproxy.command_failed", "error", {"error": failure}))
        self._error = failures[0] if failures else None
        self.report(Report(generation, True, failures[0] if failures else None, str(identity), decision.sentence,
                           sorted(f"{b}/{s}" for b, s in decision.held),
                           [HaproxyServerStatus(**asdict(report)) for report in decision.reports],
                           sorted(f"{b}/{s}" for b, s in self.memory.taken_out), dict(self.changes),
                           self.change_failures))
        return decision.deferred

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
            f"{b}/{s}" for b, s in self.memory.taken_out), dict(self.changes), self.change_failures))
