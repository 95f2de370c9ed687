"""The process lifecycle: start, loop, reload, stop; systemd notification and its watchdog.

Signal handlers only post to the wake-up queue; the loop does the work. The loop sleeps until
the earliest of: a posted event (file change, signal), the next window edge (a wall-clock timer),
the backstop `reconcile_interval`, or the next systemd watchdog ping; it never sleeps a fixed tick.
Each cycle observes, decides (pure), acts, and publishes the status; it yields one sentence, logged
whenever it changes.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from . import __version__, maintenance, observe, status
from . import config as config_module
from .actuator import apply_maintenance
from .adapters import logs
from .adapters.clock import WallTimer
from .adapters.inotify import FileWatcher
from .adapters.sdnotify import Notifier
from .checks import health
from .checks.model import ProbeResult, unknown
from .checks.runner import ABORT_GRACE, CheckRunner
from .checks.units import UnitChecks
from .drain import drain_path
from .errors import AgentError, ConfigError, DBusUnavailable, FileWriteError
from .events import Event
from .haproxy.agent_check import AgentCheckResponder, agent_answer
from .haproxy.controller import HaproxyController
from .loki import LokiShipper, MemorySource, choose_source, heartbeat_deadline
from .schedule import Schedule
from .wakeup import Wakeup

# Test hook, only with PRETIX_AGENT_TEST_HOOKS=1: SIGUSR2 stalls the main loop for this many seconds
# so tests can prove that systemd's watchdog then stops getting pings and restarts the daemon.
TEST_HOOKS_ENV = "PRETIX_AGENT_TEST_HOOKS"
TEST_STALL_ENV = "PRETIX_AGENT_TEST_STALL_SECONDS"
# Also only with the hooks on: shift the daemon's idea of wall-clock time, so a test can start it a
# second before a window edge instead of waiting for a real Sunday night.
TEST_CLOCK_OFFSET_ENV = "PRETIX_AGENT_TEST_CLOCK_OFFSET"


@dataclass
class Heartbeat:
    """A worker thread's proof of progress: it beats at least every `max_silence` seconds."""

    name: str
    max_silence: float
    last: float

    def beat(self) -> None:
        self.last = time.monotonic()


class Liveness:
    """The workers the systemd watchdog ping vouches for, besides the main loop itself."""

    def __init__(self) -> None:
        self.heartbeats: dict[str, Heartbeat] = {}
        self.threads: dict[str, Callable[[], bool]] = {}

    def heartbeat(self, name: str, max_silence: float) -> Heartbeat:
        self.heartbeats[name] = Heartbeat(name, max_silence, time.monotonic())
        return self.heartbeats[name]

    def thread(self, name: str, alive: Callable[[], bool]) -> None:
        self.threads[name] = alive

    def unhealthy(self, now: float) -> list[str]:
        """Return the names of workers that are dead or silent for too long."""
        dead = [name for name, alive in self.threads.items() if not alive()]
        silent = [b.name for b in self.heartbeats.values() if now - b.last > b.max_silence]
        return dead + silent


