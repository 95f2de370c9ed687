"""The systemd journal as the source of lines and as the buffer during a Loki outage.

`journalctl --output=json --follow` runs as a child process, filtered with `-u` to the agent's
own unit and `[loki] units`. We read its output only while the shipper has room in its batch:
when Loki is down, the pipe fills, journalctl waits, and the lines stay in the journal, so memory
is bounded however long the outage lasts. The cursor of the last line of a batch is written to
`state_dir/loki.cursor` (atomically) only after Loki accepted (or definitively refused) the batch;
after a restart we resume with `--after-cursor`, so no line is lost, and a batch that was sent but
not yet recorded is sent again with identical labels, timestamps and text, which Loki drops as exact
duplicates. With no cursor yet (first start) we begin at the agent process's start time (`--since`),
so the start-up events are shipped but not the unit's whole history.

Not python3-systemd: it is not among the Debian packages the agent depends on, and journalctl, which
every systemd host has, gives us the same entries, a separate process to absorb a slow journal, and
a cursor we can pass back.

Three journalctl details matter:
- `--follow` without `--merge` silently adds a filter on the newest boot (systemd 252), so lines of
  the previous boot after our cursor (a Loki outage across a reboot) would never be read. `--merge`
  lifts it; it also opens journals of other machines (containers' linked journals), so we keep only
  entries whose `_MACHINE_ID` is ours.
- `--follow` with a cursor but without `--lines=all` shows only the last 10 lines after the cursor.
- `-o json` replaces fields over 4096 bytes with null unless `--all` is given; we give it and cap
  an entry ourselves (`MAX_JSON_LINE`) to keep memory bounded.
"""

from __future__ import annotations

import json
import os
import selectors
import subprocess
import threading
import time
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..adapters.files import write_atomic
from ..adapters.logs import get_logger
from ..errors import FileWriteError
from .entries import (
    Entry,
    Labeler,
    SourceContext,
    line_size,
    normalize_unit,
)
from .journal_fields import (
    FIELDS,
    LOCAL,
    OVERSIZED,
    field_text,
    journal_metadata,
    journalctl_command,
    local_machine_id,
    message_prefix,
    process_start_time,
    read_cursor,
    timestamp_ns,
    unit_of,
)
from .push import truncate_line

