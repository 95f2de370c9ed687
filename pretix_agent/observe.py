"""Observe: one look at everything a cycle decides on, gathered into immutable values."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from . import maintenance
from .adapters import files
from .config import MaintenanceSection


def drain_file(path: Path) -> maintenance.LockInfo:
    """Read the drain request (`pretix-agentctl drain`): who, when, why, like a lock."""
    state = files.read_small(path)
    return maintenance.parse_lock(state.content, state.error) if state.present else maintenance.LockInfo(False)


def maintenance_files(section: MaintenanceSection, now: datetime) -> maintenance.Observation:
    """Read the lock and the marker; never raises (unreadable content is part of the observation)."""
    lock_file = files.read_small(section.lock)
    if lock_file.present:
        lock = maintenance.parse_lock(lock_file.content, lock_file.error)
    else:
        lock = maintenance.LockInfo(False)
    marker_file = files.read_small(section.marker)
    marker = maintenance.parse_marker(marker_file.present, marker_file.content)
    return maintenance.Observation(now=now, lock=lock, marker=marker)
