"""haproxy, decided: from check states and haproxy's actual state, which servers to change.

Pure: no socket, no clock (the monotonic `now` and the checks' report times are arguments), no
logging. The rules (SPEC 5):
- A server is wanted `ready` while every check gating it passes, and in its `on_failure` state
  (maint or drain) while one of them fails. A check that has not decided yet (unknown) gives no
  opinion: the server stays as it is, so a daemon restart never drains a cluster.
- Never take out the last `min_ready` servers of a backend: hold, and say so loudly.
- Hard failures (refused, process gone) act at once. Soft ones (timeouts, HTTP 500) act only when
  another server can take the load, and are judged over the whole backend, not alone:
  - a failing shared dependency the operator named (`shared_checks`: Redis, the primary) explains
    them: no server is taken out. Measured on a real pretix: with Redis killed, both nodes'
    /healthcheck/ answered 500, and the agent took out the node whose check happened to turn
    failing 20 ms before the other's;
  - when most of a backend's servers fail at once, the cause is shared too (an overloaded
    database, a broken deploy): taking servers out only moves their load onto equally sick ones.
    "At once" needs a settle time: a soft failure waits until every check of its backend has
    reported since the first of them turned failing, at most one report period (interval plus
    timeout) of the slowest, so the other servers' checks have had their say.
  Status and one event per episode name the cause. Servers recover one after the other too: when
  an episode ends, the servers still failing get the same settle time, and a server whose checks
  pass again (rising towards `rise`) is never taken out for a soft failure: it is on its way back.
- A fast return: a server the agent took out comes back as soon as its checks pass again (their
  `rise`). Only a server that flaps is damped: taken out again within `flap_window`, it is held out
  `hold_down`, twice as long each further time (at most `hold_down_max`); each quiet
  `flap_window` halves that again. Measured: a fixed 10 s hold-down kept a node out 10.3 s after a
  2.2 s overload while the other node carried everything and began to time out itself.
- At most `max_changes_per_minute` changes per backend (hard failures and planned drains excepted).
- A server taken out for a soft failure is put back at once when no other server is left in its
  backend (the other drained through agent-check, failed hard, or set to maint): a slow server
  answers, an empty backend answers 503 (measured in tests/pretix: a planned drain of one node
  while the other was out for a timeout).
- Only servers the agent took out are put back: a server an operator set to maint by hand stays
  in maint (the agent never undoes a human act).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from ..check_results import FAILING, PASS, PASSING, CheckState
from ..config import HaproxySection, HaproxyServer
from ..events import Event

READY, DRAIN, MAINT = "ready", "drain", "maint"
RATE_WINDOW = 60.0  # max_changes_per_minute counts the changes of this many seconds

Key = tuple[str, str]  # (backend, server)


@dataclass(frozen=True)
class Actual:
    """One server as haproxy reports it (`show servers state`)."""

    admin: str  # ready | drain | maint
    up: bool  # operationally up (haproxy's own view, including its checks)


@dataclass(frozen=True)
class Damping:
    """How much a server flaps: its level, and what its latest take-out for a failure holds it out."""

    level: int = 0  # 0: back as soon as its checks pass; n: held out hold_down * 2**(n-1)
    out_at: float | None = None  # monotonic: the latest take-out for a failure
    hold: float = 0.0  # seconds that take-out keeps it out at least (0: none)

    def until(self) -> float | None:
        """When the hold of the latest take-out ends, or None if it has none."""
        return None if self.out_at is None or self.hold <= 0 else self.out_at + self.hold


@dataclass(frozen=True)
class Memory:
    """What the agent remembers between cycles (taken_out is also persisted across restarts)."""

    taken_out: frozenset[Key] = frozenset()  # servers the agent put into maint/drain
    changes: tuple[tuple[float, str, str], ...] = ()  # (monotonic time, backend, server), newest last
    held: frozenset[Key] = frozenset()  # servers the guard keeps in, reported once per episode
    damping: Mapping[Key, Damping] = field(default_factory=dict)
    shared: Mapping[str, str] = field(default_factory=dict)  # backend -> the shared cause reported (per episode)
    shared_ended: Mapping[str, float] = field(default_factory=dict)  # backend -> when its last episode ended


@dataclass(frozen=True)
class SetState:
    backend: str
    server: str
    state: str
    reason: str
    failure: bool = False  # a take-out for a failure: counts as a flap (a drain or a return does not)
    shutdown_sessions: bool = False  # also shut the sessions haproxy holds to the server


@dataclass(frozen=True)
class ServerReport:
    backend: str
    server: str
    actual: str | None  # None: haproxy does not know this server
    up: bool | None
    desired: str
    why: str
    level: int = 0  # flap damping level (decayed to now)
    hold: float = 0.0  # while the agent holds it out after a flap: for how long in all
    hold_until: float | None = None  # monotonic: when that hold ends


@dataclass(frozen=True)
class Decision:
    actions: tuple[SetState, ...]
    events: tuple[Event, ...]
    reports: tuple[ServerReport, ...]
    held: frozenset[Key]
    sentence: str
    deferred: bool = False  # something waits (settling, a flap's hold, the rate limit): look again soon
    wake_at: float | None = None  # monotonic: when what waits is due (None: at the next interval)
    shared: Mapping[str, str] = field(default_factory=dict)  # backend -> shared cause now
    shared_ended: Mapping[str, float] = field(default_factory=dict)  # backend -> when its last episode ended


@dataclass(frozen=True)
class _Verdict:
    server: HaproxyServer
    kind: str  # ok | fail | none | drain
    hard: bool
    why: str


@dataclass(frozen=True)
class _Judgement:
    """A backend's soft failures, judged together: a shared cause, or still settling, or neither."""

    cause: str | None = None
    settling_until: float | None = None


