"""A log line on its way to Loki, the labels it carries, and the interface of a source of lines.

Labels are few and static so that Loki keeps few streams: `host` (the node), `service_name`,
`env` (when set) and `unit` (the systemd unit, journal lines only). Nothing that varies per line
(level, request id, pid) becomes a label: that would create a stream per value. What varies per
line and is worth filtering on travels as structured metadata beside the line (Loki 3): its
`level` (the agent's own, or the journal's PRIORITY for other units) and, for the agent's lines,
its `event` name, so `{service_name="pretix-agent"} | level="error"` and
`| event="maintenance.enabled"` work without parsing the text, and Grafana colours lines by level.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, Protocol

from ..config import LokiSection

# A stream's labels: sorted (name, value) pairs, hashable, so it can key a dict of streams.
Labels = tuple[tuple[str, str], ...]
# A line's structured metadata: (name, value) pairs, names valid as label names.
Metadata = tuple[tuple[str, str], ...]

# Loki (like Prometheus) accepts label names matching this; anything else is a 400 for the stream.
LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")

AGENT_UNIT = "pretix-agent.service"


class Entry(NamedTuple):
    """One line: its stream's labels, its time in Unix nanoseconds, the text, and where it came from.

    `cursor` is the journal cursor of the entry (None for lines that are not in the journal);
    `size` is the line's length in UTF-8 bytes, what `[loki] batch_size` counts; `metadata` is its
    structured metadata (level, event).
    """

    labels: Labels
    ts_ns: int
    line: str
    size: int
    cursor: str | None = None
    metadata: Metadata = ()


def line_size(line: str) -> int:
    """Return the length of `line` in UTF-8 bytes (cheap for the common all-ASCII line)."""
    return len(line) if line.isascii() else len(line.encode("utf-8", "replace"))


def make_entry(labels: Labels, ts_ns: int, line: str, cursor: str | None = None, metadata: Metadata = ()) -> Entry:
    return Entry(labels, ts_ns, line, line_size(line), cursor, metadata)


# syslog priorities (the journal's PRIORITY) as the level names Grafana knows (it shows notice as info).
LEVELS = {0: "critical", 1: "critical", 2: "critical", 3: "error", 4: "warning", 5: "notice", 6: "info", 7: "debug"}
# The agent's event names: "maintenance.enabled", "check.failing", "loki.push_failed".
EVENT_NAME = re.compile(r"[a-z][a-z0-9_]*(?:\.[a-z0-9_]+)+")


def level_of(priority: Any) -> str | None:
    """Given a syslog priority (0..7, as a number or the journal's text), return its level name, or None."""
    try:
        return LEVELS.get(int(priority))
    except (TypeError, ValueError):
        return None


def line_metadata(level: str | None, event: str | None = None) -> Metadata:
    """The structured metadata of one line: its level and (the agent's lines only) its event name, when
    known; an event that does not look like one of the agent's names is left out."""
    pairs = []
    if level:
        pairs.append(("level", level))
    if event and EVENT_NAME.fullmatch(event):
        pairs.append(("event", event))
    return tuple(pairs)


def check_labels(labels: Labels) -> None:
    """Raise ValueError if Loki would reject this label set (no labels, or a name it refuses)."""
    if not labels:
        raise ValueError("a stream needs at least one label")
    for name, value in labels:
        if not LABEL_NAME.fullmatch(name):
            raise ValueError(f'label name "{name}" must match [a-zA-Z_][a-zA-Z0-9_]*')
        if not isinstance(value, str):
            raise ValueError(f'label "{name}" must have a string value')


def service_name_of(unit: str) -> str:
    """Given "pretix-web.service", return "pretix-web"; other unit types keep their suffix."""
    return unit[: -len(".service")] if unit.endswith(".service") else unit


def normalize_unit(unit: str) -> str:
    """Given "pretix-web" or "pretix-web.service", return "pretix-web.service", as `journalctl -u` does."""
    return unit if "." in unit.rsplit("@", 1)[-1] else unit + ".service"


class Labeler:
    """Builds (and shares) the label sets of one node's streams.

    The agent's own unit gets `[loki] service_name`; another unit gets its name without
    ".service"; lines without a unit (the in-memory source) get no `unit` label. Each label set
    is built once and reused, so a million buffered lines do not hold a million label tuples.
    """

    def __init__(self, section: LokiSection, node: str, own_unit: str = AGENT_UNIT):
        self.section = section
        self.node = node
        self.own_unit = normalize_unit(own_unit)
        self._cache: dict[str | None, Labels] = {}

    def for_unit(self, unit: str | None) -> Labels:
        labels = self._cache.get(unit)
        if labels is None:
            if unit is None or unit == self.own_unit:
                service = self.section.service_name
            else:
                service = service_name_of(unit)
            pairs = {"host": self.node, "service_name": service}
            if self.section.env:
                pairs["env"] = self.section.env
            if unit is not None:
                pairs["unit"] = unit
            labels = tuple(sorted(pairs.items()))
            check_labels(labels)
            self._cache[unit] = labels
        return labels

    def own(self) -> Labels:
        """The labels of the agent's own lines when they do not come from the journal."""
        return self.for_unit(None)


@dataclass(frozen=True)
class SourceContext:
    """What a source learns when the shipper starts it."""

    section: LokiSection
    labeler: Labeler
    state_dir: Path


class Source(Protocol):
    """Where lines come from. Only the shipper's thread calls these, one at a time."""

    kind: str

    def start(self, context: SourceContext) -> None:
        """Begin reading (for the journal: from the persisted cursor)."""

    def read(self, max_bytes: int, timeout: float) -> list[Entry]:
        """Return the next lines in order, at most `max_bytes` of them (but at least one line if any
        is available, however long), waiting at most `timeout` seconds for the first. Lines not
        returned stay in the source: this is the backpressure that bounds memory."""

    def wakeup(self) -> None:
        """From another thread: make a `read` that is waiting return now."""

    def commit(self, entries: Sequence[Entry]) -> None:
        """Loki has taken (accepted or definitively refused) every line up to the last of `entries`."""

    def close(self) -> None:
        """Stop reading and release the source's resources."""

    def status(self) -> dict[str, Any]:
        """Source-specific figures for the status document (buffered bytes, drops, cursor)."""
