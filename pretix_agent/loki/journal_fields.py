"""What `journalctl --output=json` gives, and how an entry becomes a line for Loki: its timestamp,
its unit, its level and event; the command line that follows the journal; and the few facts of this
host the journal source needs (its own unit, its machine id, whether it may read the journal, when
it started). The source itself, a journalctl process read only while the shipper has room, is
journal.py."""

from __future__ import annotations

import grp
import json
import os
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .entries import AGENT_UNIT, Metadata, level_of, line_metadata

FIELDS = ("MESSAGE", "_SYSTEMD_UNIT", "UNIT", "OBJECT_SYSTEMD_UNIT", "COREDUMP_UNIT", "_MACHINE_ID", "PRIORITY",
          "PRETIX_AGENT_EVENT")
# Where a unit's name can be, in the order we believe them: systemd's own lines about a unit ("Started
# ...", "Failed with result ...") come from PID 1 with UNIT= set; `journalctl -u` matches all four.
UNIT_FIELDS = ("_SYSTEMD_UNIT", "UNIT", "OBJECT_SYSTEMD_UNIT", "COREDUMP_UNIT")
LOCAL = "local"  # JournalSource(machine_id=LOCAL): this host's /etc/machine-id
OVERSIZED = b"\0oversized"

_SEQNUM = re.compile(r"(?:^|;)i=([0-9a-fA-F]+)")


# ---------------------------------------------------------------------------------------------
# Pure parts.


def timestamp_ns(realtime_us: int, cursor: str | None) -> int:
    """Given `__REALTIME_TIMESTAMP` (µs) and the entry's cursor, return Loki's nanoseconds.

    The sub-microsecond digits are the entry's sequence number modulo 1000: the same entry always
    gets the same timestamp (so a resend is an exact duplicate Loki drops), while two identical lines
    logged in the same microsecond get different ones (so Loki does not drop one of them).
    """
    match = _SEQNUM.search(cursor or "")
    return realtime_us * 1000 + (int(match.group(1), 16) % 1000 if match else 0)


def field_text(value: Any) -> str | None:
    """Given a field as journalctl's JSON shows it, return text: a string, bytes (a list of
    numbers, for non-UTF-8 data) decoded with replacement, or the first of repeated values."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value:
        if all(isinstance(item, int) for item in value):
            return bytes(value).decode("utf-8", "replace")
        return field_text(value[0])
    return None


def unit_of(fields: dict[str, Any], units: frozenset[str]) -> str | None:
    """Return the unit an entry is about: the first unit field naming one of `units`, else `_SYSTEMD_UNIT`."""
    for name in UNIT_FIELDS:
        value = fields.get(name)
        if isinstance(value, str) and value in units:
            return value
    value = fields.get("_SYSTEMD_UNIT")
    return value if isinstance(value, str) else None


def journal_metadata(fields: dict[str, Any], message: str, own: bool) -> Metadata:
    """Given a journal entry's fields and text, return its structured metadata: the level from
    PRIORITY and, for the agent's own lines (`own`), the event name: its PRETIX_AGENT_EVENT field, or,
    for an event that reached the journal through the stream (with its `<N>` prefix, when the native
    protocol refused it), the first word of the line."""
    event = None
    if own:
        event = field_text(fields.get("PRETIX_AGENT_EVENT")) or message.split(" ", 1)[0]
    return line_metadata(level_of(field_text(fields.get("PRIORITY"))), event)


def journalctl_command(journalctl: Sequence[str], units: Sequence[str], extra_args: Sequence[str],
                       after_cursor: str | None, since: float | None, fields: Sequence[str] = FIELDS,
                       follow: bool = True) -> list[str]:
    """Return the journalctl command line that reads `units` from just after `after_cursor`
    (or from `since`, a Unix time, when there is no cursor yet)."""
    command = [*journalctl, "--output=json", f"--output-fields={','.join(fields)}", "--all", "--merge",
               "--no-pager"]
    if follow:
        command += ["--follow", "--lines=all"]
    for unit in units:
        command.append(f"--unit={unit}")
    command += list(extra_args)
    if after_cursor:
        command.append(f"--after-cursor={after_cursor}")
    elif since is not None:
        command.append(f"--since=@{since:.6f}")
    return command


def read_cursor(path: Path) -> str | None:
    """Return the persisted cursor, or None if there is none (or it is not a cursor)."""
    try:
        text = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return text if text.startswith("s=") and "\n" not in text and len(text) < 1024 else None


def own_unit(cgroup_file: Path = Path("/proc/self/cgroup")) -> str:
    """Return the systemd unit this process runs in (from its cgroup), or pretix-agent.service."""
    try:
        text = cgroup_file.read_text()
    except OSError:
        return AGENT_UNIT
    for line in text.splitlines():
        path = line.split(":", 2)[-1]
        for part in reversed(path.split("/")):
            if part.endswith(".service"):
                return part
    return AGENT_UNIT


def access_problem(euid: int | None = None, groups: set[int] | None = None) -> str | None:
    """Return why this process cannot read the system journal, or None if it can.

    journald keeps the lines of system services (the agent's own too) in the system journal, which
    root and the groups systemd-journal, adm and wheel may read; a system user in none of them sees
    nothing at all.
    """
    if (os.geteuid() if euid is None else euid) == 0:
        return None
    member_of = set(os.getgroups()) | {os.getegid()} if groups is None else groups
    for name in ("systemd-journal", "adm", "wheel"):
        try:
            if grp.getgrnam(name).gr_gid in member_of:
                return None
        except KeyError:
            continue
    return ("this user may not read the system journal: run the agent with SupplementaryGroups=systemd-journal "
            "(see pretix-agent(8))")


def local_machine_id(path: Path = Path("/etc/machine-id")) -> str | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return text if re.fullmatch(r"[0-9a-f]{32}", text) else None


def process_start_time(pid: int | str = "self") -> float:
    """Return when process `pid` started, as a Unix time (from /proc; now if unknown)."""
    try:
        ticks = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
        boot = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime "))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return time.time()


def message_prefix(head: bytes, limit: int) -> str:
    """Given the start of an entry's JSON, return up to `limit` bytes of its MESSAGE (best effort)."""
    match = re.search(rb'"MESSAGE":"((?:[^"\\]|\\.)*)', head)
    if not match:
        return ""
    raw = match.group(1)[:limit]
    for cut in range(len(raw), max(-1, len(raw) - 12), -1):  # back off a cut \uXXXX escape
        try:
            return str(json.loads(b'"' + raw[:cut] + b'"'))
        except ValueError:
            continue
    return ""


# ---------------------------------------------------------------------------------------------
# The source.
