"""What this node tells haproxy's agent-check, and why (pure: no I/O, no clock).

- a listed check failing: "down 100% #<check>: <why it fails>" (0% while draining);
- every listed check passing: "up 100%" (or the configured weight), "up 0% #<why>" while draining;
- a drain while checks are undecided: "up 0% #<why>" (a planned drain needs no verdict);
- otherwise no answer at all: right after a start the checks are undecided, and saying nothing
  lets haproxy keep its last state instead of flapping every node of a restarted cluster.
The reason of a failing check is the failure's, not the latest probe's: while it rises again, the
latest probe passed, and "down #pretix: HTTP 200" would be a lie.

A shared cause (`shared_checks`: Redis, the primary) fails every node's pretix at once. Answering
`down` then would take every node out together, which turns customers' 500s into haproxy's 503s
and brings nothing back sooner; measured on a real pretix, Redis killed made each node's
/healthcheck/ answer 500. So while a shared check fails (or its latest probe did), a soft failure
of this node's own checks answers `up` with the cause; a hard one (refused, a unit gone: this node
is broken whatever else is) still answers `down`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ..check_results import FAILING, PASSING, CheckState
from ..config import AgentCheckSection
from ..haproxy.agent_check import agent_answer


@dataclass(frozen=True)
class Verdict:
    answer: str | None  # the line haproxy reads (with its newline), or None: no answer yet
    why: str
    sentence: str


def verdict(section: AgentCheckSection, checks: Mapping[str, CheckState], drain: str | None) -> Verdict:
    states = [(name, checks.get(name, CheckState())) for name in section.checks]
    failing = [f"{name}: {state.why()}" for name, state in states if state.state == FAILING]
    draining = drain is not None
    shared = [name for name in section.shared_checks if checks.get(name, CheckState()).probe_failed()]
    hard = any(state.hard_failure() for _, state in states)
    if failing and shared and not hard:
        why = f"{', '.join(shared)} failing (shared by every node): {'; '.join(failing)}"
        answer = agent_answer(True, draining, drain or why, section.weight)
        return Verdict(answer, f"kept in: {why}", f"agent-check: up despite {', '.join(shared)} (shared)")
    if failing:
        why = "; ".join(failing)
        answer = agent_answer(False, draining, why, section.weight)
        return Verdict(answer, f"failing: {why}", f"agent-check: down ({why})")
    if all(state.state == PASSING for _, state in states):
        answer = agent_answer(True, draining, drain, section.weight)
        why = f"draining: {drain}" if draining else "every listed check passes"
        return Verdict(answer, why, f"agent-check: {answer.strip()}")
    undecided = ", ".join(name for name, state in states if state.state != PASSING)
    if draining:
        answer = agent_answer(True, True, drain, section.weight)
        return Verdict(answer, f"draining: {drain}", f"agent-check: {answer.strip()}")
    return Verdict(None, f"no verdict yet from {undecided}", f"agent-check: no answer until {undecided} decide")