class Daemon:
    def __init__(self, config_path: Path, config: config_module.Config, notifier: Notifier | None = None):
        self.config_path = config_path
        self.config = config
        self.notifier = notifier or Notifier()
        self.log = logs.get_logger()
        self.wakeup = Wakeup()
        self.liveness = Liveness()
        self.stopping = False
        self.started_at = time.time()
        self.previous: maintenance.State | None = None
        self.decision: maintenance.Decision | None = None
        self.lock: maintenance.LockInfo | None = None
        self.drain = maintenance.LockInfo(False)
        self.failures: list[str] = []
        self.sentence = ""
        self.cycles = 0
        self.cycle_ok = True
        self.last_publish_error: str | None = None
        self.watcher: FileWatcher | None = None
        self.runners: dict[str, CheckRunner] = {}
        self.check_states: dict[str, health.CheckState] = {}
        self.check_since: dict[str, float] = {}
        self._results: deque[tuple[str, ProbeResult]] = deque()
        self.haproxy: HaproxyController | None = None
        self.haproxy_status: dict[str, Any] = {}
        self.responder: AgentCheckResponder | None = None
        self.agent_answer: str | None = None  # None: no verdict yet, haproxy keeps its last state
        self.shipper: LokiShipper | None = None
        self.log_tee: Any = None  # the in-memory Loki queue's processor, when there is no journal
        self.shutdown_drain: str | None = None  # set while draining for a shutdown (never persisted)
        self.shutdown_release_at: float | None = None  # monotonic: when the delay lock is let go
        self.inhibitor: Any = None
        self.unit_checks = UnitChecks(self._deliver, self._log_event)  # $DBUS_SYSTEM_BUS_ADDRESS or the system bus
        self.timer: WallTimer | None = None
        self.test_hooks = os.environ.get(TEST_HOOKS_ENV) == "1"
        self.clock_offset = float(os.environ.get(TEST_CLOCK_OFFSET_ENV, "0")) if self.test_hooks else 0.0

    # -- lifecycle -------------------------------------------------------------------------------

    def run(self) -> int:
        """Run until SIGTERM/SIGINT. Return the exit code (0 after a clean stop)."""
        self._install_signals()
        self.timer = WallTimer()
        try:
            self._start_watcher()
        except AgentError as error:
            self.log.error("agent.start_failed", error=str(error))
            return 1
        self._start_loki()
        self._start_checks(self.config.checks)
        self.log.info("agent.started", version=__version__, pid=os.getpid(), node=self.config.agent.node,
                      config=str(self.config_path), notify=self.notifier.enabled,
                      watchdog_interval=self.notifier.watchdog_interval)
        self.cycle(["start"])
        try:
            self._start_haproxy()
            self._start_inhibitor()
        except AgentError as error:
            self.log.error("agent.start_failed", error=str(error))
            self._shutdown()
            return 1
        self._notify(READY="1", STATUS=self.sentence)
        last_ping = 0.0
        last_cycle = time.monotonic()
        try:
            while not self.stopping:
                now = time.monotonic()
                due = [last_cycle + self.config.agent.reconcile_interval]
                ping_every = self._ping_interval()
                if ping_every is not None:
                    due.append(last_ping + ping_every)
                if self.shutdown_release_at is not None:
                    due.append(self.shutdown_release_at)
                reasons, ready = self.wakeup.wait(min(due) - now, (self.timer.fileno(),))
                if ready:
                    reasons.append(self._timer_reason())
                reasons = self._handle_signals(reasons)
                if self.stopping:
                    break
                now = time.monotonic()
                if reasons or now - last_cycle >= self.config.agent.reconcile_interval:
                    self.cycle(reasons or ["backstop"])
                    last_cycle = time.monotonic()
                if self.shutdown_release_at is not None and time.monotonic() >= self.shutdown_release_at:
                    self._release_for_shutdown()
                if ping_every is not None and time.monotonic() - last_ping >= ping_every and self._ping():
                    last_ping = time.monotonic()
        finally:
            self._shutdown()
        return 0

    def _shutdown(self) -> None:
        self._notify(STOPPING="1", STATUS="stopping")
        self.log.info("agent.stopping")
        if self.inhibitor is not None:
            self.inhibitor.stop()
            self.inhibitor = None
        if self.watcher is not None:
            self.watcher.stop()
        self._stop_haproxy()
        self._stop_checks(list(self.runners))
        self.unit_checks.stop()
        self._publish(state="stopped")
        self._stop_loki(flush_timeout=5.0)
        if self.timer is not None:
            self.timer.close()
        self.notifier.close()

    def _install_signals(self) -> None:
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR2):
            signal.signal(signum, self._on_signal)

    def _on_signal(self, signum: int, _frame: Any) -> None:
        self.wakeup.post(f"signal:{signal.Signals(signum).name}")

    def _handle_signals(self, reasons: list[str]) -> list[str]:
        rest = []
        for reason in reasons:
            if reason in ("signal:SIGTERM", "signal:SIGINT"):
                self.log.info("agent.stop_requested", signal=reason.split(":", 1)[1])
                self.stopping = True
            elif reason == "signal:SIGHUP":
                self.reload()
                rest.append("reload")
            elif reason in ("shutdown:prepare", "shutdown:cancelled"):
                self._on_shutdown_signal(reason == "shutdown:prepare")
                rest.append(reason)
            elif reason == "signal:SIGUSR2":
                if self.test_hooks:
                    seconds = float(os.environ.get(TEST_STALL_ENV, "3600"))
                    self.log.warning("agent.test_stall", seconds=seconds)
                    time.sleep(seconds)  # deliberately blind: this is the stall under test
            else:
                rest.append(reason)
        return rest

    def _start_watcher(self) -> None:
        section = self.config.maintenance
        for path in (section.marker, section.lock):
            if not path.parent.is_dir():
                raise AgentError(f"directory {path.parent} does not exist: create it or change "
                                 f"[maintenance] {'marker' if path == section.marker else 'lock'}")
        if not self.config.agent.state_dir.is_dir():
            raise AgentError(f"directory {self.config.agent.state_dir} does not exist: create it or change "
                             "[agent] state_dir")
        watcher = FileWatcher((section.marker, section.lock, drain_path(self.config)), self.wakeup.post)
        try:
            watcher.start()
        except OSError as error:
            raise AgentError(f"cannot watch {section.marker.parent}: {error.strerror or error}") from None
        self.watcher = watcher
        self.liveness.thread("file-watcher", watcher.alive)

    def _timer_reason(self) -> str:
        assert self.timer is not None
        outcome = self.timer.read()
        if outcome == "clock_set":
            self.log.warning("clock.set", detail="the wall clock was set; re-evaluating the schedule")
            return "clock"
        return "boundary" if outcome == "expired" else "timer"

    # -- checks ----------------------------------------------------------------------------------

    def _start_checks(self, specs: tuple[config_module.CheckSpec, ...]) -> None:
        unit_probes = self.unit_checks.configure(self.config.checks)
        if self.unit_checks.connection is not None:
            self.liveness.thread("dbus", self.unit_checks.alive)
        for spec in specs:
            try:
                from .checks.probes import make_probe  # psycopg and redis load only when checks exist

                probe = unit_probes[spec.name] if spec.name in unit_probes else make_probe(spec)
            except Exception as error:
                reason = f"cannot run a {spec.type} check: {type(error).__name__}: {error}"
                self.log.error("check.unavailable", check=spec.name, error=reason)
                probe = _constant(unknown(reason))
            heartbeat = self.liveness.heartbeat(f"check-{spec.name}", spec.interval + spec.timeout + ABORT_GRACE + 5)
            runner = CheckRunner(spec, probe, self._deliver, heartbeat.beat)
            self.runners[spec.name] = runner
            self.liveness.thread(f"check-{spec.name}", runner.alive)
            runner.start()

    def _stop_checks(self, names: list[str]) -> None:
        runners = [self.runners.pop(name) for name in names if name in self.runners]
        for runner in runners:  # all at once, so stopping n checks takes one timeout, not n
            runner.request_stop()
        for runner in runners:
            runner.stop()
            self.liveness.threads.pop(f"check-{runner.spec.name}", None)
            self.liveness.heartbeats.pop(f"check-{runner.spec.name}", None)
            self.check_states.pop(runner.spec.name, None)
            self.check_since.pop(runner.spec.name, None)

    def _log_event(self, event: Event) -> None:
        """Log an event from any thread (the D-Bus thread reports through this)."""
        getattr(self.log, event.level)(event.name, **event.fields)

    def _deliver(self, name: str, result: ProbeResult) -> None:
        """Called from a check's scheduler thread: queue the result and wake the loop."""
        self._results.append((name, result))
        self.wakeup.post(f"check:{name}")

    def _update_checks(self) -> None:
        results = []
        while self._results:
            results.append(self._results.popleft())
        if not results:
            return
        specs = {spec.name: spec for spec in self.config.checks}
        states, events = health.apply_results(self.check_states, results, specs)
        for name, state in states.items():
            if name not in self.check_states or self.check_states[name].state != state.state:
                self.check_since[name] = time.time()
        self.check_states = states
        for event in events:
            getattr(self.log, event.level)(event.name, **event.fields)

    # -- Loki ------------------------------------------------------------------------------------

    def _start_loki(self) -> None:
        section = self.config.loki
        if section is None:
            return
        source, why_not_journal = choose_source(logs.under_journald(sys.stderr))
        if isinstance(source, MemorySource):
            self.log_tee = source.tee
            self._configure_logs()
            self.log.warning("loki.memory_source", reason=why_not_journal,
                             detail="shipping only the agent's own events, through a bounded queue; "
                             "lines are lost if Loki is down longer than the queue lasts")
        heartbeat = self.liveness.heartbeat("loki", heartbeat_deadline(section))
        self.shipper = LokiShipper(section, self.config.agent.node, self.config.agent.state_dir, source,
                                   heartbeat=heartbeat.beat)
        self.liveness.thread("loki", self.shipper.alive)
        self.shipper.start()

    def _stop_loki(self, flush_timeout: float) -> None:
        if self.shipper is not None:
            if not self.shipper.stop(flush_timeout):
                self.log.warning("loki.stop_timeout", detail=f"not everything was sent within {flush_timeout:g} s")
            self.shipper = None
            self.liveness.threads.pop("loki", None)
            self.liveness.heartbeats.pop("loki", None)
        if self.log_tee is not None:
            self.log_tee = None
            self._configure_logs()

    def _configure_logs(self) -> None:
        logs.configure(self.config.log.level, self.config.log.format, tee=self.log_tee)
        self.log = logs.get_logger()

    # -- drain before shutdown ------------------------------------------------------------------

    def _start_inhibitor(self) -> None:
        """Take logind's delay lock when there is something to drain: agent-check or a local server."""
        haproxy = self.config.haproxy
        if self.config.agent_check is None and not (haproxy and any(s.local for s in haproxy.servers)):
            return
        try:
            from .adapters.dbus import ShutdownInhibitor

            connection = self.unit_checks.connect()
            inhibitor = ShutdownInhibitor(self._on_prepare, connection=connection)
            inhibitor.start()
        except DBusUnavailable as error:
            self.log.warning("shutdown_drain.unavailable", error=str(error),
                             detail="the node is not drained before a shutdown; pretix-agentctl drain still works")
            return
        self.inhibitor = inhibitor
        self.liveness.thread("dbus", self.unit_checks.alive)
        self.log.info("shutdown_drain.armed", drain_time=self.config.agent.shutdown_drain_time)

    def _on_prepare(self, shutting_down: bool) -> None:
        """From the D-Bus thread (PrepareForShutdown): only queue and wake."""
        self.wakeup.post("shutdown:prepare" if shutting_down else "shutdown:cancelled")

    def _on_shutdown_signal(self, shutting_down: bool) -> None:
        if shutting_down:
            # Not the drain file: a drain for a reboot must not outlive it, or the node came back drained.
            self.shutdown_drain = "system shutdown"
            self.shutdown_release_at = time.monotonic() + self.config.agent.shutdown_drain_time
            # The logs of the drain go out within it, not after it: logind waits at most
            # InhibitDelayMaxSec for the whole hold.
            if self.shipper is not None:
                self.shipper.request_flush()
            self.log.warning("shutdown_drain.started", seconds=self.config.agent.shutdown_drain_time)
        else:
            self.shutdown_drain = None
            self.shutdown_release_at = None
            self.log.info("shutdown_drain.cancelled", detail="the shutdown was cancelled: this node takes requests")

    def _release_for_shutdown(self) -> None:
        self.shutdown_release_at = None
        if self.shipper is not None:
            self.shipper.request_flush()
        # Logged before the lock goes, so the journal reads in cause-and-effect order.
        self.log.info("shutdown_drain.released", detail="drained; logind may go on with the shutdown")
        if self.inhibitor is not None:
            self.inhibitor.release()

    # -- haproxy and agent-check ---------------------------------------------------------------

    def _start_haproxy(self) -> None:
        section = self.config.haproxy
        if section is not None and self.haproxy is None:
            heartbeat = self.liveness.heartbeat("haproxy", section.interval + 3 * section.timeout + 5)
            self.haproxy = HaproxyController(section, self.config.agent.state_dir, self._haproxy_report,
                                             self._log_event, heartbeat.beat)
            self.liveness.thread("haproxy", self.haproxy.alive)
            self.haproxy.start()
            self._feed_haproxy()
        agent_check = self.config.agent_check
        if agent_check is not None and self.responder is None:
            responder = AgentCheckResponder(agent_check.listen, self._answer)
            responder.start()  # raises AgentCheckError (an AgentError) with one line
            self.responder = responder
            self.liveness.thread("agent-check", responder.alive)
            self.log.info("agent_check.listening", address=agent_check.listen)

    def _stop_haproxy(self) -> None:
        if self.haproxy is not None:
            self.haproxy.stop()
            self.haproxy = None
            self.haproxy_status = {}
            self.liveness.threads.pop("haproxy", None)
            self.liveness.heartbeats.pop("haproxy", None)
        if self.responder is not None:
            self.responder.stop()
            self.responder = None
            self.liveness.threads.pop("agent-check", None)

    def _haproxy_report(self, document: dict[str, Any]) -> None:
        """From the haproxy thread: its latest view; wakes the loop so the status shows it."""
        self.haproxy_status = document
        self.wakeup.post("haproxy")

    def drain_reason(self) -> str | None:
        """Why this node is being drained (a drain request or a shutdown), or None."""
        if self.shutdown_drain is not None:
            return self.shutdown_drain
        if self.drain.present:
            return self.drain.reason or (f"requested by {self.drain.by}" if self.drain.by else "requested")
        return None

    def _feed_haproxy(self) -> None:
        reason = self.drain_reason()
        if self.haproxy is not None:
            self.haproxy.update(self.check_states, reason)
        agent_check = self.config.agent_check
        if agent_check is not None:
            states = [(name, self.check_states.get(name, health.CheckState())) for name in agent_check.checks]
            failing = [f"{name}: {state.last.reason if state.last else state.state}"
                       for name, state in states if state.state == health.FAILING]
            if failing:
                self.agent_answer = agent_answer(False, reason is not None, "; ".join(failing), agent_check.weight)
            elif all(state.state == health.PASSING for _, state in states):
                self.agent_answer = agent_answer(True, reason is not None, reason, agent_check.weight)
            elif reason is not None:
                self.agent_answer = agent_answer(True, True, reason, agent_check.weight)
            else:
                self.agent_answer = None  # checks undecided (the daemon just started): no opinion yet

    def _answer(self) -> str:
        """For the agent-check responder's thread: the prepared answer, or no answer at all."""
        answer = self.agent_answer
        if answer is None:
            raise LookupError("no verdict yet")  # the responder closes without answering
        return answer

    # -- reload ----------------------------------------------------------------------------------

    def reload(self) -> None:
        """Load the configuration again; swap it in only if valid, otherwise keep the old one."""
        self._notify(RELOADING="1", STATUS="reloading configuration",
                     MONOTONIC_USEC=str(time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000))
        try:
            new = config_module.load(self.config_path)
        except ConfigError as error:
            for problem in error.problems:
                self.log.error("config.reload_rejected", problem=str(problem))
            self.log.error("config.reload_failed", config=str(self.config_path),
                           detail="kept the running configuration", problems=len(error.problems))
            self._notify(READY="1", STATUS=f"reload failed, running on the old configuration; {self.sentence}")
            return
        old = self.config
        self.config = new
        self._configure_logs()
        if old.loki != new.loki or old.agent.state_dir != new.agent.state_dir:
            self._stop_loki(flush_timeout=2.0)  # the cursor makes the hand-over lossless
            self._start_loki()
        elif self.shipper is not None:
            self.shipper.reload_credentials()
        if (old.maintenance.marker, old.maintenance.lock, old.agent.state_dir) != (
                new.maintenance.marker, new.maintenance.lock, new.agent.state_dir):
            try:
                if self.watcher is not None:
                    self.watcher.stop()
                self._start_watcher()
            except AgentError as error:
                self.log.error("config.reload_failed", error=str(error), detail="kept the running configuration")
                self.config = old
                self._start_watcher()
        old_checks = {spec.name: spec for spec in old.checks}
        new_checks = {spec.name: spec for spec in self.config.checks}
        changed = [name for name, spec in old_checks.items() if new_checks.get(name) != spec]
        self._stop_checks(changed)
        self._start_checks(tuple(spec for name, spec in new_checks.items() if old_checks.get(name) != spec))
        if (old.haproxy, old.agent_check, old.agent.state_dir) != (new.haproxy, new.agent_check, new.agent.state_dir):
            self._stop_haproxy()
            try:
                self._start_haproxy()
            except AgentError as error:
                self.log.error("config.reload_incomplete", error=str(error),
                               detail="haproxy control or the agent-check responder is off until fixed")
        self.log.info("config.reloaded", config=str(self.config_path))
        self.cycle(["reload"])
        self._notify(READY="1", STATUS=self.sentence)

    # -- one cycle -------------------------------------------------------------------------------

    def schedule(self) -> Schedule:
        section = self.config.maintenance
        return Schedule(section.windows, section.timezone)

    def cycle(self, reasons: list[str]) -> None:
        """Observe, decide, act, publish. A bug here is logged and reported, never fatal."""
        self.cycles += 1
        try:
            now = datetime.now(timezone.utc) + timedelta(seconds=self.clock_offset)
            observation = observe.maintenance_files(self.config.maintenance, now)
            decision = maintenance.decide(self.schedule(), observation, self.previous)
            self.failures = apply_maintenance(self.config.maintenance, decision, now, self.config.agent.node,
                                              self.log)
            if not self.failures:
                self.previous = decision.state
            self.decision = decision
            self.lock = observation.lock
            self.drain = observe.drain_file(drain_path(self.config))
            self._arm_timer(decision)
            self._update_checks()
            sentence = decision.sentence + (f"; FAILED: {self.failures[0]}" if self.failures else "")
            checks = health.summary(self.check_states if len(self.check_states) == len(self.runners) else {
                **{name: health.CheckState() for name in self.runners}, **self.check_states})
            if checks:
                sentence += f"; {checks}"
            self._feed_haproxy()
            if self.haproxy_status.get("sentence"):
                sentence += f"; {self.haproxy_status['sentence']}"
            if self.drain_reason() is not None:
                sentence += f"; draining: {self.drain_reason()}"
            self.cycle_ok = True
        except Exception as error:  # a bug: keep the daemon up, stop vouching for it to systemd
            self.cycle_ok = False
            self.log.exception("loop.cycle_failed", error=f"{type(error).__name__}: {error}")
            sentence = f"cycle failed: {type(error).__name__}: {error}"
        if sentence != self.sentence:
            self.log.info("loop.decided", sentence=sentence, trigger=",".join(reasons))
            self.sentence = sentence
            self._notify(STATUS=sentence)
        self._publish(state="running")

    def _arm_timer(self, decision: maintenance.Decision) -> None:
        if self.timer is not None:
            boundary = decision.next_boundary
            self.timer.arm(boundary.timestamp() - self.clock_offset if boundary is not None else None)

    # -- status and notification -----------------------------------------------------------------

    def status_document(self, state: str) -> dict[str, Any]:
        now = time.time()
        section = self.config.maintenance
        document: dict[str, Any] = {
            "format": status.FORMAT,
            "state": state,
            "written_at": datetime.fromtimestamp(now, timezone.utc).isoformat(timespec="milliseconds"),
            "written_at_unix": now,
            "stale_after": 3 * self.config.agent.reconcile_interval + 5,
            "node": self.config.agent.node,
            "pid": os.getpid(),
            "version": __version__,
            "started_at": datetime.fromtimestamp(self.started_at, timezone.utc).isoformat(timespec="seconds"),
            "config": str(self.config_path),
            "sentence": self.sentence,
            "cycles": self.cycles,
            "healthy": self.cycle_ok and not self.liveness.unhealthy(time.monotonic()),
        }
        document["checks"] = {name: check_status(runner.spec, self.check_states.get(name, health.CheckState()),
                                                 self.check_since.get(name))
                              for name, runner in sorted(self.runners.items())}
        if self.shipper is not None:
            document["loki"] = self.shipper.status()
        if self.config.haproxy is not None:
            document["haproxy"] = {"socket": self.config.haproxy.socket, **self.haproxy_status}
        if self.config.agent_check is not None:
            document["agent_check"] = {"listen": self.config.agent_check.listen, "answer": self.agent_answer,
                                       "answered": self.responder.answered if self.responder else 0}
        document["drain"] = {"present": self.drain.present, "by": self.drain.by, "at": self.drain.at,
                             "reason": self.drain.reason, "id": self.drain.lock_id, "problem": self.drain.problem,
                             "file": str(drain_path(self.config))}
        document["maintenance"] = maintenance_status(section, self.decision, self.failures, self.previous,
                                                     self.lock)
        return document

    def _publish(self, state: str) -> None:
        try:
            status.publish(self.config.agent.status_file, self.status_document(state))
            self.last_publish_error = None
        except FileWriteError as error:
            if str(error) != self.last_publish_error:
                self.log.error("status.publish_failed", error=str(error))
            self.last_publish_error = str(error)

    def _notify(self, **fields: str) -> None:
        if self.notifier.send(**fields) is False and self.notifier.last_error:
            self.log.warning("systemd.notify_failed", error=self.notifier.last_error)

    def _ping_interval(self) -> float | None:
        interval = self.notifier.watchdog_interval
        return interval / 2 if interval else None

    def _ping(self) -> bool:
        """Send WATCHDOG=1 only if the main loop's last cycle worked and every worker made progress."""
        unhealthy = self.liveness.unhealthy(time.monotonic())
        if unhealthy or not self.cycle_ok:
            self.log.error("systemd.watchdog_withheld", unhealthy=",".join(unhealthy) or "main loop")
            return False
        self._notify(WATCHDOG="1")
        return True


