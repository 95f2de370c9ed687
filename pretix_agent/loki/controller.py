"""Logging and Loki shipping as the daemon runs them.

The log level and format are switched here, at commit, and nowhere else: a reload that is refused
keeps the old level and the old Loki target, because nothing is switched before every controller
has prepared the new configuration.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

from .. import shapes, status
from ..adapters import logs
from ..config import Config, LokiSection
from ..controller import Change, Controller, Facts, Services, Swap, Worker
from ..events import Event
from .memory import MemorySource
from .shipper import LokiShipper, choose_source, heartbeat_deadline


@dataclass(frozen=True)
class Flush:
    now: bool  # something (a shutdown drain) wants what is buffered sent without waiting
    sentence: str = ""


class LogsController(Controller[bool, Flush]):
    name = "logs"
    section = "loki"

    def __init__(self, services: Services):
        super().__init__(services)
        self.key: tuple[Any, ...] | None = None  # what the running shipper was made for
        self.shipper: LokiShipper | None = None
        self.tee: Any = None  # the in-memory queue's processor, when there is no journal to ship from

    def prepare(self, config: Config) -> Change:
        section, level, fmt = config.loki, config.log.level, config.log.format
        key = (section, config.agent.state_dir, config.agent.node)
        if key == self.key:
            def keep() -> None:
                logs.configure(level, fmt, tee=self.tee)
                if self.shipper is not None:
                    self.shipper.reload_credentials()
            return Swap(keep)
        shipper, tee, why_not_journal = None, None, None
        if section is not None:
            source, why_not_journal = choose_source(logs.under_journald(sys.stderr))
            tee = source.tee if isinstance(source, MemorySource) else None
            shipper = LokiShipper(section, config.agent.node, config.agent.state_dir, source)

        def switch() -> None:
            self._stop_shipper(flush_timeout=2.0)  # the journal cursor makes the hand-over lossless
            self.key, self.shipper, self.tee = key, shipper, tee
            logs.configure(level, fmt, tee=tee)
            if shipper is not None:
                assert section is not None
                self._start(shipper, section, why_not_journal)

        return Swap(switch)

    def _start(self, shipper: LokiShipper, section: LokiSection, why_not_journal: str | None) -> None:
        if why_not_journal is not None:
            self.services.emit(Event("loki.memory_source", "warning", {
                "reason": why_not_journal, "detail": "shipping only the agent's own events, through a bounded "
                "queue; lines are lost if Loki is down longer than the queue lasts"}))
        worker = Worker("loki", shipper.alive, heartbeat_deadline(section))
        shipper.heartbeat = worker.beat
        self.workers.put(worker)
        shipper.start()

    def _stop_shipper(self, flush_timeout: float) -> None:
        if self.shipper is None:
            return
        if not self.shipper.stop(flush_timeout):
            self.services.emit(Event("loki.stop_timeout", "warning", {
                "detail": f"not everything was sent within {flush_timeout:g} s"}))
        self.shipper = None
        self.workers.remove("loki")

    def observe(self, facts: Facts) -> bool:
        return facts.flush_logs

    def decide(self, observation: bool) -> Flush:
        return Flush(observation and self.shipper is not None)

    def act(self, decision: Flush, facts: Facts) -> Facts:
        if decision.now and self.shipper is not None:
            self.shipper.request_flush()
        return facts

    def status(self) -> status.Loki | None:
        if self.shipper is None:
            return None
        loki: status.Loki = shapes.decode(status.Loki, self.shipper.status())
        return loki

    def stop(self) -> None:
        self._stop_shipper(flush_timeout=5.0)
