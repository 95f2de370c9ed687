"""haproxy control in the loop, with a hand-written worker: inputs handed over when they change, and
no report passed off as current while the worker still acts on older inputs."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from pretix_agent import config as config_module
from pretix_agent.checks.health import CheckState
from pretix_agent.checks.model import failed, passed
from pretix_agent.controller import Facts, Services
from pretix_agent.haproxy import controller as haproxy_module
from pretix_agent.haproxy.controller import HaproxyControl, Inputs, Observed, hand_over, inputs_for
from pretix_agent.haproxy.worker import Report

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=timezone.utc)
CONFIG = """
[haproxy]
socket = "/run/haproxy/admin.sock"
[[haproxy.server]]
backend = "pretix"
server = "app1"
checks = ["web1"]
local = true
[checks.web1]
type = "http"
url = "http://127.0.0.1:1/healthcheck/"
[checks.other]
type = "http"
url = "http://127.0.0.1:2/healthcheck/"
"""
FAILING = CheckState(state="failing", last=failed("HTTP 500"), failure=failed("HTTP 500"))


def report(generation: int, sentence: str = "haproxy: 1 server(s) as desired") -> Report:
    return Report(generation, True, None, "pid 1", sentence, [], [], [], {})


def test_only_the_gating_checks_and_a_local_drain_are_handed_over():
    section = config_module.parse(CONFIG).haproxy
    assert section is not None
    inputs = inputs_for(section, {"web1": FAILING, "other": CheckState()}, "kernel update")
    assert inputs == Inputs({"web1": FAILING}, "kernel update")


def test_shared_checks_are_handed_over_with_the_gating_ones():
    section = config_module.parse(CONFIG.replace('checks = ["web1"]', 'checks = ["web1"]\nshared_checks = ["other"]'))
    assert section.haproxy is not None
    inputs = inputs_for(section.haproxy, {"web1": FAILING, "other": FAILING, "third": FAILING}, None)
    assert inputs == Inputs({"web1": FAILING, "other": FAILING}, None)


def test_new_inputs_are_handed_over_and_the_old_report_is_not_passed_off_as_current():
    inputs = Inputs({"web1": FAILING}, None)
    step = hand_over(Observed(inputs, Inputs({}, None), 3, report(3)))
    assert (step.inputs, step.generation, step.sentence) == (inputs, 4, "haproxy: acting on new check states")
    waiting = hand_over(Observed(inputs, inputs, 4, report(3)))
    assert (waiting.inputs, waiting.sentence) == (None, "haproxy: acting on new check states")
    current = hand_over(Observed(inputs, inputs, 4, report(4, "haproxy: set pretix/app1 maint")))
    assert (current.inputs, current.sentence) == (None, "haproxy: set pretix/app1 maint")


def test_new_inputs_that_differ_only_in_probe_details_keep_the_reports_sentence():
    # Every probe hands new inputs over (its latency, its time); the sentence must not flip to
    # "acting" and back each time, or loop.decided is logged twice per probe.
    first = Inputs({"web1": FAILING}, None)
    again = Inputs({"web1": CheckState(state="failing", last=failed("HTTP 500 (again)"), probed_at=7.0)}, None)
    step = hand_over(Observed(again, first, 4, report(4, "haproxy: set pretix/app1 maint"), first))
    assert (step.inputs, step.generation, step.sentence) == (again, 5, "haproxy: set pretix/app1 maint")
    passing = Inputs({"web1": CheckState(state="failing", passes=1, last=passed("HTTP 200"))}, None)
    rising = hand_over(Observed(passing, first, 4, report(4, "haproxy: set pretix/app1 maint"), first))
    assert rising.sentence == "haproxy: acting on new check states"  # its latest outcome changed


class FakeWorker:
    made: list[FakeWorker] = []

    def __init__(self, section, state_dir, report, log_event, beat, report_within=None):
        self.report, self.updates, self.started, self.stopped = report, [], False, False
        self.report_within = report_within
        self.beat = beat
        FakeWorker.made.append(self)

    def start(self):
        self.started = True

    def alive(self):
        return not self.stopped

    def stop(self):
        self.stopped = True

    def update(self, checks, drain, generation):
        self.updates.append((dict(checks), drain, generation))


@pytest.fixture
def made(monkeypatch, tmp_path):
    FakeWorker.made = []
    monkeypatch.setattr(haproxy_module, "HaproxyWorker", FakeWorker)
    woken = []
    controller = HaproxyControl(Services(woken.append, lambda event: None))
    config = config_module.parse(CONFIG + f'[agent]\nstate_dir = "{tmp_path}"\n')
    controller.prepare(config).commit()
    return controller, config, woken


def test_the_worker_gets_each_change_once_and_its_report_becomes_the_status(made):
    controller, _config, woken = made
    worker = FakeWorker.made[0]
    assert worker.started and woken == ["haproxy"]
    facts = Facts(now=NOW, monotonic=0.0, checks={"web1": FAILING, "other": CheckState()})
    controller.reconcile(facts)
    controller.reconcile(facts)
    assert worker.updates == [({"web1": FAILING}, None, 1)]
    assert controller.status().pending  # the worker has not acted on generation 1 yet
    worker.report(report(1, "haproxy: set pretix/app1 maint"))
    assert woken[-1] == "haproxy"
    _, sentence = controller.reconcile(facts)
    assert sentence == "haproxy: set pretix/app1 maint"
    assert controller.status().reachable is True and controller.status().socket == "/run/haproxy/admin.sock"
    assert not controller.status().pending


def test_the_worker_knows_how_often_each_check_reports_and_a_new_interval_replaces_it(made):
    controller, config, _woken = made
    assert FakeWorker.made[0].report_within == {"web1": 3.0, "other": 3.0}  # interval 2 s + timeout 1 s
    faster = CONFIG.replace('url = "http://127.0.0.1:1/healthcheck/"',
                            'url = "http://127.0.0.1:1/healthcheck/"\ninterval = "500ms"\ntimeout = "200ms"')
    controller.prepare(config_module.parse(faster + f'[agent]\nstate_dir = "{config.agent.state_dir}"\n')).commit()
    assert len(FakeWorker.made) == 2 and FakeWorker.made[1].report_within["web1"] == pytest.approx(0.7)


def test_an_unchanged_reload_keeps_the_worker_and_a_changed_one_replaces_it(made):
    controller, config, _woken = made
    controller.prepare(config).commit()
    assert len(FakeWorker.made) == 1
    controller.prepare(config_module.parse(CONFIG.replace("local = true", "local = false"))).commit()
    assert len(FakeWorker.made) == 2 and FakeWorker.made[0].stopped and FakeWorker.made[1].started


def test_without_a_haproxy_section_the_controller_says_nothing(tmp_path):
    controller = HaproxyControl(Services(lambda reason: None, lambda event: None))
    controller.prepare(config_module.parse("")).commit()
    facts = Facts(now=NOW, monotonic=0.0)
    assert controller.reconcile(facts) == (facts, "")
    assert controller.status() is None


def test_a_passing_probe_with_another_latency_is_not_handed_over_again(made):
    controller, _config, _woken = made
    worker = FakeWorker.made[0]
    for latency in (3, 7, 12):
        state = CheckState(state="passing", probes=latency, last=passed(f"HTTP 200 in {latency} ms"))
        controller.reconcile(Facts(now=NOW, monotonic=0.0, checks={"web1": state}))
    assert len(worker.updates) == 1
