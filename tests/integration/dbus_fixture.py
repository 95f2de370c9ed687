"""A private D-Bus "system bus" with mock systemd and logind (python3-dbusmock), for the D-Bus adapter.

Plain classes, no pytest:

    with PrivateBus(directory) as bus:                 # dbus-daemon on unix:path=<directory>/bus
        systemd = SystemdMock(bus, {"pretix-web.service": ("active", "running")}).start()
        systemd.add_unit("pretix-worker.service", "failed", "failed")
        systemd.set_state("pretix-web.service", "failed", "failed")   # emits PropertiesChanged
        logind = LogindMock(bus).start()              # dbusmock's `logind` template
        logind.prepare_for_shutdown(True)
        bus.restart()                                 # SIGKILL dbus-daemon, a new one at the same address

The bus is a `dbus-daemon --nofork --print-address --config-file=...` of our own: one Unix socket in
the test's directory, EXTERNAL auth, a policy that allows everything, and no service directories
(so a call to a name nobody owns fails at once instead of trying to activate something). The mocks
are `python3 -m dbusmock --template ...` with DBUS_SYSTEM_BUS_ADDRESS pointing at it, as the
templates are system-bus templates. The test process drives them through dbus-python (the mocks'
own org.freedesktop.DBus.Mock interface), never through the adapter under test.

Templates:
- systemd: dbusmock's stock `systemd` template lacks `Subscribe`, `LoadUnit` (with systemd's answer
  for a unit that does not exist: an object whose LoadState is "not-found"), `SubState` and
  systemd's object paths; `dbusmock_systemd.py` next to this file loads the stock template and adds
  them. Units are passed at start (`SystemdMock(bus, units=...)`) so that a restarted mock has them
  before it answers its first call, as systemd does; adding methods from outside after the mock
  took its name would race with a client that reacts to NameOwnerChanged at once.
- logind: the stock template as it is. Its `Inhibit` returns a real pipe file descriptor and drops the inhibitor from
  `ListInhibitors` when the client closes it; `PrepareForShutdown` is emitted with EmitSignal.

Every child gets PR_SET_PDEATHSIG=SIGKILL, so nothing outlives the test process, and is ended by its
own PID.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.waiting import wait_until

from .processes import die_with_parent

DBUS_DAEMON = "/usr/bin/dbus-daemon"
MOCK_IFACE = "org.freedesktop.DBus.Mock"
PROPERTIES = "org.freedesktop.DBus.Properties"
SYSTEMD = "org.freedesktop.systemd1"
SYSTEMD_PATH = "/org/freedesktop/systemd1"
SYSTEMD_MANAGER = "org.freedesktop.systemd1.Manager"
SYSTEMD_UNIT = "org.freedesktop.systemd1.Unit"
LOGIND = "org.freedesktop.login1"
LOGIND_PATH = "/org/freedesktop/login1"
LOGIND_MANAGER = "org.freedesktop.login1.Manager"

BUS_CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
"""

SYSTEMD_TEMPLATE = Path(__file__).with_name("dbusmock_systemd.py")


def dbus_unavailable_reason() -> str | None:
    """Why the D-Bus integration tests cannot run here, or None (for pytest.skip)."""
    if not Path(DBUS_DAEMON).is_file():
        return f"{DBUS_DAEMON} not found: install dbus"
    try:
        import dbus  # noqa: F401
        import dbusmock  # noqa: F401
        from gi.repository import Gio  # noqa: F401
    except ImportError as error:
        return f"needs python3-gi, python3-dbus and python3-dbusmock (run on /usr/bin/python3): {error}"
    return None


def unit_path(name: str) -> str:
    """systemd's object path for a unit (bus_label_escape: every non-alphanumeric byte as _XX)."""
    return SYSTEMD_PATH + "/unit/" + "".join(c if c.isalnum() else f"_{ord(c):02x}" for c in name)


def _end(process: subprocess.Popen[Any] | None, sig: int = signal.SIGTERM, timeout: float = 5.0) -> None:
    if process is None or process.poll() is not None:
        return
    process.send_signal(sig)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout)


