"""dbusmock template: systemd's Manager and units, as much as pretix-agent's D-Bus adapter uses.

dbusmock's stock `systemd` template (StartUnit, StopUnit, GetUnit, AddMockUnit) lacks what the adapter
relies on, so this template loads it and adds:
- `Subscribe` and `Unsubscribe` (recorded, so a test can see the adapter subscribed);
- `LoadUnit`, which like systemd answers for a unit that does not exist with an object whose
  LoadState is "not-found";
- units with LoadState, ActiveState and SubState at systemd's object paths
  (`pretix-web.service` -> `/org/freedesktop/systemd1/unit/pretix_2dweb_2eservice`), created at load
  from the `units` parameter, {name: [active, sub]} or {name: [active, sub, load]}, so a restarted
  mock has them before it answers its first call (as systemd has its units when it takes its name);
- on org.freedesktop.DBus.Mock: `AddUnit(name, active, sub, load)`; `Invalidate(name, active, sub)`,
  which changes a state but announces only *that* it changed (PropertiesChanged with the names in
  `invalidated`); `SetQuietly(name, active, sub)`, which changes it without any signal (a signal the
  client missed). A state change with values is the stock `UpdateProperties` on the unit's object.

Run as `python3 -m dbusmock --template tests/integration/dbusmock_systemd.py -p '{"units": ...}'`.
"""

import dbus
from dbusmock import MOCK_IFACE, mockobject
from dbusmock.templates import systemd as stock
from dbusmock.templates.systemd import (  # noqa: F401  (dbusmock picks the D-Bus methods from this module)
    BUS_NAME,
    MAIN_IFACE,
    MAIN_OBJ,
    SYSTEM_BUS,
    UNIT_IFACE,
    AddMockUnit,
    GetUnit,
    StartTransientUnit,
    StartUnit,
    StopUnit,
)

PATH_PREFIX = "/org/freedesktop/systemd1/unit/"


def unit_path(name):
    """systemd's bus_label_escape: every byte that is not a letter or digit becomes _XX."""
    return PATH_PREFIX + "".join(c if c.isalnum() else f"_{ord(c):02x}" for c in name)


def load(mock, parameters):
    stock.load(mock, parameters)
    mock.AddMethods(MAIN_IFACE, [("Subscribe", "", "", ""), ("Unsubscribe", "", "", "")])
    for name, state in (parameters.get("units") or {}).items():
        active, sub, *load_state = state
        add_unit(mock, name, active, sub, load_state[0] if load_state else "loaded")


def add_unit(mock, name, active, sub, load_state):
    path = unit_path(name)
    mock.units[name] = path
    mock.AddObject(path, UNIT_IFACE, {
        "Id": name, "Names": dbus.Array([name], signature="s"), "Description": f"mock {name}",
        "LoadState": load_state, "ActiveState": active, "SubState": sub}, [])
    return path


@dbus.service.method(MAIN_IFACE, in_signature="s", out_signature="o")
def LoadUnit(self, name):
    name = str(name)
    if name in self.units:
        return self.units[name]
    return add_unit(self, name, "inactive", "dead", "not-found")


@dbus.service.method(MOCK_IFACE, in_signature="ssss", out_signature="o")
def AddUnit(self, name, active, sub, load_state):
    return add_unit(self, str(name), str(active), str(sub), str(load_state))


@dbus.service.method(MOCK_IFACE, in_signature="sss", out_signature="")
def SetQuietly(self, name, active, sub):
    unit = mockobject.objects[self.units[str(name)]]
    unit.props[UNIT_IFACE]["ActiveState"] = active
    unit.props[UNIT_IFACE]["SubState"] = sub


@dbus.service.method(MOCK_IFACE, in_signature="sss", out_signature="")
def Invalidate(self, name, active, sub):
    SetQuietly(self, name, active, sub)
    unit = mockobject.objects[self.units[str(name)]]
    unit.EmitSignal(dbus.PROPERTIES_IFACE, "PropertiesChanged", "sa{sv}as",
                    [UNIT_IFACE, dbus.Dictionary({}, signature="sv"), ["ActiveState", "SubState"]])
