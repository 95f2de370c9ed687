"""Act: carry out a decision's actions on the files and log its events."""

from __future__ import annotations

import secrets
from datetime import datetime
from typing import Any

from . import maintenance
from .adapters import files
from .config import MaintenanceSection
from .errors import FileWriteError


def apply_maintenance(section: MaintenanceSection, decision: maintenance.Decision, now: datetime, node: str,
                      log: Any) -> list[str]:
    """Carry out `decision.actions` in order; log its events if all
    succeeded. Return one line per failed action.

    A failed write is reported and the state on disk is left as it is: the next cycle decides
    again from what it finds, so nothing is lost and nothing is half-done.
    """
    failures: list[str] = []
    for action in decision.actions:
        try:
            if isinstance(action, maintenance.WriteMarker):
                files.write_atomic(section.marker, maintenance.encode_marker(action.cause, now))
            elif isinstance(action, maintenance.RemoveMarker):
                # A lock may have appeared since the observation (ctl lock racing a window's end):
                # look once more so its marker is not pulled away for a moment.
                if files.read_small(section.lock).present:
                    continue
                files.remove(section.marker)
            elif isinstance(action, maintenance.WriteLock):
                content = maintenance.encode_lock(secrets.token_hex(8), "pretix-agent", now, action.reason, node)
                files.create_exclusive(section.lock, content)
        except FileWriteError as error:
            failures.append(str(error))
    if failures:
        # The state did not change as decided: announcing the transition would be a lie.
        for failure in failures:
            log.error("maintenance.apply_failed", error=failure)
        return failures
    for event in decision.events:
        getattr(log, event.level)(event.name, **event.fields)
    return failures
