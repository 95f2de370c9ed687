"""The cluster as the daemon runs it: the worker talks to PostgreSQL, the loop mirrors and reports.

Runs before the maintenance controller, so a cluster lock mirrored into the lock file is acted on
(the marker written) in the same cycle. Every database call happens on the worker's thread
(worker.py); this controller only hands over this node's row and ctl's requests, reads the worker's
latest report, and keeps the local lock file and the status section right. A cycle is triggered by
the worker's reports (a NOTIFY, a heartbeat), by the request file (inotify), and by the others.

The maintenance and haproxy sections of the status (what this node publishes about itself) come
from functions the daemon passes in: the last cycle's, so a change shows in the row one cycle later,
which is the very next cycle, since writing the marker wakes the loop.
"""

from __future__ import annotations

import json
import os
import stat
import time
from collections import deque
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from .. import status
from ..adapters import files
from ..config import ClusterSection, Config
from ..controller import Change, Controller, Facts, Services, Swap, Worker
from ..errors import AgentError, ConfigError, ConfigProblem, FileWriteError
from ..events import Event
from ..maintenance.decide import CLUSTER_ORIGIN, encode_lock
from ..maintenance.files import read_lock
from ..redact import redact_text
from .decide import Memory, Observation, Plan, ReplaceLock, Seen, WriteLock, plan
from .model import FAILING, SCHEMA_MISSING, UNREACHABLE, ClusterLock, NodeState, Outcome, Report, Request, iso
from .node import node_state
from .request import memory_path, parse, request_path

if TYPE_CHECKING:
    from ..adapters.inotify import FileWatcher

KEEP_HANDLED = 64


class ClusterWorkerLike(Protocol):
    def start(self) -> None: ...

    def stop(self) -> None: ...

    def alive(self) -> bool: ...

    def publish(self, state: NodeState) -> None: ...

    def submit(self, request: Request) -> None: ...


# (settings, report, beat, wall clock) -> worker
WorkerFactory = Callable[[ClusterSection, Callable[[Report], None], Callable[[], None], Callable[[], float]],
                         ClusterWorkerLike]


def real_worker(settings: ClusterSection, report: Callable[[Report], None], beat: Callable[[], None],
                wall: Callable[[], float]) -> ClusterWorkerLike:
    from .store import ClusterStore  # psycopg loads only where a cluster is configured
    from .worker import ClusterWorker

    return ClusterWorker(settings, ClusterStore(settings, wall), report, beat, wall=wall)


def longest_pass(settings: ClusterSection) -> float:
    """How long the worker may go without a beat before it counts as stuck: a heartbeat's wait, a
    connection walking every host, a request and the read after it, each call at most `timeout`;
    and a margin, since a daemon restarted for a slow database would interrupt maintenance mode."""
    from .store import CALLS_PER_HOST, host_dsns

    hosts = len(host_dsns(settings.dsn, settings.passfile))
    return settings.heartbeat_interval + (hosts * CALLS_PER_HOST + 3) * settings.timeout + 5


def load_memory(path: Path) -> Memory:
    state = files.read_small(path)
    if not state.present or state.content is None:
        return Memory()
    try:
        document = json.loads(state.content)
    except (UnicodeDecodeError, ValueError):
        return Memory()
    if not isinstance(document, dict):
        return Memory()

    def text(key: str) -> str | None:
        value = document.get(key)
        return value if isinstance(value, str) and value else None

    return Memory(mirrored=text("mirrored"), dismissed=text("dismissed"))


