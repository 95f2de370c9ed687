"""Run each check's probe on its own schedule, off the main loop, with a hard deadline.

One scheduler thread per check starts a probe every `interval` in a fresh probe thread and waits
at most `timeout` for it. A probe still running then is aborted through its Deadline's hooks
(which shut its sockets) and counted as a timeout; if even that does not free it, no second
probe is started beside it until it returns, so a hung dependency costs one thread, never more,
and never stalls the daemon. Results go to `deliver(name, result)`; the daemon's loop advances
the states (checks/health.py). The scheduler beats a heartbeat after every probe, so a scheduler
that stops is noticed by the systemd watchdog gate.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable

from ..config import CheckSpec
from .model import Deadline, Probe, ProbeResult, failed

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
        self._probe_thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread.start()

    def alive(self) -> bool:
        return self._thread.is_alive()

    def request_stop(self) -> None:
        """Ask the scheduler to end after its current probe (without waiting; see stop)."""
        self._stopped.set()

    def stop(self) -> None:
        self.request_stop()
        self._thread.join(timeout=self.spec.timeout + ABORT_GRACE + 1)

    def _run(self) -> None:
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

    def probe_once(self) -> ProbeResult:
        """Run one probe with its deadline; return its result, or a timeout failure."""
        if self._probe_thread is not None and self._probe_thread.is_alive():
            return failed(f"the previous probe is still hung after its abort (timeout {self.spec.timeout:g} s)")
        deadline = Deadline(self.spec.timeout)
        box: list[ProbeResult] = []
        started = time.monotonic()

        def work() -> None:
            try:
                box.append(self.probe(deadline))
            except Exception as error:  # a bug in a probe: report it as a failure, keep running
                box.append(failed(f"probe error: {type(error).__name__}: {error}"))

        thread = threading.Thread(target=work, name=f"probe-{self.spec.name}", daemon=True)
        self._probe_thread = thread
        thread.start()
        thread.join(self.spec.timeout)
        if thread.is_alive():
            deadline.abort()
            thread.join(ABORT_GRACE)
            return failed(f"timeout: no answer within {self.spec.timeout:g} s",
                          elapsed_ms=round((time.monotonic() - started) * 1000, 1))
        return box[0] if box else failed("probe returned nothing")
