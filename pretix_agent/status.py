"""The status document: what the daemon publishes for pretix-agentctl, typed, and how ctl judges it.

One set of frozen dataclasses describes the document; the daemon's controllers each build their
section, the daemon writes it (adapters/status_file.py), and ctl reads it back through the same
classes (`parse`),
every value checked, so ctl never formats a value of the wrong type (a hand-edited file, another
version) and never needs a default scattered through its code.

The document is versioned (`format`) and carries `written_at_unix` as wall-clock Unix time.
Staleness is judged by comparing that with the reader's wall clock (never with a monotonic clock,
whose zero is boot and means nothing in a file), against `stale_after`, which the daemon derives
from how often it promises to publish.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from . import shapes
from .errors import StatusUnavailable

FORMAT = 1


# ---------------------------------------------------------------------------------------------
# The document.


@dataclass(frozen=True)
class Moment:
    """An instant shown to people: in UTC and in the maintenance time zone (ISO 8601)."""

    utc: str
    local: str


@dataclass(frozen=True)
class Holder:
    """Who holds a lock or asked for a drain, when and why, as its file says (all optional: an
    empty file from `touch` is a valid lock). `problem` says why the content could not be read."""

    present: bool = False
    id: str | None = None
    by: str | None = None
    at: str | None = None
    reason: str | None = None
    host: str | None = None
    problem: str | None = None
    origin: str | None = None  # "cluster" for a lock mirrored from the cluster lock, else None


@dataclass(frozen=True)
class WindowText:
    start: str
    end: str


@dataclass(frozen=True)
class Maintenance:
    marker: str
    lock_file: str
    timezone: str
    windows: list[WindowText] = field(default_factory=list)
    watch: str = "ok"  # "ok", or why file changes are not seen at once (the backstop still runs)
    # The rest exists once the daemon decided at least once.
    on: bool | None = None
    cause: str | None = None  # lock, window, hand_edit
    applied: bool | None = None
    errors: list[str] = field(default_factory=list)
    inside_window: bool | None = None
    window_until: Moment | None = None
    next_change: Moment | None = None
    sentence: str | None = None
    lock: Holder | None = None


@dataclass(frozen=True)
class Check:
    type: str
    state: str  # passing, failing, unknown
    interval: float
    timeout: float
    fall: int
    rise: int
    since: str | None = None
    reason: str | None = None  # the latest probe's
    outcome: str | None = None
    hard: bool | None = None
    values: dict[str, Any] = field(default_factory=dict)
    probes: int = 0
    failure: str | None = None  # while failing: the reason of the failure, not of a rising probe
    duration_seconds: float | None = None  # how long the latest probe took
    passes: int = 0  # consecutive passes so far (of `rise`, while not passing yet)


@dataclass(frozen=True)
class HaproxyServer:
    backend: str
    server: str
    actual: str | None  # None: haproxy does not know this server
    up: bool | None
    desired: str
    why: str
    flap_level: int = 0  # flap damping: 0 none; n: a take-out now holds it out hold_down * 2**(n-1)
    hold_seconds: float = 0.0  # while held out after a flap: the hold in all
    hold_until: str | None = None  # ... and when it ends (ISO 8601, UTC)
    checks: list[str] = field(default_factory=list)  # the checks gating it
    local: bool = False  # this server is this node


@dataclass(frozen=True)
class Haproxy:
    socket: str
    reachable: bool | None = None  # None: not looked yet
    error: str | None = None
    process: str | None = None
    sentence: str | None = None
    held: list[str] = field(default_factory=list)
    servers: list[HaproxyServer] = field(default_factory=list)
    taken_out: list[str] = field(default_factory=list)
    changes: dict[str, int] = field(default_factory=dict)  # state changes haproxy took, by the state set
    change_failures: int = 0  # state changes haproxy refused (or the exchange failed)
    shared: dict[str, str] = field(default_factory=dict)  # backend -> the shared cause that keeps its servers in
    pending: bool = False  # the worker has not acted on the latest check states yet


@dataclass(frozen=True)
class AgentCheck:
    listen: str
    answer: str | None = None  # None: no verdict yet (haproxy keeps its state)
    why: str | None = None  # the verdict in words: what the answer is based on
    answered: int = 0
    refused: int = 0  # connections from outside [agent_check] allow, closed unanswered
    evicted: int = 0  # answered connections closed early to make room (a flood of clients)
    last_refused: str | None = None


@dataclass(frozen=True)
class Drain:
    file: str
    request: Holder = field(default_factory=Holder)  # pretix-agentctl drain
    shutdown: bool = False  # drained for a system shutdown (never persisted)
    reason: str | None = None  # why this node is drained now, or None


@dataclass(frozen=True)
class Loki:
    url: str
    source: str
    state: str
    alive: bool = True
    tenant: str | None = None
    buffered_lines: int = 0
    buffered_bytes: int = 0
    backlog_lines: int | None = None
    oldest_unsent_age_seconds: float | None = None
    shipped_lines: int = 0
    shipped_bytes: int = 0
    pushes: int = 0
    failed_pushes: int = 0
    last_success_at: str | None = None
    last_success_unix: float | None = None
    last_error: str | None = None
    last_error_at: str | None = None
    failing_since: str | None = None
    retry_attempts: int = 0
    backoff_seconds: float = 0.0
    holding: bool = False
    hold_reason: str | None = None
    drops: dict[str, int] = field(default_factory=dict)
    internal_errors: int = 0
    source_status: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class FenceReport:
    """The last fence (or dry-run finding), for the status."""

    pid: int
    client_addr: str | None
    application_name: str
    lock_key: str
    held_for: float
    waiters: int
    outcome: str
    at: float  # wall-clock Unix time


@dataclass(frozen=True)
class LockFencing:
    """Lock fencing on this node: whether it can see the primary, and what it fenced."""

    enabled: bool
    enforce: bool
    connected: bool = False
    error: str | None = None  # why the primary is unreachable (or the last look failed)
    last_round: float | None = None  # wall-clock Unix time of the last completed look
    sentence: str = "not started"
    rounds: int = 0
    fences_total: int = 0
    would_fence_total: int = 0
    failures_total: int = 0
    last_fence: FenceReport | None = None


@dataclass(frozen=True)
class ClusterLock:
    """The cluster lock: who set it, when, why, and on which node's pretix-agentctl."""

    id: str
    by: str
    at: str
    reason: str | None = None
    host: str | None = None


