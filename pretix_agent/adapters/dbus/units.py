"""systemd's unit states over D-Bus, kept current from its PropertiesChanged signals (see
`connection` for the threading rules every D-Bus user here follows)."""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Sequence
from typing import Any

from ...events import Event
from ...unit_states import UnitsSnapshot, UnitState
from .connection import (
    BUS_NAME,
    BUS_PATH,
    PROPERTIES,
    SYSTEMD,
    SYSTEMD_MANAGER,
    SYSTEMD_PATH,
    SYSTEMD_UNIT,
    UNIT_PROPERTIES,
    DBusCallFailed,
    DBusConnection,
    DBusUnavailable,
    _connection_for,
    _leave,
)


class UnitWatcher:
    """The ActiveState/SubState of `units`, kept current from systemd's PropertiesChanged signals.

    `on_change(unit, active_state, sub_state)` is called on the GLib thread whenever a unit's
    (active, sub) pair differs from the last one known, including the first reading and every
    difference a re-read finds (after a reconnect, or the periodic `resync_interval` backstop);
    it must only queue and wake. `snapshot()` is the cheap read for the probe.

    A unit that does not exist (LoadState "not-found") is reported once, as the event
    `systemd.unit_not_found`, and judged inactive; it is watched on, so installing it later is seen.
    When systemd stops answering (it left the bus, a call timed out, the bus connection closed),
    the snapshot says unavailable (the checks turn unknown), `systemd.unavailable` is reported
    once, and the watcher sets itself up again every `retry_interval` (and at once when systemd
    takes its name again) until `systemd.available`.

    `connection` shares one DBusConnection (and its thread) with the ShutdownInhibitor; without it
    the watcher makes its own, to the system bus, reporting to `on_event` (which is otherwise the
    shared connection's).
    """

    def __init__(self, units: Sequence[str], on_change: Callable[[str, str, str], None], *,
                 connection: DBusConnection | None = None, on_event: Callable[[Event], None] | None = None,
                 resync_interval: float = 60.0, retry_interval: float = 1.0):
        self.units = tuple(dict.fromkeys(units))
        self.on_change = on_change
        self.connection, self._owns_connection = _connection_for(connection, on_event)
        self.resync_interval = resync_interval
        self.retry_interval = retry_interval
        self._lock = threading.Lock()
        self._states: dict[str, UnitState] = {}
        self._available = False
        self._reason = "not started"
        self._subscriptions: list[Any] = []
        self._not_found_reported: set[str] = set()
        self._resync_source: Any = None
        self._active = False
        self._lost_reported = False

    # -- from any thread -----------------------------------------------------------------------

    def start(self, timeout: float = 5.0, wait: bool = True) -> None:
        """Connect (if not yet), subscribe to every unit, read each state once; return when known.

        Raise DBusUnavailable (and stay off) if there is no bus, or systemd does not answer on it.
        With `wait=False` (a reload, on a connection already running), return at once: the set-up
        runs on the D-Bus thread, and if systemd does not answer, the watcher reports
        `systemd.unavailable` and retries, as after a lost connection.
        """
        self.connection.start(timeout)
        if not wait:
            self.connection.soon(self._attach_in_background)
            return
        try:
            self.connection.run(self._attach, timeout)
        except DBusUnavailable:
            if self._owns_connection:
                self.connection.stop()
            raise

    def stop(self) -> None:
        _leave(self.connection, self._detach, self._owns_connection)

    def alive(self) -> bool:
        return self.connection.alive()

    def snapshot(self) -> UnitsSnapshot:
        """The latest known states (no D-Bus call): what the `systemd` check's probe judges."""
        with self._lock:
            return UnitsSnapshot(self._available, self._reason, dict(self._states))

    def read_states(self, timeout: float | None = None) -> dict[str, tuple[str, str]]:
        """Backstop: read every unit's state from systemd now; return {unit: (active, sub)}.

        Differences from what was known are reported through `on_change` as usual. Raise
        DBusUnavailable if D-Bus or systemd does not answer.
        """
        states = self.connection.run(self._read_all, timeout)
        return {unit: (state.active_state, state.sub_state) for unit, state in states.items()}

    # -- the GLib thread -----------------------------------------------------------------------

    def _attach(self) -> None:
        self.connection.add_listener(self)
        self._active = True
        try:
            self._setup()
        except DBusUnavailable:
            self._active = False
            self.connection.remove_listener(self)
            raise

    def _attach_in_background(self) -> None:
        self.connection.add_listener(self)
        self._active = True
        try:
            self._setup()
        except DBusUnavailable as error:
            self._lost(f"systemd did not answer: {error}")

    def _detach(self) -> None:
        self._active = False
        self.connection.remove_listener(self)
        self._unsubscribe()
        self._cancel_resync()
        self._set_available(False, "stopped")

    def _connected(self, _bus: Any) -> None:
        if not self._active:
            return
        try:
            self._setup()
        except DBusUnavailable as error:
            self._lost(f"systemd did not answer after reconnecting: {error}")

    def _disconnected(self, reason: str) -> None:
        self._subscriptions = []  # they died with the connection
        self._cancel_resync()
        self._set_available(False, reason)

    def _setup(self) -> None:
        """Subscribe, then read: a change between the two arrives as a signal after the reading."""
        self._unsubscribe()
        self._subscriptions.append(self.connection.subscribe(
            sender=BUS_NAME, iface=BUS_NAME, signal="NameOwnerChanged", object=BUS_PATH, arg0=SYSTEMD,
            signal_fired=self._owner_changed))
        try:
            self.connection.call(SYSTEMD, SYSTEMD_PATH, SYSTEMD_MANAGER, "Subscribe")
        except DBusCallFailed as error:
            # systemd remembers subscribers across a daemon-reexec and refuses a second Subscribe.
            if not (error.name or "").endswith(".AlreadySubscribed"):
                raise
        changed = []
        for unit in self.units:
            path = self._load_unit(unit)
            # arg0 is the interface whose properties changed: systemd also announces the Service,
            # Socket, ... interfaces of the same object, which say nothing about the active state.
            self._subscriptions.append(self.connection.subscribe(
                sender=SYSTEMD, iface=PROPERTIES, signal="PropertiesChanged", object=path, arg0=SYSTEMD_UNIT,
                signal_fired=functools.partial(self._properties_changed, unit)))
            changed += self._read(unit, path, notify=False)
        self._found()  # before on_change: the daemon's callback may probe at once
        self._notify(changed)

    def _load_unit(self, unit: str) -> str:
        # LoadUnit, not GetUnit: it also answers for a unit systemd has not loaded (or has garbage-
        # collected), with an object whose LoadState says whether the unit exists.
        return str(self.connection.call(SYSTEMD, SYSTEMD_PATH, SYSTEMD_MANAGER, "LoadUnit", "s", (unit,), "(o)")[0])

    def _read(self, unit: str, path: str, notify: bool = True) -> list[UnitState]:
        """Read one unit's state; return it in a list if it changed (and report it, if `notify`)."""
        properties = self.connection.call(SYSTEMD, path, PROPERTIES, "GetAll", "s", (SYSTEMD_UNIT,), "(a{sv})")[0]
        return self._update(unit, {name: properties.get(name, "") for name in UNIT_PROPERTIES}, notify)

    def _read_all(self) -> dict[str, UnitState]:
        if not self._active:
            raise DBusUnavailable("the unit watcher is not running")
        changed = []
        try:
            for unit in self.units:
                changed += self._read(unit, self._load_unit(unit), notify=False)
        except DBusUnavailable as error:
            self._lost(f"systemd did not answer: {error}")
            raise
        self._found()
        self._notify(changed)
        with self._lock:
            return dict(self._states)

    def _update(self, unit: str, properties: dict[str, Any], notify: bool = True) -> list[UnitState]:
        with self._lock:
            old = self._states.get(unit)
            new = UnitState(
                unit,
                str(properties.get("LoadState") or (old.load_state if old else "")),
                str(properties.get("ActiveState") or (old.active_state if old else "")),
                str(properties.get("SubState") or (old.sub_state if old else "")))
            self._states[unit] = new
        if new.load_state == "not-found" and unit not in self._not_found_reported:
            self._not_found_reported.add(unit)
            self.connection.emit("systemd.unit_not_found", "warning", unit=unit,
                                 detail=f"systemd has no unit {unit} (LoadState not-found): check the spelling in "
                                        "the check's `units`; it counts as inactive until it exists")
        if old is not None and (old.active_state, old.sub_state) == (new.active_state, new.sub_state):
            return []
        if notify:
            self._notify([new])
        return [new]

    def _notify(self, states: list[UnitState]) -> None:
        for state in states:
            try:
                self.on_change(state.unit, state.active_state, state.sub_state)
            except Exception as error:  # the daemon's callback must not break the watcher
                self.connection.emit("dbus.callback_failed", "error", callback="on_change",
                                     error=f"{type(error).__name__}: {error}")

    def _properties_changed(self, unit: str, _sender: str, path: str, _interface: str, _signal: str,
                            parameters: tuple[Any, ...]) -> None:
        interface, changed, invalidated = parameters
        if interface != SYSTEMD_UNIT or not self._active:
            return
        if any(name in invalidated for name in UNIT_PROPERTIES) or unit not in self._states:
            try:  # told only that the value changed, not to what: ask
                self._read(unit, path)
            except DBusUnavailable as error:
                self._lost(f"systemd did not answer: {error}")
            return
        if any(name in changed for name in UNIT_PROPERTIES):
            self._update(unit, changed)

    def _owner_changed(self, _sender: str, _path: str, _interface: str, _signal: str,
                       parameters: tuple[Any, ...]) -> None:
        name, _old, new = parameters
        if name != SYSTEMD or not self._active:
            return
        if not new:
            self._lost("systemd left the bus")
            return
        try:  # systemd (re)started or re-executed: subscribe to the new instance, read everything
            self._setup()
        except DBusUnavailable as error:
            self._lost(f"systemd came back but did not answer: {error}")

    def _found(self) -> None:
        """Every state was just read: the snapshot is current; re-read after `resync_interval`."""
        self._set_available(True, "")
        if self._lost_reported:
            self._lost_reported = False
            self.connection.emit("systemd.available", "info", units=",".join(self.units))
        self._arm(self.resync_interval)

    def _lost(self, reason: str) -> None:
        """systemd stopped answering: the snapshot is unavailable; say so once, retry soon."""
        self._set_available(False, reason)
        if not self._lost_reported:
            self._lost_reported = True
            self.connection.emit("systemd.unavailable", "warning", error=reason,
                                 detail="the systemd checks are unknown until it answers again")
        self._arm(self.retry_interval)

    def _set_available(self, available: bool, reason: str) -> None:
        with self._lock:
            self._available = available
            self._reason = reason

    def _arm(self, delay: float) -> None:
        self._cancel_resync()
        if delay > 0 and self._active and self.connection.connected():
            self._resync_source = self.connection.later(delay, self._resync)

    def _cancel_resync(self) -> None:
        if self._resync_source is not None:
            self._resync_source.destroy()
            self._resync_source = None

    def _resync(self) -> None:
        """The backstop re-read, or, while systemd is unavailable, the retry of the whole set-up."""
        self._resync_source = None
        if not self._active or not self.connection.connected():
            return
        with self._lock:
            available = self._available
        try:
            if available:
                self._read_all()
            else:
                self._setup()
        except DBusUnavailable as error:
            self._lost(f"systemd did not answer: {error}")

    def _unsubscribe(self) -> None:
        subscriptions, self._subscriptions = self._subscriptions, []
        for subscription in subscriptions:
            try:
                subscription.unsubscribe()
            except Exception:  # the connection it belonged to may be gone
                pass


