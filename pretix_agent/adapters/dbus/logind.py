"""logind's shutdown delay lock over D-Bus, so the node is drained before it goes down (see
`connection` for the threading rules every D-Bus user here follows)."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any

from ...events import Event
from .connection import (
    BUS_NAME,
    BUS_PATH,
    LOGIND,
    LOGIND_MANAGER,
    LOGIND_PATH,
    DBusCallFailed,
    DBusConnection,
    DBusUnavailable,
    _connection_for,
    _leave,
)


class ShutdownInhibitor:
    """A logind delay lock on shutdown, so the node is drained before it goes down.

    `start()` takes the lock (`Inhibit("shutdown", who, why, "delay")`) and keeps its file
    descriptor open. When logind announces a shutdown (`PrepareForShutdown(true)`), it calls
    `on_prepare(True)`: the daemon drains the node, flushes its logs, then calls `release()`, and
    logind goes on (at the latest after logind.conf's `InhibitDelayMaxSec`, 5 s by default). If
    the shutdown is cancelled (`PrepareForShutdown(false)`), it takes the lock again and calls
    `on_prepare(False)`. Both callbacks come from the GLib thread and must only queue and wake.
    """

    def __init__(self, on_prepare: Callable[[bool], None], who: str = "pretix-agent",
                 why: str = "drain haproxy before shutdown", *, connection: DBusConnection | None = None,
                 on_event: Callable[[Event], None] | None = None):
        self.on_prepare = on_prepare
        self.who = who
        self.why = why
        self.connection, self._owns_connection = _connection_for(connection, on_event)
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._want = False  # whether the lock should be held (not during a shutdown, not after stop)
        self._preparing = False
        self._subscriptions: list[Any] = []
        self._active = False
        self.takes = 0

    # -- from any thread -----------------------------------------------------------------------

    def start(self, timeout: float = 5.0) -> None:
        """Connect (if not yet), subscribe to PrepareForShutdown and take the lock.

        Raise DBusUnavailable (and stay off) if there is no bus, logind is not on it, or it refuses
        the lock (an unprivileged user needs polkitd, which allows delay locks to everyone).
        """
        self.connection.start(timeout)
        try:
            self.connection.run(self._attach, timeout)
        except DBusUnavailable:
            if self._owns_connection:
                self.connection.stop()
            raise

    def held(self) -> bool:
        with self._lock:
            return self._fd is not None

    def preparing(self) -> bool:
        """True between PrepareForShutdown(true) and a cancellation: the host is going down."""
        return self._preparing

    def release(self) -> None:
        """Close the lock's file descriptor: logind may go on. Never blocks, never calls D-Bus."""
        self._want = False
        if self._close():
            self.connection.emit("logind.inhibitor_released", "info", who=self.who, preparing=self._preparing)

    def stop(self) -> None:
        self._want = False
        self._close()
        _leave(self.connection, self._detach, self._owns_connection)

    def _close(self) -> bool:
        with self._lock:
            fd, self._fd = self._fd, None
        if fd is None:
            return False
        os.close(fd)
        return True

    # -- the GLib thread -----------------------------------------------------------------------

    def _attach(self) -> None:
        self.connection.add_listener(self)
        self._active = True
        self._want = True
        try:
            self._setup()
        except DBusUnavailable:
            self._active = False
            self._want = False
            self.connection.remove_listener(self)
            raise

    def _detach(self) -> None:
        self._active = False
        self.connection.remove_listener(self)
        self._unsubscribe()

    def _connected(self, _bus: Any) -> None:
        if not self._active:
            return
        try:
            self._setup()
        except DBusUnavailable as error:
            self.connection.emit("logind.inhibit_failed", "error", error=str(error),
                                 detail="no shutdown drain until logind answers again")

    def _disconnected(self, _reason: str) -> None:
        # The lock lives in its file descriptor, not in the bus connection: keep it.
        self._subscriptions = []

    def _setup(self) -> None:
        self._unsubscribe()
        self._subscriptions.append(self.connection.subscribe(
            sender=BUS_NAME, iface=BUS_NAME, signal="NameOwnerChanged", object=BUS_PATH, arg0=LOGIND,
            signal_fired=self._owner_changed))
        self._subscriptions.append(self.connection.subscribe(
            sender=LOGIND, iface=LOGIND_MANAGER, signal="PrepareForShutdown", object=LOGIND_PATH,
            signal_fired=self._prepare_for_shutdown))
        if self._want and not self._registered():
            self._take()

    def _registered(self) -> bool:
        """Whether logind still lists our lock (it keeps locks across its own restarts)."""
        if self.held():
            try:
                inhibitors = self.connection.call(LOGIND, LOGIND_PATH, LOGIND_MANAGER, "ListInhibitors",
                                                  reply="(a(ssssuu))")[0]
            except DBusUnavailable:
                return False
            return any((what, who, why, mode, pid) == ("shutdown", self.who, self.why, "delay", os.getpid())
                       for what, who, why, mode, _uid, pid in inhibitors)
        return False

    def _take(self) -> None:
        try:
            (index,), fds = self.connection.call_with_fds(LOGIND, LOGIND_PATH, LOGIND_MANAGER, "Inhibit", "ssss",
                                                          ("shutdown", self.who, self.why, "delay"), "(h)")
        except DBusCallFailed as error:
            hint = ""
            if error.name == "org.freedesktop.DBus.Error.AccessDenied":
                hint = ("; an unprivileged user needs polkitd (it allows org.freedesktop.login1.inhibit-"
                        "delay-shutdown to every user)")
            raise DBusCallFailed(f"logind refused the shutdown delay lock: {error}{hint}", error.name) from None
        fd = fds[index] if 0 <= index < len(fds) else None
        for other in fds:
            if other != fd:
                os.close(other)
        if fd is None:
            raise DBusUnavailable(f"logind answered Inhibit without a file descriptor (handle {index}, "
                                  f"{len(fds)} fds)")
        with self._lock:
            old, self._fd = self._fd, fd
        if old is not None:
            os.close(old)  # logind drops the stale lock it may still list
        self.takes += 1
        self.connection.emit("logind.inhibitor_taken", "info", who=self.who, why=self.why, mode="delay")

    def _prepare_for_shutdown(self, _sender: str, _path: str, _interface: str, _signal: str,
                              parameters: tuple[Any, ...]) -> None:
        if not self._active:
            return
        (active,) = parameters
        if active:
            self._preparing = True
            self._want = False
            self.connection.emit("logind.prepare_for_shutdown", "warning", held=self.held(),
                                 detail="draining before shutdown")
        else:
            self._preparing = False
            self._want = True
            if not self.held():
                try:
                    self._take()
                except DBusUnavailable as error:
                    self.connection.emit("logind.inhibit_failed", "error", error=str(error),
                                         detail="shutdown cancelled, but the delay lock could not be taken again")
            self.connection.emit("logind.shutdown_cancelled", "info", held=self.held())
        try:
            self.on_prepare(bool(active))
        except Exception as error:
            self.connection.emit("dbus.callback_failed", "error", callback="on_prepare",
                                 error=f"{type(error).__name__}: {error}")

    def _owner_changed(self, _sender: str, _path: str, _interface: str, _signal: str,
                       parameters: tuple[Any, ...]) -> None:
        name, _old, new = parameters
        if name != LOGIND or not new or not self._active:
            return
        if self._want and not self._registered():  # logind restarted without our lock
            try:
                self._take()
            except DBusUnavailable as error:
                self.connection.emit("logind.inhibit_failed", "error", error=str(error),
                                     detail="logind restarted; no shutdown drain until it answers again")

    def _unsubscribe(self) -> None:
        subscriptions, self._subscriptions = self._subscriptions, []
        for subscription in subscriptions:
            try:
                subscription.unsubscribe()
            except Exception:
                pass