def maintenance_status(section: config_module.MaintenanceSection, decision: maintenance.Decision | None,
                       failures: list[str], state: maintenance.State | None,
                       lock: maintenance.LockInfo | None) -> dict[str, Any]:
    """Return the `maintenance` section of the status document."""
    out: dict[str, Any] = {"marker": str(section.marker), "lock_file": str(section.lock),
                           "timezone": section.timezone.key, "windows": [
                               {"start": str(w.start), "end": str(w.end)} for w in section.windows]}
    if decision is None:
        return out

    def moment(value: datetime | None) -> dict[str, str] | None:
        if value is None:
            return None
        return {"utc": value.astimezone(timezone.utc).isoformat(timespec="seconds"),
                "local": value.astimezone(section.timezone).isoformat(timespec="seconds")}

    out.update({
        "on": decision.state.on,
        "cause": decision.state.cause,
        "applied": not failures and state == decision.state,
        "errors": failures,
        "inside_window": decision.inside_window,
        "window_until": moment(decision.window_until),
        "next_change": moment(decision.next_change),
        "sentence": decision.sentence,
        "lock": None if lock is None else {
            "present": lock.present, "id": lock.lock_id, "by": lock.by, "at": lock.at,
            "reason": lock.reason, "host": lock.host, "problem": lock.problem},
    })
    return out


def check_status(spec: config_module.CheckSpec, state: health.CheckState, since: float | None) -> dict[str, Any]:
    """Return one check's entry in the `checks` section of the status document."""
    last = state.last
    return {
        "type": spec.type, "state": state.state,
        "since": None if since is None else datetime.fromtimestamp(since, timezone.utc).isoformat(timespec="seconds"),
        "reason": None if last is None else last.reason,
        "outcome": None if last is None else last.outcome,
        "hard": None if last is None else last.hard,
        "values": {} if last is None else dict(last.values),
        "probes": state.probes, "interval": spec.interval, "timeout": spec.timeout, "fall": spec.fall,
        "rise": spec.rise,
    }


def _constant(result: ProbeResult) -> Callable[[Any], ProbeResult]:
    return lambda _deadline: result
