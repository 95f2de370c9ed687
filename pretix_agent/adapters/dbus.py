"""systemd and logind over D-Bus: unit states as they change, and a delay lock to drain before shutdown.

The only module that imports gi (GLib, Gio) and pydbus. It imports them on first use, so a node
that uses no D-Bus feature never loads them (they cost about 10 MiB and 50 ms), and a Python
without them gets one DBusUnavailable that names the packages.

Threading. A DBusConnection is one private connection to the bus and one thread running a GLib
main loop on a private GLib.MainContext, pushed as that thread's default context. Every D-Bus
action happens on that thread: the connection is opened there (so its `closed` signal arrives
there), signals are subscribed there (GDBus dispatches a signal to the context that subscribed
it), and method calls are made there. No other thread touches a Gio or pydbus object: it hands a
function to `DBusConnection.run()`, which queues it on the loop with an idle source and waits for
the result with a timeout. Reading unit states needs no D-Bus at all (the watcher keeps the latest
states under a lock), and `ShutdownInhibitor.release()` only closes a file descriptor, so neither
can hang the caller. The callbacks (`on_change`, `on_prepare`, `on_event`) are called on the GLib
thread and must only queue and wake the daemon's loop.

Why not `GLib.idle_add` on the default context: only one thread can iterate a context, and the
process-wide default one is shared with anything else that uses GLib (a test harness, a second
connection); a private context per connection fights nobody. The idle source is the same
mechanism, attached to an explicit context; `stop()` quits the loop through one.
Why not `pydbus.SystemBus()`: it is Gio's shared system-bus singleton, which has exit-on-close set
(the whole process would exit when dbus-daemon restarts) and cannot be pointed at another address.
Why not pydbus proxies for method calls: a proxy introspects its object first (a round trip and an
XML parse per unit), its property reads take no timeout (D-Bus's default is 25 s), and pydbus 0.6
loses passed file descriptors (it hands back Inhibit's handle index 0, not the fd). Method calls go
through the Gio connection with explicit timeouts; signals through pydbus's `bus.subscribe`.

Method calls on the GLib thread are synchronous, each with `call_timeout`, and a sequence of calls
stops at its first failure: a hung systemd stalls the loop for one timeout, not one per unit.
"""

from __future__ import annotations

import functools
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, Protocol, TypeVar

from ..checks.systemd import UnitsSnapshot, UnitState
from ..errors import DBusUnavailable
from ..events import Event

# gi's modules, set by _load() on first use.
GLib: Any = None
Gio: Any = None

BUS_NAME = "org.freedesktop.DBus"
BUS_PATH = "/org/freedesktop/DBus"
PROPERTIES = "org.freedesktop.DBus.Properties"
SYSTEMD = "org.freedesktop.systemd1"
SYSTEMD_PATH = "/org/freedesktop/systemd1"
SYSTEMD_MANAGER = "org.freedesktop.systemd1.Manager"
SYSTEMD_UNIT = "org.freedesktop.systemd1.Unit"
LOGIND = "org.freedesktop.login1"
LOGIND_PATH = "/org/freedesktop/login1"
LOGIND_MANAGER = "org.freedesktop.login1.Manager"

UNIT_PROPERTIES = ("LoadState", "ActiveState", "SubState")
# How long the GLib thread may go without beating before `alive()` says it is stuck: a sequence of
# calls stops at its first timeout, so a healthy thread never stays away longer than a few timeouts.
BEAT_INTERVAL = 1.0

T = TypeVar("T")


def _load() -> None:
    """Import gi's GLib and Gio, and pydbus; raise DBusUnavailable naming what is missing."""
    global GLib, Gio
    if Gio is not None:
        return
    try:
        import pydbus  # noqa: F401  (its import adds Gio.DBusConnection.pydbus, the Bus wrapper)
        from gi.repository import Gio as gio
        from gi.repository import GLib as glib
    except (ImportError, ValueError) as error:
        raise DBusUnavailable(f"D-Bus support needs python3-gi and python3-pydbus: {error}") from None
    GLib, Gio = glib, gio


def system_bus_address() -> str:
    """Return the system bus address as Gio resolves it: $DBUS_SYSTEM_BUS_ADDRESS if set, else
    GLib's default (unix:path=/var/run/dbus/system_bus_socket; /run/... in newer GLib, the same
    socket). Raise DBusUnavailable without gi."""
    _load()
    return str(Gio.dbus_address_get_for_bus_sync(Gio.BusType.SYSTEM, None))