class PrivateBus:
    """A dbus-daemon of our own, on unix:path=<directory>/bus."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self.socket = self.directory / "bus"
        self.address = f"unix:path={self.socket}"
        self.config = self.directory / "bus.conf"
        self.process: subprocess.Popen[str] | None = None

    def __enter__(self) -> PrivateBus:
        return self.start()

    def __exit__(self, *_exc: Any) -> None:
        self.stop()

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self) -> PrivateBus:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.config.write_text(BUS_CONFIG.format(socket=self.socket))
        if self.socket.exists():  # left behind by a killed daemon
            self.socket.unlink()
        self.process = subprocess.Popen(
            [DBUS_DAEMON, "--nofork", "--print-address", f"--config-file={self.config}"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, preexec_fn=die_with_parent)
        assert self.process.stdout is not None
        printed = self.process.stdout.readline().strip()  # printed once it listens
        if not printed:
            raise RuntimeError(f"dbus-daemon did not start (exit status {self.process.wait(5)})")
        return self

    def kill(self) -> None:
        """SIGKILL the daemon, as a crash would: every client's connection closes."""
        _end(self.process, signal.SIGKILL)

    def restart(self) -> None:
        """Kill the daemon and start a new one at the same address."""
        self.kill()
        self.start()

    def stop(self) -> None:
        _end(self.process)

    def env(self) -> dict[str, str]:
        return {**os.environ, "DBUS_SYSTEM_BUS_ADDRESS": self.address}

    def client(self) -> Any:
        """A dbus-python connection for the test to drive the mocks with."""
        import dbus.bus

        return dbus.bus.BusConnection(self.address)


class MockService:
    """`python3 -m dbusmock --template TEMPLATE` on the private bus, owning `name`."""

    template: str | Path = ""
    name = ""
    path = ""

    def __init__(self, bus: PrivateBus, parameters: dict[str, Any] | None = None):
        self.bus = bus
        self.parameters = parameters or {}
        self.process: subprocess.Popen[bytes] | None = None
        self.log = bus.directory / f"{self.name}-mock.log"
        self._client: Any = None

    def start(self, timeout: float = 10.0) -> Any:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "dbusmock", "--template", str(self.template), "--logfile", str(self.log),
             "--parameters", json.dumps(self.parameters)],
            env=self.bus.env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=die_with_parent)
        self._client = self.bus.client()
        bus_object = self._client.get_object("org.freedesktop.DBus", "/org/freedesktop/DBus")
        wait_until(lambda: bool(bus_object.NameHasOwner(self.name, dbus_interface="org.freedesktop.DBus")),
                   timeout, message=f"the mock of {self.name} to own its name")
        return self

    def stop(self) -> None:
        _end(self.process)
        if self._client is not None:
            self._client.close()
            self._client = None

    def object(self, path: str | None = None) -> Any:
        return self._client.get_object(self.name, path or self.path)

    def mock(self, path: str | None = None) -> Any:
        """The org.freedesktop.DBus.Mock interface of an object (main object by default)."""
        import dbus

        return dbus.Interface(self.object(path), MOCK_IFACE)

    def calls(self, method: str) -> list[Any]:
        """Arguments of every call of `method` on the main object so far."""
        return [list(args) for _stamp, args in self.mock().GetMethodCalls(method)]


class SystemdMock(MockService):
    template = SYSTEMD_TEMPLATE
    name = SYSTEMD
    path = SYSTEMD_PATH

    def __init__(self, bus: PrivateBus, units: dict[str, tuple[str, ...]] | None = None):
        """`units`: {name: (active, sub)} or {name: (active, sub, load_state)}, there from the start."""
        super().__init__(bus, {"units": {name: list(state) for name, state in (units or {}).items()}})

    def add_unit(self, name: str, active: str = "active", sub: str = "running", load: str = "loaded") -> str:
        return str(self.mock().AddUnit(name, active, sub, load))

    def set_state(self, name: str, active: str, sub: str) -> None:
        """Change a unit's state and emit PropertiesChanged with the new values, as systemd does."""
        self.mock(unit_path(name)).UpdateProperties(SYSTEMD_UNIT, {"ActiveState": active, "SubState": sub})

    def set_state_invalidated(self, name: str, active: str, sub: str) -> None:
        """Change a unit's state and emit PropertiesChanged naming the properties, without values."""
        self.mock().Invalidate(name, active, sub)

    def set_state_quietly(self, name: str, active: str, sub: str) -> None:
        """Change a unit's state without any signal: a change the client missed."""
        self.mock().SetQuietly(name, active, sub)

    def state(self, name: str) -> tuple[str, str]:
        import dbus

        properties = dbus.Interface(self.object(unit_path(name)), PROPERTIES)
        return (str(properties.Get(SYSTEMD_UNIT, "ActiveState")), str(properties.Get(SYSTEMD_UNIT, "SubState")))


class LogindMock(MockService):
    template = "logind"
    name = LOGIND
    path = LOGIND_PATH

    def inhibitors(self) -> list[tuple[str, ...]]:
        """ListInhibitors: (what, who, why, mode, uid, pid) of every lock still held."""
        import dbus

        manager = dbus.Interface(self.object(), LOGIND_MANAGER)
        return [tuple(str(field) for field in entry) for entry in manager.ListInhibitors()]

    def prepare_for_shutdown(self, active: bool) -> None:
        self.mock().EmitSignal(LOGIND_MANAGER, "PrepareForShutdown", "b", [active])


def monotonic_ms(start: float) -> float:
    return round((time.monotonic() - start) * 1000, 3)
