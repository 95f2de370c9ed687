"""The checks controller with runners that never start: results advanced in the loop, states handed on."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from pretix_agent import config as config_module
from pretix_agent.checks import controller as checks_module
from pretix_agent.checks.controller import ChecksController, Observed, advance
from pretix_agent.checks.health import CheckState
from pretix_agent.checks.model import failed, passed
from pretix_agent.controller import Facts, Services

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=timezone.utc)
CHECKS = """
[checks.web]
type = "http"
url = "http://127.0.0.1:1/healthcheck/"
fall = 2
rise = 2
[checks.api]
type = "http"
url = "http://127.0.0.1:2/healthcheck/"
"""


class FakeBus:
    def alive(self):
        return True

    def get(self):
        raise AssertionError("no systemd check here: the bus must not be opened")


@pytest.fixture
def made(monkeypatch):
    started = []
    monkeypatch.setattr(checks_module.CheckRunner, "start", lambda runner: started.append(runner.spec.name))
    monkeypatch.setattr(checks_module.CheckRunner, "stop", lambda runner: None)
    events, woken = [], []
    controller = ChecksController(Services(woken.append, events.append), FakeBus())  # type: ignore[arg-type]
    controller.prepare(config_module.parse(CHECKS)).commit()
    return controller, started, events, woken


def test_committing_starts_one_runner_per_check(made):
    _controller, started, _events, _woken = made
    assert sorted(started) == ["api", "web"]


def test_a_delivered_result_wakes_the_loop_and_is_advanced_in_the_next_cycle(made):
    controller, _started, events, woken = made
    controller._deliver("web", passed("HTTP 200"))
    assert woken == ["check:web"]
    controller._deliver("web", passed("HTTP 200"))
    facts, sentence = controller.reconcile(Facts(now=NOW, monotonic=0.0))
    assert facts.checks["web"].state == "passing"
    assert sentence == "checks: 1 passing, 1 unknown (api)"
    assert controller.status()["web"].since == "2026-12-02T12:00:00+00:00"
    assert [e.name for e in events] == ["check.passing"]


def test_a_failing_check_reports_its_failure_while_it_rises_again(made):
    controller, _started, _events, _woken = made
    for result in (failed("HTTP 500"), failed("HTTP 500"), passed("HTTP 200 in 134 ms")):
        controller._deliver("web", result)
    controller.reconcile(Facts(now=NOW, monotonic=0.0))
    shown = controller.status()["web"]
    assert (shown.state, shown.reason) == ("failing", "HTTP 200 in 134 ms")
    assert shown.failure == "HTTP 500 (passing again: 1 so far)"


def test_a_reload_restarts_only_the_checks_that_changed_and_forgets_removed_ones(made):
    controller, started, _events, _woken = made
    controller._deliver("api", passed("ok"))
    controller._deliver("api", passed("ok"))
    controller.reconcile(Facts(now=NOW, monotonic=0.0))
    started.clear()
    changed = CHECKS.replace("fall = 2", "fall = 3").split("[checks.api]")[0]
    controller.prepare(config_module.parse(changed)).commit()
    assert started == ["web"]
    assert list(controller.status()) == ["web"]
    assert "api" not in controller.states


def test_a_prepared_change_that_is_discarded_starts_nothing(made):
    controller, started, _events, _woken = made
    started.clear()
    controller.prepare(config_module.parse(CHECKS.replace("fall = 2", "fall = 5"))).discard()
    assert started == []
    assert controller.specs["web"].fall == 2


def test_advance_is_pure_and_names_never_probed_checks_unknown():
    specs = {spec.name: spec for spec in config_module.parse(CHECKS).checks}
    step = advance(Observed({}, (("web", failed("refused", hard=True)),), specs))
    assert step.states["web"].state == "failing"
    assert step.changed == frozenset({"web"})
    assert step.sentence == "checks: 1 failing (web), 1 unknown (api)"
    assert advance(Observed({"web": step.states["web"]}, (), specs)).changed == frozenset()
    assert CheckState().state == "unknown"
