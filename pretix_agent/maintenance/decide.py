"""Maintenance mode, decided: lock, marker and windows in, actions and one sentence out.

Pure: no I/O, no clock, no logging. The daemon observes the files (`observe.py`), calls `decide`,
and the actuator (`actuator.py`) carries out the actions and logs the events.

The rules (SPEC 3): maintenance is wanted while the lock exists or a window is open; the marker
exists exactly while maintenance is on. The daemon never turns maintenance off against a human
act except through `unlock`: a marker someone created by hand is adopted as a lock, and only a
marker the agent wrote (its content says so) is ever removed.

Optionally (`[maintenance] on_failing`), a failing check of a shared dependency closes the shop
too, with cause `check:NAME`: with Redis gone pretix answers 500 to every customer, and the
maintenance page with Retry-After says more. It ends by itself when the check passes again (its
`rise`) and never touches the lock. A check that has not decided yet after a restart keeps a
marker written for it, so a restarting daemon does not reopen a broken shop for `fall` probes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from ..display import holder
from ..events import Event
from ..schedule import Schedule, evaluate

MARKER_TAG = "pretix_agent_marker"
LOCK_TAG = "pretix_agent_lock"
ADOPTED_REASON = "marker created by hand"
# A lock file's `origin` when the daemon mirrored it from the cluster lock (cluster/): only such a
# lock is ever removed by `unlock --cluster`, a node's own lock stays.
CLUSTER_ORIGIN = "cluster"


# ---------------------------------------------------------------------------------------------
# What the files say.


@dataclass(frozen=True)
class LockInfo:
    """The lock file as observed. `present` alone decides; the rest is for people."""

    present: bool
    lock_id: str | None = None
    by: str | None = None
    at: str | None = None
    reason: str | None = None
    host: str | None = None
    problem: str | None = None  # why the content could not be read; the lock still counts
    origin: str | None = None  # CLUSTER_ORIGIN for the cluster lock mirrored here, else None

    def describe(self, word: str = "locked") -> str:
        """"locked by alice at ... (why)"; `word` is "requested" for a drain request. The cluster
        lock mirrored here says so: "locked (the cluster lock) by alice at ..."."""
        if not self.present:
            return "no lock"
        if self.origin == CLUSTER_ORIGIN:
            word += " (the cluster lock)"
        details = holder(self.by, self.at, self.reason, self.problem)
        return f"{word} {details}" if details else word


def parse_lock(content: bytes | None, problem: str | None = None) -> LockInfo:
    """Given the lock file's bytes (or why they could not be read), return what the lock says.

    An empty file (from `touch`) is a valid lock with no details. Anything that is not a JSON
    object written by pretix-agentctl is still a lock, with `problem` set so a warning can say so.
    """
    if problem is not None or content is None:
        return LockInfo(True, problem=problem or "unreadable")
    if not content.strip():
        return LockInfo(True)
    try:
        document = json.loads(content.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return LockInfo(True, problem="not JSON")
    if not isinstance(document, dict):
        return LockInfo(True, problem="not a JSON object")

    def text(key: str) -> str | None:
        value = document.get(key)
        return value if isinstance(value, str) and value else None

    return LockInfo(True, lock_id=text("id"), by=text("by"), at=text("at"), reason=text("reason"),
                    host=text("host"), origin=text("origin"))


def encode_lock(lock_id: str, by: str, at: datetime, reason: str | None, host: str,
                origin: str | None = None) -> bytes:
    """Return the content pretix-agentctl writes into a lock file; the daemon writes the cluster
    lock it mirrors with `origin` CLUSTER_ORIGIN (`host` then names the node whose operator asked)."""
    document: dict[str, Any] = {LOCK_TAG: 1, "id": lock_id, "by": by,
                                "at": at.astimezone(timezone.utc).isoformat(timespec="seconds"),
                                "host": host}
    if reason:
        document["reason"] = reason
    if origin:
        document["origin"] = origin
    return (json.dumps(document, ensure_ascii=False) + "\n").encode("utf-8")


@dataclass(frozen=True)
class MarkerInfo:
    """The marker as observed. `ours` is true only for content the agent (or its ctl) wrote."""

    present: bool
    ours: bool = False
    cause: str | None = None


def parse_marker(present: bool, content: bytes | None) -> MarkerInfo:
    """Given whether the marker exists and its bytes, return whose it is and why it was written."""
    if not present:
        return MarkerInfo(False)
    try:
        document = json.loads((content or b"").decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return MarkerInfo(True)
    if not isinstance(document, dict) or document.get(MARKER_TAG) != 1:
        return MarkerInfo(True)
    cause = document.get("cause")
    return MarkerInfo(True, ours=True, cause=cause if isinstance(cause, str) else None)


def encode_marker(cause: str, since: datetime) -> bytes:
    """Return the marker's content. nginx only looks at its existence; the content says whose it is."""
    document = {MARKER_TAG: 1, "cause": cause,
                "since": since.astimezone(timezone.utc).isoformat(timespec="seconds")}
    return (json.dumps(document) + "\n").encode("utf-8")


