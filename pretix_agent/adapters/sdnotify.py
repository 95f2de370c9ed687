"""sd_notify(3) over the datagram socket in NOTIFY_SOCKET.

Not python3-sdnotify: version 0.3 (Debian 12) encodes with latin-1 and drops any status text it
cannot encode, swallows every socket error so a broken socket goes unnoticed, and knows nothing of
WATCHDOG_USEC. The protocol is one datagram of KEY=VALUE lines; twenty lines of our own say exactly
what happened.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping


class Notifier:
    """Send state changes to the service manager; silent (enabled False) without NOTIFY_SOCKET."""

    def __init__(self, environ: Mapping[str, str] | None = None):
        environ = os.environ if environ is None else environ
        address = environ.get("NOTIFY_SOCKET", "")
        # An abstract socket is written "@name" in the variable and "\0name" on the wire.
        self.address = "\0" + address[1:] if address.startswith("@") else address
        self.enabled = bool(address)
        self.last_error: str | None = None
        self._socket: socket.socket | None = None
        self.watchdog_interval = _watchdog_interval(environ)

    def send(self, **fields: str) -> bool:
        """Send KEY=VALUE lines (keys upper-cased, STATUS squashed to one line); True if sent."""
        if not self.enabled:
            return False
        lines = []
        for key, value in fields.items():
            value = " ".join(str(value).split()) if key.lower() == "status" else str(value)
            lines.append(f"{key.upper()}={value}")
        try:
            if self._socket is None:
                self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._socket.sendto("\n".join(lines).encode("utf-8"), self.address)
        except OSError as error:
            self.last_error = f"cannot notify {self.address.lstrip(chr(0))}: {error.strerror or error}"
            return False
        self.last_error = None
        return True

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None


def _watchdog_interval(environ: Mapping[str, str]) -> float | None:
    """Return WATCHDOG_USEC in seconds if the watchdog is meant for this process, else None."""
    text = environ.get("WATCHDOG_USEC", "")
    # systemd writes plain ASCII digits; int() alone would also take " 5", "5_000" or Arabic-Indic digits.
    if not (text.isascii() and text.isdigit()):
        return None
    usec = int(text)
    pid = environ.get("WATCHDOG_PID")
    if pid and pid != str(os.getpid()):
        return None
    return usec / 1_000_000 if usec > 0 else None
