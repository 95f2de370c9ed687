"""The status document: what the daemon publishes for pretix-agentctl, and how ctl judges it.

The document is versioned (`format`) and carries `written_at` as wall-clock Unix time. Staleness is
judged by comparing that with the reader's wall clock (never with a monotonic clock, whose zero
is boot and means nothing in a file), against `stale_after`, which the daemon derives from how
often it promises to publish.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .adapters import files
from .errors import StatusUnavailable

FORMAT = 1


def publish(path: Path, document: dict[str, Any]) -> None:
    """Write the status atomically (readable by everyone: it holds no secrets)."""
    data = (json.dumps(document, indent=1, sort_keys=False, default=str) + "\n").encode("utf-8")
    files.write_atomic(path, data, mode=0o644)


def read(path: Path) -> dict[str, Any]:
    """Return the status document at `path`. Raise StatusUnavailable with one line saying why."""
    state = files.read_small(path, limit=4 * 1024 * 1024)
    if not state.present:
        raise StatusUnavailable(f"no status file at {path}: the daemon is not running (or uses another "
                                "[agent] status_file)")
    if state.error or state.content is None:
        raise StatusUnavailable(f"cannot read {path}: {state.error}")
    try:
        document = json.loads(state.content.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise StatusUnavailable(f"{path} is not a status document (not JSON)") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise StatusUnavailable(f"{path} is not a status document of format {FORMAT}: upgrade "
                                "pretix-agentctl together with the daemon")
    return document


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False  # kill() would ask about a process group (0) or every process (-1)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, under another user (the daemon's)
    return True


@dataclass(frozen=True)
class Liveness:
    alive: bool
    reason: str
    age: float


def judge(document: dict[str, Any], now: float, alive: Any = pid_alive) -> Liveness:
    """Given a status document and the wall-clock time `now`, say whether its daemon is live."""
    try:
        written = float(document["written_at_unix"])
        stale_after = float(document["stale_after"])
        pid = document["pid"]
    except (KeyError, TypeError, ValueError):
        return Liveness(False, "the status file lacks written_at_unix, stale_after or pid", 0.0)
    # NaN compares false with everything (a NaN age is never stale), and kill(0 or -1, 0) asks about
    # a whole process group or every process, so such values must not pass for a live daemon.
    if not (math.isfinite(written) and math.isfinite(stale_after) and stale_after > 0):
        return Liveness(False, "the status file has no valid written_at_unix or stale_after", 0.0)
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return Liveness(False, f"the status file has no valid pid ({pid!r:.40})", 0.0)
    age = now - written
    if document.get("state") == "stopped":
        return Liveness(False, f"the daemon stopped {age:.0f} s ago", age)
    if not alive(pid):
        return Liveness(False, f"the daemon (pid {pid}) is not running; its last status is {age:.0f} s old",
                        age)
    if age > stale_after:
        return Liveness(False, f"the status is stale: written {age:.1f} s ago, expected within "
                        f"{stale_after:.0f} s (the daemon is hung or its clock jumped)", age)
    if age < -stale_after:
        return Liveness(False, f"the status is from the future ({-age:.0f} s): the wall clock was set back",
                        age)
    return Liveness(True, f"running (pid {pid}), status {max(age, 0.0):.1f} s old", age)