class DBusCallFailed(DBusUnavailable):
    """A D-Bus method call failed; `name` is the D-Bus error name (None for local errors)."""

    def __init__(self, message: str, name: str | None = None):
        super().__init__(message)
        self.name = name


def _error_text(error: Any) -> tuple[str | None, str]:
    """Given a GLib.Error from a D-Bus call, return (D-Bus error name or None, one line)."""
    name = Gio.DBusError.get_remote_error(error) if Gio.DBusError.is_remote_error(error) else None
    message = str(error.message)
    if name and message.startswith("GDBus.Error:"):
        message = message.split(": ", 1)[1] if ": " in message else message
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    # A Python service (dbusmock) sends a traceback; its last line is the one that says what.
    text = lines[-1] if lines else "no detail"
    if name and not text.startswith(name):
        text = f"{name}: {text}"
    return name, text


class _Listener(Protocol):
    def _connected(self, bus: Any) -> None: ...

    def _disconnected(self, reason: str) -> None: ...


class DBusConnection:
    """One private connection to the system bus (or `address`) and the GLib thread serving it.

    Reconnects by itself when the connection closes (dbus-daemon restarted), with a backoff from
    `reconnect_delays[0]` doubling to `reconnect_delays[1]`, and sets its listeners (UnitWatcher,
    ShutdownInhibitor) up again on the new connection. `on_event(Event)` hears about disconnects,
    reconnects and the listeners' warnings and changes, on the GLib thread (only
    `ShutdownInhibitor.release()` reports from the thread that calls it); it must be thread-safe.
    """

    def __init__(self, address: str | None = None, *, call_timeout: float = 2.0,
                 on_event: Callable[[Event], None] | None = None,
                 reconnect_delays: tuple[float, float] = (0.05, 5.0)):
        self.address = address
        self.call_timeout = call_timeout
        self.on_event = on_event or (lambda event: None)
        self.reconnect_delays = reconnect_delays
        self._thread: threading.Thread | None = None
        self._context: Any = None
        self._loop: Any = None
        self._connection: Any = None  # Gio.DBusConnection; only on the GLib thread
        self._bus: Any = None  # its pydbus.Bus
        self._listeners: list[_Listener] = []
        self._first: Future[None] = Future()
        self._connected = threading.Event()
        self._stopping = False
        self._last_beat = 0.0
        self._delay = reconnect_delays[0]
        self._outage_started: float | None = None
        self._outage_reported = False
        self.connects = 0
        self.problem = "not started"

    # -- lifecycle, from any thread ------------------------------------------------------------

    def start(self, timeout: float = 5.0) -> None:
        """Start the GLib thread and connect; return once connected (at once if running).

        Raise DBusUnavailable (and leave nothing running) if gi or pydbus is missing or the bus
        cannot be reached within `timeout`: no socket, no permission, a hung dbus-daemon.
        """
        if self.running():
            return
        _load()
        if self.address is None:
            self.address = system_bus_address()
        self._stopping = False
        self._first = Future()
        self._context = GLib.MainContext.new()
        self._loop = GLib.MainLoop.new(self._context, False)
        self._last_beat = time.monotonic()
        self._thread = threading.Thread(target=self._main, name="dbus-glib", daemon=True)
        self._thread.start()
        try:
            self._first.result(timeout)
        except FutureTimeout:
            self.stop()
            raise DBusUnavailable(f"no D-Bus connection to {self.address} within {timeout:g} s") from None
        except DBusUnavailable:
            self.stop()
            raise

    def stop(self, timeout: float = 5.0) -> None:
        """Close the connection and end the GLib thread (quit through an idle source on its loop)."""
        thread = self._thread
        if thread is None:
            return
        self._stopping = True
        if thread.is_alive():
            self._soon(self._quit)
            thread.join(timeout)
        self._thread = None
        self._connected.clear()

    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def alive(self) -> bool:
        """For the systemd watchdog gate: the GLib thread runs and beat within the last few seconds."""
        silence = time.monotonic() - self._last_beat
        return self.running() and silence < max(10.0, 3 * self.call_timeout + 2 * BEAT_INTERVAL)

    def connected(self) -> bool:
        return self._connected.is_set()

    def run(self, work: Callable[[], T], timeout: float | None = None) -> T:
        """Run `work()` on the GLib thread and return its result (or raise its exception).

        Raise DBusUnavailable if the thread is not running or does not answer within `timeout`
        (default: twice `call_timeout`). Called on the GLib thread itself, just call `work()`.
        """
        if threading.current_thread() is self._thread:
            return work()
        if not self.running():
            raise DBusUnavailable("the D-Bus thread is not running")
        future: Future[T] = Future()

        def job() -> None:
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(work())
                except BaseException as error:
                    future.set_exception(error)

        self._soon(job)
        limit = 2 * self.call_timeout if timeout is None else timeout
        try:
            return future.result(limit)
        except FutureTimeout:
            future.cancel()
            raise DBusUnavailable(f"the D-Bus thread did not answer within {limit:g} s") from None

    # -- for listeners, on the GLib thread -----------------------------------------------------

    def add_listener(self, listener: _Listener) -> None:
        if listener not in self._listeners:
            self._listeners.append(listener)

    def remove_listener(self, listener: _Listener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    @property
    def bus(self) -> Any:
        """The pydbus Bus of the current connection; raise DBusUnavailable while disconnected."""
        if self._bus is None:
            raise DBusUnavailable(self.problem)
        return self._bus

    def call(self, service: str, path: str, interface: str, method: str, signature: str = "",
             args: tuple[Any, ...] = (), reply: str | None = None) -> tuple[Any, ...]:
        """Call a method with `call_timeout`; return the unpacked reply. Raise DBusCallFailed."""
        connection = self._current()
        parameters = GLib.Variant(f"({signature})", args) if signature else None
        reply_type = GLib.VariantType.new(reply) if reply else None
        try:
            result = connection.call_sync(service, path, interface, method, parameters, reply_type,
                                          Gio.DBusCallFlags.NONE, int(self.call_timeout * 1000), None)
        except GLib.Error as error:
            name, text = _error_text(error)
            raise DBusCallFailed(f"{service} {method}: {text}", name) from None
        return tuple(result.unpack()) if result is not None else ()

    def call_with_fds(self, service: str, path: str, interface: str, method: str, signature: str,
                      args: tuple[Any, ...], reply: str) -> tuple[tuple[Any, ...], list[int]]:
        """Call a method that returns file descriptors; return (unpacked reply, the fds, now ours).

        The fds come from the reply's Gio.UnixFDList (`steal_fds()`), which pydbus 0.6 drops; the
        reply holds indexes into that list (D-Bus type `h`).
        """
        connection = self._current()
        try:
            result, fd_list = connection.call_with_unix_fd_list_sync(
                service, path, interface, method, GLib.Variant(f"({signature})", args),
                GLib.VariantType.new(reply), Gio.DBusCallFlags.NONE, int(self.call_timeout * 1000), None, None)
        except GLib.Error as error:
            name, text = _error_text(error)
            raise DBusCallFailed(f"{service} {method}: {text}", name) from None
        fds = list(fd_list.steal_fds()) if fd_list is not None else []
        return tuple(result.unpack()), fds

    def subscribe(self, signal_fired: Callable[..., None], **match: Any) -> Any:
        """`bus.subscribe(...)` on the current connection (pydbus), from the GLib thread only.

        A bug in `signal_fired` is reported as `dbus.internal_error`, not printed and lost.
        """
        def guarded(*arguments: Any) -> None:
            self._guard(functools.partial(signal_fired, *arguments))

        return self.bus.subscribe(signal_fired=guarded, **match)

    def emit(self, name: str, level: str, **fields: Any) -> None:
        try:
            self.on_event(Event(name, level, fields))
        except Exception:  # a logging problem must never stop the D-Bus thread
            pass

    def soon(self, work: Callable[[], Any]) -> None:
        """Run `work()` on the GLib thread as soon as it is free; do not wait (from any thread)."""
        self._soon(work)

    def later(self, seconds: float, work: Callable[[], Any]) -> Any:
        """Run `work()` on the GLib thread after `seconds`; return the source (`.destroy()` cancels)."""
        source = GLib.timeout_source_new(max(0, int(seconds * 1000)))
        source.set_callback(self._once(work))
        source.attach(self._context)
        return source

    # -- the GLib thread -----------------------------------------------------------------------

    def _current(self) -> Any:
        if self._connection is None:
            raise DBusUnavailable(self.problem)
        return self._connection

    def _soon(self, work: Callable[[], Any]) -> None:
        source = GLib.idle_source_new()
        source.set_callback(self._once(work))
        source.attach(self._context)

    def _once(self, work: Callable[[], Any]) -> Callable[..., bool]:
        def callback(*_args: Any) -> bool:
            self._guard(work)
            return False  # GLib.SOURCE_REMOVE

        return callback

    def _guard(self, work: Callable[[], Any]) -> None:
        try:
            work()
        except Exception as error:  # a bug must not end the loop: report it and go on
            self.emit("dbus.internal_error", "error", error=f"{type(error).__name__}: {error}")

    def _main(self) -> None:
        self._context.push_thread_default()
        try:
            beat = GLib.timeout_source_new(int(BEAT_INTERVAL * 1000))
            beat.set_callback(self._beat)
            beat.attach(self._context)
            self._soon(self._connect)
            self._loop.run()
        finally:
            self._context.pop_thread_default()
            if not self._first.done():
                self._first.set_exception(DBusUnavailable("the D-Bus thread ended"))

    def _beat(self, *_args: Any) -> bool:
        self._last_beat = time.monotonic()
        return True  # GLib.SOURCE_CONTINUE

    def _connect(self) -> None:
        if self._stopping:
            return
        cancellable = Gio.Cancellable.new()
        timer = self.later(self.call_timeout, cancellable.cancel)
        flags = Gio.DBusConnectionFlags.AUTHENTICATION_CLIENT | Gio.DBusConnectionFlags.MESSAGE_BUS_CONNECTION
        Gio.DBusConnection.new_for_address(self.address, flags, None, cancellable,
                                           functools.partial(self._connect_done, timer))

    def _connect_done(self, timer: Any, _source: Any, result: Any, *_data: Any) -> None:
        timer.destroy()
        try:
            connection = Gio.DBusConnection.new_for_address_finish(result)
        except GLib.Error as error:
            cancelled = error.matches(Gio.io_error_quark(), Gio.IOErrorEnum.CANCELLED)
            text = f"no answer within {self.call_timeout:g} s" if cancelled else _error_text(error)[1]
            self._connect_failed(f"cannot connect to D-Bus at {self.address}: {text}")
            return
        if self._stopping:
            connection.close(None, None)
            return
        connection.set_exit_on_close(False)
        connection.connect("closed", self._closed)
        self._connection = connection
        self._bus = connection.pydbus
        self.connects += 1
        self.problem = ""
        self._delay = self.reconnect_delays[0]
        self._connected.set()
        if self._outage_started is not None:
            self.emit("dbus.reconnected", "info", address=self.address,
                      outage_seconds=round(time.monotonic() - self._outage_started, 3))
            self._outage_started = None
            self._outage_reported = False
        if connection.is_closed():  # closed before the handler was connected: no signal will come
            self._closed(connection, True, None)
            return
        for listener in list(self._listeners):
            self._guard(functools.partial(listener._connected, self._bus))
        if not self._first.done():
            self._first.set_result(None)

    def _connect_failed(self, text: str) -> None:
        self.problem = text
        if not self._first.done():  # the first connection: start() raises, the feature is off
            self._first.set_exception(DBusUnavailable(text))
            return
        if not self._outage_reported:
            self._outage_reported = True
            self.emit("dbus.reconnect_failed", "warning", address=self.address, error=text,
                      detail="retrying with backoff")
        self._retry()

    def _retry(self) -> None:
        if self._stopping:
            return
        delay, self._delay = self._delay, min(self._delay * 2, self.reconnect_delays[1])
        self.later(delay, self._connect)

    def _closed(self, connection: Any, _remote_peer_vanished: bool, error: Any) -> None:
        if connection is not self._connection:
            return
        self._connection = None
        self._bus = None
        self._connected.clear()
        self.problem = f"the D-Bus connection to {self.address} closed" + (f": {error.message}" if error else "")
        if self._stopping:
            return
        self._outage_started = time.monotonic()
        self.emit("dbus.disconnected", "warning", address=self.address, error=self.problem,
                  detail="reconnecting")
        for listener in list(self._listeners):
            self._guard(functools.partial(listener._disconnected, self.problem))
        self._retry()

    def _quit(self) -> None:
        connection, self._connection, self._bus = self._connection, None, None
        self._connected.clear()
        if connection is not None:
            connection.close(None, None)
        self._loop.quit()


def _connection_for(connection: DBusConnection | None,
                       on_event: Callable[[Event], None] | None) -> tuple[DBusConnection, bool]:
    """Given an optional shared connection, return (the connection to use, whether we own it)."""
    if connection is not None:
        return connection, False
    return DBusConnection(on_event=on_event), True


def _leave(connection: DBusConnection, detach: Callable[[], Any], owns_connection: bool) -> None:
    """Undo a user's subscriptions on the D-Bus thread (if it still runs), then stop the connection
    if the user owns it. A bus that is gone already has nothing left to undo."""
    if connection.running():
        try:
            connection.run(detach)
        except DBusUnavailable:
            pass
    if owns_connection:
        connection.stop()


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
