"""The lock and the marker on disk: read into an observation, and a decision carried out on them."""

from __future__ import annotations

import secrets
from datetime import datetime
from pathlib import Path

from ..adapters import files
from ..config import MaintenanceSection
from ..errors import FileWriteError
from .decide import (
    Decision,
    LockInfo,
    Observation,
    RemoveMarker,
    WriteLock,
    WriteMarker,
    encode_lock,
    encode_marker,
    parse_lock,
    parse_marker,
)


def read_lock(path: Path) -> LockInfo:
    """Read a lock-format file (the lock, a drain request): who, when, why. Never raises: unreadable
    content is part of what is observed (and still counts as present)."""
    state = files.read_small(path)
    return parse_lock(state.content, state.error) if state.present else LockInfo(False)


def observe(section: MaintenanceSection, now: datetime) -> Observation:
    """Read the lock and the marker; never raises."""
    marker = files.read_small(section.marker)
    return Observation(now=now, lock=read_lock(section.lock), marker=parse_marker(marker.present, marker.content))


def apply(section: MaintenanceSection, decision: Decision, now: datetime, node: str) -> list[str]:
    """Carry out `decision.actions` in order. Return one line per failed action.

    A failed write is reported and the state on disk is left as it is: the next cycle decides
    again from what it finds, so nothing is lost and nothing is half-done.
    """
    failures: list[str] = []
    for action in decision.actions:
        try:
            if isinstance(action, WriteMarker):
                files.write_atomic(section.marker, encode_marker(action.cause, now))
            elif isinstance(action, RemoveMarker):
                # A lock may have appeared since the observation (ctl lock racing a window's end):
                # look once more so its marker is not pulled away for a moment.
                if files.read_small(section.lock).present:
                    continue
                files.remove(section.marker)
            elif isinstance(action, WriteLock):
                files.create_exclusive(section.lock, encode_lock(secrets.token_hex(8), "pretix-agent", now,
                                                                  action.reason, node))
        except FileWriteError as error:
            failures.append(str(error))
    return failures
