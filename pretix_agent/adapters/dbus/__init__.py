"""systemd and logind over D-Bus, in three parts: `connection` (one private connection and the GLib
thread serving it; the only place gi is imported), `units` (unit states as they change) and
`logind` (the shutdown delay lock). The daemon opens one connection and hands it to both users."""

from .connection import DBusCallFailed, DBusConnection, DBusUnavailable, SharedConnection, system_bus_address
from .logind import ShutdownInhibitor
from .units import UnitWatcher

__all__ = ["DBusCallFailed", "DBusConnection", "DBusUnavailable", "SharedConnection", "ShutdownInhibitor",
           "UnitWatcher", "system_bus_address"]
