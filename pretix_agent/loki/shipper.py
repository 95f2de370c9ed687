"""The shipper: one thread that batches lines from a source, pushes them, and never gives up.

A batch is sent when `[loki] batch_size` bytes of lines are in it or `batch_wait` has passed since
its first line. One batch is in flight at a time, so lines of a stream reach Loki in the order they
were logged, and the source is read only while the batch has room: with the journal as the source,
a Loki outage leaves the lines in the journal, not in our memory. What each answer from Loki means
is in `push.py`; the counters and the current state are in `status()`.

The thread beats `heartbeat` at least every `HEARTBEAT_EVERY` seconds while it waits or backs off,
and once per push, which lasts at most `[loki] timeout`; `heartbeat_deadline(section)` is the
silence after which it must be considered stuck.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..adapters.logs import get_logger
from ..config import LokiSection
from .entries import Entry, Labeler, Source, SourceContext
from .journal import JournalSource
from .journal_fields import access_problem as journal_access_problem
from .journal_fields import own_unit as detect_own_unit
from .memory import MemorySource
from .push import (
    Backoff,
    Outcome,
    PushClient,
    PushResult,
    describe,
    hold_delay,
    load_credentials,
    redacted_url,
    split_halves,
    truncate_line,
)

HEARTBEAT_EVERY = 1.0
# A line Loki (or its proxy) refuses with 413 even when sent alone is halved until it fits; below this
# it is dropped instead (and counted as rejected_413).
MIN_TRUNCATED_BYTES = 1024
# While pushes keep failing, say so at most this often (the first failure and the recovery always).
LOG_EVERY = 60.0


def heartbeat_deadline(section: LokiSection) -> float:
    """Return how long the shipper's thread may stay silent before it counts as stuck: a push may
    take `timeout` to connect and again to answer; the rest of the loop beats every second."""
    return 2 * section.timeout + 10 * HEARTBEAT_EVERY


def choose_source(under_journald: bool) -> tuple[Source, str | None]:
    """Return the source to ship from, and why it is not the journal (None if it is).

    Under journald with the journal readable: the journal (nothing lost across outages and
    restarts). Otherwise the in-memory queue, whose `tee` processor must then be put into the
    structlog chain.
    """
    if not under_journald:
        return MemorySource(), "not running under journald"
    problem = journal_access_problem()
    if problem is not None:
        return MemorySource(), problem
    return JournalSource(), None


def _iso(unix: float | None) -> str | None:
    return None if unix is None else datetime.fromtimestamp(unix, timezone.utc).isoformat(timespec="milliseconds")


class LokiShipper:
    """Ship lines from `source` to `[loki] url` from a thread of its own.

    `heartbeat` (optional) is called from the shipper's thread to prove progress; `client` and
    `rand` are for tests (a fake push client, a fixed jitter); `own_unit` is the agent's systemd
    unit, whose lines get `[loki] service_name` (default: the unit this process runs in, from its
    cgroup, else pretix-agent.service).
    """

    def __init__(self, section: LokiSection, node: str, state_dir: Path, source: Source, *,
                 heartbeat: Callable[[], None] | None = None, client: PushClient | None = None,
                 rand: Callable[[], float] = random.random, own_unit: str | None = None):
        self.section = section
        self.node = node
        self.state_dir = state_dir
        self.source = source
        self.heartbeat = heartbeat or (lambda: None)
        self.rand = rand
        self.labeler = Labeler(section, node, own_unit or detect_own_unit())
        self.client = client or PushClient(section.url, section.tenant, load_credentials(section), section.timeout,
                                           structured_metadata=section.structured_metadata)
        self.backoff = Backoff(section.min_backoff, section.max_backoff, rand)
        self.log = get_logger()
        self._thread = threading.Thread(target=self._run, name="loki-shipper", daemon=True)
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._flush_deadline = float("inf")
        self._send_now = threading.Event()  # request_flush(): send without waiting out batch_wait
        self._lock = threading.Lock()
        # The batch being filled, the batch in flight, and the one line that did not fit the last batch.
        self._batch: list[Entry] = []
        self._batch_bytes = 0
        self._batch_started = 0.0
        self._inflight: Sequence[Entry] = ()
        self._carry: Entry | None = None
        # Figures for status().
        self.state = "created"
        self.shipped_lines = 0
        self.shipped_bytes = 0
        self.pushes = 0
        self.failed_pushes = 0
        self.drops = {"rejected_400": 0, "rejected_413": 0, "truncated": 0, "unsent_at_stop": 0}
        self.last_success: float | None = None
        self.last_error: str | None = None
        self.last_error_at: float | None = None
        self.holding: str | None = None
        self.failing_since: float | None = None
        self.attempts_failed = 0
        self._last_failure_log = 0.0
        self.crashes = 0

    # -- control, from any thread ----------------------------------------------------------------

    def start(self) -> None:
        self.state = "starting"
        self._thread.start()

    def stop(self, flush_timeout: float) -> bool:
        """Ask the thread to send what it has, for at most `flush_timeout` seconds, and end.
        Return True if it ended in time. Journal lines not sent stay in the journal (the cursor
        was not advanced past them); lines of the in-memory source are counted as unsent_at_stop."""
        self._flush_deadline = time.monotonic() + max(0.0, flush_timeout)
        self._stop.set()
        self._wake.set()
        self.source.wakeup()
        if not self._thread.is_alive():
            return True
        self._thread.join(max(0.0, flush_timeout))
        if self._thread.is_alive():
            self.client.abort()  # a push begun before the stop may still wait for its answer
            self._thread.join(2 * HEARTBEAT_EVERY)
        return not self._thread.is_alive()

    def request_flush(self) -> None:
        """Send what is buffered now without waiting out `batch_wait` (before a shutdown, so the
        drain's lines reach Loki; under the journal nothing is lost either way). Never blocks."""
        self._send_now.set()
        self._wake.set()
        self.source.wakeup()

    def alive(self) -> bool:
        """True while the shipper's thread runs (it survives its own errors; this is False only
        before start, after stop, or if it died of something it could not handle)."""
        return self._thread.is_alive()

    def reload_credentials(self) -> None:
        """Read the password or token file again (after a reload); a held batch is retried at once."""
        self.client.update_credentials(load_credentials(self.section))
        self._wake.set()

    def status(self) -> dict[str, Any]:
        """Return the shipper's figures for the status document (a fresh dict, JSON-serialisable)."""
        with self._lock:
            buffered = [*self._inflight, *self._batch, *([self._carry] if self._carry else [])]
            source = self.source.status()
            oldest = min((entry.ts_ns for entry in buffered), default=None)
            read_buffer = int(source.get("read_buffer_bytes", 0) or 0)
            return {
                "url": redacted_url(self.client.url),
                "tenant": self.section.tenant or None,
                "source": self.source.kind,
                "state": self.state,
                "alive": self.alive(),
                "buffered_lines": len(buffered),
                "buffered_bytes": sum(entry.size for entry in buffered) + read_buffer,
                "backlog_lines": source.get("queued_lines"),  # None for the journal: it holds the backlog
                "oldest_unsent_age_seconds": None if oldest is None else round(
                    max(0.0, time.time() - oldest / 1e9), 3),
                "shipped_lines": self.shipped_lines,
                "shipped_bytes": self.shipped_bytes,
                "pushes": self.pushes,
                "failed_pushes": self.failed_pushes,
                "last_success_at": _iso(self.last_success),
                "last_success_unix": self.last_success,
                "last_error": self.last_error,
                "last_error_at": _iso(self.last_error_at),
                "failing_since": _iso(self.failing_since),
                "retry_attempts": self.attempts_failed,
                "backoff_seconds": round(self.backoff.current, 3),
                "holding": self.holding is not None,
                "hold_reason": self.holding,
                "drops": {**self.drops, "queue_full": int(source.get("queue_full", 0) or 0)},
                "internal_errors": self.crashes,
                "source_status": source,
            }

    # -- the thread ------------------------------------------------------------------------------

    def _run(self) -> None:
        self.heartbeat()
        self.log.info("loki.started", url=redacted_url(self.client.url), source=self.source.kind,
                      tenant=self.section.tenant or None, batch_wait=self.section.batch_wait,
                      batch_size=self.section.batch_size)
        started = False
        try:
            while True:
                try:
                    if not started:
                        self.source.start(SourceContext(self.section, self.labeler, self.state_dir))
                        started = True
                        self.state = "idle"
                    if not self._cycle():
                        break
                except Exception as error:  # a bug: keep shipping (the cursor makes a retry safe)
                    self.crashes += 1
                    self._note_error(f"internal error: {type(error).__name__}: {error}")
                    self.log.exception("loki.shipper_error", error=f"{type(error).__name__}: {error}")
                    if self._stop.is_set():
                        break
                    self._wait(self.backoff.next())
        finally:
            self._finish()

    def _finish(self) -> None:
        unsent = len(self._batch) + (1 if self._carry else 0)
        if unsent and self.source.kind != "journal":  # journal lines stay in the journal
            with self._lock:
                self.drops["unsent_at_stop"] += unsent
        try:
            self.source.close()
        finally:
            self.client.close()
            self.state = "stopped"
            self.log.info("loki.stopped", shipped_lines=self.shipped_lines, unsent_lines=unsent,
                          source=self.source.kind)

    def _cycle(self) -> bool:
        """Fill the batch, send it when due. Return False when the shipper should end."""
        self.heartbeat()
        if self._stop.is_set():
            return self._flush_step()
        if self._carry is not None and not self._batch:
            self._add([self._carry])
            self._carry = None
        send_now = self._send_now.is_set()
        if self._carry is None and self._batch_bytes < self.section.batch_size:
            wait = 0.0 if send_now else HEARTBEAT_EVERY
            if self._batch:
                wait = min(wait, self._batch_started + self.section.batch_wait - time.monotonic())
            self._add(self.source.read(self.section.batch_size - self._batch_bytes, max(0.0, wait)))
        if self._batch and (send_now or self._carry is not None or self._batch_bytes >= self.section.batch_size
                            or time.monotonic() >= self._batch_started + self.section.batch_wait):
            self._deliver()
        elif send_now and not self._batch:
            self._send_now.clear()  # nothing left to hurry
        return True

    def _flush_step(self) -> bool:
        """While stopping: send what is buffered and what the source has at once, until the deadline."""
        if time.monotonic() >= self._flush_deadline:
            return False
        if self._carry is not None and not self._batch:
            self._add([self._carry])
            self._carry = None
        if self._carry is None and self._batch_bytes < self.section.batch_size:
            self._add(self.source.read(self.section.batch_size - self._batch_bytes, 0.0))
        if not self._batch:
            return False
        return self._deliver()

    def _add(self, entries: list[Entry]) -> None:
        last = len(entries) - 1
        for index, entry in enumerate(entries):
            # A source returns at most the room asked for, except a first line longer than that: it
            # waits as the carry and starts the next batch.
            if index == last and self._batch and self._batch_bytes + entry.size > self.section.batch_size:
                self._carry = entry
                return
            with self._lock:
                if not self._batch:
                    self._batch_started = time.monotonic()
                self._batch.append(entry)
                self._batch_bytes += entry.size

    def _deliver(self) -> bool:
        with self._lock:
            batch, self._batch, self._batch_bytes = self._batch, [], 0
            self._inflight = batch
        sent = False
        try:
            sent = self._send(batch)
            return sent
        finally:
            with self._lock:
                self._inflight = ()
                if not sent:  # only when stopping: keep it counted as unsent
                    self._batch = batch + self._batch
                    self._batch_bytes = sum(entry.size for entry in self._batch)

    def _send(self, entries: Sequence[Entry]) -> bool:
        """Push `entries` until Loki has taken them (True) or the stop deadline passed (False)."""
        original = entries[0]
        keep = original.size
        while True:
            self.heartbeat()
            budget = self.section.timeout
            if self._stop.is_set():
                budget = min(budget, self._flush_deadline - time.monotonic())
                if budget <= 0:
                    return False
            self.state = "sending" if self.attempts_failed == 0 else self.state
            result = self.client.push(entries, budget)
            with self._lock:
                self.pushes += 1
            if result.outcome is Outcome.ACCEPTED:
                self._accepted(entries, result)
                return True
            if result.outcome is Outcome.REJECTED:
                self._rejected(entries, result)
                return True
            if result.outcome is Outcome.TOO_LARGE:
                if len(entries) > 1:
                    first, second = split_halves(entries)
                    self.log.debug("loki.batch_split", lines=len(entries), body_bytes=result.body_bytes)
                    return self._send(first) and self._send(second)
                keep //= 2
                if keep < MIN_TRUNCATED_BYTES:
                    self._drop_too_large(original, result)
                    return True
                if keep * 2 >= original.size:  # the first cut of this line
                    with self._lock:
                        self.drops["truncated"] += 1
                    self.log.warning("loki.line_truncated", bytes=original.size, labels=dict(original.labels),
                                     detail="Loki refused it as too large (HTTP 413) even alone")
                line = truncate_line(original.line, keep, original.size)
                entries = [original._replace(line=line, size=len(line.encode("utf-8", "replace")))]
                continue
            self._failed(result)
            if result.outcome is Outcome.HOLD:
                self.client.update_credentials(load_credentials(self.section))  # an operator may have fixed it
                self._wait(hold_delay(self.section, self.rand))
            else:
                delay = self.backoff.next()
                if result.retry_after is not None:
                    delay = max(delay, min(result.retry_after, self.section.max_backoff))
                self._wait(delay)

    def _wait(self, delay: float) -> None:
        """Sleep `delay` seconds (never past the stop deadline), beating; return early when woken."""
        end = time.monotonic() + delay
        while True:
            if self._stop.is_set():
                end = min(end, self._flush_deadline)
            left = end - time.monotonic()
            if left <= 0:
                return
            self.heartbeat()
            if self._wake.wait(min(left, HEARTBEAT_EVERY)):
                self._wake.clear()
                return

    # -- outcomes --------------------------------------------------------------------------------

    def _taken(self, entries: Sequence[Entry]) -> None:
        """Loki has these lines (or refused them for good): let the source move past them."""
        self.source.commit(entries)

    def _accepted(self, entries: Sequence[Entry], result: PushResult) -> None:
        self._taken(entries)
        now = time.time()
        with self._lock:
            self.shipped_lines += len(entries)
            self.shipped_bytes += sum(entry.size for entry in entries)
            self.last_success = now
            recovered = self.attempts_failed > 0 or self.holding is not None
            attempts, since = self.attempts_failed, self.failing_since
            self.attempts_failed = 0
            self.failing_since = None
            self.holding = None
            self.backoff.reset()
            self.state = "idle"
        if recovered:
            self.log.info("loki.push_recovered", failed_attempts=attempts,
                          outage_seconds=round(now - since, 3) if since else None)

    def _rejected(self, entries: Sequence[Entry], result: PushResult) -> None:
        self._taken(entries)
        with self._lock:
            self.drops["rejected_400"] += len(entries)
            self.attempts_failed = 0
            self.failing_since = None
            self.holding = None
            self.backoff.reset()
            self.state = "idle"
        self._note_error(describe(result))
        self.log.error("loki.batch_rejected", lines=len(entries), status=result.status, message=result.message,
                       detail="Loki refused the batch's content; it keeps the valid lines, the rest are dropped")

    def _drop_too_large(self, entry: Entry, result: PushResult) -> None:
        self._taken([entry])
        with self._lock:
            self.drops["rejected_413"] += 1
        self._note_error(describe(result))
        self.log.error("loki.line_dropped", bytes=entry.size, status=result.status,
                       detail=f"refused as too large even when cut to {MIN_TRUNCATED_BYTES} bytes")

    def _failed(self, result: PushResult) -> None:
        now = time.monotonic()
        error = describe(result)
        with self._lock:
            self.failed_pushes += 1
            first = self.attempts_failed == 0 and self.holding is None
            self.attempts_failed += 1
            if self.failing_since is None:
                self.failing_since = time.time()
            hold = result.outcome is Outcome.HOLD
            new_hold = hold and self.holding is None
            self.holding = error if hold else None
            self.state = "holding" if hold else "retrying"
        self._note_error(error)
        if hold and (new_hold or now - self._last_failure_log >= 10 * LOG_EVERY):
            self._last_failure_log = now
            self.log.error("loki.push_held", error=error, url=redacted_url(self.client.url),
                           detail="a configuration problem (credentials, tenant or URL): the batch is kept "
                                  "and retried slowly until it is fixed")
        elif not hold and first:
            self._last_failure_log = now
            self.log.warning("loki.push_failed", error=error, detail="retrying with backoff, without a limit")
        elif not hold and now - self._last_failure_log >= LOG_EVERY:
            self._last_failure_log = now
            self.log.warning("loki.push_still_failing", error=error, attempts=self.attempts_failed,
                             failing_since=_iso(self.failing_since))

    def _note_error(self, error: str) -> None:
        with self._lock:
            self.last_error = error
            self.last_error_at = time.time()