def _state(checks: Mapping[str, CheckState], name: str) -> CheckState:
    return checks.get(name, CheckState())


def _verdict(server: HaproxyServer, checks: Mapping[str, CheckState], drain_local: str | None) -> _Verdict:
    """A server's verdict from its gating checks (and, for a local server, the node's drain)."""
    failing = [name for name in server.checks if _state(checks, name).state == FAILING]
    if failing:
        hard = any(checks[name].hard_failure() for name in failing)
        return _Verdict(server, "fail", hard, "; ".join(f"{name}: {checks[name].why()}" for name in failing))
    if drain_local is not None and server.local:
        return _Verdict(server, "drain", False, f"draining this node: {drain_local}")
    if all(_state(checks, name).state == PASSING for name in server.checks):
        return _Verdict(server, "ok", False, "gating checks pass")
    undecided = [name for name in server.checks if _state(checks, name).state != PASSING]
    return _Verdict(server, "none", False, f"no verdict yet from {', '.join(undecided)}")


def _rising(server: HaproxyServer, checks: Mapping[str, CheckState]) -> bool:
    """Whether every failing check of `server` passed its latest probe: it is on its way back."""
    failing = [_state(checks, name) for name in server.checks if _state(checks, name).state == FAILING]
    return bool(failing) and all(state.last is not None and state.last.outcome == PASS for state in failing)


