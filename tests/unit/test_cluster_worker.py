"""The cluster worker, one pass at a time (`step`), against a hand-written fake store and clocks."""

from __future__ import annotations

import dataclasses

import pytest

from pretix_agent.cluster.model import (
    CONNECTED,
    FAILING,
    SCHEMA_MISSING,
    UNREACHABLE,
    ClusterLock,
    NodeState,
    Outcome,
    Report,
    Request,
    View,
)
from pretix_agent.cluster.store import StoreError
from pretix_agent.cluster.worker import ClusterWorker
from pretix_agent.config import ClusterSection

SETTINGS = ClusterSection(dsn="host=db1", name="prod", passfile=None, heartbeat_interval=3.0, timeout=1.0,
                          max_clock_skew=1.0, listen=True, roles=())
STATE = NodeState(node="app1", roles=("app",), version="0.1.0", heartbeat_interval=3.0, maintenance=False, cause=None,
                  locked=None, cluster_lock_id=None, dismissed=None, failing_checks=(), haproxy=(), windows=(),
                  timezone="UTC", windows_digest="d", started_at=0.0)
LOCK = ClusterLock("L1", "alice", 100.0, None, "app1")


class FakeStore:
    """The database as the worker sees it: scripted answers and failures, every call recorded."""

    def __init__(self) -> None:
        self.connected = False
        self.server: str | None = None
        self.schema_ok = True
        self.refuse_connect: str | None = None
        self.fail_sync: StoreError | None = None
        self.fail_execute: StoreError | None = None
        self.view = View(lock=None, changed_at=None, nodes=(), server_now=1000.0)
        self.calls: list[tuple] = []
        self.pending: list[str] = []

    def connect(self) -> None:
        self.calls.append(("connect",))
        if self.refuse_connect:
            raise StoreError(self.refuse_connect)
        self.connected, self.server = True, "db1:5432"

    def check_schema(self) -> bool:
        self.calls.append(("check_schema",))
        return self.schema_ok

    def sync(self, state: NodeState | None, announce: bool) -> View:
        self.calls.append(("sync", state, announce))
        if self.fail_sync is not None:
            if not self.fail_sync.refused:
                self.connected = False
            raise self.fail_sync
        return self.view

    def execute(self, request: Request) -> Outcome:
        self.calls.append(("execute", request.id))
        if self.fail_execute is not None:
            if not self.fail_execute.refused:
                self.connected = False
            raise self.fail_execute
        if request.action == "init":
            self.schema_ok = True
        return Outcome(request.id, request.action, True, f"{request.action} done", True, LOCK, 1000.0)

    def notifications(self) -> list[str]:
        pending, self.pending = self.pending, []
        return pending

    def fileno(self) -> int | None:
        return None

    def abort(self) -> None:
        pass

    def close(self) -> None:
        self.connected = False


