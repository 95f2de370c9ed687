"""haproxy, decided: from check states and haproxy's actual state, which servers to change.

Pure: no socket, no clock (the monotonic `now` is an argument), no logging. The rules (SPEC 5):
- A server is wanted `ready` while every check gating it passes, and in its `on_failure` state
  (maint or drain) while one of them fails. A check that has not decided yet (unknown) gives no
  opinion: the server stays as it is, so a daemon restart never drains a cluster.
- Never take out the last `min_ready` servers of a backend: hold, and say so loudly.
- Hard failures (refused, process gone) act at once. Soft ones (timeouts of an overloaded node)
  act only when another server can take the load: measured on a real two-core pretix, haproxy's
  own checks queued behind orders and marked both nodes down; taking a slow node out of a pair
  only moves its load onto the other. The rule holds while the failure lasts: a server taken out
  for a soft failure is put back, at once, when no other server is left in the backend (the other
  one drained through agent-check, failed hard, or was set to maint), since a slow server answers
  and an empty backend answers 503 (measured in tests/pretix: a planned drain of one node while
  the other was out for a timeout).
- Damping: after the agent changes a server it leaves it alone for `hold_down` (a hard failure
  excepted), and sends at most `max_changes_per_minute` changes per backend.
- Only servers the agent took out are put back: a server an operator set to maint by hand stays
  in maint (the agent never undoes a human act).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from ..checks.health import FAILING, PASSING, CheckState
from ..config import HaproxySection, HaproxyServer
from ..events import Event

READY, DRAIN, MAINT = "ready", "drain", "maint"

Key = tuple[str, str]  # (backend, server)


@dataclass(frozen=True)
class Actual:
    """One server as haproxy reports it (`show servers state`)."""

    admin: str  # ready | drain | maint
    up: bool  # operationally up (haproxy's own view, including its checks)


@dataclass(frozen=True)
class Memory:
    """What the agent remembers between cycles (and across restarts: it is persisted)."""

    taken_out: frozenset[Key] = frozenset()  # servers the agent put into maint/drain
    changes: tuple[tuple[float, str, str], ...] = ()  # (monotonic time, backend, server), newest last
    held: frozenset[Key] = frozenset()  # servers the guard keeps in, reported once per episode


@dataclass(frozen=True)
class SetState:
    backend: str
    server: str
    state: str
    reason: str


@dataclass(frozen=True)
class ServerReport:
    backend: str
    server: str
    actual: str | None  # None: haproxy does not know this server
    up: bool | None
    desired: str
    why: str


@dataclass(frozen=True)
class Decision:
    actions: tuple[SetState, ...]
    events: tuple[Event, ...]
    reports: tuple[ServerReport, ...]
    held: frozenset[Key]
    sentence: str
    deferred: bool = False  # something waits for hold_down or the rate limit: look again soon
    extra: dict[str, str] = field(default_factory=dict)


def _verdict(server: HaproxyServer, checks: Mapping[str, CheckState]) -> tuple[str, bool, str]:
    """Return ("ok" | "fail" | "none", hard, why) for a server from its gating checks."""
    failing = [name for name in server.checks if checks.get(name, CheckState()).state == FAILING]
    if failing:
        hard = any(checks[name].hard_failure() for name in failing)
        reasons = "; ".join(_reason(name, checks[name]) for name in failing)
        return "fail", hard, reasons
    if all(checks.get(name, CheckState()).state == PASSING for name in server.checks):
        return "ok", False, "gating checks pass"
    undecided = [name for name in server.checks if checks.get(name, CheckState()).state != PASSING]
    return "none", False, f"no verdict yet from {', '.join(undecided)}"


def _reason(name: str, state: CheckState) -> str:
    return f"{name}: {state.last.reason}" if state.last is not None else name


def decide(section: HaproxySection, checks: Mapping[str, CheckState], actual: Mapping[Key, Actual],
           memory: Memory, now: float, drain_local: str | None = None) -> Decision:
    """Given the configuration, check states, haproxy's servers and the agent's memory, return the
    changes to send (only where actual differs from desired), the events and a report per server.

    `drain_local` is why this node is being drained (pretix-agentctl drain, a shutdown), or None:
    servers marked `local` then go to drain at once (guarded like a soft failure: only when another
    healthy server takes the load) and come back when the drain ends.
    """
    window = [c for c in memory.changes if now - c[0] < 60.0]
    last_change = {(b, s): t for t, b, s in memory.changes}
    per_backend_changes: dict[str, int] = {}
    for _, backend, _server in window:
        per_backend_changes[backend] = per_backend_changes.get(backend, 0) + 1

    # Ready and up, per backend, counting every server haproxy knows (not only the managed ones).
    ready: dict[str, set[str]] = {}
    for (backend, name), state in actual.items():
        if state.admin == READY and state.up:
            ready.setdefault(backend, set()).add(name)

    actions: list[SetState] = []
    events: list[Event] = []
    reports: list[ServerReport] = []
    held: set[Key] = set()
    deferred = False
    # Hard failures first, so that a soft one never uses up the capacity a hard one needs.
    verdicts = [(server, *(("drain", False, f"draining this node: {drain_local}")
                           if drain_local is not None and server.local and _verdict(server, checks)[0] != "fail"
                           else _verdict(server, checks)))
                for server in section.servers]
    verdicts.sort(key=lambda v: (v[1] != "fail", not v[2], v[0].backend, v[0].server))
    failing = {(v[0].backend, v[0].server) for v in verdicts if v[1] == "fail"}
    for server, verdict, hard, why in verdicts:
        key = (server.backend, server.server)
        current = actual.get(key)
        if current is None:
            reports.append(ServerReport(*key, None, None, "unknown", "haproxy has no such server"))
            continue
        desired, because = current.admin, why
        if verdict in ("fail", "drain") and current.admin == READY:
            others = ready.get(server.backend, set()) - {server.server}
            if not hard:  # a soft failure moves load: only onto servers that are not failing themselves
                others = {name for name in others if (server.backend, name) not in failing}
            need = section.min_ready if hard else max(section.min_ready, 1)
            if len(others) < need:
                held.add(key)
                because = (f"{why}; held in: taking it out would leave {len(others)} ready server(s) in "
                           f"{server.backend}, min_ready is {section.min_ready}" if hard else
                           f"{why}; a soft failure, and no other healthy ready server can take its load")
                if key not in memory.held:
                    events.append(Event("haproxy.guard_held", "error", {
                        "backend": server.backend, "server": server.server, "reason": why, "hard": hard,
                        "ready_others": len(others), "min_ready": section.min_ready}))
            else:
                desired = DRAIN if verdict == "drain" else server.on_failure
        elif verdict == "fail" and not hard and current.admin != READY and key in memory.taken_out:
            # Put back only into an empty backend: while another server serves, even slowly, a
            # server that failed is no help (a 502 from its nginx is a soft failure too).
            if not ready.get(server.backend, set()) - {server.server}:
                desired = READY
                because = f"{why}; put back: a soft failure, and no other server is left to take its load"
        elif verdict == "ok" and current.admin != READY and key in memory.taken_out:
            desired = READY
        elif verdict == "ok" and current.admin != READY:
            because = f"{current.admin} was set by someone else: left as it is"
        if desired != current.admin:
            recent = now - last_change.get(key, float("-inf")) < section.hold_down
            capped = per_backend_changes.get(server.backend, 0) >= section.max_changes_per_minute
            # a planned drain is not a flap, and a backend left without a server must not wait
            at_once = (verdict == "fail" and (hard or desired == READY)) or verdict == "drain"
            if (recent or capped) and not at_once:
                deferred = True
                because = f"{because}; waiting ({'hold_down' if recent else 'max_changes_per_minute'})"
                desired = current.admin
            else:
                actions.append(SetState(server.backend, server.server, desired, why))
                per_backend_changes[server.backend] = per_backend_changes.get(server.backend, 0) + 1
                if desired != READY:
                    ready.get(server.backend, set()).discard(server.server)
                elif current.up:
                    ready.setdefault(server.backend, set()).add(server.server)
        reports.append(ServerReport(*key, current.admin, current.up, desired, because))
    for key in memory.held - held:
        events.append(Event("haproxy.guard_released", "info", {"backend": key[0], "server": key[1]}))
    reports.sort(key=lambda r: (r.backend, r.server))
    if actions:
        sentence = "haproxy: " + ", ".join(f"set {a.backend}/{a.server} {a.state}" for a in actions)
    elif held:
        sentence = "haproxy: holding " + ", ".join(f"{b}/{s}" for b, s in sorted(held)) + " in (min_ready guard)"
    else:
        sentence = f"haproxy: {len(reports)} server(s) as desired"
    return Decision(tuple(actions), tuple(events), tuple(reports), frozenset(held), sentence, deferred)


def remember(memory: Memory, applied: list[SetState], held: frozenset[Key], now: float,
             horizon: float = 60.0) -> Memory:
    """Return the memory after `applied` changes succeeded at `now`; changes older than `horizon`
    seconds (at least a minute, for the rate limit, and at least hold_down) are forgotten."""
    taken_out = set(memory.taken_out)
    for action in applied:
        if action.state == READY:
            taken_out.discard((action.backend, action.server))
        else:
            taken_out.add((action.backend, action.server))
    horizon = max(horizon, 60.0)
    changes = tuple(c for c in memory.changes if now - c[0] < horizon) + tuple(
        (now, a.backend, a.server) for a in applied)
    return Memory(frozenset(taken_out), changes, held)
