"""Lock fencing in the loop, with a hand-written worker: started on commit, reported, quiet while well."""

from __future__ import annotations

import dataclasses
from datetime import datetime, timezone

import pytest

from pretix_agent import config as config_module
from pretix_agent.controller import Facts, Services
from pretix_agent.fencing import controller as fencing_module
from pretix_agent.fencing.controller import FencingController, summary
from pretix_agent.fencing.model import DISABLED
from pretix_agent.status import LockFencing

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=timezone.utc)
CONFIG = '[lock_fencing]\ndsn = "host=db1 user=pretix_agent_fencing dbname=postgres"\n'


class FakeFencer:
    made: list[FakeFencer] = []

    def __init__(self, section, log_event, report, beat):
        self.section, self.report, self.beat = section, report, beat
        self.status = LockFencing(enabled=True, enforce=section.enforce)
        self.started = self.stopped = False
        FakeFencer.made.append(self)

    def start(self):
        self.started = True

    def stop(self):
        self.stopped = True

    def alive(self):
        return self.started and not self.stopped


@pytest.fixture
def made(monkeypatch):
    FakeFencer.made = []
    monkeypatch.setattr(fencing_module, "LockFencer", FakeFencer)
    woken = []
    controller = FencingController(Services(woken.append, lambda event: None))
    controller.prepare(config_module.parse(CONFIG)).commit()
    return controller, woken


def test_a_configured_section_starts_the_worker_and_reports_it(made):
    controller, _woken = made
    assert FakeFencer.made[0].started
    assert controller.status() == LockFencing(enabled=True, enforce=True)
    assert controller.unhealthy(0.0) == []


def test_a_fence_wakes_the_loop_and_an_unreachable_primary_is_said_in_the_sentence(made):
    controller, woken = made
    fencer = FakeFencer.made[0]
    fencer.report(dataclasses.replace(fencer.status, connected=True, rounds=1))
    assert woken == []  # a quiet round changes nothing worth a cycle
    fencer.report(dataclasses.replace(fencer.status, connected=True, fences_total=1))
    assert woken == ["lock_fencing"]
    fencer.report(dataclasses.replace(fencer.status, error="connection refused"))
    _, sentence = controller.reconcile(Facts(now=NOW, monotonic=0.0))
    assert sentence == "lock fencing: primary not watched (connection refused)"
    assert controller.degraded() == ["lock fencing cannot watch the primary: connection refused"]


def test_removing_the_section_stops_the_worker_and_the_status_section(made):
    controller, _woken = made
    controller.prepare(config_module.parse("")).commit()
    assert FakeFencer.made[0].stopped and controller.status() is None


def test_the_summary_is_quiet_when_disabled_or_well():
    assert summary(DISABLED).sentence == ""
    assert summary(LockFencing(enabled=True, enforce=True, connected=True)).sentence == ""
