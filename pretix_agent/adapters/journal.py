"""journald's native protocol: each event one datagram of fields a person can filter on.

`journalctl -u pretix-agent PRETIX_AGENT_EVENT=maintenance.enabled` works because every event is
sent with its name and fields as journal fields (upper-cased, prefixed PRETIX_AGENT_), its
priority as PRIORITY and its readable line as MESSAGE. The protocol (systemd's
"Native Journal Protocol" document): `KEY=value` lines, and for a value containing a newline, `KEY`,
a newline, the value's length as 64-bit little-endian, the value, a newline.

A datagram too large for the socket, or any send error, falls back to the stream with its `<N>`
prefix, so an event is never lost to the transport.
"""

from __future__ import annotations

import os
import re
import socket
import struct
from collections.abc import Iterable
from typing import Any

SOCKET_PATH = "/run/systemd/journal/socket"
SOCKET_ENV = "PRETIX_AGENT_JOURNAL_SOCKET"  # tests point this at a socket of their own
IDENTIFIER = "pretix-agent"
_FIELD_NAME = re.compile(r"[^A-Z0-9_]")


def field_name(key: str) -> str:
    """Given an event key ("lag_bytes", "old"), return a valid journal field name (PRETIX_AGENT_...)."""
    return "PRETIX_AGENT_" + (_FIELD_NAME.sub("_", key.upper()).strip("_") or "FIELD")


def encode(fields: Iterable[tuple[str, str]]) -> bytes:
    """Encode (name, value) pairs in the native protocol."""
    out = bytearray()
    for name, value in fields:
        data = value.encode("utf-8", "replace")
        if b"\n" in data:
            out += name.encode() + b"\n" + struct.pack("<Q", len(data)) + data + b"\n"
        else:
            out += name.encode() + b"=" + data + b"\n"
    return bytes(out)


def socket_path() -> str:
    return os.environ.get(SOCKET_ENV, SOCKET_PATH)


class JournalSender:
    """Sends events to journald; `send` returns False when the caller must fall back to the stream."""

    def __init__(self, path: str | None = None):
        self.path = path or socket_path()
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        # Never block the caller (the main loop) on a slow journald: a full socket buffer
        # (EAGAIN) falls back to the stream like any other send error.
        self._socket.setblocking(False)

    def available(self) -> bool:
        return os.path.exists(self.path)

    def send(self, message: str, priority: int, event: str, fields: dict[str, Any]) -> bool:
        pairs = [("MESSAGE", message), ("PRIORITY", str(priority)), ("SYSLOG_IDENTIFIER", IDENTIFIER),
                 ("PRETIX_AGENT_EVENT", event)]
        pairs += [(field_name(key), value if isinstance(value, str) else _text(value))
                  for key, value in fields.items() if value is not None]
        try:
            self._socket.sendto(encode(pairs), self.path)
        except OSError:
            return False
        return True


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
