"""Whom lock fencing terminates, decided from plain values (pretix_agent/fencing/decide.py)."""

from __future__ import annotations

import dataclasses

import pytest

from pretix_agent.config import LockFencingSection
from pretix_agent.fencing.decide import after_terminate, blocking, decide, fence_event
from pretix_agent.fencing.model import AdvisoryLock, Backend, LockKey, Memory, Outcome, Snapshot

OWN = 100
HOLDER, WAITER, OTHER_WAITER, QUEUED = 4242, 5151, 5252, 5353
DB = 16384
QUOTA_17 = LockKey(DB, 0, (17 << 16) | 2, 1)  # pretix: quota 17, lock index 0
EVENT_3 = LockKey(DB, 0, (3 << 16) | 1, 1)


def options(**changes) -> LockFencingSection:
    base = LockFencingSection(dsn="host=db", max_hold=2.0, interval=1.0, timeout=0.5, enforce=True,
                              databases=(), users=())
    return dataclasses.replace(base, **changes)


def backend(pid: int = HOLDER, state: str | None = "idle in transaction", age: float | None = 2.5,
            **changes) -> Backend:
    base = Backend(pid=pid, state=state, state_age=age, xact_age=None if age is None else age + 0.1,
                   state_change=f"2026-08-01 12:00:00.{pid:06d}+00", backend_type="client backend",
                   database="pretix", user="pretix", application_name="", client_addr="10.0.0.21",
                   client_port=51234)
    return dataclasses.replace(base, **changes)


def waiting(pid: int, key: LockKey = QUOTA_17, blocked_by: tuple[int, ...] = (HOLDER,)) -> AdvisoryLock:
    return AdvisoryLock(pid, key, "ExclusiveLock", False, blocked_by)


def held(pid: int = HOLDER, key: LockKey = QUOTA_17, mode: str = "ExclusiveLock") -> AdvisoryLock:
    return AdvisoryLock(pid, key, mode, True)


def active(pid: int) -> Backend:
    return backend(pid, state="active", age=0.5)


def snapshot(holder: Backend | None, locks: list[AdvisoryLock], *others: Backend) -> Snapshot:
    backends = {b.pid: b for b in (holder, *others) if b is not None}
    for lock in locks:
        backends.setdefault(lock.pid, active(lock.pid))
    return Snapshot(OWN, backends, tuple(locks))


HUNG_HOLDER = [held(), waiting(WAITER)]


# ---------------------------------------------------------------------------------------------
# Who is fenced, who never is: one table.

CASES = [
    pytest.param(snapshot(backend(), HUNG_HOLDER), options(), [HOLDER],
                 id="an-idle-in-transaction-holder-others-wait-for-longer-than-max-hold-is-fenced"),
    pytest.param(snapshot(backend(state="idle in transaction (aborted)"), HUNG_HOLDER), options(), [HOLDER],
                 id="an-aborted-transaction-still-holds-its-xact-lock-and-is-fenced"),
    pytest.param(snapshot(backend(age=1.9), HUNG_HOLDER), options(), [],
                 id="a-holder-idle-for-less-than-max-hold-is-not-fenced-yet"),
    pytest.param(snapshot(backend(age=2.0), HUNG_HOLDER), options(), [],
                 id="a-holder-idle-for-exactly-max-hold-is-not-fenced-yet"),
    pytest.param(snapshot(backend(state="active", age=30.0), HUNG_HOLDER), options(), [],
                 id="a-holder-running-a-statement-is-never-fenced-however-long"),
    pytest.param(snapshot(backend(state="idle", age=30.0), HUNG_HOLDER), options(), [],
                 id="an-idle-session-outside-a-transaction-holding-a-session-lock-is-never-fenced"),
    pytest.param(snapshot(backend(), [held()]), options(), [],
                 id="an-idle-in-transaction-holder-nobody-waits-for-is-left-alone"),
    pytest.param(snapshot(backend(), []), options(), [],
                 id="an-idle-in-transaction-session-without-advisory-locks-is-left-alone"),
    pytest.param(snapshot(backend(), [held(), waiting(WAITER, key=EVENT_3)]), options(), [],
                 id="a-waiter-for-another-key-does-not-count-against-the-holder"),
    pytest.param(snapshot(backend(), [held(), waiting(WAITER, key=dataclasses.replace(QUOTA_17, database=DB + 1))]),
                 options(), [], id="the-same-key-in-another-database-does-not-conflict"),
    pytest.param(snapshot(backend(), [held(), waiting(WAITER, blocked_by=())]), options(), [],
                 id="a-waiter-pg-blocking-pids-does-not-name-the-holder-does-not-count"),
    pytest.param(snapshot(backend(pid=OWN), [held(OWN), waiting(WAITER, blocked_by=(OWN,))]), options(), [],
                 id="the-agents-own-session-is-never-fenced"),
    pytest.param(snapshot(backend(backend_type="autovacuum worker"), HUNG_HOLDER), options(), [],
                 id="a-backend-that-is-not-a-client-backend-is-never-fenced"),
    pytest.param(snapshot(backend(state=None, age=None), HUNG_HOLDER), options(), [],
                 id="a-holder-whose-state-is-hidden-is-never-fenced-unseen"),
    pytest.param(snapshot(None, HUNG_HOLDER), options(), [],
                 id="a-holder-gone-from-pg-stat-activity-is-not-fenced"),
    pytest.param(snapshot(backend(user="reporting"), HUNG_HOLDER), options(users=("pretix",)), [],
                 id="a-holder-of-a-role-not-in-users-is-left-alone"),
    pytest.param(snapshot(backend(), HUNG_HOLDER), options(users=("pretix",)), [HOLDER],
                 id="a-holder-of-a-role-in-users-is-fenced"),
    pytest.param(snapshot(backend(database="other"), HUNG_HOLDER), options(databases=("pretix",)), [],
                 id="a-holder-in-a-database-not-in-databases-is-left-alone"),
    pytest.param(snapshot(backend(), HUNG_HOLDER), options(enforce=False), [HOLDER],
                 id="a-dry-run-finds-the-same-sessions"),
    pytest.param(snapshot(backend(), [held(mode="ShareLock"), held(OTHER_WAITER, mode="ShareLock"),
                                      waiting(WAITER, blocked_by=(HOLDER, OTHER_WAITER))],
                          active(OTHER_WAITER)), options(), [HOLDER],
                 id="of-two-shared-holders-only-the-idle-one-is-fenced"),
]


