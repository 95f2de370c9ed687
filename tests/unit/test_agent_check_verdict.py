"""What the node tells haproxy's agent-check, and why: the failure's reason, never a rising probe's."""

from __future__ import annotations

from pretix_agent.agent_check.verdict import verdict
from pretix_agent.checks.health import CheckState, advance
from pretix_agent.checks.model import failed, passed
from pretix_agent.config import AgentCheckSection

SECTION = AgentCheckSection(listen="127.0.0.1:5555", checks=("pretix",), weight=None)
PASSING = CheckState(state="passing", last=passed("HTTP 200"))


def rising() -> CheckState:
    state = CheckState()
    for result in (failed("HTTP 500"), failed("HTTP 500"), failed("HTTP 500"), passed("HTTP 200 in 134 ms")):
        state = advance(state, result, fall=3, rise=2)
    return state


def test_a_failing_check_that_rises_again_is_reported_by_its_failure_not_its_latest_probe():
    answer = verdict(SECTION, {"pretix": rising()}, None)
    assert answer.answer == "down 100% #pretix: HTTP 500 (passing again: 1 so far)\n"
    assert "HTTP 200" not in answer.answer


def test_passing_checks_answer_up_and_a_drain_answers_weight_zero_with_its_reason():
    assert verdict(SECTION, {"pretix": PASSING}, None).answer == "up 100%\n"
    assert verdict(SECTION, {"pretix": PASSING}, "kernel update").answer == "up 0% #kernel update\n"


def test_undecided_checks_give_no_answer_unless_the_node_is_drained():
    undecided = verdict(SECTION, {}, None)
    assert (undecided.answer, undecided.why) == (None, "no verdict yet from pretix")
    assert verdict(SECTION, {}, "system shutdown").answer == "up 0% #system shutdown\n"


def test_a_configured_weight_is_announced_while_ready():
    weighted = AgentCheckSection(listen="127.0.0.1:5555", checks=("pretix",), weight=75)
    assert verdict(weighted, {"pretix": PASSING}, None).answer == "up 75%\n"
