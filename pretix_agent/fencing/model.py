"""What lock fencing sees of the primary and what it does about it, as plain values."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ..status import LockFencing as FencingStatus

# The states of a session inside a transaction that is not running a statement. pretix's locks are
# transaction locks (pg_advisory_xact_lock), held until the transaction ends, aborted or not.
IDLE_IN_TRANSACTION = frozenset({"idle in transaction", "idle in transaction (aborted)"})

# pretix/base/services/locking.py, KEY_SPACES: the low byte of the 64-bit key says what is locked.
PRETIX_KEY_SPACES = {1: "event", 2: "quota", 3: "seat", 4: "voucher", 5: "membership"}


@dataclass(frozen=True)
class Backend:
    """One row of pg_stat_activity. Ages are seconds measured by the database's own clock, so the
    agent's clock never enters; None where the row does not say (hidden without pg_read_all_stats)."""

    pid: int
    state: str | None
    state_age: float | None  # now() - state_change
    xact_age: float | None  # now() - xact_start
    state_change: str | None  # state_change as the database printed it: names this idle episode
    backend_type: str | None
    database: str | None
    user: str | None
    application_name: str = ""
    client_addr: str | None = None  # None: a Unix socket (or hidden)
    client_port: int | None = None


@dataclass(frozen=True, order=True)
class LockKey:
    """An advisory lock's identity in pg_locks. `objsubid` 1: one bigint key (classid holds its high
    32 bits, objid its low ones); 2: two int4 keys (classid, objid)."""

    database: int  # oid; advisory locks of different databases never conflict
    classid: int
    objid: int
    objsubid: int

    @property
    def key(self) -> str:
        """The key as the application passed it: "8060930" (bigint) or "1,2" (two int4)."""
        if self.objsubid == 1:
            value = (self.classid << 32) | self.objid
            return str(value - (1 << 64) if value >= 1 << 63 else value)
        return f"{_int4(self.classid)},{_int4(self.objid)}"

    @property
    def pretix_object(self) -> str | None:
        """What the key locks if pretix made it ("quota 17"), else None. pretix's key is
        object id << 16 | lock index << 8 | key space."""
        if self.objsubid != 1 or self.classid >> 31:
            return None
        value = (self.classid << 32) | self.objid
        space = PRETIX_KEY_SPACES.get(value & 0xFF)
        return None if space is None else f"{space} {value >> 16}"

    def describe(self) -> str:
        meaning = self.pretix_object
        return self.key + (f" ({meaning})" if meaning else "")


def _int4(value: int) -> int:
    return value - (1 << 32) if value >= 1 << 31 else value


@dataclass(frozen=True)
class AdvisoryLock:
    """One row of pg_locks with locktype 'advisory'. For a row still waiting (not granted),
    `blocked_by` is pg_blocking_pids(pid): the sessions it waits for."""

    pid: int
    key: LockKey
    mode: str
    granted: bool
    blocked_by: tuple[int, ...] = ()


@dataclass(frozen=True)
class Snapshot:
    """One look at the primary: the agent's own backend pid, the sessions, the advisory locks."""

    own_pid: int
    backends: Mapping[int, Backend]
    locks: tuple[AdvisoryLock, ...]


Episode = tuple[int, str]
"""A session's idle-in-transaction episode: its pid and its state_change. A terminate is guarded by
it, so a session that woke up and moved on (same pid, new transaction) is never terminated."""


@dataclass(frozen=True)
class Fence:
    """A session to terminate, with everything the operator is told about it."""

    backend: Backend
    keys: tuple[LockKey, ...]  # the advisory locks it holds that others wait for
    waiters: tuple[int, ...]  # the sessions waiting for it on those locks
    held_for: float  # seconds idle in transaction
    reason: str

    @property
    def pid(self) -> int:
        return self.backend.pid

    @property
    def episode(self) -> Episode:
        return (self.backend.pid, self.backend.state_change or "")


@dataclass(frozen=True)
class Memory:
    """What earlier rounds said, so one fence (or dry-run finding, refusal, blind spot) is one event,
    not one per round: `said` holds (pid, state_change, what was said) of the episodes still going
    on; `hidden` the pids whose hidden state was reported."""

    said: frozenset[tuple[int, str, str]] = frozenset()
    hidden: frozenset[int] = frozenset()

    def has_said(self, episode: Episode, what: str) -> bool:
        return (*episode, what) in self.said


@dataclass(frozen=True)
class Outcome:
    """What pg_terminate_backend did.

    `terminated`: the session was signalled; `moved_on`: it was no longer in the idle episode that was
    observed (it committed, woke up, or ended), so nothing was done; `refused`: the server would not
    (a superuser's session, a missing privilege); `failed`: no answer (timeout, connection lost)."""

    kind: str
    detail: str = ""


DISABLED = FencingStatus(enabled=False, enforce=False, sentence="lock fencing off: no [lock_fencing] dsn")
"""The status to publish when lock fencing is not configured."""