@dataclass(frozen=True)
class ClusterNode:
    """One node as the cluster's database last heard of it, and what is wrong with it."""

    node: str
    seen_at: str
    age: float  # seconds from its last heartbeat to the reading of the view (the server's clock)
    heartbeat_interval: float
    version: str
    roles: list[str] = field(default_factory=list)
    maintenance: bool | None = None
    cause: str | None = None
    locked: str | None = None  # "cluster" (the cluster lock), "local" (its own lock), None
    cluster_lock_id: str | None = None
    dismissed: str | None = None  # the cluster lock ended on that node by hand
    failing_checks: list[str] = field(default_factory=list)
    haproxy: list[str] = field(default_factory=list)
    windows: list[str] = field(default_factory=list)
    timezone: str = "UTC"
    windows_digest: str = ""
    clock_offset: float | None = None  # its wall clock minus the database server's, seconds
    problems: list[str] = field(default_factory=list)  # why it disagrees, is silent or fails


@dataclass(frozen=True)
class ClusterRequest:
    """A request of pretix-agentctl to the daemon, and what became of it."""

    id: str
    action: str  # lock, unlock, init, forget
    state: str  # pending, done, failed
    detail: str = ""
    changed: bool = False
    lock: ClusterLock | None = None  # lock: the lock now held; unlock: the lock that was ended


