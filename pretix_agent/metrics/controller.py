"""Metrics as the daemon runs them: a snapshot per cycle, served by a thread, written for node_exporter.

The controller runs after every controller that decides (before logs, which is stopped last), so its
snapshot, the status document as it would be published now, holds what this cycle found. Keeping
it is one reference assignment; rendering happens at a scrape, in the listener's thread, or for the
textfile at most every TEXTFILE_INTERVAL (each write is fsynced; node_exporter reads the file only
when it is scraped itself, and reports its mtime, so a stopped agent shows as a stale file).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .. import status
from ..adapters import files
from ..config import Config, MetricsSection, split_host_port
from ..controller import Change, Controller, Facts, Services, Swap
from ..errors import ConfigError, ConfigProblem, FileWriteError
from ..events import Event
from . import exposition
from .model import families
from .sections import SECTIONS
from .server import MetricsServer, NotReady

TEXTFILE_INTERVAL = 5.0


@dataclass(frozen=True)
class Observed:
    document: status.Document | None
    textfile: Path | None
    now: float  # monotonic
    written_at: float | None  # monotonic time of the last textfile write (or attempt)


@dataclass(frozen=True)
class Publish:
    document: status.Document | None  # the new snapshot (None: keep the old one)
    write_textfile: bool
    due: float | None  # when a cycle must run to write the textfile with what is pending
    sentence: str = ""  # metrics decide nothing about the node: no clause in the daemon's sentence


def plan(seen: Observed) -> Publish:
    """Pure: keep the new snapshot; write the textfile now if the last write is TEXTFILE_INTERVAL old,
    else ask for a cycle when it will be."""
    if seen.textfile is None or seen.document is None:
        return Publish(seen.document, False, None)
    if seen.written_at is None or seen.now - seen.written_at >= TEXTFILE_INTERVAL:
        return Publish(seen.document, True, None)
    return Publish(seen.document, False, seen.written_at + TEXTFILE_INTERVAL)


class MetricsController(Controller[Observed, Publish]):
    name = "metrics"
    section = "metrics"

    def __init__(self, services: Services):
        super().__init__(services)
        self.settings: MetricsSection | None = None
        self.server: MetricsServer | None = None
        self.snapshot: status.Document | None = None  # read by the listener's threads
        self._rendered: tuple[status.Document, bytes] | None = None
        self._process: Any = None
        self.written_at: float | None = None
        self.written_wall: float | None = None
        self.textfile_error: str | None = None
        self._due: float | None = None

    @classmethod
    def check(cls, config: Config) -> list[ConfigProblem]:
        import socket

        section = config.metrics
        if section is None:
            return []
        problems = []
        if section.listen:
            host, port = split_host_port(section.listen)
            try:
                socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
            except (OSError, UnicodeError) as error:
                problems.append(config.problem(("metrics", "listen"), f"cannot resolve {host}: {error}"))
        if section.textfile is not None and not section.textfile.parent.is_dir():
            problems.append(config.problem(("metrics", "textfile"), f"directory {section.textfile.parent} does not "
                                           "exist: create it (node_exporter's --collector.textfile.directory) or "
                                           "change it"))
        return problems

    def prepare(self, config: Config) -> Change:
        problems = self.check(config)
        if problems:
            raise ConfigError(problems)
        new = config.metrics
        listen = new.listen if new is not None else ""
        old_listen = self.settings.listen if self.settings is not None else ""
        if listen == old_listen and (self.server is not None or not listen):
            return Swap(lambda: self._adopt(new))
        server = None
        if listen:
            server = MetricsServer(listen, self.exposition)
            server.bind()  # MetricsError (one line) refuses the configuration

        def commit() -> None:
            self._stop_server()
            self.server = server
            self._adopt(new)
            if server is not None:
                server.start()
                self.workers.add("metrics", server.alive)
                self.services.emit(Event("metrics.listening", "info", {"address": listen, "path": "/metrics"}))

        return Swap(commit, server.stop if server is not None else lambda: None)

    def _adopt(self, section: MetricsSection | None) -> None:
        old = self.settings.textfile if self.settings is not None else None
        self.settings = section
        if (section.textfile if section is not None else None) != old:
            self.written_at, self.written_wall, self.textfile_error, self._due = None, None, None, None
            if old is not None:
                self._remove(old)

    def _remove(self, path: Path) -> None:
        """A textfile the configuration no longer names goes: node_exporter would serve it, stale, forever.
        (At a stop it stays: its age is how Prometheus tells that the agent stopped.)"""
        try:
            files.remove(path)
        except FileWriteError as error:
            self.services.emit(Event("metrics.textfile_failed", "error", {"error": str(error)}))

    # -- the cycle -------------------------------------------------------------------------------

    def observe(self, facts: Facts) -> Observed:
        textfile = self.settings.textfile if self.settings is not None else None
        return Observed(self.services.document(), textfile, facts.monotonic, self.written_at)

    def decide(self, observation: Observed) -> Publish:
        return plan(observation)

    def act(self, decision: Publish, facts: Facts) -> Facts:
        if decision.document is not None:
            self.snapshot = decision.document
        self._due = decision.due
        if decision.write_textfile and decision.document is not None:
            self._write_textfile(decision.document, facts.monotonic)
        return facts

    def reconcile(self, facts: Facts) -> tuple[Facts, str]:
        if self.settings is None:
            return facts, ""
        return super().reconcile(facts)

    def due(self) -> float | None:
        return self._due

    # -- rendering -------------------------------------------------------------------------------

    def agent_text(self, document: status.Document) -> bytes:
        """The agent's own metrics for `document`, in Prometheus's text format."""
        rendered = self._rendered
        if rendered is not None and rendered[0] is document:
            return rendered[1]
        text = exposition.render(families(document, SECTIONS))
        self._rendered = (document, text)
        return text

    def exposition(self) -> bytes:
        """For the listener's threads: the latest snapshot's metrics and this process's (CPU, memory)."""
        document = self.snapshot
        if document is None:
            raise NotReady()
        if self._process is None:
            self._process = exposition.process_collector()
        return self.agent_text(document) + exposition.render([], [self._process])

    def _write_textfile(self, document: status.Document, now: float) -> None:
        assert self.settings is not None and self.settings.textfile is not None
        path = self.settings.textfile
        self.written_at = now
        try:
            # World-readable: node_exporter runs as another user; the metrics hold no secret.
            files.write_atomic(path, self.agent_text(document), mode=0o644)
        except FileWriteError as error:
            if str(error) != self.textfile_error:
                self.services.emit(Event("metrics.textfile_failed", "error", {"error": str(error)}))
            self.textfile_error = str(error)
            return
        if self.textfile_error is not None:
            self.services.emit(Event("metrics.textfile_recovered", "info", {"file": str(path)}))
        self.textfile_error = None
        self.written_wall = time.time()

    # -- status ----------------------------------------------------------------------------------

    def status(self) -> status.Metrics | None:
        if self.settings is None:
            return None
        written = self.written_wall
        return status.Metrics(
            listen=self.settings.listen or None,
            textfile=str(self.settings.textfile) if self.settings.textfile is not None else None,
            scrapes=self.server.scrapes if self.server is not None else 0,
            textfile_written_at=None if written is None else datetime.fromtimestamp(written, timezone.utc).isoformat(
                timespec="seconds"),
            textfile_error=self.textfile_error)

    def degraded(self) -> list[str]:
        if self.textfile_error is None:
            return []
        return [f"the metrics textfile is not written: {self.textfile_error}"]

    def _stop_server(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None
            self.workers.remove("metrics")

    def stop(self) -> None:
        self._stop_server()
