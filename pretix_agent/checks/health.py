"""A check's state from its probe results: passing, failing or unknown, with fall and rise.

Pure: given the current state and one result, return the next state. A check starts `unknown`;
`rise` consecutive passes make it passing, `fall` consecutive non-passes make it failing (or
unknown, when the latest probe could not measure). One odd soft failure (a timeout, a slow
answer) never flips a check; a hard one (connection refused, unit failed: the service is gone)
makes it failing at once, because waiting `fall` intervals only sends requests into a void.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from ..check_results import FAIL, FAILING, PASS, PASSING, UNKNOWN, CheckState, ProbeResult
from ..config import CheckSpec
from ..events import Event


def advance(current: CheckState, result: ProbeResult, fall: int, rise: int) -> CheckState:
    """Given a check's state and a new probe result, return its next state."""
    probes = current.probes + 1
    if result.outcome == PASS:
        passes, misses = current.passes + 1, 0
        state = PASSING if current.state == PASSING or passes >= rise else current.state
    else:
        passes, misses = 0, current.misses + 1
        if misses >= fall or (result.outcome == FAIL and result.hard):
            state = FAILING if result.outcome == FAIL else UNKNOWN
        else:
            state = current.state
    since = current.since_probe if state == current.state else probes
    failure = None if state == PASSING else result if result.outcome != PASS else current.failure
    probed_at = result.at if result.at is not None else current.probed_at
    failing_since = None if state != FAILING else current.failing_since if current.state == FAILING else result.at
    return CheckState(state=state, passes=passes, misses=misses, probes=probes, last=result, since_probe=since,
                      failure=failure, probed_at=probed_at, failing_since=failing_since)


def apply_results(states: Mapping[str, CheckState], results: Iterable[tuple[str, ProbeResult]],
                  specs: Mapping[str, CheckSpec]) -> tuple[dict[str, CheckState], list[Event]]:
    """Given the states, new results (oldest first) and the specs, return the new states and one
    event per state change (never one per probe). Results for checks no longer configured are dropped.
    """
    states = dict(states)
    events: list[Event] = []
    for name, result in results:
        spec = specs.get(name)
        if spec is None:
            continue
        old = states.get(name, CheckState())
        new = advance(old, result, spec.fall, spec.rise)
        states[name] = new
        if new.state != old.state:
            level = "info" if new.state == PASSING else "warning" if new.state == UNKNOWN else "error"
            events.append(Event(f"check.{new.state}", level, {
                "check": name, "type": spec.type, "old": old.state, "new": new.state, "reason": result.reason,
                "hard": result.hard, **{f"value_{key}": value for key, value in result.values.items()
                                         if isinstance(value, str | int | float | bool) or value is None}}))
    return states, events


def summary(states: Mapping[str, CheckState]) -> str:
    """One clause for the daemon's sentence, by state only (reasons carry numbers that change every
    probe, and the sentence is logged whenever it changes): "checks: 2 passing, 1 failing (db)"."""
    if not states:
        return ""
    parts = []
    for state in (PASSING, FAILING, UNKNOWN):
        names = sorted(name for name, s in states.items() if s.state == state)
        if names:
            parts.append(f"{len(names)} {state}" + ("" if state == PASSING else f" ({', '.join(names)})"))
    return "checks: " + ", ".join(parts)


__all__ = ["FAILING", "PASSING", "UNKNOWN", "CheckState", "advance", "apply_results", "summary"]
