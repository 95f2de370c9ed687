"""The file watcher on real inotify through the installed `watchdog` library (Debian 12's 2.2,
Debian 13's 6 in the end-to-end tier): what wakes the daemon, and what must not."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from pretix_agent.adapters.inotify import FileWatcher
from tests.waiting import wait_until

pytestmark = pytest.mark.integration


class Recorder:
    """The `file:NAME` reasons the watcher posted, in order. (These tests are about the files; any
    other reason a watcher may post, about its directories, is not recorded.)"""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.reasons: list[str] = []

    def __call__(self, reason: str) -> None:
        if reason.startswith("file:"):
            with self._lock:
                self.reasons.append(reason)

    def seen(self) -> list[str]:
        with self._lock:
            return list(self.reasons)


@pytest.fixture
def watched(tmp_path: Path) -> Iterator[tuple[Path, Path, Recorder]]:
    """A watcher on `marker` and `lock` in one directory; yields them and what it reported."""
    marker, lock = tmp_path / "maintenance", tmp_path / "maintenance.lock"
    recorder = Recorder()
    watcher = FileWatcher([marker, lock], recorder)
    watcher.start()
    try:
        yield marker, lock, recorder
    finally:
        watcher.stop()


def until_reported(recorder: Recorder, reason: str, since: int = 0) -> list[str]:
    """Wait until `reason` is reported after the first `since` reports; return the reports after them."""
    return wait_until(lambda: reason in recorder.seen()[since:] and recorder.seen()[since:], timeout=10,
                      message=lambda: f"{reason!r} reported after report {since}; got {recorder.seen()}")


def fence(recorder: Recorder, marker: Path) -> int:
    """Rename a file onto the marker (one event, so one report) and wait for its report; return the
    number of reports then. inotify delivers one directory's events in order: whatever an earlier
    action caused (a write is several events) has been reported by then, and nothing later."""
    temporary = marker.with_name(".fence")
    temporary.write_text("")  # another name: reported by nobody
    count = len(recorder.seen())
    os.rename(temporary, marker)
    until_reported(recorder, "file:maintenance", count)
    return len(recorder.seen())


def test_writing_replacing_and_deleting_a_watched_file_reports_its_name(watched):
    marker, lock, recorder = watched
    lock.write_text("by hand\n")
    assert set(until_reported(recorder, "file:maintenance.lock")) == {"file:maintenance.lock"}
    count = fence(recorder, marker)  # the rename onto the marker, the way the daemon writes it
    marker.unlink()
    assert until_reported(recorder, "file:maintenance", count) == ["file:maintenance"]


def test_reading_the_watched_files_reports_nothing(watched):
    # The daemon reads the lock and the marker in every cycle: were reads reported, each cycle would
    # wake the next (watchdog 4 and later report opens and closes; Debian 13 ships 6).
    marker, lock, recorder = watched
    lock.write_text("")
    count = fence(recorder, marker)
    for _ in range(20):
        marker.read_bytes()
        lock.read_bytes()
    os.rename(lock, lock.with_name("moved-away"))  # one event after the reads: its report ends the wait
    assert until_reported(recorder, "file:maintenance.lock", count) == ["file:maintenance.lock"]


def test_changes_to_other_files_in_the_directory_report_nothing(watched):
    marker, _, recorder = watched
    for name in ("other", ".maintenance.tmp", "maintenance.lock.bak"):
        (marker.parent / name).write_text("x")
        (marker.parent / name).unlink()
    marker.write_text("")
    assert set(until_reported(recorder, "file:maintenance")) == {"file:maintenance"}
