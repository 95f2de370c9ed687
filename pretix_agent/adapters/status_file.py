"""The status file: the daemon writes it atomically, pretix-agentctl reads it back, checked."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .. import shapes
from ..errors import StatusUnavailable
from ..status import FORMAT, Document, parse
from . import files

READ_LIMIT = 4 * 1024 * 1024


def publish(path: Path, document: Document) -> None:
    """Write the status atomically (readable by everyone: it holds no secrets)."""
    data = (json.dumps(shapes.encode(document), separators=(",", ":"), default=str) + "\n").encode("utf-8")
    files.write_atomic(path, data, mode=0o644, durable=False)


def read(path: Path) -> dict[str, Any]:
    """Return the status document at `path` as parsed JSON of the right format. Raise
    StatusUnavailable with one line saying why."""
    state = files.read_small(path, limit=READ_LIMIT)
    if not state.present:
        raise StatusUnavailable(f"no status file at {path}: the daemon is not running (or uses another "
                                "[agent] status_file)")
    if state.error or state.content is None:
        raise StatusUnavailable(f"cannot read {path}: {state.error}")
    try:
        document = json.loads(state.content.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise StatusUnavailable(f"{path} is not a status document (not JSON)") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT or isinstance(document.get("format"), bool):
        raise StatusUnavailable(f"{path} is not a status document of format {FORMAT}: upgrade "
                                "pretix-agentctl together with the daemon")
    return document


def load(path: Path) -> Document:
    """Read and check the status document at `path`. Raise StatusUnavailable with one line."""
    return parse(read(path), str(path))