def _judge(backend: str, managed: Sequence[HaproxyServer], candidates: Sequence[HaproxyServer],
           checks: Mapping[str, CheckState], actual: Mapping[Key, Actual], report_within: Mapping[str, float],
           default_within: float, now: float, ended: float | None) -> _Judgement:
    """Judge the soft failures of `candidates` (ready servers of `backend` whose checks fail softly)
    over the whole backend. `ended` is when the backend's last shared-cause episode ended, if it did."""
    suffering = [s for s in managed if any(_state(checks, name).probe_failed() for name in s.checks)]
    in_rotation = {name for (b, name), state in actual.items() if b == backend and state.admin == READY and state.up}
    population = in_rotation | {s.server for s in suffering}
    count = f"{len(suffering)} of {len(population)} servers failing"
    named = sorted({name for s in candidates for name in s.shared_checks if _state(checks, name).probe_failed()})
    if named:
        return _Judgement(cause=f"{', '.join(named)} failing: {count}, none taken out")
    # Settle: the other servers' checks report on their own schedules. Until each has reported
    # since the first candidate's check turned failing (or one report period has passed), a
    # failure that is about to show everywhere looks like one server's own.
    watched = {name for s in managed for name in (*s.checks, *s.shared_checks)}
    starts = [since for s in candidates for name in s.checks
              if (since := _state(checks, name).failing_since) is not None]
    if starts:
        # After an episode the servers recover one by one; the laggards are judged only once
        # everyone has reported since it ended.
        first = max(min(starts), ended if ended is not None else float("-inf"))
        until = first + max((report_within.get(name, default_within) for name in watched), default=default_within)
        behind = [name for name in watched if (_state(checks, name).probed_at or float("-inf")) < first]
        if behind and now < until:
            return _Judgement(settling_until=until)
    if len(suffering) >= 2 and 2 * len(suffering) > len(population):
        return _Judgement(cause=f"{count} at once, none taken out")
    return _Judgement()