# ---------------------------------------------------------------------------------------------
# The decision.


@dataclass(frozen=True)
class Observation:
    now: datetime
    lock: LockInfo
    marker: MarkerInfo
    failing_checks: tuple[str, ...] = ()  # of `on_failing`, those failing now (in configured order)
    undecided_checks: tuple[str, ...] = ()  # of `on_failing`, those with no verdict yet (unknown)


CHECK_CAUSE = "check:"


def check_cause(observation: Observation) -> str | None:
    """`check:NAME` while an `on_failing` check fails (or, undecided, had the marker written for it)."""
    if observation.failing_checks:
        return CHECK_CAUSE + observation.failing_checks[0]
    marker = observation.marker
    if marker.ours and marker.cause is not None and marker.cause.startswith(CHECK_CAUSE) and \
            marker.cause.removeprefix(CHECK_CAUSE) in observation.undecided_checks:
        return marker.cause
    return None


def describe_check_cause(cause: str) -> str:
    """check:redis -> "check redis failing ([maintenance] on_failing)"."""
    return f"check {cause.removeprefix(CHECK_CAUSE)} failing ([maintenance] on_failing)"


@dataclass(frozen=True)
class State:
    """Maintenance as the daemon last decided it."""

    on: bool
    cause: str | None  # "lock", "window", "hand_edit", "check:NAME" while on; None while off
    lock_problem: str | None = None  # already warned about, so the warning is not repeated each cycle


@dataclass(frozen=True)
class WriteMarker:
    cause: str


@dataclass(frozen=True)
class RemoveMarker:
    pass


@dataclass(frozen=True)
class WriteLock:
    reason: str


Action = WriteMarker | RemoveMarker | WriteLock


@dataclass(frozen=True)
class Decision:
    state: State
    actions: tuple[Action, ...]
    events: tuple[Event, ...]
    sentence: str
    inside_window: bool
    window_until: datetime | None  # end of the open window, when inside one
    next_change: datetime | None  # when maintenance would change by itself (None while locked)
    next_boundary: datetime | None  # the next window edge: when to look again


def _at(moment: datetime | None, schedule: Schedule) -> str:
    if moment is None:
        return "never"
    local = moment.astimezone(schedule.timezone)
    return f"{local:%a %Y-%m-%d %H:%M %Z}"


