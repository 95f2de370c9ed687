"""The cluster worker: a thread that does all the talking to PostgreSQL, so the main loop never waits.

The main loop hands it this node's latest row (`publish`) and ctl's requests (`submit`), and reads
back its reports (`report` is called from this thread; the controller only keeps the latest). It
waits on its wake-up descriptor and on the connection's socket at once, so a NOTIFY from another
node is read within milliseconds; otherwise it looks every `heartbeat_interval` (the backstop to
LISTEN). Each pass (`step`) is bounded: every call has the store's deadline, and a connection that
fails is dropped and tried again at the next heartbeat, or at once when a request comes.

The node's row is published at every heartbeat and at once when it changes; a change is also
NOTIFYed, so the other nodes' views (and `lock --cluster` waiting for every node) follow within
milliseconds rather than a heartbeat.
"""

from __future__ import annotations

import contextlib
import os
import select
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Protocol

from ..config import ClusterSection
from .model import (
    CONNECTED,
    CONNECTING,
    FAILING,
    SCHEMA_MISSING,
    UNREACHABLE,
    NodeState,
    Outcome,
    Report,
    Request,
    View,
)
from .store import StoreError

KEEP_OUTCOMES = 16


class Store(Protocol):
    """What the worker needs of the database (store.ClusterStore; a fake in unit tests)."""

    server: str | None
    schema_ok: bool

    @property
    def connected(self) -> bool: ...

    def connect(self) -> None: ...

    def check_schema(self) -> bool: ...

    def sync(self, state: NodeState | None, announce: bool) -> View: ...

    def execute(self, request: Request) -> Outcome: ...

    def notifications(self) -> list[str]: ...

    def fileno(self) -> int | None: ...

    def abort(self) -> None: ...

    def close(self) -> None: ...


