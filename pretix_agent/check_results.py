"""What a check found and what state it is in: the values every capability reads.

A probe returns a `ProbeResult` (checks/ makes them); the check's state machine (checks/health.py)
turns results into a `CheckState`; haproxy, the agent-check and maintenance read those states.
Kept apart from the checks that make them, so every reader depends on this model, not on them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

PASS = "pass"
FAIL = "fail"
UNKNOWN = "unknown"


@dataclass(frozen=True)
class ProbeResult:
    """One probe's outcome: `pass`, `fail` or `unknown`; one line for people; measured values.

    `hard` marks failures that mean the service is gone (connection refused, process or unit
    not running), as opposed to soft ones (timeouts of an overloaded node): haproxy acts on hard
    failures at once and on soft ones only when another server can take the load.
    """

    outcome: str
    reason: str
    values: Mapping[str, Any] = field(default_factory=dict)
    hard: bool = False
    seconds: float | None = None  # how long the probe took; the runner measures it, probes leave it None
    # Monotonic time the result arrived (stamped by the daemon when it is delivered, not by the
    # probe): haproxy's decision waits until every check of a backend has reported since the first
    # one failed, and needs to know when each did.
    at: float | None = None

    def __post_init__(self) -> None:
        if self.outcome not in (PASS, FAIL, UNKNOWN):
            raise ValueError(f"outcome must be pass, fail or unknown, not {self.outcome!r}")


def passed(reason: str, **values: Any) -> ProbeResult:
    return ProbeResult(PASS, reason, values)


def failed(reason: str, hard: bool = False, **values: Any) -> ProbeResult:
    return ProbeResult(FAIL, reason, values, hard)


def unknown(reason: str, **values: Any) -> ProbeResult:
    return ProbeResult(UNKNOWN, reason, values)


PASSING = "passing"
FAILING = "failing"


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
