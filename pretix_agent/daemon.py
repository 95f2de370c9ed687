"""The process: the composition root and the loop; signals, systemd notification, the watchdog gate.

Every capability is a controller of one shape (controller.py); this module builds them, runs them
in order each cycle, and owns what belongs to the process. Signal handlers only post to the wake-up
queue. The loop sleeps until the earliest of: a posted trigger (a file event, a check result, a
signal), a controller's file descriptor or due time, the backstop `reconcile_interval`, or the next
watchdog ping; never a fixed tick. Each cycle yields one sentence, logged and sent as STATUS= when it
changes. A reload is a transaction (controller.switch). A controller that raises is reported once
and isolated; the watchdog is withheld only for what a restart fixes (Controller.essential).
"""

from __future__ import annotations

import os
import signal
import time
import traceback
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from . import __version__, status
from . import config as config_module
from .adapters import logs
from .adapters.dbus import SharedConnection
from .adapters.sdnotify import Notifier
from .adapters.status_file import publish
from .capabilities import build_controllers
from .controller import Controller, Facts, Services, switch
from .errors import AgentError, ConfigError, FileWriteError
from .events import Event
from .wakeup import Wakeup

# Test hooks, only with PRETIX_AGENT_TEST_HOOKS=1: SIGUSR2 stalls the main loop for this many seconds
# (so tests prove that systemd's watchdog then restarts the daemon), and the daemon's idea of wall-clock
# time is shifted (so a test can start it a second before a window edge instead of on a real Sunday).
TEST_HOOKS_ENV = "PRETIX_AGENT_TEST_HOOKS"
TEST_STALL_ENV = "PRETIX_AGENT_TEST_STALL_SECONDS"
TEST_CLOCK_OFFSET_ENV = "PRETIX_AGENT_TEST_CLOCK_OFFSET"
QUIET_TRIGGERS = ("check:", "haproxy", "lock_fencing")  # frequent, and mostly change nothing that matters


