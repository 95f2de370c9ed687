"""The cluster, decided: the lock mirrored into the local lock file, disagreements, one cycle's plan.

Pure: no I/O, no clock, no logging; tested with plain values (tests/unit/test_cluster_decide.py).

The mirror (SPEC 9): every node keeps the cluster lock in its own lock file, marked as the
cluster's (`origin`), so nginx and the maintenance logic need nothing new and the lock holds
while the database is away (fail-static: an unknown cluster view changes nothing). Only a lock the
mirror wrote is ever removed by it; a node's own lock stays. An operator who removes the mirrored
lock on one node by hand (`pretix-agentctl unlock`) is obeyed, as the maintenance logic obeys every
human act: that lock is "dismissed" on this node, remembered across restarts, and not written
again; the next cluster lock is. The node then shows as disagreeing, so nobody is misled.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from ..events import Event
from ..maintenance.decide import CLUSTER_ORIGIN, LockInfo
from .model import (
    APP,
    CONNECTED,
    CONNECTING,
    FAILING,
    SCHEMA_MISSING,
    SILENT_HEARTBEATS,
    ClusterLock,
    NodeRow,
    NodeState,
    Outcome,
    Report,
    Request,
    View,
    iso,
)

# ---------------------------------------------------------------------------------------------
# The mirror.


@dataclass(frozen=True)
class Memory:
    """What the mirror remembers across cycles and restarts (a file in the state directory)."""

    mirrored: str | None = None  # the cluster lock id the lock file held when last looked at
    dismissed: str | None = None  # the cluster lock id an operator removed here by hand


@dataclass(frozen=True)
class WriteLock:
    lock: ClusterLock


@dataclass(frozen=True)
class ReplaceLock:
    """The lock file holds an older cluster lock: replace it, if it still does."""

    lock: ClusterLock
    expected: str


@dataclass(frozen=True)
class RemoveLock:
    """The cluster lock ended: remove the lock file, if it still holds that cluster lock."""

    expected: str


MirrorAction = WriteLock | ReplaceLock | RemoveLock


@dataclass(frozen=True)
class Mirror:
    action: MirrorAction | None
    memory: Memory
    events: tuple[Event, ...]
    clause: str  # how this node's lock stands to the cluster lock, in words


def _lock_fields(lock: ClusterLock) -> dict[str, object]:
    return {"lock_id": lock.id, "by": lock.by, "reason": lock.reason, "requested_on": lock.host}


def mirror(known: bool, lock: ClusterLock | None, file: LockInfo, memory: Memory) -> Mirror:
    """Given whether the cluster view is known, the cluster lock, the local lock file and the
    mirror's memory, return what to do with the lock file.

    `known` is False while the database cannot be read: then nothing is written or removed."""
    events: list[Event] = []
    held = file.lock_id if file.present and file.origin == CLUSTER_ORIGIN else None
    dismissed = memory.dismissed
    if memory.mirrored is not None and held != memory.mirrored and (
            not known or (lock is not None and lock.id == memory.mirrored)):
        # The mirrored lock is gone or replaced, and not by the mirror: an operator ended it here.
        dismissed = memory.mirrored
        events.append(Event("cluster.lock_dismissed", "warning", {
            "lock_id": memory.mirrored, "detail": "the cluster lock was removed on this node by hand: this node "
            "stays unlocked while the cluster lock holds; pretix-agentctl unlock --cluster ends it everywhere"}))
    if not known:
        return Mirror(None, Memory(held, dismissed), tuple(events), "the local lock is kept as it is")
    if lock is None:
        if held is not None:
            events.append(Event("cluster.lock_released", "info", {
                "lock_id": held, "detail": "the cluster lock ended: its copy here is removed"}))
            return Mirror(RemoveLock(held), Memory(None, None), tuple(events), "not locked")
        return Mirror(None, Memory(None, None), tuple(events), "not locked")
    if held == lock.id:
        return Mirror(None, Memory(held, None), tuple(events), f"locked {lock.describe()}")
    if dismissed == lock.id:
        return Mirror(None, Memory(None, dismissed), tuple(events),
                      f"locked {lock.describe()}, but ended on this node by hand")
    if file.present and held is None:
        return Mirror(None, Memory(None, dismissed), tuple(events),
                      f"locked {lock.describe()}; this node's own lock holds")
    events.append(Event("cluster.lock_mirrored", "info", {
        **_lock_fields(lock), "detail": "the cluster lock is this node's lock now"}))
    action: MirrorAction = ReplaceLock(lock, held) if held is not None else WriteLock(lock)
    return Mirror(action, Memory(lock.id, None), tuple(events), f"locked {lock.describe()}")


# ---------------------------------------------------------------------------------------------
# Disagreement.

SILENT, CLOCK, WINDOWS, LOCKED, CHECKS = "silent", "clock", "windows", "lock", "checks"
DISAGREEMENTS = (SILENT, CLOCK, WINDOWS, LOCKED)  # each is an event when it begins and ends


@dataclass(frozen=True)
class Problem:
    node: str
    kind: str  # one of SILENT, CLOCK, WINDOWS, LOCKED, CHECKS
    text: str

    def line(self) -> str:
        return f"{self.node}: {self.text}"


def _windows_text(state: NodeState) -> str:
    return f"{', '.join(state.windows) or 'no windows'} ({state.timezone})"


def problems(view: View, max_clock_skew: float) -> tuple[Problem, ...]:
    """Given the cluster view, return every node that disagrees, is silent or fails, and why.

    - silent: no heartbeat for SILENT_HEARTBEATS of its own intervals (server clock);
    - clock: its wall clock is more than `max_clock_skew` off the server's;
    - windows: among the app nodes, its windows or time zone differ from the majority's (all
      differ when there is no majority);
    - lock: the cluster is locked, yet a heartbeat sent a full interval after the lock says it is
      not in maintenance under that lock (or its own); or unlocked, and it still holds the lock;
    - checks: it reports failing checks.
    """
    found: list[Problem] = []
    app = [row for row in view.nodes if APP in row.state.roles]
    digests = Counter(row.state.windows_digest for row in app)
    majority = next((digest for digest, count in digests.items() if count * 2 > len(app)), None)
    reference = next((row.state for row in app if row.state.windows_digest == majority), None)
    for row in view.nodes:
        state, age = row.state, view.age(row)
        interval = state.heartbeat_interval if state.heartbeat_interval > 0 else 1.0
        silent = age > SILENT_HEARTBEATS * interval
        if silent:
            found.append(Problem(state.node, SILENT, f"silent for {age:.0f} s (last seen {iso(row.seen_at)}, "
                                 f"heartbeat every {interval:g} s)"))
        if row.clock_offset is not None and abs(row.clock_offset) > max_clock_skew:
            found.append(Problem(state.node, CLOCK, f"clock off by {row.clock_offset:+.2f} s against the database "
                                 f"server (at most {max_clock_skew:g} s)"))
        if APP in state.roles and len(digests) > 1 and state.windows_digest != majority:
            against = (f"the other app nodes' {_windows_text(reference)}" if reference is not None
                       else "no majority among the app nodes")
            found.append(Problem(state.node, WINDOWS, f"windows differ: {_windows_text(state)} against {against}"))
        if not silent:
            found.extend(_lock_problem(view, row, interval))
        if state.failing_checks:
            found.append(Problem(state.node, CHECKS, f"checks failing: {', '.join(state.failing_checks)}"))
    return tuple(found)


def _lock_problem(view: View, row: NodeRow, interval: float) -> list[Problem]:
    state, lock = row.state, view.lock
    if lock is not None and row.seen_at > lock.at + interval:
        follows = state.cluster_lock_id == lock.id or state.locked == "local"
        if state.maintenance and follows:
            return []
        why = " (the cluster lock was ended there by hand)" if state.dismissed == lock.id else ""
        if not state.maintenance:
            return [Problem(state.node, LOCKED, f"maintenance OFF while the cluster is locked{why}")]
        return [Problem(state.node, LOCKED, f"does not hold the cluster lock{why}")]
    if lock is None and view.changed_at is not None and state.cluster_lock_id is not None and (
            row.seen_at > view.changed_at + interval):
        return [Problem(state.node, LOCKED, f"still holds the cluster lock {state.cluster_lock_id} after it ended")]
    return []


# ---------------------------------------------------------------------------------------------
# A request file, looked at.


@dataclass(frozen=True)
class Seen:
    """The request file: the request in it, or why it is refused (then `id` may still be known)."""

    request: Request | None = None
    refusal: str | None = None
    id: str = "?"
    action: str = "?"


def take_request(seen: Seen | None, now: float, handled: frozenset[str]) -> tuple[Request | None, Outcome | None]:
    """Given the request file's content, the wall clock and the ids handed on already, return the
    request to hand to the worker, or the refusal to report (neither: nothing to do)."""
    if seen is None:
        return None, None
    if seen.request is None:
        return None, Outcome(seen.id, seen.action, False, f"refused: {seen.refusal}", done_at=now)
    request = seen.request
    if request.id in handled:
        return None, None
    if now > request.expires_at:
        return None, Outcome(request.id, request.action, False, "refused: it expired before the daemon saw it "
                             "(was the daemon stopped?); nothing changed", done_at=now)
    return request, None


# ---------------------------------------------------------------------------------------------
# One cycle.


@dataclass(frozen=True)
class Observation:
    now: float  # wall clock (the daemon's), Unix seconds
    report: Report | None  # None: the worker has said nothing yet
    file: LockInfo  # the local lock file
    memory: Memory
    node: NodeState  # this node as it is now
    handed: NodeState | None  # what the worker publishes
    request: Seen | None  # the request file, if there is one
    handled: frozenset[str]  # request ids handed on or refused already
    announced: frozenset[str]  # outcome ids already logged
    known: frozenset[tuple[str, str]]  # (node, kind) disagreements already logged
    connection: str | None  # the report state already logged (CONNECTED, UNREACHABLE, ...)
    max_clock_skew: float


@dataclass(frozen=True)
class Plan:
    mirror: Mirror
    hand: Request | None  # to the worker
    refused: Outcome | None  # a request refused without the database
    remove_request: bool
    publish: NodeState | None  # to the worker, when it changed
    problems: tuple[Problem, ...]
    known: frozenset[tuple[str, str]]
    connection: str | None
    announced: frozenset[str]
    events: tuple[Event, ...]
    sentence: str


def plan(seen: Observation) -> Plan:
    """Given one cycle's observation, return everything the controller carries out."""
    report = seen.report or Report(CONNECTING)
    view = report.view
    known = report.state == CONNECTED and view is not None
    mirrored = mirror(known, view.lock if view is not None else None, seen.file, seen.memory)
    events = list(mirrored.events)
    hand, refused = take_request(seen.request, seen.now, seen.handled)

    events.extend(_connection_events(report, seen.connection))
    found = problems(view, seen.max_clock_skew) if view is not None and known else ()
    current = {(p.node, p.kind) for p in found if p.kind in DISAGREEMENTS}
    if known:
        for problem in found:
            if (problem.node, problem.kind) in current - seen.known:
                events.append(Event("cluster.disagreement", "warning", {
                    "node": problem.node, "kind": problem.kind, "detail": problem.text}))
        for node, kind in sorted(seen.known - current):
            events.append(Event("cluster.agreement", "info", {"node": node, "kind": kind,
                                                              "detail": f"{node}: no longer {kind}"}))
    else:
        current = set(seen.known)  # nothing is known to have changed while the view is stale
    announced = set(seen.announced)
    for outcome in (*report.outcomes, *([refused] if refused else [])):
        if outcome.id not in announced:
            announced.add(outcome.id)
            events.append(_outcome_event(outcome))
    return Plan(mirror=mirrored, hand=hand, refused=refused, remove_request=seen.request is not None,
                publish=seen.node if seen.node != seen.handed else None, problems=found, known=frozenset(current),
                connection=report.state, announced=frozenset(announced), events=tuple(events),
                sentence=_sentence(report, mirrored, found, seen.now))