class Clock:
    def __init__(self, now: float = 100.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def rig():
    store, monotonic, wall, reports = FakeStore(), Clock(100.0), Clock(5000.0), []
    worker = ClusterWorker(SETTINGS, store, reports.append, monotonic=monotonic, wall=wall)
    yield worker, store, monotonic, wall, reports
    worker.stop()


def request(request_id: str = "r1", action: str = "lock", expires_at: float = 6000.0) -> Request:
    return Request(id=request_id, action=action, by="alice", at=5000.0, host="app1", expires_at=expires_at)


def syncs(store: FakeStore) -> list[tuple]:
    return [call for call in store.calls if call[0] == "sync"]


def test_the_first_pass_connects_publishes_the_row_and_reports_the_view(rig):
    worker, store, _, wall, reports = rig
    worker.publish(STATE)
    delay = worker.step()
    assert store.calls == [("connect",), ("sync", STATE, True)]
    assert reports[-1] == Report(CONNECTED, server="db1:5432", view=store.view, view_at=wall.now)
    assert delay == pytest.approx(3.0)


def test_the_row_is_published_at_each_heartbeat_and_announced_only_when_it_changed(rig):
    worker, store, monotonic, _, _ = rig
    worker.publish(STATE)
    worker.step()
    monotonic.now += 1.0
    worker.step()
    assert len(syncs(store)) == 1  # nothing due, nothing changed
    changed = dataclasses.replace(STATE, maintenance=True)
    worker.publish(changed)
    worker.step()
    assert syncs(store)[-1] == ("sync", changed, True)
    monotonic.now += 3.0
    worker.step()
    assert syncs(store)[-1] == ("sync", changed, False)


def test_a_notification_for_this_cluster_reads_the_view_without_publishing(rig):
    worker, store, monotonic, _, _ = rig
    worker.publish(STATE)
    worker.step()
    store.pending = ["lock:other-cluster"]
    monotonic.now += 0.5
    worker.step()
    assert len(syncs(store)) == 1
    store.pending = ["lock:prod"]
    worker.step()
    assert syncs(store)[-1] == ("sync", None, False)


def test_an_unreachable_database_is_reported_with_since_when_and_tried_again_at_the_next_heartbeat(rig):
    worker, store, monotonic, wall, reports = rig
    store.refuse_connect = "db1:5432: connection refused"
    assert worker.step() == pytest.approx(3.0)
    assert reports[-1] == Report(UNREACHABLE, error="db1:5432: connection refused", failing_since=wall.now)
    monotonic.now += 2.9
    worker.step()
    assert store.calls.count(("connect",)) == 1
    monotonic.now += 0.1
    wall.now += 3.0
    worker.step()
    assert store.calls.count(("connect",)) == 2
    assert reports[-1].failing_since == 5000.0  # since the first failure, not the latest


def test_a_lost_connection_keeps_the_last_view_and_says_since_when_it_is_stale(rig):
    worker, store, monotonic, wall, reports = rig
    worker.publish(STATE)
    worker.step()
    store.fail_sync = StoreError("timeout: no answer from db1:5432 within 1 s (query)")
    monotonic.now += 3.0
    wall.now += 3.0
    worker.step()
    report = reports[-1]
    assert (report.state, report.failing_since, report.view) == (UNREACHABLE, 5003.0, store.view)
    assert report.view_at == 5000.0


def test_a_request_while_disconnected_tries_to_connect_at_once_and_fails_in_one_line(rig):
    worker, store, monotonic, _, reports = rig
    store.refuse_connect = "db1:5432: connection refused"
    worker.step()
    monotonic.now += 0.5
    worker.submit(request())
    worker.step()
    assert store.calls.count(("connect",)) == 2
    (outcome,) = reports[-1].outcomes
    assert not outcome.ok and outcome.detail == "cannot reach the cluster database: db1:5432: connection refused"


def test_a_request_is_carried_out_then_the_view_read_again(rig):
    worker, store, _, _, reports = rig
    worker.publish(STATE)
    worker.step()
    worker.submit(request())
    worker.step()
    assert store.calls[-2:] == [("execute", "r1"), ("sync", None, False)]
    assert reports[-1].outcomes[-1].ok and reports[-1].state == CONNECTED


def test_a_request_the_server_refuses_fails_and_keeps_the_connection(rig):
    worker, store, _, _, reports = rig
    worker.step()
    store.fail_execute = StoreError("refused by the database: permission denied for table cluster", refused=True)
    worker.submit(request())
    worker.step()
    assert reports[-1].outcomes[-1].detail == "refused by the database: permission denied for table cluster"
    assert store.connected and reports[-1].state == CONNECTED


def test_a_request_whose_answer_is_lost_says_it_may_have_taken_effect(rig):
    worker, store, _, _, reports = rig
    worker.step()
    store.fail_execute = StoreError("connection lost: server closed the connection unexpectedly")
    worker.submit(request())
    worker.step()
    outcome = reports[-1].outcomes[-1]
    assert not outcome.ok and "whether it took effect shows in pretix-agentctl status --cluster" in outcome.detail
    assert reports[-1].state == UNREACHABLE


def test_an_expired_request_is_not_carried_out(rig):
    worker, store, _, _, reports = rig
    worker.step()
    worker.submit(request(expires_at=4000.0))
    worker.step()
    assert ("execute", "r1") not in store.calls
    assert reports[-1].outcomes[-1].detail.startswith("refused: it expired")


def test_a_missing_schema_is_reported_and_only_init_is_carried_out_until_it_exists(rig):
    worker, store, _, _, reports = rig
    store.schema_ok = False
    worker.publish(STATE)
    worker.step()
    assert reports[-1].state == SCHEMA_MISSING and not syncs(store)
    worker.submit(request("r1", "lock"))
    worker.submit(request("r2", "init"))
    worker.step()
    first, second = reports[-1].outcomes
    assert not first.ok and "cluster init first" in first.detail
    assert second.ok and reports[-1].state == CONNECTED
    assert syncs(store) == [("sync", STATE, True)]


def test_statements_the_server_refuses_leave_the_connection_up_but_the_view_stale(rig):
    worker, store, monotonic, _, reports = rig
    worker.publish(STATE)
    worker.step()
    store.fail_sync = StoreError("refused by the database: permission denied for table node", refused=True)
    monotonic.now += 3.0
    worker.step()
    assert reports[-1].state == FAILING and store.connected
