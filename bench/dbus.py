"""A unit failure as the D-Bus watcher sees it, beside a loop that polls once a second.

On a private dbus-daemon with the mock systemd (tests/integration/dbus_fixture.py), a unit's state is
flipped many times. Two observers run side by side in the same run:
- the UnitWatcher: PropertiesChanged signals to `on_change`;
- a poller modelled on `while true; do systemctl is-active UNIT; sleep 1; done`: once a second it
  starts `busctl get-property ... ActiveState` (a process and a D-Bus round trip per poll, like
  systemctl). This host runs no systemd, so the poller reads the mock, as the watcher does.

Latency is from just before the state change is sent to the mock until the observer has it, so it
includes dbusmock's own handling of the change (a Python service) as well as the bus; `mock_call_ms`
(the round trip of that call) shows how much of it is the mock's.
Two kinds of flips: fast ones (failed <-> active as soon as the watcher saw the last one: many samples
of the watcher's latency, the poller misses most of them) and polled trials (a failure at a random
phase of the poll cycle, held until the poller has seen it too: both latencies per trial).
"""

from __future__ import annotations

import random
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from .common import percentiles, wait_for

UNIT = "pretix-web.service"
POLL_INTERVAL = 1.0


class Poller:
    """Polls the unit's ActiveState every POLL_INTERVAL with a busctl process; keeps (time, state)."""

    def __init__(self, address: str, path: str):
        self.command = ["busctl", f"--address={address}", "get-property", "org.freedesktop.systemd1", path,
                        "org.freedesktop.systemd1.Unit", "ActiveState"]
        self.readings: list[tuple[float, str]] = []
        self.errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="poller", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(POLL_INTERVAL + 5)

    def _run(self) -> None:
        next_poll = time.monotonic()
        while not self._stop.is_set():
            done = subprocess.run(self.command, capture_output=True, text=True, timeout=5)
            if done.returncode == 0:  # busctl prints: s "active"
                self.readings.append((time.monotonic(), done.stdout.split('"')[1]))
            else:
                self.errors += 1
            next_poll += POLL_INTERVAL
            self._stop.wait(max(0.0, next_poll - time.monotonic()))

    def first(self, state: str, after: float) -> float | None:
        for stamp, seen in list(self.readings):
            if stamp >= after and seen == state:
                return stamp
        return None


def run(quick: bool) -> dict[str, Any]:
    try:
        from pretix_agent.adapters.dbus import DBusConnection, UnitWatcher
        from tests.integration.dbus_fixture import PrivateBus, SystemdMock, dbus_unavailable_reason, unit_path
    except ImportError as error:
        return {"skipped": f"cannot import the D-Bus adapter or its fixture: {error}"}
    reason = dbus_unavailable_reason()
    if reason:
        return {"skipped": reason}
    fast_flips = 100 if quick else 1000
    trials = 8 if quick else 60
    changes: list[tuple[float, str]] = []
    lock = threading.Lock()

    def on_change(unit: str, active: str, _sub: str) -> None:
        with lock:
            changes.append((time.monotonic(), active))

    def watcher_saw(state: str, after: float) -> float | None:
        with lock:
            return next((stamp for stamp, seen in changes if stamp >= after and seen == state), None)

    event_ms: list[float] = []
    poll_ms: list[float] = []
    call_ms: list[float] = []
    with tempfile.TemporaryDirectory() as directory, PrivateBus(Path(directory)) as bus:
        systemd = SystemdMock(bus, {UNIT: ("active", "running")}).start()
        connection = DBusConnection(bus.address)
        connection.start()
        watcher = UnitWatcher([UNIT], on_change, connection=connection)
        watcher.start()
        poller = Poller(bus.address, unit_path(UNIT))
        poller.start()
        try:
            started = time.monotonic()
            for flip in range(fast_flips):
                state, sub = ("failed", "failed") if flip % 2 == 0 else ("active", "running")
                sent = time.monotonic()
                systemd.set_state(UNIT, state, sub)
                call_ms.append((time.monotonic() - sent) * 1000)
                seen = wait_for(lambda: watcher_saw(state, sent), timeout=10)  # noqa: B023
                event_ms.append((seen - sent) * 1000)
            if fast_flips % 2:  # an odd count ended on "failed"
                systemd.set_state(UNIT, "active", "running")
            settled = time.monotonic()
            wait_for(lambda: poller.first("active", settled), timeout=10)
            randomness = random.Random(7)
            for _trial in range(trials):
                time.sleep(randomness.uniform(0, POLL_INTERVAL))  # a random phase of the poll cycle
                sent = time.monotonic()
                systemd.set_state(UNIT, "failed", "failed")
                event_ms.append((wait_for(lambda: watcher_saw("failed", sent), timeout=10) - sent) * 1000)  # noqa: B023
                poll_ms.append((wait_for(lambda: poller.first("failed", sent), timeout=10) - sent) * 1000)  # noqa: B023
                recovered = time.monotonic()
                systemd.set_state(UNIT, "active", "running")
                wait_for(lambda: watcher_saw("active", recovered) and poller.first("active", recovered), timeout=10)  # noqa: B023
            elapsed = time.monotonic() - started
        finally:
            poller.stop()
            watcher.stop()
            connection.stop()
            systemd.stop()
    event = {key: round(value, 3) for key, value in percentiles(event_ms).items()}
    poll = {key: round(value, 3) for key, value in percentiles(poll_ms).items()}
    call = {key: round(value, 3) for key, value in percentiles(call_ms).items()}
    return {
        "unit_flips": fast_flips + 2 * trials,
        "polled_trials": trials,
        "seconds": round(elapsed, 1),
        "watcher_on_change_ms": event,
        "poller_1s_ms": poll,
        # The test's call into the mock (it emits the signal before it replies): the floor under
        # the watcher's latency that is the mock's, not the adapter's.
        "mock_call_ms": call,
        "poller": "busctl get-property ... ActiveState every 1 s (models `systemctl is-active` in a loop)",
        "poller_errors": poller.errors,
        "ratio_p50": round(poll["p50"] / event["p50"], 1) if event["p50"] else None,
        "ratio_p99": round(poll["p99"] / event["p99"], 1) if event["p99"] else None,
        # p50 below 20 ms and max below 100 ms were tests/integration/test_dbus.py's bounds before
        # performance figures moved here; p99 below 100 ms is the SPEC's "within milliseconds".
        "target": {"watcher_p50_ms_below": 20, "watcher_p99_ms_below": 100, "watcher_max_ms_below": 100},
        "meets_target": event["p50"] < 20 and event["p99"] < 100,
        "meets_max_target": event["max"] < 100,
    }
