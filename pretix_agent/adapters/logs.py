"""Logging through structlog: one event per line, with a stable event name and its fields.

Three renderings of the same event:
- journal: `<4>maintenance.marker_restored why=lock path=...` (the `<N>` prefix is the syslog
  priority journald reads from a stream, so `journalctl -p warning` works);
- console: `16:09:12 warning maintenance.marker_restored why=lock ...` for a terminal;
- json: one JSON object per line.
Secrets never reach any of them: `redact` runs before every renderer.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
from typing import Any, TextIO

import structlog

from ..redact import redact_text

PRIORITIES = {"debug": 7, "info": 6, "warning": 4, "warn": 4, "error": 3, "critical": 2, "exception": 3}
LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}

# Matched against whole words of a key (split at "_", "-", ".", camelCase), so `db_password`, `auth_token` and
# `Authorization` are hidden but `passing` (a check state count), `bypass` or `compass` are not.
_SECRET_KEY = re.compile(r"(?:^|[_.-])(?:(?:pg)?pass(?:word|wd)?|secrets?|tokens?|authorization|credentials?)"
                         r"(?:$|[_.-])", re.IGNORECASE)
def _secret_key(key: Any) -> bool:
    # camelCase keys (nested JSON, HTTP headers) count as words too: accessToken, dbPassword.
    return isinstance(key, str) and bool(_SECRET_KEY.search(re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", key)))


def _redact_value(key: Any, value: Any) -> Any:
    if _secret_key(key) and value not in (None, ""):
        return "***"
    if isinstance(value, str):
        return redact_text(value)
    # Renderers print nested values as JSON, so a DSN inside a dict or list must be hidden too.
    if isinstance(value, dict):
        return {k: _redact_value(k, v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redact_value(None, item) for item in value]
    return value


def redact(_logger: Any, _method: str, event: dict[str, Any]) -> dict[str, Any]:
    """structlog processor: hide values of secret-named keys and passwords inside strings."""
    for key, value in list(event.items()):
        event[key] = _redact_value(None if key == "event" else key, value)
    return event


def _format_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "-"
    if isinstance(value, float):
        # Six decimals, not six significant digits: a Unix time must not become 1.76383e+09.
        return f"{value:.6f}".rstrip("0").rstrip(".") if value == value and abs(value) != float("inf") else str(value)
    text = value if isinstance(value, str) else json.dumps(value, default=str, ensure_ascii=False,
                                                            separators=(",", ":"))
    # Any control character is quoted (and so escaped): a raw newline or NUL would split the event
    # into two journal lines, a raw ESC would reach the operator's terminal.
    if text == "" or any(c in ' "=\\' or c < " " or c == "\x7f" for c in text):
        return json.dumps(text, ensure_ascii=False)
    return text


def _event_name(name: Any) -> str:
    text = str(name)
    return json.dumps(text, ensure_ascii=False) if any(c < " " or c == "\x7f" for c in text) else text


def key_values(event: dict[str, Any]) -> str:
    return " ".join(f"{key}={_format_value(value)}" for key, value in event.items())


def render_journal(_logger: Any, method: str, event: dict[str, Any]) -> str:
    name = _event_name(event.pop("event", ""))
    event.pop("level", None)
    event.pop("timestamp", None)  # journald stamps each line itself
    rest = key_values(event)
    return f"<{PRIORITIES.get(method, 6)}>{name}" + (f" {rest}" if rest else "")


class NativeJournal:
    """Final processor: send the event with its fields over journald's native protocol; if that
    fails, fall back to the `<N>`-prefixed line on the stream."""

    def __init__(self, sender: Any):
        self.sender = sender

    def __call__(self, logger: Any, method: str, event: dict[str, Any]) -> str:
        name = _event_name(event.get("event", ""))
        fields = {k: v for k, v in event.items() if k not in ("event", "level", "timestamp")}
        line = render_journal(logger, method, event)
        message = line[line.index(">") + 1:]
        if self.sender.send(message, PRIORITIES.get(method, 6), name, fields):
            raise structlog.DropEvent
        return line


def render_console(_logger: Any, method: str, event: dict[str, Any]) -> str:
    name = _event_name(event.pop("event", ""))
    event.pop("level", None)
    stamp = event.pop("timestamp", None) or time.strftime("%H:%M:%S")
    rest = key_values(event)
    return f"{stamp} {method:<7} {name}" + (f" {rest}" if rest else "")


def render_json(_logger: Any, method: str, event: dict[str, Any]) -> str:
    document = {"ts": event.pop("timestamp", None), "level": method, "event": event.pop("event", "")}
    document.update(event)
    return json.dumps(document, default=str, ensure_ascii=False, separators=(",", ":"))


def under_journald(stream: TextIO) -> bool:
    """Return True if `stream` is connected to journald (systemd sets JOURNAL_STREAM=dev:ino)."""
    value = os.environ.get("JOURNAL_STREAM", "")
    try:
        device, inode = (int(part) for part in value.split(":"))
        stat = os.fstat(stream.fileno())
    except (ValueError, OSError, AttributeError):
        return False
    return (stat.st_dev, stat.st_ino) == (device, inode)


def configure(level: str = "info", fmt: str = "auto", stream: TextIO | None = None,
              tee: Any = None, native_journal: bool = True) -> str:
    """Set up structlog for the whole process; return the format chosen ("journal", ...).

    `tee` is a processor that gets a copy of every event after redaction (the Loki shipper's
    in-memory queue when there is no journal to ship from). With the journal format and journald's
    socket present, events go over the native protocol with their fields (`native_journal`)."""
    stream = stream or sys.stderr
    if fmt == "auto":
        fmt = "journal" if under_journald(stream) else "console"
    renderer: Any = {"journal": render_journal, "console": render_console, "json": render_json}[fmt]
    if fmt == "journal" and native_journal:
        from .journal import JournalSender

        sender = JournalSender()
        if sender.available():
            renderer = NativeJournal(sender)
    processors: list[Any] = [structlog.processors.format_exc_info, redact]
    if tee is not None:
        processors.append(tee)
    if fmt == "console":
        processors.insert(0, structlog.processors.TimeStamper(fmt="%H:%M:%S", utc=False))
    elif fmt == "json":
        processors.insert(0, structlog.processors.TimeStamper(fmt="iso", utc=True))
    processors.append(renderer)
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )
    return fmt


def get_logger() -> Any:
    return structlog.get_logger()
