"""Real journal files without a running journald, for tests of the journal source.

`systemd-journal-remote --output=FILE.journal -` reads the journal export format on stdin and
appends real entries (with cursors, sequence numbers, hashes) to FILE; `journalctl --directory DIR
--follow` sees the appends. Package: systemd-journal-remote.
"""

from __future__ import annotations

import shutil
import subprocess
import time
import uuid
from pathlib import Path

JOURNAL_REMOTE = "/lib/systemd/systemd-journal-remote"
MACHINE_ID = "0123456789abcdef0123456789abcdef"


def available() -> bool:
    return Path(JOURNAL_REMOTE).exists() and shutil.which("journalctl") is not None


def export_entry(fields: dict[str, str | bytes]) -> bytes:
    """Encode one entry in the journal export format (binary-safe for values with newlines)."""
    out = bytearray()
    for name, value in fields.items():
        data = value if isinstance(value, bytes) else value.encode("utf-8")
        if b"\n" in data:
            out += name.encode() + b"\n" + len(data).to_bytes(8, "little") + data + b"\n"
        else:
            out += name.encode() + b"=" + data + b"\n"
    return bytes(out) + b"\n"


class JournalWriter:
    """Appends entries to DIR/system.journal as journald would have written them on one boot."""

    def __init__(self, directory: Path, machine_id: str = MACHINE_ID, boot_id: str | None = None):
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / "system.journal"
        self.machine_id = machine_id
        self.boot_id = boot_id or uuid.uuid4().hex
        self.monotonic_us = 1_000_000
        self.realtime_us = int(time.time() * 1e6)

    def append(self, messages: list[str | bytes], unit: str = "pretix-agent.service", priority: int = 6,
               extra: dict[str, str] | None = None, machine_id: str | None = None) -> list[int]:
        """Append one entry per message, from `unit`, at the current time (strictly increasing);
        return their __REALTIME_TIMESTAMP values (µs)."""
        chunks = []
        stamps = []
        for message in messages:
            self.realtime_us = max(self.realtime_us + 1, int(time.time() * 1e6))
            self.monotonic_us += 1
            fields: dict[str, str | bytes] = {
                "__REALTIME_TIMESTAMP": str(self.realtime_us),
                "__MONOTONIC_TIMESTAMP": str(self.monotonic_us),
                "_BOOT_ID": self.boot_id,
                "_MACHINE_ID": machine_id or self.machine_id,
                "_HOSTNAME": "node1",
                "_SYSTEMD_UNIT": unit,
                "PRIORITY": str(priority),
                "SYSLOG_IDENTIFIER": unit.removesuffix(".service"),
                "MESSAGE": message,
                **(extra or {}),
            }
            chunks.append(export_entry(fields))
            stamps.append(self.realtime_us)
        self.append_raw(b"".join(chunks))
        return stamps

    def append_raw(self, export: bytes) -> None:
        result = subprocess.run([JOURNAL_REMOTE, f"--output={self.path}", "-"], input=export,
                                capture_output=True, timeout=120)
        if result.returncode != 0:
            raise RuntimeError(f"systemd-journal-remote failed: {result.stderr.decode(errors='replace')}")

    def new_boot(self) -> None:
        self.boot_id = uuid.uuid4().hex
        self.monotonic_us = 1_000_000
