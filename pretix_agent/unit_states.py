"""systemd unit states as the agent knows them: what the D-Bus watcher reports and the `systemd`
check judges (a model both sides import, so neither imports the other)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class UnitState:
    """One unit as systemd last reported it (org.freedesktop.systemd1.Unit properties)."""

    unit: str
    load_state: str  # loaded, not-found, masked, bad-setting, error, ...
    active_state: str  # active, failed, inactive, activating, deactivating, reloading, ...
    sub_state: str  # running, exited, dead, failed, start-pre, auto-restart, ...

    def describe(self) -> str:
        """"pretix-web.service failed (failed)", with the load state when it explains more."""
        text = f"{self.unit} {self.active_state} ({self.sub_state})"
        if self.load_state not in ("loaded", ""):
            text += f" [{self.load_state}]"
        return text


@dataclass(frozen=True)
class UnitsSnapshot:
    """What the watcher knows right now: states by unit, or why it knows nothing."""

    available: bool
    reason: str = ""  # why not available ("no system bus", "systemd is not on the bus", ...)
    units: Mapping[str, UnitState] = field(default_factory=dict)


class UnitStateSource(Protocol):
    def snapshot(self) -> UnitsSnapshot: ...
