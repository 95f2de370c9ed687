"""File events through the `watchdog` library (inotify on Linux).

Directories are watched, not files: the marker and lock are replaced by rename and deleted and
recreated by hand, and a watch on the file itself dies with the inode it was put on. A watch on a
directory dies the same way when the directory is deleted, or replaced by another one of the same
name (configuration management does both), and inotify then says nothing more, ever. So the
watcher also watches each directory's parent, for that name only, and `intact()` compares every
directory with the inode it watches: the owner re-creates the watcher when either says the watch
is gone.
(Not to be confused with systemd's watchdog, which lives in the daemon's loop.)
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

LOST = "watch:lost"  # the reason posted when a watched directory was removed, moved or created

# Events that change nothing: watchdog 4 and later (Debian 13 ships 6) report every open and every
# close without a write. The daemon reads the lock and the marker in every cycle; waking on those
# reads would make each cycle wake the next, a busy loop for as long as the marker exists.
# (watchdog 2.2, Debian 12's, never reports them.)
_NO_CHANGE = frozenset({"opened", "closed_no_write"})


class _Handler(FileSystemEventHandler):
    def __init__(self, names: dict[str, str], notify: Callable[[str], None]):
        self._names = names  # path -> reason to post
        self._notify = notify

    def dispatch(self, event: FileSystemEvent) -> None:
        if event.event_type in _NO_CHANGE:
            return
        for raw in (event.src_path, getattr(event, "dest_path", "")):
            if raw:
                reason = self._names.get(os.fsdecode(raw))
                if reason is not None:
                    self._notify(reason)


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_dev, info.st_ino


class FileWatcher:
    """Calls `notify(reason)` from its own thread whenever one of `paths` may have changed
    (`file:NAME`), or one of their directories was removed, moved or created (`watch:lost`)."""

    def __init__(self, paths: Iterable[Path], notify: Callable[[str], None]):
        self.paths = tuple(sorted({Path(p) for p in paths}))
        self.directories = tuple(sorted({p.parent for p in self.paths}))
        self._notify = notify
        self._observer = Observer()
        self._watched: dict[Path, tuple[int, int] | None] = {}

    def start(self) -> None:
        """Watch every directory that exists (and each one's parent). Raise OSError only if not even
        one directory can be watched: a missing one is reported by `intact()` and watched later."""
        files = {str(p): f"file:{p.name}" for p in self.paths}
        own = {str(d): LOST for d in self.directories}
        for directory in self.directories:
            identity = _identity(directory)
            self._watched[directory] = identity
            if identity is not None:
                self._observer.schedule(_Handler({**files, **own}, self._notify), str(directory), recursive=False)
        for parent in sorted({d.parent for d in self.directories}):
            if _identity(parent) is not None:
                self._observer.schedule(_Handler(own, self._notify), str(parent), recursive=False)
        try:
            self._observer.start()
        except OSError:  # a directory vanished between the look and the watch
            self.stop()
            raise

    def intact(self) -> list[str]:
        """Why a change of the files could go unseen right now; [] when every directory is watched
        as it is (the same inode that was there when the watch began)."""
        if not self._observer.is_alive():
            return ["the file watching thread ended"]
        problems = []
        for directory, watched in self._watched.items():
            current = _identity(directory)
            if current is None:
                problems.append(f"{directory} does not exist")
            elif watched is None:
                problems.append(f"{directory} did not exist when the watch began")
            elif current != watched:
                problems.append(f"{directory} was replaced by another directory")
        return problems

    def alive(self) -> bool:
        return self._observer.is_alive()

    def stop(self) -> None:
        self._observer.stop()
        if self._observer.is_alive():
            self._observer.join(timeout=5)