class ClusterWorker:
    def __init__(self, settings: ClusterSection, store: Store, report: Callable[[Report], None],
                 beat: Callable[[], None] = lambda: None, monotonic: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time):
        self.settings = settings
        self.store = store
        self._report = report
        self.beat = beat
        self.monotonic, self.wall = monotonic, wall
        self._lock = threading.Lock()
        self._state: NodeState | None = None  # the latest handed over
        self._requests: deque[Request] = deque()
        self._published: NodeState | None = None
        self._next_beat = 0.0  # monotonic: the next heartbeat (or connection attempt)
        self._sync_wanted = False
        self._failing_since: float | None = None
        self._error: str | None = None
        self._view: View | None = None
        self._view_at: float | None = None
        self._outcomes: deque[Outcome] = deque(maxlen=KEEP_OUTCOMES)
        self._wake_read, self._wake_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cluster", daemon=True)

    # -- from the main loop ----------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def alive(self) -> bool:
        return self._thread.is_alive()

    def publish(self, state: NodeState) -> None:
        with self._lock:
            self._state = state
        self._wake()

    def submit(self, request: Request) -> None:
        with self._lock:
            self._requests.append(request)
        self._wake()

    def stop(self) -> None:
        """Stop within about one `timeout` (a call in progress is broken off), close the connection."""
        self._stopped.set()
        self._wake()
        self.store.abort()
        if self._thread.is_alive():
            self._thread.join(timeout=self.settings.timeout + 1)
        if not self._thread.is_alive():
            self.store.close()
            for fd in (self._wake_read, self._wake_write):
                with contextlib.suppress(OSError):
                    os.close(fd)

    def _wake(self) -> None:
        with contextlib.suppress(OSError):  # full: a wake-up is pending anyway; closed: stopping
            os.write(self._wake_write, b"\0")

    # -- the thread ------------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stopped.is_set():
            delay = self.step()
            self.beat()
            if self._stopped.is_set():
                break
            self._wait(delay)

    def _wait(self, delay: float) -> None:
        poller = select.poll()
        poller.register(self._wake_read, select.POLLIN)
        fd = self.store.fileno() if self.settings.listen else None
        if fd is not None:
            poller.register(fd, select.POLLIN)
        with contextlib.suppress(InterruptedError):
            poller.poll(max(0.0, delay) * 1000)
        with contextlib.suppress(OSError):
            while os.read(self._wake_read, 4096):
                pass

    def step(self) -> float:
        """One pass: connect if due, carry out pending requests, read notifications, publish and read
        the view if due. Return the seconds until the next pass is needed (a heartbeat)."""
        now = self.monotonic()
        with self._lock:
            requests = list(self._requests)
            self._requests.clear()
            state = self._state
        changed = False
        if not self.store.connected and (requests or now >= self._next_beat):
            self._next_beat = now + self.settings.heartbeat_interval
            changed = True
            try:
                self.store.connect()
            except StoreError as error:
                self._failed(str(error))
                for request in requests:
                    self._outcomes.append(Outcome(request.id, request.action, False, f"cannot reach the cluster "
                                                  f"database: {error}", done_at=self.wall()))
                self._send()
                return self._next_beat - now
            self._error, self._sync_wanted = None, True
        if not self.store.connected:
            return self._next_beat - now
        try:
            for request in requests:
                changed = True
                self._outcomes.append(self._execute(request))
                self._sync_wanted = True
            if not self.store.connected:  # a request lost the connection: try again at the next heartbeat
                self._send()
                return max(0.0, self._next_beat - self.monotonic())
            if any(payload.endswith(f":{self.settings.name}") for payload in self.store.notifications()):
                self._sync_wanted = True
            due = now >= self._next_beat
            if due:
                self._next_beat = now + self.settings.heartbeat_interval
            if not self.store.schema_ok and (due or self._sync_wanted):
                self._sync_wanted, changed = False, True
                if not self.store.check_schema():
                    self._error = "the agent's schema is missing: run pretix-agentctl cluster init"
                    self._failing_since = self._failing_since or self.wall()
            publish = state is not None and (due or state != self._published)
            if self.store.schema_ok and (publish or self._sync_wanted):
                announce = publish and state != self._published
                self._view = self.store.sync(state if publish else None, announce)
                self._view_at, self._sync_wanted = self.wall(), False
                if publish:
                    self._published = state
                self._error, self._failing_since = None, None
                changed = True
        except StoreError as error:
            self._failed(str(error))
            changed = True
        if changed:
            self._send()
        return max(0.0, self._next_beat - self.monotonic())

    def _execute(self, request: Request) -> Outcome:
        if self.wall() > request.expires_at:
            return Outcome(request.id, request.action, False, "refused: it expired while waiting for the database; "
                           "nothing changed", done_at=self.wall())
        if request.action != "init" and not self.store.schema_ok:
            return Outcome(request.id, request.action, False, "the agent's schema is missing: run pretix-agentctl "
                           "cluster init first", done_at=self.wall())
        try:
            return self.store.execute(request)
        except StoreError as error:
            if error.refused:
                return Outcome(request.id, request.action, False, str(error), done_at=self.wall())
            # The answer was lost, not necessarily the change: a lock may have been committed.
            self._failed(str(error))
            return Outcome(request.id, request.action, False, f"the database did not confirm: {error} (whether it "
                           "took effect shows in pretix-agentctl status --cluster once it answers)",
                           done_at=self.wall())

    def _failed(self, error: str) -> None:
        self._error = error
        if self._failing_since is None:
            self._failing_since = self.wall()

    def _send(self) -> None:
        if not self.store.connected:
            state = UNREACHABLE if self._error else CONNECTING
        elif not self.store.schema_ok:
            state = SCHEMA_MISSING
        elif self._error:
            state = FAILING
        else:
            state = CONNECTED if self._view is not None else CONNECTING
        self._report(Report(state=state, server=self.store.server, error=self._error,
                            failing_since=self._failing_since, view=self._view, view_at=self._view_at,
                            outcomes=tuple(self._outcomes)))
