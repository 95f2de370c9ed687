"""The lock fencing worker with a hand-written fake primary, and the snapshot parser."""

from __future__ import annotations

import dataclasses
import threading

import pytest

from pretix_agent.config import LockFencingSection
from pretix_agent.fencing.model import AdvisoryLock, Backend, Fence, LockKey, Outcome, Snapshot
from pretix_agent.fencing.postgres import Unreachable, parse_snapshot
from pretix_agent.fencing.worker import RECHECK_MARGIN, LockFencer
from tests.waiting import wait_until

KEY = LockKey(16384, 0, (17 << 16) | 2, 1)
SECTION = LockFencingSection(dsn="host=db", max_hold=2.0, interval=1.0, timeout=0.5, enforce=True, databases=(),
                             users=())


def hung(age: float = 2.5, pid: int = 4242) -> Snapshot:
    holder = Backend(pid, "idle in transaction", age, age, f"2026-08-01 12:00:00.{pid}+00", "client backend",
                     "pretix", "pretix", "", "10.0.0.21", 51234)
    waiter = Backend(5151, "active", 0.4, 0.4, "t", "client backend", "pretix", "pretix", "", "10.0.0.22", 4000)
    locks = (AdvisoryLock(pid, KEY, "ExclusiveLock", True), AdvisoryLock(5151, KEY, "ExclusiveLock", False, (pid,)))
    return Snapshot(1, {pid: holder, 5151: waiter}, locks)


TERMINATED = Outcome("terminated")


class FakePrimary:
    """Answers with the snapshots (or Unreachable errors) it is given, one per look."""

    def __init__(self, looks, outcome: Outcome = TERMINATED):
        self.looks = list(looks)
        self.outcome = outcome
        self.terminated: list[int] = []
        self.aborted = self.closed = False

    def observe(self) -> Snapshot:
        look = self.looks.pop(0) if len(self.looks) > 1 else self.looks[0]
        if isinstance(look, Exception):
            raise look
        return look

    def terminate(self, fence: Fence) -> Outcome:
        self.terminated.append(fence.pid)
        return self.outcome

    def abort(self) -> None:
        self.aborted = True

    def close(self) -> None:
        self.closed = True


class Recorder:
    def __init__(self, primary: FakePrimary, section: LockFencingSection = SECTION):
        self.events = []
        self.reports = []
        self.beats = 0
        self.fencer = LockFencer(section, self.events.append, self.reports.append, self._beat,
                                 primary=primary, wall_clock=lambda: 1_700_000_000.0)  # type: ignore[arg-type]

    def _beat(self) -> None:
        self.beats += 1

    def names(self) -> list[str]:
        return [event.name for event in self.events]


def test_a_hung_holder_is_terminated_counted_and_told_once():
    primary = FakePrimary([hung()])
    recorder = Recorder(primary)
    assert recorder.fencer.round() == SECTION.interval
    assert primary.terminated == [4242]
    assert recorder.names() == ["lock_fencing.terminated"]
    status = recorder.reports[-1]
    assert (status.connected, status.fences_total, status.would_fence_total) == (True, 1, 0)
    assert status.last_fence.pid == 4242 and status.last_fence.lock_key.endswith("(quota 17)")
    assert status.last_fence.outcome == "terminated" and status.last_round == 1_700_000_000.0


def test_a_dry_run_terminates_nothing_and_counts_each_episode_once():
    primary = FakePrimary([hung()])
    recorder = Recorder(primary, dataclasses.replace(SECTION, enforce=False))
    for _ in range(3):
        recorder.fencer.round()
    assert primary.terminated == []
    assert recorder.names() == ["lock_fencing.would_terminate"]
    status = recorder.reports[-1]
    assert (status.enforce, status.fences_total, status.would_fence_total) == (False, 0, 1)
    assert status.last_fence.outcome == "would_terminate"


def test_a_holder_under_max_hold_is_looked_at_again_when_it_passes_max_hold():
    recorder = Recorder(FakePrimary([hung(age=1.7)]))
    assert recorder.fencer.round() == pytest.approx(0.3 + RECHECK_MARGIN)


def test_an_unreachable_primary_is_one_event_per_episode_and_a_status_never_an_exception():
    primary = FakePrimary([Unreachable("timeout: no answer from db:5432 within 0.5 s (connecting)"),
                           Unreachable("connection refused"), hung(age=0.1), Unreachable("connection refused"),
                           hung(age=0.1)])
    recorder = Recorder(primary)
    recorder.fencer.round()
    recorder.fencer.round()
    assert recorder.names() == ["lock_fencing.unreachable"]
    status = recorder.reports[-1]
    assert (status.connected, status.error) == (False, "connection refused")
    assert status.sentence == "primary unreachable: connection refused"
    recorder.fencer.round()
    recorder.fencer.round()
    recorder.fencer.round()
    assert recorder.names() == ["lock_fencing.unreachable", "lock_fencing.reachable", "lock_fencing.unreachable",
                                "lock_fencing.reachable"]
    assert recorder.reports[-1].connected and recorder.reports[-1].error is None


