"""The D-Bus adapter where there is no usable bus: each feature says once, clearly, that it is off.

The tests that need gi skip when it cannot be imported (the PyPI venv tier); on Debian's python3 they
run. The adapter against a real (private) bus and mock systemd/logind is tests/integration/test_dbus_*.
"""

import importlib.util
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from pretix_agent.adapters import dbus
from pretix_agent.adapters.dbus import connection as dbus_connection
from pretix_agent.errors import AgentError, DBusUnavailable

needs_gi = pytest.mark.skipif(importlib.util.find_spec("gi") is None or importlib.util.find_spec("pydbus") is None,
                              reason="needs python3-gi and python3-pydbus (Debian's /usr/bin/python3)")


def dbus_threads() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name == "dbus-glib"]


@pytest.fixture
def without_gi(monkeypatch):
    """Make gi and pydbus unimportable, as on a Python without Debian's python3-gi."""
    for name in ("gi", "gi.repository", "pydbus"):
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setattr(dbus_connection, "Gio", None)
    monkeypatch.setattr(dbus_connection, "GLib", None)


def test_importing_the_adapter_loads_no_gi():
    # Every node imports the module; gi costs about 10 MiB and is loaded only when a feature starts.
    code = "import sys, pretix_agent.adapters.dbus; print(sorted(m for m in ('gi', 'pydbus') if m in sys.modules))"
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            cwd=Path(__file__).parents[2]).stdout
    assert output.strip() == "[]"


def test_dbus_unavailable_is_an_agent_error():
    assert issubclass(DBusUnavailable, AgentError)
    assert issubclass(dbus.DBusCallFailed, DBusUnavailable)


@pytest.mark.parametrize("feature", ["connection", "watcher", "inhibitor"])
def test_without_gi_every_feature_raises_one_dbus_unavailable_naming_the_packages(without_gi, feature):
    start = {
        "connection": lambda: dbus.DBusConnection("unix:path=/nonexistent").start(),
        "watcher": lambda: dbus.UnitWatcher(["pretix-web.service"], lambda *_: None).start(),
        "inhibitor": lambda: dbus.ShutdownInhibitor(lambda _: None).start(),
    }[feature]
    with pytest.raises(DBusUnavailable, match=r"^D-Bus support needs python3-gi and python3-pydbus: "):
        start()
    assert not dbus_threads()


@needs_gi
def test_the_system_bus_address_follows_dbus_system_bus_address(monkeypatch):
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", "unix:path=/tmp/elsewhere/bus")
    assert dbus.system_bus_address() == "unix:path=/tmp/elsewhere/bus"
    monkeypatch.delenv("DBUS_SYSTEM_BUS_ADDRESS")
    # GLib's default: /var/run/... in Debian 12's GLib 2.74, /run/... in Debian 13's 2.84 (one socket).
    assert dbus.system_bus_address() in ("unix:path=/var/run/dbus/system_bus_socket",
                                         "unix:path=/run/dbus/system_bus_socket")


@needs_gi
def test_without_a_bus_socket_start_raises_naming_the_address_and_leaves_no_thread(tmp_path):
    address = f"unix:path={tmp_path}/no-bus"
    connection = dbus.DBusConnection(address)
    with pytest.raises(DBusUnavailable) as raised:
        connection.start()
    assert str(raised.value).startswith(f"cannot connect to D-Bus at {address}: ")
    assert "No such file or directory" in str(raised.value)
    assert "\n" not in str(raised.value)
    assert not connection.running() and not dbus_threads()


@needs_gi
@pytest.mark.parametrize("feature", ["watcher", "inhibitor"])
def test_without_a_bus_the_watcher_and_the_inhibitor_say_so_once(tmp_path, monkeypatch, feature):
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", f"unix:path={tmp_path}/no-bus")
    events = []
    if feature == "watcher":
        watcher = dbus.UnitWatcher(["pretix-web.service"], lambda *_: None, on_event=events.append)
        with pytest.raises(DBusUnavailable, match=r"^cannot connect to D-Bus at unix:path="):
            watcher.start()
        snapshot = watcher.snapshot()
        assert not snapshot.available and snapshot.reason == "not started"
    else:
        inhibitor = dbus.ShutdownInhibitor(lambda _: None, on_event=events.append)
        with pytest.raises(DBusUnavailable, match=r"^cannot connect to D-Bus at unix:path="):
            inhibitor.start()
        assert not inhibitor.held()
    assert events == []  # the exception is the one report; nothing is logged besides it
    assert not dbus_threads()


@needs_gi
def test_a_bus_that_accepts_but_never_answers_fails_the_start_at_its_timeout(tmp_path):
    # A SIGSTOPped dbus-daemon: the socket accepts (the kernel does that), the handshake never comes.
    path = tmp_path / "hung-bus"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1)
    try:
        connection = dbus.DBusConnection(f"unix:path={path}", call_timeout=0.3)
        started = time.monotonic()
        with pytest.raises(DBusUnavailable, match=r"no answer within 0\.3 s"):
            connection.start(timeout=5.0)
        assert time.monotonic() - started < 2.0
        assert not dbus_threads()
    finally:
        listener.close()


@needs_gi
def test_run_without_a_running_thread_raises_instead_of_waiting():
    with pytest.raises(DBusUnavailable, match="the D-Bus thread is not running"):
        dbus.DBusConnection("unix:path=/nonexistent").run(lambda: 1)