def decayed(damping: Damping, now: float, window: float) -> int:
    """The damping level left at `now`: one step less for each quiet `window` since the latest take-out."""
    if damping.out_at is None or damping.level <= 0:
        return 0
    return max(0, damping.level - int(max(0.0, now - damping.out_at) // window))


def _ordinal(number: int) -> str:
    suffix = "th" if 10 <= number % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(number % 10, "th")
    return f"{number}{suffix}"


def decide(section: HaproxySection, checks: Mapping[str, CheckState], actual: Mapping[Key, Actual],
           memory: Memory, now: float, drain_local: str | None = None,
           report_within: Mapping[str, float] | None = None) -> Decision:
    """Given the configuration, check states, haproxy's servers and the agent's memory, return the
    changes to send (only where actual differs from desired), the events and a report per server.

    `drain_local` is why this node is being drained (pretix-agentctl drain, a shutdown), or None:
    servers marked `local` then go to drain at once (guarded like a soft failure: only when another
    healthy server takes the load) and come back when the drain ends. `report_within` is, per
    check, the longest time between two of its results (interval plus timeout); a check not in it
    is taken to report every `section.interval`.
    """
    within = report_within or {}
    window = [c for c in memory.changes if now - c[0] < RATE_WINDOW]
    per_backend_changes: dict[str, int] = {}
    oldest_change: dict[str, float] = {}
    for when, backend, _server in window:
        per_backend_changes[backend] = per_backend_changes.get(backend, 0) + 1
        oldest_change.setdefault(backend, when)

    # Ready and up, per backend, counting every server haproxy knows (not only the managed ones).
    ready: dict[str, set[str]] = {}
    for (backend, name), state in actual.items():
        if state.admin == READY and state.up:
            ready.setdefault(backend, set()).add(name)

    verdicts = [_verdict(server, checks, drain_local) for server in section.servers]
    # Hard failures first, so that a soft one never uses up the capacity a hard one needs.
    verdicts.sort(key=lambda v: (v.kind != "fail", not v.hard, v.server.backend, v.server.server))
    failing = {(v.server.backend, v.server.server) for v in verdicts if v.kind == "fail"}

    backends = sorted({server.backend for server in section.servers})
    judgements: dict[str, _Judgement] = {}
    ended = {backend: when for backend, when in memory.shared_ended.items() if now - when < RATE_WINDOW}
    rising = {(v.server.backend, v.server.server) for v in verdicts
              if v.kind == "fail" and not v.hard and _rising(v.server, checks)}
    for backend in backends:
        # A rising server is never taken out, but stays a candidate: a probe that passes now and then
        # during an outage must not end and restart the shared cause's episode each time.
        candidates = [v.server for v in verdicts if v.server.backend == backend and v.kind == "fail" and not v.hard
                      and (current := actual.get((backend, v.server.server))) is not None and current.admin == READY]
        if candidates:
            managed = [s for s in section.servers if s.backend == backend]
            judgement = _judge(backend, managed, candidates, checks, actual, within, section.interval, now,
                               ended.get(backend))
            if judgement.cause is None and backend in memory.shared:  # the episode ends now: settle again
                judgement = _judge(backend, managed, candidates, checks, actual, within, section.interval, now, now)
            judgements[backend] = judgement
    shared = {backend: j.cause for backend, j in judgements.items() if j.cause is not None}
    ended.update({backend: now for backend in memory.shared if backend not in shared})

    actions: list[SetState] = []
    events: list[Event] = []
    reports: list[ServerReport] = []
    held: set[Key] = set()
    waits: list[float] = []
    settling: set[str] = set()
    damped: list[Key] = []
    deferred = False
    for verdict in verdicts:
        server, kind, hard, why = verdict.server, verdict.kind, verdict.hard, verdict.why
        key = (server.backend, server.server)
        damping = memory.damping.get(key, Damping())
        level = decayed(damping, now, section.flap_window)
        current = actual.get(key)
        if current is None:
            reports.append(ServerReport(*key, None, None, "unknown", "haproxy has no such server", level))
            continue
        desired, because, hold, hold_until = current.admin, why, 0.0, None
        until = damping.until()
        if key in memory.taken_out and until is not None and now < until:  # status shows the hold and its end
            hold, hold_until = damping.hold, until
        judgement = judgements.get(server.backend, _Judgement())
        if kind in ("fail", "drain") and current.admin == READY:
            others = ready.get(server.backend, set()) - {server.server}
            if not hard:  # a soft failure moves load: only onto servers that are not failing themselves
                others = {name for name in others if (server.backend, name) not in failing}
            need = section.min_ready if hard else max(section.min_ready, 1)
            if kind == "fail" and not hard and judgement.cause is not None:
                because = f"{why}; {judgement.cause}"
            elif key in rising:
                because = f"{why}; passing again: not taken out on its way back"
            elif kind == "fail" and not hard and judgement.settling_until is not None:
                deferred = True
                waits.append(judgement.settling_until)
                settling.add(server.backend)
                because = (f"{why}; a soft failure: waiting until every check of {server.backend} has reported, "
                           "to tell a shared cause from this server's own")
            elif len(others) < need:
                held.add(key)
                because = (f"{why}; held in: taking it out would leave {len(others)} ready server(s) in "
                           f"{server.backend}, min_ready is {section.min_ready}" if hard else
                           f"{why}; a soft failure, and no other healthy ready server can take its load")
                if key not in memory.held:
                    events.append(Event("haproxy.guard_held", "error", {
                        "backend": server.backend, "server": server.server, "reason": why, "hard": hard,
                        "ready_others": len(others), "min_ready": section.min_ready}))
            else:
                desired = DRAIN if kind == "drain" else server.on_failure
        elif kind == "fail" and not hard and current.admin != READY and key in memory.taken_out:
            # Put back only into an empty backend: while another server serves, even slowly, a
            # server that failed is no help (a 502 from its nginx is a soft failure too).
            if not ready.get(server.backend, set()) - {server.server}:
                desired = READY
                because = f"{why}; put back: a soft failure, and no other server is left to take its load"
        elif kind == "ok" and current.admin != READY and key in memory.taken_out:
            if hold_until is not None:
                deferred = True
                waits.append(hold_until)
                damped.append(key)
                because = (f"gating checks pass; held out by its flap damping: {damping.hold:g} s after its "
                           f"{_ordinal(damping.level + 1)} take-out within {section.flap_window:g} s")
            else:
                desired = READY
        elif kind == "ok" and current.admin != READY:
            because = f"{current.admin} was set by someone else: left as it is"
        if desired != current.admin:
            capped = per_backend_changes.get(server.backend, 0) >= section.max_changes_per_minute
            # a planned drain is not a flap, and a backend left without a server must not wait
            at_once = (kind == "fail" and (hard or desired == READY)) or kind == "drain"
            if capped and not at_once:
                deferred = True
                waits.append(oldest_change.get(server.backend, now) + RATE_WINDOW)
                because = f"{because}; waiting (max_changes_per_minute)"
                desired = current.admin
            else:
                out = desired != READY
                actions.append(SetState(server.backend, server.server, desired, why, failure=out and kind == "fail",
                                        shutdown_sessions=out and server.shutdown_sessions))
                per_backend_changes[server.backend] = per_backend_changes.get(server.backend, 0) + 1
                if out:
                    ready.get(server.backend, set()).discard(server.server)
                elif current.up:
                    ready.setdefault(server.backend, set()).add(server.server)
        reports.append(ServerReport(*key, current.admin, current.up, desired, because, level, hold, hold_until))
    for key in memory.held - held:
        events.append(Event("haproxy.guard_released", "info", {"backend": key[0], "server": key[1]}))
    for backend, cause in shared.items():
        if memory.shared.get(backend) is None:
            servers = sorted(s.server for s in section.servers if s.backend == backend
                             and any(_state(checks, name).probe_failed() for name in s.checks))
            events.append(Event("haproxy.shared_cause", "warning", {
                "backend": backend, "cause": cause, "servers": ",".join(servers),
                "detail": "soft failures with a shared cause: no server is taken out for them"}))
    for backend, cause in memory.shared.items():
        if backend not in shared:
            events.append(Event("haproxy.shared_cause_ended", "info", {"backend": backend, "cause": cause}))
    reports.sort(key=lambda r: (r.backend, r.server))
    if actions:
        sentence = "haproxy: " + ", ".join(f"set {a.backend}/{a.server} {a.state}" for a in actions)
    elif shared:
        sentence = "haproxy: " + "; ".join(f"{backend}: {cause}" for backend, cause in sorted(shared.items()))
    elif settling:
        sentence = (f"haproxy: {', '.join(sorted(settling))}: a soft failure, waiting until every check has "
                    "reported")
    elif held:
        sentence = "haproxy: holding " + ", ".join(f"{b}/{s}" for b, s in sorted(held)) + " in (min_ready guard)"
    elif damped:
        sentence = "haproxy: holding " + ", ".join(f"{b}/{s}" for b, s in sorted(damped)) + " out (flap damping)"
    else:
        sentence = f"haproxy: {len(reports)} server(s) as desired"
    return Decision(tuple(actions), tuple(events), tuple(reports), frozenset(held), sentence, deferred,
                    min(waits) if waits else None, shared, ended)


def remember(memory: Memory, decision: Decision, applied: Sequence[SetState], now: float,
             section: HaproxySection) -> Memory:
    """Return the memory after `applied` (those of `decision.actions` haproxy accepted) at `now`.

    A take-out for a failure within `flap_window` of the server's previous one raises its damping
    level by one; a later one first loses a level per quiet `flap_window`. The level sets the hold
    of that take-out: none at level 0, then `hold_down`, doubling, at most `hold_down_max`. Changes
    older than the rate limit's minute are forgotten, and so is the damping of a server that has
    been quiet long enough to be back at level 0.
    """
    taken_out = set(memory.taken_out)
    damping = dict(memory.damping)
    for action in applied:
        key = (action.backend, action.server)
        if action.state == READY:
            taken_out.discard(key)
            continue
        taken_out.add(key)
        if not action.failure:
            continue
        previous = damping.get(key, Damping())
        if previous.out_at is not None and now - previous.out_at < section.flap_window:
            level = previous.level + 1
        else:
            level = decayed(previous, now, section.flap_window)
        hold = 0.0 if level == 0 else min(section.hold_down_max, section.hold_down * 2 ** (level - 1))
        damping[key] = Damping(level, now, hold)
    window = section.flap_window
    damping = {key: d for key, d in damping.items()
               if d.out_at is not None and (now - d.out_at < window or decayed(d, now, window))}
    changes = tuple(c for c in memory.changes if now - c[0] < RATE_WINDOW) + tuple(
        (now, a.backend, a.server) for a in applied)
    return Memory(frozenset(taken_out), changes, decision.held, damping, dict(decision.shared),
                  dict(decision.shared_ended))
