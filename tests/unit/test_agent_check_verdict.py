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


SHARED = AgentCheckSection(listen="127.0.0.1:5555", checks=("pretix",), weight=None, shared_checks=("redis",))
REDIS_DOWN = CheckState(state="failing", last=failed("connection refused", hard=True),
                        failure=failed("connection refused", hard=True))


def test_a_soft_failure_while_a_shared_check_fails_keeps_the_node_up_and_says_why():
    pretix_500 = CheckState(state="failing", last=failed("HTTP 500"), failure=failed("HTTP 500"))
    answer = verdict(SHARED, {"pretix": pretix_500, "redis": REDIS_DOWN}, None)
    assert answer.answer == "up 100%\n"
    assert answer.why == "kept in: redis failing (shared by every node): pretix: HTTP 500"


def test_a_hard_failure_answers_down_even_while_a_shared_check_fails():
    refused = CheckState(state="failing", last=failed("connection refused", hard=True),
                         failure=failed("connection refused", hard=True))
    assert verdict(SHARED, {"pretix": refused, "redis": REDIS_DOWN}, None).answer.startswith("down 100%")


def test_a_soft_failure_without_a_shared_cause_answers_down():
    pretix_500 = CheckState(state="failing", last=failed("HTTP 500"), failure=failed("HTTP 500"))
    assert verdict(SHARED, {"pretix": pretix_500, "redis": PASSING}, None).answer == "down 100% #pretix: HTTP 500\n"
