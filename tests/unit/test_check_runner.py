"""The runner: probes off the main loop, a hard deadline, aborts, no pile-up of hung probes."""

import itertools
import threading
import time

from pretix_agent.checks.model import Deadline, passed
from pretix_agent.checks.runner import CheckRunner
from pretix_agent.config import CheckSpec, HttpCheck
from tests.waiting import wait_until


def spec(interval=0.2, timeout=0.1):
    return CheckSpec("web", "http", interval, timeout, 3, 2, HttpCheck("http://127.0.0.1/", "", True))


def test_a_probe_that_answers_is_delivered_with_its_result():
    runner = CheckRunner(spec(), lambda deadline: passed("fine", latency_ms=1.0), lambda n, r: None)
    result = runner.probe_once()
    assert result.outcome == "pass" and result.values == {"latency_ms": 1.0}


def test_a_hung_probe_is_aborted_at_its_deadline_and_reported_as_a_soft_timeout():
    released = threading.Event()

    def probe(deadline: Deadline):
        deadline.on_abort(released.set)  # stands for shutting the socket down
        released.wait(30)
        return passed("too late")

    runner = CheckRunner(spec(timeout=0.1), probe, lambda n, r: None)
    started = time.monotonic()
    result = runner.probe_once()
    assert result.outcome == "fail" and result.reason.startswith("timeout") and not result.hard
    assert released.is_set()
    assert time.monotonic() - started < 1.0


def test_a_probe_that_ignores_its_abort_is_never_run_twice_at_once():
    stuck = threading.Event()
    calls = []

    def probe(deadline: Deadline):
        calls.append(1)
        stuck.wait(30)
        return passed("late")

    runner = CheckRunner(spec(timeout=0.05), probe, lambda n, r: None)
    assert runner.probe_once().reason.startswith("timeout")
    second = runner.probe_once()
    assert "still hung" in second.reason and len(calls) == 1
    stuck.set()
    wait_until(lambda: not runner.probe_busy(), 5, message="the hung probe to return")
    assert runner.probe_once().outcome == "pass" and len(calls) == 2


def test_a_probe_that_raises_is_a_failure_with_the_error():
    def probe(deadline):
        raise RuntimeError("boom")

    result = CheckRunner(spec(), probe, lambda n, r: None).probe_once()
    assert result.outcome == "fail" and result.reason == "probe error: RuntimeError: boom"


def test_the_scheduler_delivers_every_interval_and_beats_and_stops():
    delivered, beats = [], []
    runner = CheckRunner(spec(interval=0.05, timeout=0.02), lambda d: passed("ok"),
                         lambda name, result: delivered.append((time.monotonic(), name)), lambda: beats.append(1))
    runner.start()
    wait_until(lambda: len(delivered) >= 4, 5, message="four results")
    runner.stop()
    assert not runner.alive()
    assert {name for _, name in delivered} == {"web"} and len(beats) >= 4
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(delivered)]
    assert all(gap >= 0.04 for gap in gaps), gaps


class ClosingProbe:
    """A probe that keeps a (pretend) connection: it counts its calls and its closes."""

    def __init__(self, hold: threading.Event | None = None):
        self.calls = 0
        self.closed = 0
        self.hold = hold
        self.running = threading.Event()

    def __call__(self, deadline: Deadline):
        self.calls += 1
        self.running.set()
        if self.hold is not None:
            self.hold.wait(30)
        return passed("ok")

    def close(self) -> None:
        self.closed += 1


def test_stopping_the_runner_closes_its_probe_once():
    probe = ClosingProbe()
    delivered = []
    runner = CheckRunner(spec(interval=0.05, timeout=0.02), probe, lambda name, result: delivered.append(result))
    runner.start()
    wait_until(lambda: len(delivered) >= 2, 5, message="two results")
    runner.stop()
    runner.stop()
    assert probe.closed == 1 and not runner.alive()


def test_a_runner_stopped_before_it_started_still_closes_its_probe():
    probe = ClosingProbe()
    CheckRunner(spec(), probe, lambda n, r: None).stop()
    assert probe.closed == 1 and probe.calls == 0


def test_a_probe_still_hung_at_stop_is_closed_without_waiting_for_it():
    hold = threading.Event()
    probe = ClosingProbe(hold)
    runner = CheckRunner(spec(interval=0.05, timeout=0.02), probe, lambda n, r: None)
    runner.start()
    wait_until(probe.running.is_set, 5, message="the probe to run")
    runner.stop()  # the probe ignores its abort; the probe object closes its connection when it returns
    assert probe.closed == 1 and not runner.alive()
    hold.set()
