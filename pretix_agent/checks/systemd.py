"""The `systemd` check: every listed unit must be `active`, judged from the latest known states.

The states come from D-Bus signals (adapters/dbus.py, UnitWatcher), so the probe does no I/O: it
reads the watcher's snapshot and judges it. That keeps a probe cheap enough to run on every
signal, which is how a unit failure reaches the daemon within milliseconds instead of at the next
poll.

Which states fail, and how hard:
- `active` passes (whatever the sub-state: `running`, `exited` for oneshot units, `listening`).
- `failed` and `inactive` are hard failures: the unit's processes are gone. A unit that does not
  exist (LoadState `not-found`) or is `masked` is inactive, so it is a hard failure too.
- `activating`, `deactivating`, `reloading` (and any state systemd adds later, such as
  `maintenance` or `refreshing`) are soft failures: the unit is in transition, and fall/rise
  decide whether a transition that lasts is worth acting on.
- No state at all (D-Bus unavailable, systemd not on the bus, not yet read) is `unknown`, never
  a failure: "could not measure" is not "down".
"""

from __future__ import annotations

from collections.abc import Sequence

from ..unit_states import UnitsSnapshot, UnitStateSource
from .model import Deadline, Probe, ProbeResult, failed, passed, unknown

ACTIVE = "active"
HARD_FAILING = frozenset({"failed", "inactive"})
SOFT_FAILING = frozenset({"activating", "deactivating", "reloading"})


def judge(units: Sequence[str], snapshot: UnitsSnapshot) -> ProbeResult:
    """Given the units a check needs and a snapshot, return the check's probe result.

    Pass when every unit is active; fail (hard if any unit is failed, inactive or missing, soft
    when the rest are only in transition) when any is not; unknown when a state is unknown.
    """
    if not snapshot.available:
        return unknown(f"unit states unknown: {snapshot.reason or 'D-Bus unavailable'}")
    states = [snapshot.units.get(unit) for unit in units]
    known = [state for state in states if state is not None]
    missing = [unit for unit, state in zip(units, states, strict=True) if state is None]
    not_active = [state for state in known if state.active_state != ACTIVE]
    hard = [state for state in not_active if state.active_state in HARD_FAILING]
    values = {"units": len(units), "active": len(known) - len(not_active),
              "states": ", ".join(f"{s.unit}={s.active_state}/{s.sub_state}" for s in known)}
    if not_active:
        failing = ", ".join(state.describe() for state in not_active)
        others = [f"{state.unit} ({state.sub_state})" for state in known if state.active_state == ACTIVE]
        reason = f"not active: {failing}" + (f"; active: {', '.join(others)}" if others else "")
        if missing:
            reason += f"; unknown: {', '.join(missing)}"
        return failed(reason, hard=bool(hard), **values)
    if missing:
        return unknown(f"no state yet for {', '.join(missing)}", **values)
    noun = "1 unit" if len(units) == 1 else f"{len(units)} units"
    return passed(f"{noun} active: " + ", ".join(f"{s.unit} ({s.sub_state})" for s in known), **values)


def make_systemd_probe(units: Sequence[str], source: UnitStateSource) -> Probe:
    """Given the units of a `systemd` check and where their states live (a UnitWatcher), return
    its probe. The probe reads the latest known states; it never calls D-Bus and never blocks."""
    wanted = tuple(units)

    def probe(_deadline: Deadline) -> ProbeResult:
        return judge(wanted, source.snapshot())

    return probe
