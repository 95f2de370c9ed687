"""Run each check's probe on its own schedule, off the main loop, with a hard deadline.

One scheduler thread per check starts a probe every `interval` in the check's probe thread (one
per check, kept: starting a thread per probe costs more CPU than a probe over a kept connection)
and waits at most `timeout` for it. A probe still running then is aborted through its Deadline's
hooks (which shut its sockets) and counted as a timeout; if even that does not free it, no second
probe is started beside it until it returns, so a hung dependency costs one thread, never more,
and never stalls the daemon. Results go to `deliver(name, result)`; the daemon's loop advances
the states (checks/health.py). The scheduler beats a heartbeat after every probe, so a scheduler
that stops is noticed by the systemd watchdog gate.

The runner owns its probe: when it stops (the daemon stops every runner on a reload and at
shutdown), it closes the probe's kept connection (checks/keeper.py). A probe still hung then closes
its connection when it returns, and never opens another.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable

from ..config import CheckSpec
from .model import Deadline, Probe, ProbeResult, close_probe, failed

# After an abort, how long the probe thread gets to notice its closed socket and return.
ABORT_GRACE = 0.5


class CheckRunner:
    def __init__(self, spec: CheckSpec, probe: Probe, deliver: Callable[[str, ProbeResult], None],
                 beat: Callable[[], None] | None = None):
        self.spec = spec
        self.probe = probe
        self.deliver = deliver
        self.beat = beat or (lambda: None)
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"check-{spec.name}", daemon=True)
        self._worker: ProbeWorker | None = None
        self._close_lock = threading.Lock()
        self._probe_closed = False

    def start(self) -> None:
        self._thread.start()

    def alive(self) -> bool:
        return self._thread.is_alive()

    def request_stop(self) -> None:
        """Ask the scheduler to end after its current probe (without waiting; see stop)."""
        self._stopped.set()

    def stop(self) -> None:
        """Stop the scheduler (waiting at most one probe's timeout and grace) and close the probe."""
        self.request_stop()
        if self._thread.is_alive():
            self._thread.join(timeout=self.spec.timeout + ABORT_GRACE + 1)
        self._close_probe()

    def _run(self) -> None:
        try:
            self._schedule()
        finally:
            self._close_probe()  # at once, not when stop() gets round to this runner

    def _schedule(self) -> None:
        next_start = time.monotonic()
        while not self._stopped.is_set():
            started = time.monotonic()
            result = self.probe_once()
            if self._stopped.is_set():
                return
            self.deliver(self.spec.name, dataclasses.replace(result, seconds=time.monotonic() - started))
            self.beat()
            next_start += self.spec.interval
            now = time.monotonic()
            if next_start < now:  # a slow probe: skip the starts that passed, keep the cadence
                next_start = now
            self._stopped.wait(next_start - now)

    def _close_probe(self) -> None:
        with self._close_lock:
            if self._probe_closed:
                return
            self._probe_closed = True
        if self._worker is not None:
            self._worker.stop()
        try:
            close_probe(self.probe)
        except Exception:  # closing is best effort: a stopping check must not take the daemon down
            pass

    def probe_once(self) -> ProbeResult:
        """Run one probe with its deadline; return its result, or a timeout failure."""
        if self._worker is not None and self._worker.busy():
            return failed(f"the previous probe is still hung after its abort (timeout {self.spec.timeout:g} s)")
        if self._worker is None:
            self._worker = ProbeWorker(self.probe, f"probe-{self.spec.name}")
        deadline = Deadline(self.spec.timeout)
        started = time.monotonic()
        self._worker.submit(deadline)
        result = self._worker.wait(self.spec.timeout)
        if result is None:
            deadline.abort()
            self._worker.wait(ABORT_GRACE)
            return failed(f"timeout: no answer within {self.spec.timeout:g} s",
                          elapsed_ms=round((time.monotonic() - started) * 1000, 1))
        return result

    def probe_busy(self) -> bool:
        """True while a probe runs (or hangs past its abort)."""
        return self._worker is not None and self._worker.busy()


class ProbeWorker:
    """The thread a runner's probes run in, one probe at a time. A thread per probe would do the
    same, but starting one costs more CPU than a probe over a kept connection."""

    def __init__(self, probe: Probe, name: str):
        self._probe = probe
        self._changed = threading.Condition()
        self._job: Deadline | None = None
        self._result: ProbeResult | None = None
        self._busy = False
        self._stopping = False
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    def submit(self, deadline: Deadline) -> None:
        """Start a probe with `deadline` (never while one is busy)."""
        with self._changed:
            assert not self._busy, "a probe is still running"
            self._job, self._result, self._busy = deadline, None, True
            self._changed.notify_all()

    def wait(self, timeout: float) -> ProbeResult | None:
        """The probe's result, or None if it is still running after `timeout` seconds."""
        with self._changed:
            self._changed.wait_for(lambda: not self._busy, timeout)
            return None if self._busy else self._result

    def busy(self) -> bool:
        return self._busy

    def stop(self) -> None:
        """End the thread once its probe (if any) has returned."""
        with self._changed:
            self._stopping = True
            self._changed.notify_all()

    def _serve(self) -> None:
        while True:
            with self._changed:
                self._changed.wait_for(lambda: self._job is not None or self._stopping)
                if self._job is None:
                    return
                deadline, self._job = self._job, None
            try:
                result = self._probe(deadline)
            except Exception as error:  # a bug in a probe: report it as a failure, keep running
                result = failed(f"probe error: {type(error).__name__}: {error}")
            with self._changed:
                self._result, self._busy = result, False
                self._changed.notify_all()