def decide(schedule: Schedule, observation: Observation, previous: State | None) -> Decision:
    """Given the windows, what the files say and the last decided state, return what to do.

    `previous` is None at the daemon's start; the marker's presence then stands for the old state.
    """
    window = evaluate(schedule, observation.now)
    lock, marker = observation.lock, observation.marker
    failing = check_cause(observation)
    wanted = lock.present or window.inside or failing is not None
    old_on = previous.on if previous is not None else marker.present
    actions: list[Action] = []
    events: list[Event] = []
    until = _at(window.current_end, schedule)
    # While a check keeps the shop closed nobody knows when it ends; a lock ends only through unlock.
    next_change = None if lock.present or failing is not None else window.next_boundary

    if wanted:
        cause = "lock" if lock.present else "window" if window.inside else str(failing)
        if not marker.present:
            actions.append(WriteMarker(cause))
            if previous is not None and previous.on:
                why = (lock.describe() if lock.present else f"inside a window until {until}" if window.inside
                       else describe_check_cause(cause))
                events.append(Event("maintenance.marker_restored", "warning", {
                    "why": cause, "detail": f"the marker was deleted by hand while maintenance is on: {why}; "
                    "use pretix-agentctl unlock to end a lock (a window cannot be ended early)"}))
        elif not marker.ours or marker.cause != cause:
            # Claim a hand-made marker while maintenance is on anyway, and keep the recorded cause
            # current, so that later only a marker the agent wrote is ever removed.
            actions.append(WriteMarker(cause))
        if lock.present and lock.problem and (previous is None or previous.lock_problem != lock.problem):
            events.append(Event("maintenance.lock_unreadable", "warning", {
                "problem": lock.problem, "detail": "the lock file still counts as a lock"}))
        state = State(True, cause, lock.problem)
        if not old_on:
            events.append(Event("maintenance.enabled", "info", {
                "old": "off", "new": "on", "cause": cause, "lock": lock.describe(),
                "next_change": _iso(next_change)}))
        sentence = (f"maintenance on: {lock.describe()}" if lock.present
                    else f"maintenance on: inside a window until {until}" if window.inside
                    else f"maintenance on: {describe_check_cause(cause)}; ends when it passes again")
        if lock.present and window.inside:
            sentence += f" (and inside a window until {until})"
        if failing is not None and cause != failing:
            sentence += f" (and {describe_check_cause(failing)})"
    elif marker.present and not marker.ours:
        # Someone created the marker by hand while maintenance should be off: a human turned it
        # on. Removing it would silently undo that act, so it becomes a lock that only
        # `pretix-agentctl unlock` (or removing the lock) ends.
        actions.extend([WriteLock(ADOPTED_REASON), WriteMarker("lock")])
        state = State(True, "hand_edit")
        events.append(Event("maintenance.marker_adopted", "warning", {
            "detail": "a marker created by hand is kept and adopted as a lock; "
            "run pretix-agentctl unlock to end maintenance"}))
        if not old_on:
            events.append(Event("maintenance.enabled", "info", {
                "old": "off", "new": "on", "cause": "hand_edit", "next_change": None}))
        sentence = "maintenance on: adopted a marker created by hand as a lock"
    else:
        if marker.present:
            actions.append(RemoveMarker())
        state = State(False, None)
        if old_on:
            was = previous.cause if previous is not None else marker.cause
            fields: dict[str, Any] = {"old": "on", "new": "off"}
            if was is not None and was.startswith(CHECK_CAUSE):
                fields.update(cause=was, detail=f"{was.removeprefix(CHECK_CAUSE)} passes again")
            else:
                fields["cause"] = "unlock" if was in ("lock", "hand_edit") else "window"
            events.append(Event("maintenance.disabled", "info", {**fields, "next_change": _iso(next_change)}))
        sentence = ("maintenance off; next window starts " + _at(window.next_start, schedule)
                    if window.next_start is not None else "maintenance off; no windows configured")
    return Decision(state=state, actions=tuple(actions), events=tuple(events), sentence=sentence,
                    inside_window=window.inside, window_until=window.current_end,
                    next_change=next_change, next_boundary=window.next_boundary)


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.astimezone(timezone.utc).isoformat(timespec="seconds")
