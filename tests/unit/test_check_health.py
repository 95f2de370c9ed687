"""The fall/rise state machine and the one-event-per-change rule, with plain values."""

import dataclasses

import pytest

from pretix_agent.checks import health
from pretix_agent.checks.model import failed, passed, unknown
from pretix_agent.config import CheckSpec, HttpCheck

OK, BAD, DUNNO = passed("ok"), failed("timeout"), unknown("cannot measure")
GONE = failed("refused", hard=True)


def run(results, fall=3, rise=2, start=None):
    state = start or health.CheckState()
    seen = []
    for result in results:
        state = health.advance(state, result, fall, rise)
        seen.append(state.state)
    return state, seen


def test_a_new_check_is_unknown_until_rise_passes():
    _, seen = run([OK, OK, OK])
    assert seen == ["unknown", "passing", "passing"]


def test_a_new_check_becomes_failing_after_fall_failures():
    _, seen = run([BAD, BAD, BAD])
    assert seen == ["unknown", "unknown", "failing"]


def test_one_odd_failure_never_flips_a_passing_check():
    state, _ = run([OK, OK])
    _, seen = run([BAD, BAD, OK, BAD, BAD, OK], start=state)
    assert seen == ["passing"] * 6


def test_failing_check_needs_rise_consecutive_passes_to_recover():
    state, _ = run([BAD] * 3)
    _, seen = run([OK, BAD, OK, OK], start=state)
    assert seen == ["failing", "failing", "failing", "passing"]


def test_could_not_measure_is_unknown_not_failing_and_not_passing():
    state, _ = run([OK, OK])
    _, seen = run([DUNNO, DUNNO, DUNNO], start=state)
    assert seen == ["passing", "passing", "unknown"]


def test_a_hard_failure_makes_a_check_failing_at_once():
    passing, _ = run([OK, OK])
    _, seen = run([GONE, OK, OK], start=passing)
    assert seen == ["failing", "failing", "passing"]


def test_hard_failure_is_remembered_for_haproxy():
    state, _ = run([GONE])
    assert state.hard_failure()
    soft, _ = run([failed("timeout")] * 3)
    assert soft.state == "failing" and not soft.hard_failure()


def test_fall_and_rise_of_one_follow_every_probe():
    _, seen = run([OK, BAD, OK, DUNNO], fall=1, rise=1)
    assert seen == ["passing", "failing", "passing", "unknown"]


def at(result, when):
    return dataclasses.replace(result, at=when)


def test_a_check_knows_when_it_last_reported_and_when_it_turned_failing():
    state, _ = run([at(OK, 1.0), at(OK, 2.0), at(BAD, 3.0), at(BAD, 4.0)])
    assert (state.state, state.probed_at, state.failing_since) == ("passing", 4.0, None)
    assert state.probe_failed()  # fall is not reached, but its latest probe failed
    state, _ = run([at(BAD, 5.0), at(OK, 6.0)], start=state)
    assert (state.state, state.probed_at, state.failing_since) == ("failing", 6.0, 5.0)  # rising: still failing
    state, _ = run([at(OK, 7.0)], start=state)
    assert (state.state, state.failing_since) == ("passing", None) and not state.probe_failed()


def test_a_result_without_a_time_keeps_the_last_known_one():
    state, _ = run([at(OK, 1.0), OK])
    assert state.probed_at == 1.0


SPEC = CheckSpec("web", "http", 2.0, 1.0, 2, 2, HttpCheck("http://127.0.0.1/healthcheck/", "", True))


def test_apply_results_emits_one_event_per_state_change_not_per_probe():
    states, events = health.apply_results({}, [("web", GONE)] * 5, {"web": SPEC})
    assert [e.name for e in events] == ["check.failing"]
    assert events[0].level == "error" and events[0].fields["reason"] == "refused" and events[0].fields["hard"]
    states, events = health.apply_results(states, [("web", OK)] * 3, {"web": SPEC})
    assert [(e.name, e.fields["old"], e.fields["new"]) for e in events] == [("check.passing", "failing", "passing")]


def test_results_of_a_check_no_longer_configured_are_dropped():
    states, events = health.apply_results({}, [("gone", BAD)], {"web": SPEC})
    assert states == {} and events == []


@pytest.mark.parametrize(("states", "expected"), [
    ({}, ""),
    ({"a": health.CheckState("passing"), "b": health.CheckState("passing")}, "checks: 2 passing"),
    ({"a": health.CheckState("passing"), "db": health.CheckState("failing"), "r": health.CheckState("unknown")},
     "checks: 1 passing, 1 failing (db), 1 unknown (r)"),
])
def test_summary_names_what_is_not_passing(states, expected):
    assert health.summary(states) == expected
