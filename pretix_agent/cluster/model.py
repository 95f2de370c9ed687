"""What the cluster's database holds, what a node publishes, and what ctl asks: plain frozen values.

Times that come from the database are the server's clock (Unix seconds), so comparing them never
mixes two hosts' clocks: "silent for three heartbeats" and "seen after the lock changed" are
judged on one clock, and a node's own clock is only ever compared with the server's (its skew).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

LOCK = "lock"
UNLOCK = "unlock"
INIT = "init"
FORGET = "forget"
ACTIONS = (LOCK, UNLOCK, INIT, FORGET)

APP, LOAD_BALANCER, DATABASE = "app", "load-balancer", "database"

SILENT_HEARTBEATS = 3  # a node that misses this many of its heartbeats is silent (SPEC 9)


def iso(unix: float | None) -> str | None:
    """Given Unix seconds, return ISO 8601 in UTC to the second ("2026-12-02T06:31:16+00:00")."""
    if unix is None:
        return None
    return datetime.fromtimestamp(unix, timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True)
class ClusterLock:
    """The cluster lock: who set it, when (server clock), why, and on which node's ctl."""

    id: str
    by: str
    at: float
    reason: str | None
    host: str

    def describe(self) -> str:
        why = f" ({self.reason})" if self.reason else ""
        return f"by {self.by} at {iso(self.at)} on {self.host}{why}"


@dataclass(frozen=True)
class NodeState:
    """What one node publishes about itself (its row, but for what the server fills in)."""

    node: str
    roles: tuple[str, ...]
    version: str
    heartbeat_interval: float
    maintenance: bool | None  # None: not decided yet
    cause: str | None  # lock, window, hand_edit
    locked: str | None  # "cluster" (the cluster lock, mirrored), "local" (its own lock), None
    cluster_lock_id: str | None  # the cluster lock its lock file holds
    dismissed: str | None  # the cluster lock an operator ended on this node by hand
    failing_checks: tuple[str, ...]
    haproxy: tuple[str, ...]  # servers not ready: "backend/server: drain (why)"
    windows: tuple[str, ...]  # "Sun 22:00 - Mon 05:00"
    timezone: str
    windows_digest: str
    started_at: float


@dataclass(frozen=True)
class NodeRow:
    """A node as the database last heard of it."""

    state: NodeState
    seen_at: float  # server clock
    clock_offset: float | None  # its wall clock minus the server's, seconds; None: not measured yet


@dataclass(frozen=True)
class View:
    """The cluster as read in one query: the lock, every node, and the server's clock then."""

    lock: ClusterLock | None
    changed_at: float | None  # when the lock was last set or ended (server clock); None: never
    nodes: tuple[NodeRow, ...]
    server_now: float

    def age(self, row: NodeRow) -> float:
        return max(0.0, self.server_now - row.seen_at)


@dataclass(frozen=True)
class Request:
    """What `pretix-agentctl` asks the daemon to do against the database."""

    id: str
    action: str  # one of ACTIONS
    by: str
    at: float  # wall clock of the asking host
    host: str
    expires_at: float  # wall clock: a request found later is refused, not carried out late
    reason: str | None = None
    node: str | None = None  # FORGET: which node's row


@dataclass(frozen=True)
class Outcome:
    """What became of a request. `changed` is False for "already locked" or "was not locked"."""

    id: str
    action: str
    ok: bool
    detail: str  # one line for people
    changed: bool = False
    lock: ClusterLock | None = None  # LOCK: the lock now held; UNLOCK: the lock that was ended
    done_at: float = 0.0  # wall clock of this node


CONNECTING, CONNECTED, UNREACHABLE, SCHEMA_MISSING = "connecting", "connected", "unreachable", "schema_missing"
FAILING = "failing"  # connected, but the server refuses the agent's statements (a missing right)


@dataclass(frozen=True)
class Report:
    """The worker's latest word: its connection, the last view it read, what became of requests."""

    state: str  # CONNECTING, CONNECTED, UNREACHABLE, SCHEMA_MISSING, FAILING
    server: str | None = None  # "host:port" it is connected to
    error: str | None = None  # why it is not connected (or the last call failed)
    failing_since: float | None = None  # wall clock: since when the view is stale
    view: View | None = None  # the last view read, however old
    view_at: float | None = None  # wall clock of that read
    outcomes: tuple[Outcome, ...] = ()  # the most recent, oldest first