class ClusterController(Controller[Observation, Plan]):
    name = "cluster"
    section = "cluster"

    def __init__(self, services: Services, clock_offset: float = 0.0,
                 maintenance: Callable[[], status.Maintenance | None] = lambda: None,
                 haproxy: Callable[[], status.Haproxy | None] = lambda: None,
                 worker_factory: WorkerFactory = real_worker):
        super().__init__(services)
        self.clock_offset = clock_offset  # test hook: the daemon's wall clock is shifted by this
        self.maintenance, self.haproxy = maintenance, haproxy
        self.worker_factory = worker_factory
        self.config: Config | None = None
        self.settings: ClusterSection | None = None
        self.worker: ClusterWorkerLike | None = None
        self.watcher: FileWatcher | None = None
        self.report: Report | None = None
        self.memory = Memory()
        self.handed: NodeState | None = None
        self.handled: deque[str] = deque(maxlen=KEEP_HANDLED)
        self.pending: deque[Request] = deque(maxlen=KEEP_HANDLED)
        self.refused: deque[Outcome] = deque(maxlen=KEEP_HANDLED)
        self.announced: frozenset[str] = frozenset()
        self.known: frozenset[tuple[str, str]] = frozenset()
        self.connection: str | None = None
        self.plan: Plan | None = None
        self.failures: dict[str, str] = {}  # what failed to be written, said once per episode
        self.unsaved: Memory | None = None  # the mirror's memory, to be written to its file
        self.started_at = time.time() + clock_offset

    def wall(self) -> float:
        return time.time() + self.clock_offset

    # -- configuration ---------------------------------------------------------------------------

    @classmethod
    def check(cls, config: Config) -> list[ConfigProblem]:
        section = config.cluster
        if section is None:
            return []
        problems = []
        if not config.agent.state_dir.is_dir():
            problems.append(config.problem(("agent", "state_dir"), f"directory {config.agent.state_dir} does not "
                                           "exist: create it or change [agent] state_dir"))
        if section.passfile is not None:
            try:
                mode = os.stat(section.passfile).st_mode
            except OSError:  # not there (yet: a systemd credential exists only for the service) or hidden
                mode = None
            if mode is not None and mode & (stat.S_IRWXG | stat.S_IRWXO):
                problems.append(config.problem(("cluster", "passfile"), f"{section.passfile} is accessible to its "
                                               f"group or others (mode {stat.S_IMODE(mode):04o}): make it 0600 and "
                                               "owned by the daemon's user (libpq ignores it otherwise, and the "
                                               "operators must not read it)"))
        return problems

    def prepare(self, config: Config) -> Change:
        problems = self.check(config)
        if problems:
            raise ConfigError(problems)
        new = config.cluster
        if new is None:
            return Swap(lambda: self._switch(config, None, None))
        if self.settings == new and self.config is not None and request_path(self.config) == request_path(config):
            return Swap(lambda: self._adopt(config))
        from ..adapters.inotify import FileWatcher  # watchdog loads only when the daemon runs

        watcher = FileWatcher((request_path(config),), self.services.wake)
        try:
            watcher.start()
        except OSError as error:
            raise AgentError(f"cannot watch {config.agent.state_dir}: {error.strerror or error}") from None
        beat = Worker("cluster", lambda: True, longest_pass(new))
        worker = self.worker_factory(new, self._reported, beat.beat, self.wall)
        beat.alive = worker.alive

        def discard() -> None:
            watcher.stop()
            worker.stop()  # never started: this only closes what it opened

        return Swap(lambda: self._switch(config, (watcher, worker), beat), discard)

    def _switch(self, config: Config, opened: tuple[FileWatcher, ClusterWorkerLike] | None,
                beat: Worker | None) -> None:
        if self.unsaved is not None and self.config is not None:
            self._save_memory(self.config, self.unsaved)
        self._stop_all()
        self._adopt(config)
        self.settings = config.cluster
        self.report, self.handed, self.connection, self.known = None, None, None, frozenset()
        if opened is None:
            return
        self.watcher, self.worker = opened
        self.memory = load_memory(memory_path(config))
        self.workers.add("cluster-request-watcher", self.watcher.alive)
        assert beat is not None
        self.workers.put(beat)
        self.worker.start()

    def _adopt(self, config: Config) -> None:
        self.config = config

    def _reported(self, report: Report) -> None:
        """From the worker's thread: keep its latest word and wake the loop to act on it."""
        self.report = report
        self.services.wake("cluster")

    # -- one cycle -------------------------------------------------------------------------------

    def reconcile(self, facts: Facts) -> tuple[Facts, str]:
        if self.settings is None:
            return facts, ""
        return super().reconcile(facts)

    def observe(self, facts: Facts) -> Observation:
        config, settings = self.config, self.settings
        assert config is not None and settings is not None
        file = read_lock(config.maintenance.lock)
        seen: Seen | None = None
        request_state = files.read_small(request_path(config))
        if request_state.present:
            seen = parse(request_state.content, request_state.error)
        node = node_state(config, self.maintenance(), self.haproxy(), facts.checks, file, self.memory.dismissed,
                          self.started_at)
        return Observation(now=facts.now.timestamp(), report=self.report, file=file, memory=self.memory, node=node,
                           handed=self.handed, request=seen, handled=frozenset(self.handled),
                           announced=self.announced, known=self.known, connection=self.connection,
                           max_clock_skew=settings.max_clock_skew)

    def decide(self, observation: Observation) -> Plan:
        return plan(observation)

    def act(self, decision: Plan, facts: Facts) -> Facts:
        config = self.config
        assert config is not None
        if self.unsaved is not None:
            self._save_memory(config, self.unsaved)
        memory = self._mirror(config, decision)
        if memory != self.memory:
            # Written at the start of the next cycle (which the lock file's change brings at once),
            # not now: this cycle's marker is what the shop waits for, and the memory only matters
            # if the lock file changes while the daemon is down.
            self.memory = self.unsaved = memory
        if decision.hand is not None and self.worker is not None:
            self.handled.append(decision.hand.id)
            self.pending.append(decision.hand)
            self.worker.submit(decision.hand)  # before the file is removed: its fsync can wait
        if decision.remove_request:
            self._attempt("request", lambda: files.remove(request_path(config)))
        if decision.refused is not None:
            self.handled.append(decision.refused.id)
            self.refused.append(decision.refused)
        if decision.publish is not None and self.worker is not None:
            self.worker.publish(decision.publish)
            self.handed = decision.publish
        for event in decision.events:
            self.services.emit(event)
        self.announced, self.known, self.connection = decision.announced, decision.known, decision.connection
        self.plan = decision
        return facts

    def _mirror(self, config: Config, decision: Plan) -> Memory:
        """Carry out the mirror's action on the lock file; return the memory that is now true."""
        action, memory = decision.mirror.action, decision.mirror.memory
        path = config.maintenance.lock
        if action is None:
            return memory
        if isinstance(action, WriteLock | ReplaceLock):
            content = mirrored_lock(action.lock)
            if isinstance(action, WriteLock):
                written = self._attempt("lock", lambda: files.create_exclusive(path, content))
            else:  # look again just before: an operator's lock written meanwhile must stay
                current = read_lock(path)
                still = current.origin == CLUSTER_ORIGIN and current.lock_id == action.expected
                written = still and self._attempt("lock", lambda: _done(files.write_atomic, path, content))
            # Not written (failed, or a lock of someone else's appeared): the next cycle decides again.
            return memory if written else Memory(None, memory.dismissed)
        current = read_lock(path)
        still = current.origin == CLUSTER_ORIGIN and current.lock_id == action.expected
        if still and not self._attempt("lock", lambda: _done(files.remove, path)):
            return Memory(action.expected, memory.dismissed)
        return memory

    def _attempt(self, what: str, operation: Callable[[], Any]) -> bool:
        """Run a file operation; log a failure once per episode. Return its result (False if it failed)."""
        try:
            result = bool(operation())
        except FileWriteError as error:
            if self.failures.get(what) != str(error):
                self.services.emit(Event("cluster.file_failed", "error", {"file": what, "error": str(error)}))
            self.failures[what] = str(error)
            return False
        if self.failures.pop(what, None) is not None:
            self.services.emit(Event("cluster.file_recovered", "info", {"file": what}))
        return result

    def _save_memory(self, config: Config, memory: Memory) -> None:
        document = {"mirrored": memory.mirrored, "dismissed": memory.dismissed}
        data = (json.dumps(document) + "\n").encode()
        # Kept in memory either way: a failed write only costs the memory across a restart.
        self._attempt("memory", lambda: _done(files.write_atomic, memory_path(config), data))
        self.unsaved = None

    # -- reporting -------------------------------------------------------------------------------

    def degraded(self) -> list[str]:
        report = self.report
        if self.settings is None or report is None or report.state not in (UNREACHABLE, SCHEMA_MISSING, FAILING):
            return []
        since = iso(report.failing_since) or "now"
        return [f"cluster view stale since {since}: {report.error}; this node keeps its lock as it is"]

    def status(self) -> status.Cluster | None:
        if self.settings is None or self.config is None:
            return None
        return cluster_status(self.settings, self.config, self.report, self.plan, self.memory,
                              list(self.pending), list(self.refused))

    def _stop_all(self) -> None:
        if self.worker is not None:
            self.worker.stop()
            self.worker = None
            self.workers.remove("cluster")
        if self.watcher is not None:
            self.watcher.stop()
            self.watcher = None
            self.workers.remove("cluster-request-watcher")

    def stop(self) -> None:
        if self.unsaved is not None and self.config is not None:
            self._save_memory(self.config, self.unsaved)
        self._stop_all()


