"""File events through the `watchdog` library (inotify on Linux).

Directories are watched, not files: the marker and lock are replaced by rename and deleted and
recreated by hand, and a watch on the file itself dies with the inode it was put on.
(Not to be confused with systemd's watchdog, which lives in the daemon's loop.)
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

# Events that change nothing: watchdog 4 and later (Debian 13 ships 6) report every open and every
# close without a write. The daemon reads the lock and the marker in every cycle; waking on those
# reads would make each cycle wake the next, a busy loop for as long as the marker exists.
# (watchdog 2.2, Debian 12's, never reports them.)
_NO_CHANGE = frozenset({"opened", "closed_no_write"})


class _Handler(FileSystemEventHandler):
    def __init__(self, names: set[str], notify: Callable[[str], None]):
        self._names = names
        self._notify = notify

    def dispatch(self, event: FileSystemEvent) -> None:
        if event.event_type in _NO_CHANGE:
            return
        for raw in (event.src_path, getattr(event, "dest_path", "")):
            if not raw:
                continue
            path = os.fsdecode(raw)
            if path in self._names:
                self._notify(f"file:{os.path.basename(path)}")


class FileWatcher:
    """Calls `notify(reason)` from its own thread whenever one of `paths` may have changed."""

    def __init__(self, paths: Iterable[Path], notify: Callable[[str], None]):
        self.paths = tuple(sorted({Path(p) for p in paths}))
        names = {str(p) for p in self.paths}
        self._observer = Observer()
        for directory in sorted({str(p.parent) for p in self.paths}):
            self._observer.schedule(_Handler(names, notify), directory, recursive=False)

    def start(self) -> None:
        self._observer.start()

    def alive(self) -> bool:
        return self._observer.is_alive()

    def stop(self) -> None:
        self._observer.stop()
        self._observer.join(timeout=5)
