"""The planned drain: the pure decision, and the controller with a hand-written logind inhibitor."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from pretix_agent import config as config_module
from pretix_agent.controller import Facts, Services
from pretix_agent.drain import controller as drain_module
from pretix_agent.drain.controller import DrainController
from pretix_agent.drain.decide import Observation, Shutdown, decide, request_reason
from pretix_agent.maintenance.decide import LockInfo, encode_lock

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=timezone.utc)
NO_REQUEST = LockInfo(False)


NOT_DRAINING = Shutdown()


def seen(signals=(), shutdown=NOT_DRAINING, now=100.0, request=NO_REQUEST):
    return Observation(request, tuple(signals), shutdown, now, 4.0)


@pytest.mark.parametrize(("request_", "words"), [
    (LockInfo(False), None),
    (LockInfo(True), "requested"),
    (LockInfo(True, by="alice"), "requested by alice"),
    (LockInfo(True, by="alice", reason="kernel update"), "kernel update"),
])
def test_a_drain_request_is_said_by_its_reason_else_by_who_asked(request_, words):
    assert request_reason(request_) == words


def test_a_shutdown_drains_at_once_flushes_the_logs_and_waits_the_drain_time():
    decision = decide(seen(signals=[True]))
    assert decision.shutdown == Shutdown(True, 104.0)
    assert (decision.reason, decision.release, decision.flush) == ("system shutdown", False, True)
    assert [e.name for e in decision.events] == ["shutdown_drain.started"]
    assert decision.sentence == "draining: system shutdown"


def test_when_the_drain_time_is_up_the_lock_is_released_and_the_node_stays_drained():
    decision = decide(seen(shutdown=Shutdown(True, 104.0), now=104.0))
    assert (decision.release, decision.flush, decision.reason) == (True, True, "system shutdown")
    assert decision.shutdown == Shutdown(True, None)
    assert [e.name for e in decision.events] == ["shutdown_drain.released"]
    assert decide(seen(shutdown=decision.shutdown, now=200.0)).release is False


def test_a_cancelled_shutdown_ends_the_drain_and_a_request_drain_remains():
    decision = decide(seen(signals=[False], shutdown=Shutdown(True, 104.0), request=LockInfo(True, reason="x")))
    assert decision.shutdown == Shutdown()
    assert decision.reason == "x"
    assert [e.name for e in decision.events] == ["shutdown_drain.cancelled"]


def test_a_prepare_and_cancel_in_one_cycle_leave_the_node_in_rotation():
    decision = decide(seen(signals=[True, False]))
    assert decision.reason is None and decision.shutdown == Shutdown()
    assert [e.name for e in decision.events] == ["shutdown_drain.started", "shutdown_drain.cancelled"]


class FakeInhibitor:
    made: list[FakeInhibitor] = []

    def __init__(self, on_prepare, connection=None):
        self.on_prepare = on_prepare
        self.released = 0
        self.stopped = False
        FakeInhibitor.made.append(self)

    def start(self):
        pass

    def release(self):
        self.released += 1

    def stop(self):
        self.stopped = True


class FakeBus:
    def get(self):
        return object()

    def alive(self):
        return True


class FakeWatcher:
    def __init__(self, paths, notify):
        self.paths = paths

    def start(self):
        pass

    def alive(self):
        return True

    def stop(self):
        pass


@pytest.fixture
def made(tmp_path, monkeypatch):
    import pretix_agent.adapters.dbus as dbus
    import pretix_agent.adapters.inotify as inotify

    FakeInhibitor.made = []
    monkeypatch.setattr(dbus, "ShutdownInhibitor", FakeInhibitor)
    monkeypatch.setattr(inotify, "FileWatcher", FakeWatcher)
    events, woken = [], []
    config = config_module.parse(f'[agent]\nstate_dir = "{tmp_path}"\nshutdown_drain_time = "4s"\n'
                                 '[agent_check]\nlisten = "127.0.0.1:5555"\n')
    controller = DrainController(Services(woken.append, events.append), FakeBus())  # type: ignore[arg-type]
    controller.prepare(config).commit()
    return controller, events, woken, tmp_path


def test_a_node_that_answers_agent_check_holds_the_delay_lock(made):
    _controller, events, _woken, _state = made
    assert len(FakeInhibitor.made) == 1
    assert [e.name for e in events] == ["shutdown_drain.armed"]
    assert drain_module.wants_inhibitor(config_module.parse("")) is False


def test_prepare_for_shutdown_drains_then_releases_when_due(made):
    controller, _events, woken, _state = made
    FakeInhibitor.made[0].on_prepare(True)
    assert woken == ["shutdown:prepare"]
    facts, sentence = controller.reconcile(Facts(now=NOW, monotonic=10.0))
    assert (facts.drain, facts.flush_logs, sentence) == ("system shutdown", True, "draining: system shutdown")
    assert controller.due() == 14.0
    controller.reconcile(Facts(now=NOW, monotonic=14.0))
    assert FakeInhibitor.made[0].released == 1
    assert controller.status().shutdown is True and controller.status().request.present is False


def test_a_drain_file_drains_the_node_with_its_reason(made):
    controller, _events, _woken, state = made
    (state / "drain").write_bytes(encode_lock("abc", "alice", NOW, "kernel update", "app1"))
    facts, _sentence = controller.reconcile(Facts(now=NOW, monotonic=1.0))
    assert facts.drain == "kernel update"
    shown = controller.status()
    assert (shown.request.by, shown.request.id, shown.reason) == ("alice", "abc", "kernel update")