def _done(operation: Callable[..., object], *arguments: object) -> bool:
    """Run a file operation whose success is not raising (its return value says something else)."""
    operation(*arguments)
    return True


def mirrored_lock(lock: ClusterLock) -> bytes:
    """The lock file's content for the mirrored cluster lock: the lock's own who, when and why."""
    return encode_lock(lock.id, lock.by, datetime.fromtimestamp(lock.at, timezone.utc), lock.reason, lock.host,
                       origin=CLUSTER_ORIGIN)


def _lock(lock: ClusterLock | None) -> status.ClusterLock | None:
    if lock is None:
        return None
    return status.ClusterLock(id=lock.id, by=lock.by, at=iso(lock.at) or "", reason=lock.reason, host=lock.host)


def cluster_status(settings: ClusterSection, config: Config, report: Report | None, decided: Plan | None,
                   memory: Memory, pending: list[Request], refused: list[Outcome]) -> status.Cluster:
    """Return the `cluster` section of the status document."""
    report = report or Report("connecting")
    view = report.view
    problems = decided.problems if decided is not None else ()
    by_node: dict[str, list[str]] = {}
    for problem in problems:
        by_node.setdefault(problem.node, []).append(problem.text)
    nodes = []
    for row in view.nodes if view is not None else ():
        state = row.state
        nodes.append(status.ClusterNode(
            node=state.node, seen_at=iso(row.seen_at) or "", age=round(view.age(row), 3) if view else 0.0,
            heartbeat_interval=state.heartbeat_interval, version=state.version, roles=list(state.roles),
            maintenance=state.maintenance, cause=state.cause, locked=state.locked,
            cluster_lock_id=state.cluster_lock_id, dismissed=state.dismissed,
            failing_checks=list(state.failing_checks), haproxy=list(state.haproxy), windows=list(state.windows),
            timezone=state.timezone, windows_digest=state.windows_digest,
            clock_offset=None if row.clock_offset is None else round(row.clock_offset, 4),
            problems=by_node.get(state.node, [])))
    outcomes = {outcome.id: outcome for outcome in (*refused, *report.outcomes)}
    requests = [status.ClusterRequest(id=request.id, action=request.action, state="pending")
                for request in pending if request.id not in outcomes]
    requests += [status.ClusterRequest(id=o.id, action=o.action, state="done" if o.ok else "failed", detail=o.detail,
                                       changed=o.changed, lock=_lock(o.lock))
                 for o in sorted(outcomes.values(), key=lambda outcome: outcome.done_at)]
    return status.Cluster(
        name=settings.name, database=redact_text(settings.dsn), heartbeat_interval=settings.heartbeat_interval,
        listen=settings.listen, state=report.state, request_file=str(request_path(config)), server=report.server,
        error=report.error, stale_since=iso(report.failing_since),
        view_at=iso(report.view_at), view_at_unix=report.view_at,
        locked=None if view is None else view.lock is not None, lock=_lock(view.lock if view else None),
        mirror=decided.mirror.clause if decided is not None else "", dismissed=memory.dismissed,
        nodes=nodes, problems=[problem.line() for problem in problems], requests=requests)