@dataclass(frozen=True)
class Cluster:
    name: str
    database: str  # the DSN (it holds no password)
    heartbeat_interval: float
    listen: bool
    state: str  # connecting, connected, unreachable, schema_missing, failing
    request_file: str
    server: str | None = None  # "host:port" connected to
    error: str | None = None
    stale_since: str | None = None  # since when the view below is stale (None: it is current)
    view_at: str | None = None  # when the view below was read
    view_at_unix: float | None = None
    locked: bool | None = None  # None: never known
    lock: ClusterLock | None = None
    mirror: str = ""  # how this node's lock file stands to the cluster lock
    dismissed: str | None = None
    nodes: list[ClusterNode] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # one line per node that disagrees, is silent or fails
    requests: list[ClusterRequest] = field(default_factory=list)


@dataclass(frozen=True)
class Metrics:
    listen: str | None = None  # None: no HTTP listener
    textfile: str | None = None  # None: no textfile
    scrapes: int = 0
    textfile_written_at: str | None = None
    textfile_error: str | None = None


@dataclass(frozen=True)
class ControllerHealth:
    """One capability's last cycle: fine, or the error that stopped it (the others went on)."""

    ok: bool = True
    error: str | None = None
    since: str | None = None


@dataclass(frozen=True)
class Document:
    format: int
    state: str  # running, stopped
    written_at: str
    written_at_unix: float
    stale_after: float
    node: str
    pid: int
    version: str
    started_at: str
    config: str
    sentence: str
    cycles: int
    healthy: bool
    maintenance: Maintenance | None = None  # None only if its controller failed to report
    drain: Drain | None = None
    degraded: list[str] = field(default_factory=list)  # what works worse than configured, and why
    controllers: dict[str, ControllerHealth] = field(default_factory=dict)  # the failing ones
    checks: dict[str, Check] = field(default_factory=dict)
    haproxy: Haproxy | None = None
    agent_check: AgentCheck | None = None
    loki: Loki | None = None
    lock_fencing: LockFencing | None = None
    cluster: Cluster | None = None
    metrics: Metrics | None = None
    # Since the start: failed cycles (and commits) per controller, and WATCHDOG=1 pings withheld.
    controller_failures: dict[str, int] = field(default_factory=dict)
    watchdog_withheld: int = 0


# ---------------------------------------------------------------------------------------------
# Checking and judging.


def parse(raw: dict[str, Any], source: str = "the status file") -> Document:
    """Given parsed JSON, return the typed document. Raise StatusUnavailable naming the first value
    that does not fit."""
    try:
        document: Document = shapes.decode(Document, raw)
    except shapes.ShapeError as error:
        raise StatusUnavailable(f"{source} is not a valid status document: {error}") from None
    return document


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False  # kill() would ask about a process group (0) or every process (-1)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, under another user (the daemon's)
    return True


@dataclass(frozen=True)
class Liveness:
    alive: bool
    reason: str
    age: float


def judge(document: Document, now: float, alive: Any = pid_alive) -> Liveness:
    """Given a status document and the wall-clock time `now`, say whether its daemon is live."""
    # kill(0 or -1, 0) asks about a whole process group or every process: such pids must not pass
    # for a live daemon (NaN and infinities never get this far: the document's floats are finite).
    if document.stale_after <= 0:
        return Liveness(False, "the status file has no valid stale_after", 0.0)
    if document.pid <= 0:
        return Liveness(False, f"the status file has no valid pid ({document.pid})", 0.0)
    age = now - document.written_at_unix
    if document.state == "stopped":
        return Liveness(False, f"the daemon stopped {age:.0f} s ago", age)
    if not alive(document.pid):
        return Liveness(False, f"the daemon (pid {document.pid}) is not running; its last status is "
                        f"{age:.0f} s old", age)
    if age > document.stale_after:
        return Liveness(False, f"the status is stale: written {age:.1f} s ago, expected within "
                        f"{document.stale_after:.0f} s (the daemon is hung or its clock jumped)", age)
    if age < -document.stale_after:
        return Liveness(False, f"the status is from the future ({-age:.0f} s): the wall clock was set back",
                        age)
    return Liveness(True, f"running (pid {document.pid}), status {max(age, 0.0):.1f} s old", age)