@pytest.mark.parametrize(("seen", "opts", "fenced"), CASES)
def test_who_is_fenced(seen, opts, fenced):
    decision = decide(seen, opts, Memory())
    assert [fence.pid for fence in decision.fences] == fenced, decision.sentence


# ---------------------------------------------------------------------------------------------
# What a fence says.


def test_a_fence_names_the_key_the_pretix_object_how_long_it_was_held_and_who_waits():
    seen = snapshot(backend(age=2.345, application_name="gunicorn"),
                    [held(), held(key=EVENT_3, mode="ShareLock"), waiting(WAITER),
                     waiting(OTHER_WAITER), waiting(QUEUED, blocked_by=(HOLDER, WAITER))])
    (fence,) = decide(seen, options(), Memory()).fences
    assert fence.keys == (QUOTA_17,)  # the shared event lock held too is not waited for
    assert fence.waiters == (WAITER, OTHER_WAITER, QUEUED)
    assert fence.held_for == 2.345
    event = fence_event(fence, Outcome("terminated"), options())
    assert event.name == "lock_fencing.terminated" and event.level == "warning"
    assert {k: event.fields[k] for k in ("pid", "client_addr", "application_name", "lock_key", "classid", "objid",
                                         "objsubid", "pretix_object", "held_for", "waiters")} == {
        "pid": HOLDER, "client_addr": "10.0.0.21", "application_name": "gunicorn",
        "lock_key": str((17 << 16) | 2), "classid": 0, "objid": (17 << 16) | 2, "objsubid": 1,
        "pretix_object": "quota 17", "held_for": 2.345, "waiters": 3}
    assert event.fields["waiting_pids"] == [WAITER, OTHER_WAITER, QUEUED]
    assert "idle in transaction for 2.3 s (max_hold 2 s)" in event.fields["detail"]


def test_a_soft_block_by_a_session_queued_ahead_does_not_make_that_session_a_holder():
    # pg_blocking_pids() of QUEUED names WAITER (ahead of it in the queue), which holds nothing.
    blocked = blocking((held(), waiting(WAITER), waiting(QUEUED, blocked_by=(HOLDER, WAITER))))
    assert set(blocked) == {HOLDER}


def test_the_sentence_says_what_was_decided():
    assert decide(snapshot(None, []), options(), Memory()).sentence == "nothing to fence: no advisory lock held"
    assert decide(snapshot(backend(), [held()]), options(), Memory()).sentence == (
        "nothing to fence: 1 advisory lock held, none waited for")
    assert decide(snapshot(backend(age=1.5), HUNG_HOLDER), options(), Memory()).sentence == (
        "watching pid 4242 idle in transaction 1.5 s of 2 s, 1 session waiting")
    assert decide(snapshot(backend(state="active"), HUNG_HOLDER), options(), Memory()).sentence == (
        "not fencing: pid 4242 is running a statement, left alone")
    assert decide(snapshot(backend(), HUNG_HOLDER), options(), Memory()).sentence.startswith(
        "terminate pid 4242 (pretix@pretix from 10.0.0.21:51234) idle in transaction for 2.5 s")
    assert decide(snapshot(backend(), HUNG_HOLDER), options(enforce=False), Memory()).sentence.startswith(
        "would terminate (dry run) pid 4242")


