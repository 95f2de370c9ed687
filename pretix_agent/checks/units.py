"""The `systemd` checks' shared D-Bus side: one connection, one watcher for all their units.

The probes of `systemd` checks only read the watcher's latest snapshot; the watcher also pushes
every unit change at once (`on_change`), so a unit that fails is judged within milliseconds instead
of at the next interval. Without a usable system bus the checks are `unknown`, said once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..adapters.dbus import DBusUnavailable, SharedConnection
from ..config import CheckSpec, SystemdCheck
from ..events import Event
from ..unit_states import UnitsSnapshot
from .model import Probe, ProbeResult
from .systemd import judge, make_systemd_probe


class _Unavailable:
    def __init__(self, reason: str):
        self.reason = reason

    def snapshot(self) -> UnitsSnapshot:
        return UnitsSnapshot(False, self.reason)


class UnitChecks:
    def __init__(self, deliver: Callable[[str, ProbeResult], None], on_event: Callable[[Event], None],
                 bus: SharedConnection):
        self.deliver = deliver
        self.on_event = on_event
        self.bus = bus  # the daemon's; borrowed, never stopped here
        self.watcher: Any = None
        self.units: tuple[str, ...] = ()
        self.checks: dict[str, tuple[str, ...]] = {}
        self.source: Any = _Unavailable("not started")

    def configure(self, specs: tuple[CheckSpec, ...]) -> dict[str, Probe]:
        """Watch the units of every `systemd` check in `specs`; return their probes by name."""
        self.checks = {spec.name: spec.options.units for spec in specs if isinstance(spec.options, SystemdCheck)}
        units = tuple(dict.fromkeys(unit for units in self.checks.values() for unit in units))
        if units != self.units:
            self._stop_watcher()
            self.units = units
            if units:
                self._start_watcher(units)
        return {name: make_systemd_probe(units, self) for name, units in self.checks.items()}

    def snapshot(self) -> UnitsSnapshot:
        return self.source.snapshot()

    def _start_watcher(self, units: tuple[str, ...]) -> None:
        try:
            from ..adapters.dbus import UnitWatcher

            watcher = UnitWatcher(units, self._on_change, connection=self.bus.get())
            self.source = watcher  # the first readings arrive during start() and are judged at once
            watcher.start(wait=self.watcher is None)
        except DBusUnavailable as error:
            self.on_event(Event("systemd.checks_unavailable", "error", {
                "error": str(error), "units": ",".join(units),
                "detail": "systemd checks stay unknown until the daemon is restarted with a system bus"}))
            self.source = _Unavailable(str(error))
            return
        self.watcher = watcher
        self.source = watcher

    def _stop_watcher(self) -> None:
        if self.watcher is not None:
            self.watcher.stop()
            self.watcher = None
            self.source = _Unavailable("not watching")

    def _on_change(self, unit: str, _active: str, _sub: str) -> None:
        """From the D-Bus thread: judge every check that names `unit` now and hand the result on."""
        snapshot = self.snapshot()
        for name, units in self.checks.items():
            if unit in units:
                self.deliver(name, judge(units, snapshot))

    def watching(self) -> bool:
        return self.watcher is not None

    def stop(self) -> None:
        self._stop_watcher()