def _connection_events(report: Report, logged: str | None) -> list[Event]:
    if report.state == logged or report.state == CONNECTING:
        return []
    if report.state == CONNECTED:
        return [Event("cluster.connected", "info", {"server": report.server})]
    if report.state == SCHEMA_MISSING:
        return [Event("cluster.schema_missing", "error", {
            "server": report.server, "detail": "the agent's schema is missing: run pretix-agentctl cluster init "
            "(or have a DBA run the SQL of pretix-agentctl cluster init --print)"})]
    if report.state == FAILING:
        return [Event("cluster.failing", "error", {
            "server": report.server, "error": report.error,
            "detail": "the database refuses the agent's statements: the cluster view is stale"})]
    return [Event("cluster.unreachable", "error", {
        "error": report.error, "detail": "the cluster view is stale; every node keeps its lock as it is"})]


def _outcome_event(outcome: Outcome) -> Event:
    if not outcome.ok:
        return Event("cluster.request_failed", "error", {"action": outcome.action, "request": outcome.id,
                                                          "error": outcome.detail})
    fields: dict[str, object] = {"request": outcome.id, "detail": outcome.detail}
    if outcome.lock is not None:
        fields.update(_lock_fields(outcome.lock))
    names = {"lock": "cluster.locked", "unlock": "cluster.unlocked", "init": "cluster.initialized",
             "forget": "cluster.node_forgotten"}
    return Event(names.get(outcome.action, "cluster.request_done"), "info" if outcome.changed else "debug", fields)


def _sentence(report: Report, mirrored: Mirror, found: tuple[Problem, ...], now: float) -> str:
    if report.state == CONNECTING:
        return "cluster: connecting to the database"
    if report.state == SCHEMA_MISSING:
        return "cluster: the agent's schema is missing: run pretix-agentctl cluster init"
    if report.state != CONNECTED or report.view is None:
        since = iso(report.failing_since) or "now"
        what = "database calls fail" if report.state == FAILING else "database unreachable"
        return f"cluster: {what} since {since}; {mirrored.clause}"
    sentence = f"cluster: {mirrored.clause}"
    odd = sorted({p.node for p in found if p.kind in DISAGREEMENTS})
    if odd:
        kinds = sorted({p.kind for p in found if p.kind in DISAGREEMENTS})
        sentence += f"; {', '.join(odd)} disagree{'s' if len(odd) == 1 else ''} ({', '.join(kinds)})"
    return sentence