def test_keys_are_shown_as_the_application_passed_them():
    assert LockKey(DB, 0xFFFFFFFF, 0xFFFFFFFE, 1).key == "-2"
    assert LockKey(DB, 1, 0, 1).key == str(1 << 32)
    assert LockKey(DB, 7, 0xFFFFFFFF, 2).key == "7,-1"
    assert LockKey(DB, 7, 9, 2).pretix_object is None
    assert LockKey(DB, 0, (5 << 16) | (1 << 8) | 4, 1).describe() == f"{(5 << 16) | 256 | 4} (voucher 5)"
    assert LockKey(DB, 0, (5 << 16) | 9, 1).pretix_object is None  # key space 9: not pretix's


# ---------------------------------------------------------------------------------------------
# When to look again, and one event per episode.


def test_a_holder_under_max_hold_asks_for_a_look_when_it_passes_max_hold():
    decision = decide(snapshot(backend(age=1.25), HUNG_HOLDER), options(), Memory())
    assert decision.recheck_in == pytest.approx(0.75)
    assert decide(snapshot(backend(), HUNG_HOLDER), options(), Memory()).recheck_in is None
    assert decide(snapshot(backend(state="active", age=1.0), HUNG_HOLDER), options(), Memory()).recheck_in is None


def test_a_dry_run_reports_each_episode_once_and_again_for_a_new_one():
    seen = snapshot(backend(), HUNG_HOLDER)
    first = decide(seen, options(enforce=False), Memory())
    assert [e.name for e in first.events] == ["lock_fencing.would_terminate"]
    assert [f.pid for f in first.first_seen] == [HOLDER]
    second = decide(seen, options(enforce=False), first.memory)
    assert second.events == () and second.first_seen == () and [f.pid for f in second.fences] == [HOLDER]
    new_transaction = snapshot(backend(state_change="2026-08-01 12:00:09+00"), HUNG_HOLDER)
    third = decide(new_transaction, options(enforce=False), second.memory)
    assert [e.name for e in third.events] == ["lock_fencing.would_terminate"]


def test_enforce_asks_for_no_event_before_the_terminate_says_how_it_went():
    decision = decide(snapshot(backend(), HUNG_HOLDER), options(), Memory())
    assert decision.events == () and decision.first_seen == ()


def test_a_refused_terminate_is_said_once_per_episode_and_retried_every_round():
    opts = options()
    decision = decide(snapshot(backend(), HUNG_HOLDER), opts, Memory())
    (fence,) = decision.fences
    memory, event = after_terminate(decision.memory, fence, Outcome("refused", "must be a superuser"), opts)
    assert event is not None and event.name == "lock_fencing.terminate_failed" and event.level == "error"
    assert event.fields["error"] == "must be a superuser"
    again = decide(snapshot(backend(), HUNG_HOLDER), opts, memory)
    assert [f.pid for f in again.fences] == [HOLDER]
    assert after_terminate(again.memory, again.fences[0], Outcome("refused", "must be a superuser"), opts)[1] is None
    assert after_terminate(again.memory, again.fences[0], Outcome("terminated"), opts)[1].name == (
        "lock_fencing.terminated")


def test_a_session_that_moved_on_before_the_terminate_is_spared_and_said_so():
    decision = decide(snapshot(backend(), HUNG_HOLDER), options(), Memory())
    _, event = after_terminate(decision.memory, decision.fences[0], Outcome("moved_on"), options())
    assert event is not None and event.name == "lock_fencing.spared" and event.level == "info"


def test_a_hidden_holder_is_said_once_while_it_lasts():
    seen = snapshot(backend(state=None, age=None), HUNG_HOLDER)
    first = decide(seen, options(), Memory())
    assert [e.name for e in first.events] == ["lock_fencing.state_hidden"]
    assert "pg_read_all_stats" in first.events[0].fields["detail"]
    assert decide(seen, options(), first.memory).events == ()
    gone = decide(snapshot(None, []), options(), first.memory)
    assert gone.memory.hidden == frozenset()


def test_a_session_signalled_again_before_it_exited_is_one_fence_and_a_later_success_is_still_said():
    opts = options()
    decision = decide(snapshot(backend(), HUNG_HOLDER), opts, Memory())
    (fence,) = decision.fences
    memory, first = after_terminate(decision.memory, fence, Outcome("failed", "timeout"), opts)
    memory, second = after_terminate(memory, fence, Outcome("terminated"), opts)
    memory, third = after_terminate(memory, fence, Outcome("terminated"), opts)
    assert (first.name, second.name, third) == ("lock_fencing.terminate_failed", "lock_fencing.terminated", None)
