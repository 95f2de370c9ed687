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
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, Protocol, TypeVar

from ...errors import DBusUnavailable
from ...events import Event

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




class SharedConnection:
    """One DBusConnection for every user in the daemon, opened when the first one asks for it.

    The daemon owns it (and stops it last); the systemd unit watcher and the logind inhibitor
    borrow it through `get()`, so a node needs one GLib thread and one bus connection, not two.
    """

    def __init__(self, on_event: Callable[[Event], None], address: str | None = None):
        self.on_event = on_event
        self.address = address
        self.connection: DBusConnection | None = None

    def get(self) -> DBusConnection:
        """Return the started connection; raise DBusUnavailable (each attempt) if there is none."""
        if self.connection is None:
            connection = DBusConnection(self.address, on_event=self.on_event)
            connection.start()
            self.connection = connection
        return self.connection

    def alive(self) -> bool:
        return self.connection is None or self.connection.alive()

    def stop(self) -> None:
        if self.connection is not None:
            self.connection.stop()
            self.connection = None