def test_a_refused_terminate_is_an_error_event_once_and_a_counted_failure_each_time():
    primary = FakePrimary([hung()], Outcome("refused", "must be a superuser to terminate superuser process"))
    recorder = Recorder(primary)
    recorder.fencer.round()
    recorder.fencer.round()
    assert primary.terminated == [4242, 4242]
    assert recorder.names() == ["lock_fencing.terminate_failed"]
    status = recorder.reports[-1]
    assert status.failures_total == 2 and status.fences_total == 0
    assert status.error == "terminate refused: must be a superuser to terminate superuser process"


def test_the_thread_beats_after_every_round_and_stops_at_once():
    primary = FakePrimary([hung(age=0.1)])
    recorder = Recorder(primary, dataclasses.replace(SECTION, interval=0.01, max_hold=2.0))
    recorder.fencer.start()
    wait_until(lambda: recorder.beats >= 3, message="three rounds")
    assert recorder.fencer.alive()
    recorder.fencer.stop()
    assert not recorder.fencer.alive()
    assert primary.aborted and primary.closed


def test_a_snapshot_is_parsed_from_the_queries_text_rows():
    row_held = ("4242", "16384", "0", str((17 << 16) | 2), "1", "ExclusiveLock", "t", None, "4242",
                "idle in transaction", "2.5", "2026-08-01 12:00:00.1+00", "2.6", "client backend", "pretix",
                "pretix", "gunicorn", "10.0.0.21", "51234")
    row_waiting = ("5151", "16384", "0", str((17 << 16) | 2), "1", "ExclusiveLock", "f", "4242,4343", "5151", "active",
                   "0.4", "t", "0.4", "client backend", "pretix", "pretix", "", None, "-1")
    row_gone = ("6000", "16384", "0", "1", "1", "ExclusiveLock", "t") + (None,) * 12
    row_hidden = ("6100", "16384", "0", "1", "1", "ExclusiveLock", "t", None, "6100", None, None, None, None, None,
                  "pretix", "pretix", "", None, None)
    row_prepared = (None, "16384", "0", "2", "1", "ExclusiveLock", "t") + (None,) * 12
    seen = parse_snapshot(7, [row_held, row_waiting, row_gone, row_hidden, row_prepared])
    assert seen.own_pid == 7
    assert set(seen.backends) == {4242, 5151, 6100}  # 6000 ended between pg_locks and pg_stat_activity
    assert seen.backends[6100].state is None and seen.backends[6100].backend_type is None
    assert seen.backends[4242].application_name == "gunicorn" and seen.backends[4242].state_age == 2.5
    assert seen.backends[5151].client_addr is None and seen.backends[5151].client_port == -1
    assert [(lock.pid, lock.granted, lock.blocked_by) for lock in seen.locks] == [
        (4242, True, ()), (5151, False, (4242, 4343)), (6000, True, ()), (6100, True, ())]


def test_a_session_seen_again_after_its_terminate_is_counted_once():
    primary = FakePrimary([hung()])  # the backend had not exited yet at the next look
    recorder = Recorder(primary)
    recorder.fencer.round()
    recorder.fencer.round()
    assert primary.terminated == [4242, 4242]
    assert recorder.names() == ["lock_fencing.terminated"]
    assert recorder.reports[-1].fences_total == 1


class HangingPrimary(FakePrimary):
    """A primary whose look hangs until abort() ends it, as a SIGSTOPped server's would."""

    def __init__(self):
        super().__init__([hung()])
        self.looking = threading.Event()
        self.released = threading.Event()

    def observe(self) -> Snapshot:
        self.looking.set()
        self.released.wait(10)
        raise Unreachable("timeout: no answer from db:5432 within 0.5 s (query)")

    def abort(self) -> None:
        super().abort()
        self.released.set()


def test_a_look_aborted_by_stop_is_not_reported_as_an_unreachable_primary():
    primary = HangingPrimary()
    recorder = Recorder(primary)
    recorder.fencer.start()
    assert primary.looking.wait(10)
    recorder.fencer.stop()
    assert not recorder.fencer.alive()
    assert recorder.events == [] and recorder.reports == []
