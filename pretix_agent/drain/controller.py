"""The planned drain as the daemon runs it: the request file watched, logind's delay lock held.

The delay lock is taken only where there is something to drain: an agent-check answer or a
`local` haproxy server. Without a system bus (or logind, or polkit for an unprivileged daemon) the
shutdown drain is off, said once; `pretix-agentctl drain` works regardless.
"""

from __future__ import annotations

import dataclasses
from collections import deque
from typing import TYPE_CHECKING

from .. import status
from ..adapters.dbus import DBusUnavailable, SharedConnection
from ..config import Config
from ..controller import Change, Controller, Facts, Services, Swap
from ..errors import AgentError, ConfigError, ConfigProblem
from ..events import Event
from ..maintenance.controller import holder
from ..maintenance.decide import LockInfo
from ..maintenance.files import read_lock
from .decide import Decision, Observation, Shutdown
from .decide import decide as decide_drain
from .request import drain_path

if TYPE_CHECKING:
    from ..adapters.dbus import ShutdownInhibitor
    from ..adapters.inotify import FileWatcher


def wants_inhibitor(config: Config) -> bool:
    """A shutdown drain needs something to drain: an agent-check answer or a local haproxy server."""
    return config.agent_check is not None or bool(config.haproxy and any(s.local for s in config.haproxy.servers))


class DrainController(Controller[Observation, Decision]):
    name = "drain"
    section = "drain"

    def __init__(self, services: Services, bus: SharedConnection):
        super().__init__(services)
        self.bus = bus
        self.config: Config | None = None
        self.watcher: FileWatcher | None = None
        self.inhibitor: ShutdownInhibitor | None = None
        self.signals: deque[bool] = deque()  # from the D-Bus thread
        self.shutdown = Shutdown()
        self.request = LockInfo(False)
        self.reason: str | None = None

    @classmethod
    def check(cls, config: Config) -> list[ConfigProblem]:
        if config.agent.state_dir.is_dir():
            return []
        return [config.problem(("agent", "state_dir"), f"directory {config.agent.state_dir} does not exist: "
                               "create it or change [agent] state_dir")]

    def prepare(self, config: Config) -> Change:
        problems = self.check(config)
        if problems:
            raise ConfigError(problems)
        path = drain_path(config)
        if self.config is not None and drain_path(self.config) == path:
            return Swap(lambda: self._adopt(config))
        from ..adapters.inotify import FileWatcher  # watchdog loads only when the daemon runs

        watcher = FileWatcher((path,), self.services.wake)
        try:
            watcher.start()
        except OSError as error:
            raise AgentError(f"cannot watch {path.parent}: {error.strerror or error}") from None

        def commit() -> None:
            if self.watcher is not None:
                self.watcher.stop()
            self.watcher = watcher
            self.workers.add("drain-watcher", watcher.alive)
            self._adopt(config)

        return Swap(commit, watcher.stop)

    def _adopt(self, config: Config) -> None:
        self.config = config
        if wants_inhibitor(config) and self.inhibitor is None:
            self._take_inhibitor()
        elif not wants_inhibitor(config) and self.inhibitor is not None:
            self.inhibitor.stop()
            self.inhibitor = None
            self.workers.remove("dbus")

    def _take_inhibitor(self) -> None:
        try:
            from ..adapters.dbus import ShutdownInhibitor

            inhibitor = ShutdownInhibitor(self._on_prepare, connection=self.bus.get())
            inhibitor.start()
        except DBusUnavailable as error:
            self.services.emit(Event("shutdown_drain.unavailable", "warning", {
                "error": str(error), "detail": "the node is not drained before a shutdown; pretix-agentctl drain "
                "still works"}))
            return
        self.inhibitor = inhibitor
        self.workers.add("dbus", self.bus.alive)
        assert self.config is not None
        self.services.emit(Event("shutdown_drain.armed", "info", {"drain_time": self.config.agent.shutdown_drain_time}))

    def _on_prepare(self, shutting_down: bool) -> None:
        """From the D-Bus thread (PrepareForShutdown): only queue and wake."""
        self.signals.append(shutting_down)
        self.services.wake("shutdown:prepare" if shutting_down else "shutdown:cancelled")

    def observe(self, facts: Facts) -> Observation:
        assert self.config is not None
        signals = []
        while self.signals:
            signals.append(self.signals.popleft())
        self.request = read_lock(drain_path(self.config))
        return Observation(self.request, tuple(signals), self.shutdown, facts.monotonic,
                           self.config.agent.shutdown_drain_time)

    def decide(self, observation: Observation) -> Decision:
        return decide_drain(observation)

    def act(self, decision: Decision, facts: Facts) -> Facts:
        for event in decision.events:
            self.services.emit(event)
        if decision.release and self.inhibitor is not None:
            self.inhibitor.release()
        self.shutdown, self.reason = decision.shutdown, decision.reason
        return dataclasses.replace(facts, drain=decision.reason, flush_logs=facts.flush_logs or decision.flush)

    def due(self) -> float | None:
        return self.shutdown.release_at

    def status(self) -> status.Drain:
        assert self.config is not None
        return status.Drain(file=str(drain_path(self.config)), request=holder(self.request),
                            shutdown=self.shutdown.draining, reason=self.reason)

    def stop(self) -> None:
        if self.inhibitor is not None:
            self.inhibitor.stop()
            self.inhibitor = None
        if self.watcher is not None:
            self.watcher.stop()
            self.watcher = None
