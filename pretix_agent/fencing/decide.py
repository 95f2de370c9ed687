"""Whom to terminate, decided from one look at the primary: no I/O, no clock, no logging.

A session is fenced when all of these hold:
- it holds an advisory lock (pretix's pg_advisory_xact_lock) that another session waits for, as
  pg_blocking_pids() of that waiting session says; row and table locks never count;
- it is idle in transaction (aborted or not): its client sent nothing for `state_age` seconds while
  its transaction, and so the lock, stays open. A session running a statement is never touched:
  it may be slow, but it is working, and its lock ends with its transaction;
- it has been so for longer than `max_hold`, by the database's clock;
- it is a client backend, not the agent's own session, and passes the `users`/`databases` filters.

The result is a `Decision`: the fences, the events a dry run or a blind spot asks for, the memory
that keeps one event per episode, when to look again, and one sentence for the status.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from ..config import LockFencingSection
from ..events import Event
from .model import IDLE_IN_TRANSACTION, AdvisoryLock, Backend, Fence, LockKey, Memory, Outcome, Snapshot

WOULD_TERMINATE = "would_terminate"


@dataclass(frozen=True)
class Decision:
    fences: tuple[Fence, ...]  # terminate these (with enforce), or report them (dry run)
    first_seen: tuple[Fence, ...]  # dry run: the fences reported for the first time this round
    events: tuple[Event, ...]
    memory: Memory
    recheck_in: float | None  # seconds until a holder seen now passes max_hold; None: nothing to watch
    sentence: str


@dataclass(frozen=True)
class _Blocking:
    """What one holder blocks: the keys others wait for and who waits."""

    keys: tuple[LockKey, ...]
    waiters: tuple[int, ...]


def blocking(locks: tuple[AdvisoryLock, ...]) -> dict[int, _Blocking]:
    """Given pg_locks' advisory rows, return per holder pid the keys it holds that others wait for,
    and the waiting pids. A waiter counts only against a blocker that holds the very key it waits
    for: pg_blocking_pids() also names sessions queued ahead of it ("soft" blocks), which hold
    nothing yet."""
    holders: dict[LockKey, set[int]] = defaultdict(set)
    for lock in locks:
        if lock.granted:
            holders[lock.key].add(lock.pid)
    waiters: dict[int, dict[LockKey, set[int]]] = defaultdict(lambda: defaultdict(set))
    for lock in locks:
        if lock.granted:
            continue
        for blocker in set(lock.blocked_by) & holders.get(lock.key, set()):
            if blocker != lock.pid:
                waiters[blocker][lock.key].add(lock.pid)
    result = {}
    for pid, by_key in waiters.items():
        keys = sorted(by_key, key=lambda key: (-len(by_key[key]), key))
        result[pid] = _Blocking(tuple(keys), tuple(sorted(set().union(*by_key.values()))))
    return result


def decide(snapshot: Snapshot, options: LockFencingSection, memory: Memory) -> Decision:
    """Given one look at the primary, the options and what earlier rounds reported, return whom to
    terminate and what to say."""
    fences: list[Fence] = []
    events: list[Event] = []
    watching: list[str] = []
    spared: list[str] = []
    hidden: set[int] = set()
    recheck: list[float] = []
    blocked = blocking(snapshot.locks)
    for pid in sorted(blocked):
        what = blocked[pid]
        backend = snapshot.backends.get(pid)
        if pid == snapshot.own_pid or backend is None:
            continue  # the agent itself; or a session that ended between pg_locks and pg_stat_activity
        # The role and database are shown to every role; the state only with pg_read_all_stats.
        if options.databases and backend.database not in options.databases:
            spared.append(f"pid {pid} is in database {backend.database}, not watched")
            continue
        if options.users and backend.user not in options.users:
            spared.append(f"pid {pid} is role {backend.user}, not watched")
            continue
        if backend.state is None or backend.state_age is None:
            hidden.add(pid)
            if pid not in memory.hidden:
                events.append(_hidden_event(backend, what))
            spared.append(f"pid {pid}'s state is hidden (the role needs pg_read_all_stats)")
            continue
        if backend.backend_type != "client backend":
            spared.append(f"pid {pid} is a {backend.backend_type or 'backend of unknown type'}")
            continue
        if backend.state not in IDLE_IN_TRANSACTION:
            spared.append(f"pid {pid} is {_state_words(backend.state)}, left alone")
            continue
        if backend.state_age <= options.max_hold:
            recheck.append(options.max_hold - backend.state_age)
            watching.append(f"pid {pid} idle in transaction {max(0.0, backend.state_age):.1f} s of "
                            f"{options.max_hold:g} s, {_count(len(what.waiters), 'session')} waiting")
            continue
        fences.append(Fence(backend, what.keys, what.waiters, backend.state_age, _reason(backend, what, options)))

    # Forget what is over, so the memory stays as small as what is going on now.
    episodes = {fence.episode for fence in fences}
    said = frozenset(entry for entry in memory.said if (entry[0], entry[1]) in episodes)
    first_seen: tuple[Fence, ...] = ()
    if not options.enforce:
        first_seen = tuple(fence for fence in fences if not memory.has_said(fence.episode, WOULD_TERMINATE))
        events.extend(fence_event(fence, None, options) for fence in first_seen)
        said |= {(*fence.episode, WOULD_TERMINATE) for fence in first_seen}
    new_memory = Memory(said=said, hidden=frozenset(hidden))
    return Decision(tuple(fences), first_seen, tuple(events), new_memory, min(recheck) if recheck else None,
                    _sentence(fences, watching, spared, snapshot, options))


def after_terminate(memory: Memory, fence: Fence, outcome: Outcome,
                    options: LockFencingSection) -> tuple[Memory, Event | None]:
    """Given what a terminate did, return the memory and the event to log, or None if this episode
    had this outcome said already: a refused terminate is retried every round but said once, and a
    session signalled twice (seen again before it had exited) is one fence."""
    if memory.has_said(fence.episode, outcome.kind):
        return memory, None
    remembered = Memory(said=memory.said | {(*fence.episode, outcome.kind)}, hidden=memory.hidden)
    return remembered, fence_event(fence, outcome, options)


def fence_event(fence: Fence, outcome: Outcome | None, options: LockFencingSection) -> Event:
    """The one event of a fence: `lock_fencing.terminated`, or `would_terminate` in a dry run
    (outcome None), `spared` when the session moved on first, `terminate_failed` otherwise."""
    backend, key = fence.backend, fence.keys[0]
    fields: dict[str, Any] = {
        "pid": backend.pid, "client_addr": backend.client_addr, "client_port": backend.client_port,
        "application_name": backend.application_name, "database": backend.database, "user": backend.user,
        "lock_key": key.key, "classid": key.classid, "objid": key.objid, "objsubid": key.objsubid,
        "pretix_object": key.pretix_object, "lock_keys": [k.describe() for k in fence.keys],
        "held_for": round(fence.held_for, 3),
        "transaction_age": None if backend.xact_age is None else round(backend.xact_age, 3),
        "waiters": len(fence.waiters), "waiting_pids": list(fence.waiters), "max_hold": options.max_hold,
    }
    if outcome is None:
        return Event("lock_fencing.would_terminate", "warning",
                     {**fields, "detail": f"dry run (enforce = false): would terminate: {fence.reason}"})
    if outcome.kind == "terminated":
        return Event("lock_fencing.terminated", "warning", {**fields, "detail": f"terminated: {fence.reason}"})
    if outcome.kind == "moved_on":
        return Event("lock_fencing.spared", "info", {
            **fields, "detail": "not terminated: the session was no longer idle in the transaction that was seen "
                                "(it woke up, committed or ended)"})
    return Event("lock_fencing.terminate_failed", "error", {
        **fields, "error": outcome.detail, "outcome": outcome.kind,
        "detail": f"could not terminate: {fence.reason}; retried every round while it lasts"})


def _hidden_event(backend: Backend, what: _Blocking) -> Event:
    return Event("lock_fencing.state_hidden", "warning", {
        "pid": backend.pid, "database": backend.database, "user": backend.user,
        "lock_key": what.keys[0].describe(), "waiters": len(what.waiters),
        "detail": "holds an advisory lock others wait for, but its state is hidden: grant the agent's role "
                  "pg_read_all_stats (docs/lock_fencing.md); it is never terminated unseen"})


def _reason(backend: Backend, what: _Blocking, options: LockFencingSection) -> str:
    keys = ", ".join(key.describe() for key in what.keys)
    lock = "advisory lock" if len(what.keys) == 1 else "advisory locks"
    return (f"pid {backend.pid} ({_client(backend)}) {backend.state} for {backend.state_age:.1f} s "
            f"(max_hold {options.max_hold:g} s) holding {lock} {keys} that "
            f"{_count(len(what.waiters), 'session')} wait{'s' if len(what.waiters) == 1 else ''} for")


def _client(backend: Backend) -> str:
    where = backend.client_addr or "local socket"
    if backend.client_port is not None and backend.client_port > 0:
        where += f":{backend.client_port}"
    name = f" {backend.application_name}" if backend.application_name else ""
    return f"{backend.user or '?'}@{backend.database or '?'} from {where}{name}"


def _state_words(state: str) -> str:
    return {"active": "running a statement", "idle": "idle, outside a transaction (a session lock)"}.get(state, state)


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


def _sentence(fences: list[Fence], watching: list[str], spared: list[str], snapshot: Snapshot,
              options: LockFencingSection) -> str:
    verb = "terminate" if options.enforce else "would terminate (dry run)"
    parts = [f"{verb} {fence.reason}" for fence in fences]
    parts += [f"watching {text}" for text in watching]
    if spared:
        parts.append("not fencing: " + "; ".join(spared))
    if parts:
        return "; ".join(parts)
    held = sum(1 for lock in snapshot.locks if lock.granted)
    if not held:
        return "nothing to fence: no advisory lock held"
    return f"nothing to fence: {_count(held, 'advisory lock')} held, none waited for"
