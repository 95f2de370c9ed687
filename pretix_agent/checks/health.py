"""A check's state from its probe results: passing, failing or unknown, with fall and rise.

Pure: given the current state and one result, return the next state. A check starts `unknown`;
`rise` consecutive passes make it passing, `fall` consecutive non-passes make it failing (or
unknown, when the latest probe could not measure). One odd soft failure (a timeout, a slow
answer) never flips a check; a hard one (connection refused, unit failed: the service is gone)
makes it failing at once, because waiting `fall` intervals only sends requests into a void.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from ..config import CheckSpec
from ..events import Event
from .model import FAIL, PASS, ProbeResult

PASSING = "passing"
FAILING = "failing"
UNKNOWN = "unknown"


@dataclass(frozen=True)
class CheckState:
    state: str = UNKNOWN
    passes: int = 0  # consecutive passes
    misses: int = 0  # consecutive fails or unknowns
    probes: int = 0
    last: ProbeResult | None = None
    since_probe: int = 0  # the probe number at which `state` was entered
    # The latest probe that did not pass, kept until the check passes again: while a failing check
    # rises, `last` is already a pass, and "failing: HTTP 200" would tell an operator nothing.
    failure: ProbeResult | None = None
    # Monotonic times (from the results' `at`; None where results carry none): when the latest
    # result arrived, and when the check turned failing (None unless failing). haproxy's decision
    # needs both to judge a failure over a whole backend (haproxy/decide.py).
    probed_at: float | None = None
    failing_since: float | None = None

    def probe_failed(self) -> bool:
        """True when failing, or when the latest probe failed although `fall` is not reached yet: a
        server whose check just began to fail counts as failing when haproxy judges a backend."""
        return self.state == FAILING or (self.last is not None and self.last.outcome == FAIL)

    def hard_failure(self) -> bool:
        """True when failing and the latest probe said the service is gone (not merely slow)."""
        return self.state == FAILING and self.last is not None and self.last.hard

    def why(self) -> str:
        """Why the check is in its state, in words: the failure that made it fail (and how far it has
        risen since), or the latest probe's reason."""
        if self.state != PASSING and self.failure is not None:
            rising = f" (passing again: {self.passes} so far)" if self.passes else ""
            return self.failure.reason + rising
        return self.last.reason if self.last is not None else "no probe yet"


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