class Daemon:
    def __init__(self, config_path: Path, config: config_module.Config, notifier: Notifier | None = None):
        self.config_path, self.config = config_path, config
        self.notifier = notifier or Notifier()
        self.log = logs.get_logger()
        self.wakeup = Wakeup()
        self.test_hooks = os.environ.get(TEST_HOOKS_ENV) == "1"
        self.clock_offset = float(os.environ.get(TEST_CLOCK_OFFSET_ENV, "0")) if self.test_hooks else 0.0
        self.bus = SharedConnection(self.emit)
        self.controllers = build_controllers(Services(self.wakeup.post, self.emit, lambda: self.document("running")),
                                             self.bus, self.clock_offset)
        self.health: dict[str, status.ControllerHealth] = {}  # the controllers failing now
        self.failures: dict[str, int] = {}  # failed cycles and commits per controller, for metrics
        self.stopping, self.started_at, self.sentence, self.cycles = False, time.time(), "", 0
        self.watchdog_withheld = 0
        self.publish_error: str | None = None
        self._commit_failed = lambda controller, error: self._failed(controller, error, "commit")

    def emit(self, event: Event) -> None:  # from any thread
        getattr(self.log, event.level)(event.name, **event.fields)

    def run(self) -> int:
        """Run until SIGTERM/SIGINT. Return the exit code: 0 after a clean stop, 1 if it cannot start."""
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR2):
            signal.signal(signum, lambda number, _frame: self.wakeup.post(f"signal:{signal.Signals(number).name}"))
        try:
            switch(self.controllers, self.config, self._commit_failed)
        except AgentError as error:
            for line in error.problems if isinstance(error, ConfigError) else [error]:
                self.log.error("agent.start_failed", error=str(line))
            for controller in self.controllers:  # nothing was committed: no status to publish
                self._stop(controller)
            return 1
        self.log.info("agent.started", version=__version__, pid=os.getpid(), node=self.config.agent.node, config=str(
            self.config_path), notify=self.notifier.enabled, watchdog_interval=self.notifier.watchdog_interval)
        self.cycle(["start"])
        self._notify(READY="1", STATUS=self.sentence)
        try:
            return self._loop()
        finally:
            self._shutdown()

    def _loop(self) -> int:
        last_ping, last_cycle = 0.0, time.monotonic()
        ping_every = self.notifier.watchdog_interval / 2 if self.notifier.watchdog_interval else None
        while not self.stopping:
            backstop = last_cycle + self.config.agent.reconcile_interval
            dues = [due for due in (c.due() for c in self.controllers) if due is not None]
            wake_at = min([backstop, *dues] + ([last_ping + ping_every] if ping_every else []))
            readers = {fd: read for c in self.controllers for fd, read in c.fds().items()}
            reasons, ready = self.wakeup.wait(wake_at - time.monotonic(), tuple(readers))
            reasons += [readers[fd]() for fd in ready]
            reasons = self._handle_signals(reasons)
            if self.stopping:
                break
            now = time.monotonic()
            wanted = reasons or now >= backstop or any(now >= due for due in dues)
            if wanted and self.cycle(reasons or ["backstop" if now >= backstop else "due"]):
                last_cycle = time.monotonic()  # a quiet cycle leaves the backstop (and its status) due
            if ping_every is not None and time.monotonic() - last_ping >= ping_every and self._ping():
                last_ping = time.monotonic()
        return 0

    def _handle_signals(self, reasons: list[str]) -> list[str]:
        rest = []
        for reason in reasons:
            if reason in ("signal:SIGTERM", "signal:SIGINT"):
                self.log.info("agent.stop_requested", signal=reason.split(":", 1)[1])
                self.stopping = True
            elif reason == "signal:SIGHUP":
                self.reload()
                rest.append("reload")
            elif reason == "signal:SIGUSR2" and self.test_hooks:
                seconds = float(os.environ.get(TEST_STALL_ENV, "3600"))
                self.log.warning("agent.test_stall", seconds=seconds)
                time.sleep(seconds)  # deliberately blind: this is the stall under test
            elif reason != "signal:SIGUSR2":
                rest.append(reason)
        return rest

    def _shutdown(self) -> None:
        self._notify(STOPPING="1", STATUS="stopping")
        self.log.info("agent.stopping")
        *first, last = self.controllers
        for controller in reversed(first):
            self._stop(controller)
        self._publish("stopped")
        self._stop(last)
        self.bus.stop()
        self.notifier.close()

    def _stop(self, controller: Controller[Any, Any]) -> None:
        try:
            controller.stop()
        except Exception as error:  # a bug: the others must still be stopped
            self._failed(controller, error, "stop")

    # -- reload ----------------------------------------------------------------------------------

    def reload(self) -> None:
        """Load the configuration again and switch every controller to it, or none of them."""
        self._notify(RELOADING="1", STATUS="reloading configuration",
                     MONOTONIC_USEC=str(time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000))
        try:
            new = config_module.load(self.config_path)
            switch(self.controllers, new, self._commit_failed)
        except AgentError as error:
            problems = error.problems if isinstance(error, ConfigError) else [error]
            for problem in problems:
                self.log.error("config.reload_rejected", problem=str(problem))
            self.log.error("config.reload_failed", config=str(self.config_path), problems=len(problems),
                           detail="kept the running configuration")
            self._notify(READY="1", STATUS=f"reload failed, running on the old configuration; {self.sentence}")
            return
        self.config = new
        self.log.info("config.reloaded", config=str(self.config_path))
        self.cycle(["reload"])
        self._notify(READY="1", STATUS=self.sentence)

    # -- one cycle -------------------------------------------------------------------------------

    def cycle(self, trigger: list[str]) -> bool:
        """Run every controller once, in order; publish the status unless the cycle was quiet (say if
        it did). A controller's bug is isolated."""
        self.cycles += 1
        now = datetime.now(timezone.utc) + timedelta(seconds=self.clock_offset)
        facts = Facts(now=now, monotonic=time.monotonic(), trigger=tuple(trigger))
        clauses = []
        for controller in self.controllers:
            try:
                facts, clause = controller.reconcile(facts)
            except Exception as error:
                clause = self._failed(controller, error, "cycle")
            else:
                if self.health.pop(controller.name, None) is not None:
                    self.log.info("controller.recovered", controller=controller.name)
            if clause:
                clauses.append(clause)
        sentence = "; ".join(clauses)
        # Probe results and worker reports come every second or faster; one that changes no decision
        # leaves the status file (what ctl reads) to the next cycle that does, or to the backstop.
        quiet = sentence == self.sentence and all(t.startswith(QUIET_TRIGGERS) for t in trigger)
        if sentence != self.sentence:
            self.log.info("loop.decided", sentence=sentence, trigger=",".join(trigger))
            self.sentence = sentence
            self._notify(STATUS=sentence)
        if not quiet:
            self._publish("running")
        return not quiet

    def _failed(self, controller: Controller[Any, Any], error: Exception, where: str) -> str:
        text = f"{type(error).__name__}: {error}"
        if where != "status":  # a status failure is met again in every document built, not once per cycle
            self.failures[controller.name] = self.failures.get(controller.name, 0) + 1
        if controller.name not in self.health:  # once per episode
            self.log.error("controller.failed", controller=controller.name, where=where, error=text,
                           essential=controller.essential, traceback="".join(traceback.format_exception(error)))
            self.health[controller.name] = status.ControllerHealth(False, text, datetime.now(timezone.utc).isoformat(
                timespec="seconds"))
        return f"{controller.name} FAILED: {text}"

    # -- status and notification -----------------------------------------------------------------

    def document(self, state: str) -> status.Document:
        sections: dict[str, Any] = {}
        for controller in self.controllers:
            try:
                sections[controller.section] = controller.status()
            except Exception as error:  # a bug in one section must not cost the whole status
                self._failed(controller, error, "status")
        now = time.time()
        degraded = [problem for c in self.controllers for problem in c.degraded()]
        return status.Document(
            format=status.FORMAT, state=state, written_at_unix=now,
            written_at=datetime.fromtimestamp(now, timezone.utc).isoformat(timespec="milliseconds"),
            stale_after=3 * self.config.agent.reconcile_interval + 5, node=self.config.agent.node, pid=os.getpid(),
            version=__version__, config=str(self.config_path), sentence=self.sentence, cycles=self.cycles,
            started_at=datetime.fromtimestamp(self.started_at, timezone.utc).isoformat(timespec="seconds"),
            healthy=not self._withhold_reasons(), degraded=degraded, controllers=dict(self.health),
            controller_failures=dict(self.failures), watchdog_withheld=self.watchdog_withheld, **sections)

    def _publish(self, state: str) -> None:
        try:
            publish(self.config.agent.status_file, self.document(state))
            self.publish_error = None
        except FileWriteError as error:
            if str(error) != self.publish_error:
                self.log.error("status.publish_failed", error=str(error))
            self.publish_error = str(error)

    def _notify(self, **fields: str) -> None:
        if self.notifier.send(**fields) is False and self.notifier.last_error:
            self.log.warning("systemd.notify_failed", error=self.notifier.last_error)

    def _withhold_reasons(self) -> list[str]:
        """Why systemd's watchdog must not be told all is well: stuck workers, a failed essential controller."""
        stuck = [name for controller in self.controllers for name in controller.unhealthy(time.monotonic())]
        return stuck + [f"{c.name} controller" for c in self.controllers if c.essential and c.name in self.health]

    def _ping(self) -> bool:
        """Send WATCHDOG=1 only if nothing calls for a restart."""
        reasons = self._withhold_reasons()
        if reasons:
            self.watchdog_withheld += 1
            self.log.error("systemd.watchdog_withheld", unhealthy=",".join(reasons))
            return False
        self._notify(WATCHDOG="1")
        return True
