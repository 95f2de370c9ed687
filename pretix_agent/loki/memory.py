"""Without systemd (a terminal, the demo): the daemon's own events through a bounded queue.

`MemorySource.tee` is a structlog processor: put it in the processor chain after `redact` and
before the renderer, and every event logged is also queued, rendered as the journal would store it
(`maintenance.enabled why=lock ...`, without the `<N>` priority prefix). It never blocks the caller:
when the queue is full (Loki down for a while) the new line is dropped and counted as
`queue_full`. There is no journal here to buffer an outage; the queue's bound is what we keep.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Sequence
from typing import Any

from ..adapters.logs import PRIORITIES, render_journal
from .entries import Entry, Labels, Metadata, SourceContext, level_of, line_metadata, line_size

DEFAULT_MAX_LINES = 10_000
DEFAULT_MAX_BYTES = 16 * 1024 * 1024


class MemorySource:
    kind = "memory"

    def __init__(self, max_lines: int = DEFAULT_MAX_LINES, max_bytes: int = DEFAULT_MAX_BYTES):
        self.max_lines = max_lines
        self.max_bytes = max_bytes
        # (ts_ns, line, size, metadata): labels are added when the shipper reads, since they depend on config.
        self._queue: deque[tuple[int, str, int, Metadata]] = deque()
        self._bytes = 0
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._last_ns = 0
        self.queue_full = 0
        self.queued_total = 0
        self._labels: Labels = ()

    # -- the logging side ------------------------------------------------------------------------

    def tee(self, _logger: Any, method: str, event: dict[str, Any]) -> dict[str, Any]:
        """structlog processor: queue a copy of the event as one line; return the event unchanged."""
        try:
            line = render_journal(_logger, method, dict(event)).split(">", 1)[1]
            metadata = line_metadata(level_of(PRIORITIES.get(method, 6)), str(event.get("event", "")))
        except Exception:  # a logging call must never fail because of shipping
            return event
        self.put(line, metadata=metadata)
        return event

    def put(self, line: str, ts_ns: int | None = None, metadata: Metadata = ()) -> bool:
        """Queue one line (with its structured metadata); return False (and count it) if the queue is full."""
        size = line_size(line)
        with self._lock:
            if len(self._queue) >= self.max_lines or self._bytes + size > self.max_bytes:
                self.queue_full += 1
                return False
            now = time.time_ns() if ts_ns is None else ts_ns
            # Strictly increasing: two identical lines in the same nanosecond would otherwise be
            # one line to Loki, which drops exact duplicates.
            if now <= self._last_ns:
                now = self._last_ns + 1
            self._last_ns = now
            self._queue.append((now, line, size, metadata))
            self._bytes += size
            self.queued_total += 1
        self._ready.set()
        return True

    # -- the shipper side ------------------------------------------------------------------------

    def start(self, context: SourceContext) -> None:
        self._labels = context.labeler.own()

    def read(self, max_bytes: int, timeout: float) -> list[Entry]:
        if not self._queue and timeout > 0:
            self._ready.wait(timeout)
        out: list[Entry] = []
        taken = 0
        with self._lock:
            while self._queue and (not out or taken + self._queue[0][2] <= max_bytes):
                ts_ns, line, size, metadata = self._queue.popleft()
                self._bytes -= size
                taken += size
                out.append(Entry(self._labels, ts_ns, line, size, None, metadata))
            if not self._queue:
                self._ready.clear()
        return out

    def wakeup(self) -> None:
        self._ready.set()

    def commit(self, entries: Sequence[Entry]) -> None:
        """Nothing to persist: without a journal, lines taken from the queue live only in the batch."""

    def close(self) -> None:
        self._ready.set()

    def status(self) -> dict[str, Any]:
        with self._lock:
            return {"kind": self.kind, "queued_lines": len(self._queue), "queued_bytes": self._bytes,
                    "max_lines": self.max_lines, "max_bytes": self.max_bytes, "queue_full": self.queue_full}