CURSOR_FILE = "loki.cursor"
READ_CHUNK = 64 * 1024
# A journal entry whose JSON is longer is not held whole: its MESSAGE is cut to MAX_KEPT_MESSAGE.
MAX_JSON_LINE = 1024 * 1024
MAX_KEPT_MESSAGE = 64 * 1024
STDERR_LINES_LOGGED = 20
ONE_SHOT_TIMEOUT = 10.0
# A journalctl that ends within this many seconds without any output "failed at once" (bad arguments,
# a missing journal): its restarts back off up to MAX_RESTART_DELAY.
FAILED_AT_ONCE = 5.0
MAX_RESTART_DELAY = 60.0
class JournalSource:
    """Lines of the agent's unit and `[loki] units` from the journal, via `journalctl --follow`.

    `journalctl` and `extra_args` let tests read journal files written without journald
    (`extra_args=("--directory", DIR)`); `machine_id` is whose entries to keep (LOCAL: this host's,
    None: any); `since` is where to begin without a cursor (default: this process's start time).
    """

    kind = "journal"

    def __init__(self, *, journalctl: Sequence[str] = ("journalctl",), extra_args: Sequence[str] = (),
                 own_unit_name: str | None = None, machine_id: str | None = LOCAL, since: float | None = None,
                 restart_delay: float = 1.0):
        self.journalctl = tuple(journalctl)
        self.extra_args = tuple(extra_args)
        self.own_unit_name = own_unit_name
        self.machine_id_setting = machine_id
        self.since = since
        self.restart_delay = restart_delay
        self.log = get_logger()
        self.machine_id: str | None = None
        self.labeler: Labeler | None = None
        self.units: tuple[str, ...] = ()
        self.unit_set: frozenset[str] = frozenset()
        self.cursor_path: Path | None = None
        self.committed: str | None = None
        self.position: str | None = None  # cursor of the last entry read (sent or not)
        self.process: subprocess.Popen[bytes] | None = None
        self.selector: selectors.BaseSelector | None = None
        self._lines: deque[bytes | bytearray] = deque()
        self._held = 0  # bytes in _lines and _partial, kept as a number so status() can read it from any thread
        self._partial = bytearray()
        self._discarding: bytearray | None = None  # head of an oversized entry being skipped
        self._discarded = 0
        self._oversized: deque[tuple[bytes, int]] = deque()  # (head, size) of each skipped entry
        self._pending: Entry | None = None
        self._eof = False
        self._stderr = bytearray()
        self._stderr_logged = 0
        self._said = ""
        self._restart_at = 0.0
        self._restart_delay_now = 0.0
        self._spawned_at = 0.0
        self._got_output = False
        self._cursor_error: str | None = None
        self.restarts = 0
        self.oversized = 0
        self.last_exit: str | None = None
        self._wake_pipe: tuple[int, int] | None = None
        self._wake_lock = threading.Lock()  # wakeup() comes from another thread than close()
        self._woken = False

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self, context: SourceContext) -> None:
        self.labeler = context.labeler
        own = normalize_unit(self.own_unit_name or context.labeler.own_unit)
        self.units = tuple(dict.fromkeys([own, *(normalize_unit(u) for u in context.section.units)]))
        self.unit_set = frozenset(self.units)
        self.machine_id = local_machine_id() if self.machine_id_setting == LOCAL else self.machine_id_setting
        self.cursor_path = context.state_dir / CURSOR_FILE
        self.committed = read_cursor(self.cursor_path)
        self.position = self.committed
        if self.since is None:
            self.since = process_start_time()
        with self._wake_lock:
            if self._wake_pipe is None:
                self._wake_pipe = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._spawn()

    def command(self) -> list[str]:
        return journalctl_command(self.journalctl, self.units, self.extra_args, self.position, self.since)

    def _spawn(self) -> None:
        self._lines.clear()
        self._partial.clear()
        self._held = 0
        self._discarding = None
        self._oversized.clear()
        self._eof = False
        self._stderr.clear()
        self._stderr_logged = 0
        self._said = ""
        environment = {**os.environ, "SYSTEMD_COLORS": "0", "SYSTEMD_PAGER": "", "LC_ALL": "C.UTF-8"}
        try:
            self.process = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                            stderr=subprocess.PIPE, env=environment, close_fds=True)
        except OSError as error:
            self.process = None
            problem = f"cannot run {self.journalctl[0]}: {error.strerror or error}"
            if problem != self.last_exit:
                self.log.error("loki.journalctl_failed", error=problem)
            self.last_exit = problem
            self._schedule_restart(failed_at_once=True)
            return
        self._spawned_at = time.monotonic()
        self._got_output = False
        assert self.process.stdout is not None and self.process.stderr is not None
        os.set_blocking(self.process.stdout.fileno(), False)
        os.set_blocking(self.process.stderr.fileno(), False)
        if self.selector is not None:
            self.selector.close()
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.process.stdout, selectors.EVENT_READ, "stdout")
        self.selector.register(self.process.stderr, selectors.EVENT_READ, "stderr")
        if self._wake_pipe is not None:
            self.selector.register(self._wake_pipe[0], selectors.EVENT_READ, "wake")

    def wakeup(self) -> None:
        with self._wake_lock:
            if self._wake_pipe is not None:
                try:
                    os.write(self._wake_pipe[1], b"w")
                except BlockingIOError:  # full: a wake-up is already pending
                    pass

    def close(self) -> None:
        self._stop_process()
        if self.selector is not None:
            self.selector.close()
            self.selector = None
        with self._wake_lock:
            pipe, self._wake_pipe = self._wake_pipe, None
        if pipe is not None:
            os.close(pipe[0])
            os.close(pipe[1])

    def _stop_process(self) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=2)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()

    # -- reading ---------------------------------------------------------------------------------

    def read(self, max_bytes: int, timeout: float) -> list[Entry]:
        deadline = time.monotonic() + max(0.0, timeout)
        out: list[Entry] = []
        taken = 0
        while True:
            while True:
                entry = self._next_entry()
                if entry is None:
                    break
                if out and taken + entry.size > max_bytes:
                    self._pending = entry
                    return out
                out.append(entry)
                taken += entry.size
                if taken >= max_bytes:
                    return out
            wait = 0.0 if out else deadline - time.monotonic()
            if not self._fill(max(0.0, wait)) and (out or self._woken or time.monotonic() >= deadline):
                self._woken = False
                return out

    def _next_entry(self) -> Entry | None:
        pending, self._pending = self._pending, None
        if pending is not None:
            return pending
        while self._lines:
            line = self._lines.popleft()
            self._held -= len(line)
            entry = self._parse(line)
            if entry is not None:
                return entry
        return None

    def _fill(self, wait: float) -> bool:
        """Read one chunk of journalctl's output into the line queue; False if none came in `wait`."""
        if self._lines:
            return True
        if self.process is None or self._eof:
            self._reap()
            if self.process is None and time.monotonic() >= self._restart_at:
                self._spawn()
            if self.process is None or self._eof:
                time.sleep(min(wait, 0.1))  # bounded by the caller's wait; the restart delay is ahead
                return False
        assert self.selector is not None and self.process is not None
        deadline = time.monotonic() + wait
        while True:
            events = self.selector.select(max(0.0, deadline - time.monotonic()))
            got = False
            for key, _mask in events:
                if key.data == "stderr":
                    self._read_stderr()
                    continue
                if key.data == "wake":
                    try:
                        os.read(key.fd, 512)
                    except BlockingIOError:
                        pass
                    self._woken = True
                    continue
                try:
                    chunk = os.read(key.fd, READ_CHUNK)
                except BlockingIOError:
                    continue
                if not chunk:
                    self._eof = True
                    self.selector.unregister(key.fileobj)
                    return False
                self._take(chunk)
                self._got_output = got = True
            if got and self._lines:
                return True
            if self._woken or time.monotonic() >= deadline:
                return bool(self._lines)

    def _take(self, chunk: bytes) -> None:
        if self._discarding is not None:
            newline = chunk.find(b"\n")
            if newline < 0:
                self._discarded += len(chunk)
                return
            self._discarded += newline
            self._lines.append(OVERSIZED)  # a placeholder, so the entry keeps its place in the order
            self._oversized.append((bytes(self._discarding), self._discarded))
            self._discarding = None
            chunk = chunk[newline + 1:]
        self._partial += chunk
        if b"\n" in chunk:
            *complete, rest = self._partial.split(b"\n")
            complete = [line for line in complete if line]
            self._lines.extend(complete)
            self._partial = bytearray(rest)
        if len(self._partial) > MAX_JSON_LINE:
            self._discarding = self._partial[:MAX_KEPT_MESSAGE + 4096]
            self._discarded = len(self._partial)
            self._partial = bytearray()
        self._held = sum(len(line) for line in self._lines) + len(self._partial) + len(self._discarding or b"")

    def _read_stderr(self) -> None:
        assert self.process is not None and self.process.stderr is not None
        try:
            data = os.read(self.process.stderr.fileno(), 4096)
        except BlockingIOError:
            return
        if not data:
            assert self.selector is not None
            try:
                self.selector.unregister(self.process.stderr)
            except (KeyError, ValueError):
                pass
            return
        self._stderr_text(data, final=False)

    def _stderr_text(self, data: bytes, final: bool) -> None:
        """Log what journalctl says on stderr (permission hints, a bad cursor), a few lines per run."""
        self._stderr += data
        *lines, rest = self._stderr.split(b"\n")
        if final:
            lines.append(rest)
            rest = bytearray()
        self._stderr = bytearray(rest[-4096:])
        for line in lines:
            text = line.decode("utf-8", "replace").strip()
            if text:
                self._said = text
                if self._stderr_logged < STDERR_LINES_LOGGED:
                    self._stderr_logged += 1
                    self.log.warning("loki.journalctl_said", message=text)

    def _reap(self) -> None:
        """After journalctl's output ended: note why, schedule a restart from where we are."""
        process = self.process
        if process is None:
            return
        try:
            code = process.wait(timeout=2)
        except subprocess.TimeoutExpired:
            process.kill()
            code = process.wait()
        if process.stderr is not None:
            try:
                os.set_blocking(process.stderr.fileno(), True)
                self._stderr_text(process.stderr.read(64 * 1024), final=True)
            except (OSError, ValueError):
                pass
        said = self._said
        self._stop_process()
        self.restarts += 1
        self.last_exit = f"journalctl exited with status {code}" + (f": {said}" if said else "")
        if code != 0 and "cursor" in said.lower() and self.position is not None and self.position == self.committed:
            # Our cursor is unusable (a journal that was wiped, a file edited by hand): start over
            # from `since` rather than never shipping again.
            self.log.error("loki.cursor_unusable", cursor=self.position, detail=said,
                           action="reading from the agent's start time instead")
            self.position = self.committed = None
        failed_at_once = not self._got_output and time.monotonic() - self._spawned_at < FAILED_AT_ONCE
        delay = self._schedule_restart(failed_at_once)
        # Repeated failures at once are logged the first times and then once per MAX_RESTART_DELAY.
        if not failed_at_once or delay <= 2 * self.restart_delay or delay >= MAX_RESTART_DELAY:
            self.log.warning("loki.journalctl_exited", status=code, detail=said or None,
                             restart_in=round(delay, 3), after_cursor=self.position)

    def _schedule_restart(self, failed_at_once: bool) -> float:
        """Restart after restart_delay; after each start that failed at once, wait twice as long
        (up to MAX_RESTART_DELAY), so a journalctl that cannot run does not flood the journal."""
        if failed_at_once:
            self._restart_delay_now = min(MAX_RESTART_DELAY, max(self.restart_delay, 2 * self._restart_delay_now))
        else:
            self._restart_delay_now = self.restart_delay
        self._restart_at = time.monotonic() + self._restart_delay_now
        return self._restart_delay_now

    def _parse(self, line: bytes | bytearray) -> Entry | None:
        if line is OVERSIZED:
            return self._oversized_entry()
        if not line.startswith(b"{"):
            return None
        try:
            fields = json.loads(line)
            cursor = fields["__CURSOR"]
            realtime = int(fields["__REALTIME_TIMESTAMP"])
        except (ValueError, KeyError, TypeError):
            self.log.warning("loki.journal_unreadable", line=line[:200].decode("utf-8", "replace"))
            return None
        self.position = cursor
        if self.machine_id is not None and fields.get("_MACHINE_ID") not in (None, self.machine_id):
            return None
        message = field_text(fields.get("MESSAGE"))
        if message is None:
            return None
        if message.endswith("\n"):
            message = message.rstrip("\n")
        assert self.labeler is not None
        unit = unit_of(fields, self.unit_set)
        return Entry(self.labeler.for_unit(unit), timestamp_ns(realtime, cursor), message, line_size(message), cursor,
                     journal_metadata(fields, message, unit == self.units[0]))

    def _oversized_entry(self) -> Entry | None:
        """An entry too long to hold: read its small fields again without MESSAGE, keep a prefix."""
        self.oversized += 1
        head, total = self._oversized.popleft()
        fields = self._query_next_fields()
        if fields is None:
            self.log.error("loki.journal_entry_skipped", bytes=total, after_cursor=self.position,
                           detail="an entry too large to read, and its cursor could not be found")
            return None
        cursor = fields["__CURSOR"]
        self.position = cursor
        if self.machine_id is not None and fields.get("_MACHINE_ID") not in (None, self.machine_id):
            return None
        assert self.labeler is not None
        unit = unit_of(fields, self.unit_set)
        line = truncate_line(message_prefix(head, MAX_KEPT_MESSAGE), MAX_KEPT_MESSAGE, total)
        self.log.warning("loki.journal_entry_truncated", bytes=total, kept=MAX_KEPT_MESSAGE, cursor=cursor)
        return Entry(self.labeler.for_unit(unit), timestamp_ns(int(fields["__REALTIME_TIMESTAMP"]), cursor), line,
                     line_size(line), cursor, journal_metadata(fields, line, unit == self.units[0]))

    def _query_next_fields(self) -> dict[str, Any] | None:
        """Return the small fields of the entry after our position (one short journalctl run)."""
        command = journalctl_command(self.journalctl, self.units, self.extra_args, self.position, self.since,
                                     fields=tuple(f for f in FIELDS if f != "MESSAGE"), follow=False)
        try:
            with subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                  stderr=subprocess.DEVNULL) as process:
                assert process.stdout is not None
                with selectors.DefaultSelector() as selector:
                    selector.register(process.stdout, selectors.EVENT_READ)
                    first = process.stdout.readline(64 * 1024) if selector.select(ONE_SHOT_TIMEOUT) else b""
                process.kill()
            fields = json.loads(first)
            int(fields["__REALTIME_TIMESTAMP"])
            return fields if isinstance(fields.get("__CURSOR"), str) else None
        except (OSError, ValueError, KeyError, TypeError):
            return None

    # -- commit and status -----------------------------------------------------------------------

    def commit(self, entries: Sequence[Entry]) -> None:
        cursor = next((entry.cursor for entry in reversed(entries) if entry.cursor), None)
        if cursor is None or cursor == self.committed or self.cursor_path is None:
            return
        try:
            write_atomic(self.cursor_path, cursor.encode("ascii") + b"\n", mode=0o640)
        except FileWriteError as error:
            # Not fatal: after a restart, lines since the last written cursor are sent again, and
            # Loki drops them as exact duplicates.
            if str(error) != self._cursor_error:
                self.log.error("loki.cursor_write_failed", error=str(error))
            self._cursor_error = str(error)
            return
        self._cursor_error = None
        self.committed = cursor

    def buffered_bytes(self) -> int:
        """Bytes read from journalctl and held here (not yet in a batch)."""
        pending = self._pending
        return self._held + (pending.size if pending is not None else 0)

    def status(self) -> dict[str, Any]:
        return {"kind": self.kind, "units": list(self.units), "cursor": self.committed,
                "read_buffer_bytes": self.buffered_bytes(),
                "journalctl_pid": self.process.pid if self.process is not None else None,
                "journalctl_restarts": self.restarts, "journalctl_restart_delay": self._restart_delay_now,
                "last_journalctl_problem": self.last_exit,
                "oversized_entries": self.oversized, "cursor_write_error": self._cursor_error}
