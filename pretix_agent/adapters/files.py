"""Small state files written atomically and never through a symlink.

Every write goes to a temporary file in the same directory, is fsynced, renamed over the target
and followed by an fsync of the directory, so a crash leaves the old file or the new one, never a
torn one. A symlink at the target is refused rather than replaced: the marker and lock live in a
directory that operators (members of a group) may write, and following a planted link would let
them make the daemon overwrite any file it can write.
"""

from __future__ import annotations

import errno
import os
import secrets
import stat
from pathlib import Path

from ..errors import FileWriteError

FILE_MODE = 0o664  # group-writable: operators in the agent's group run pretix-agentctl without root
READ_LIMIT = 64 * 1024


def _describe(error: OSError) -> str:
    return error.strerror or str(error)


def _refuse_symlink(path: Path) -> None:
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as error:
        raise FileWriteError(f"cannot inspect {path}: {_describe(error)}") from None
    if stat.S_ISLNK(info.st_mode):
        raise FileWriteError(f"refusing to write {path}: it is a symlink; remove it by hand")


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_temporary(path: Path, data: bytes, mode: int, durable: bool = True) -> Path:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        os.fchmod(fd, mode)  # the umask must not take the group's write bit away
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        if durable:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        _unlink_quietly(temporary)
        raise
    os.close(fd)
    return temporary


def _unlink_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def write_atomic(path: Path, data: bytes, mode: int = FILE_MODE, durable: bool = True) -> None:
    """Replace `path` with `data` atomically. Raise FileWriteError (one line) on any failure.

    `durable=False` skips the fsyncs, for files that need only be whole, not survive a crash: the
    status file lives in /run (a tmpfs, gone at boot anyway) and is rewritten every cycle."""
    _refuse_symlink(path)
    try:
        temporary = _write_temporary(path, data, mode, durable)
        try:
            os.rename(temporary, path)
        except BaseException:
            _unlink_quietly(temporary)
            raise
        if durable:
            _fsync_directory(path.parent)
    except OSError as error:
        raise FileWriteError(f"cannot write {path}: {_describe(error)}") from None


def create_exclusive(path: Path, data: bytes, mode: int = FILE_MODE) -> bool:
    """Create `path` with `data` atomically unless it exists. Return False if it already existed.

    The content appears complete or not at all: it is written to a temporary file that is then
    hard-linked to the final name, which fails if the name exists (so two racing callers cannot
    both win). Raise FileWriteError on any other failure.
    """
    _refuse_symlink(path)
    try:
        temporary = _write_temporary(path, data, mode)
        try:
            os.link(temporary, path)
        except FileExistsError:
            return False
        finally:
            _unlink_quietly(temporary)
        _fsync_directory(path.parent)
        return True
    except OSError as error:
        raise FileWriteError(f"cannot create {path}: {_describe(error)}") from None


def remove(path: Path) -> bool:
    """Remove `path` (a symlink itself, never its target). Return False if it did not exist."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    except OSError as error:
        raise FileWriteError(f"cannot remove {path}: {_describe(error)}") from None
    try:
        _fsync_directory(path.parent)
    except OSError as error:
        raise FileWriteError(f"removed {path} but cannot sync its directory: {_describe(error)}") from None
    return True


class FileState:
    """What one look at a small file found: absent, present with content, or present but unreadable."""

    __slots__ = ("content", "error", "present")

    def __init__(self, present: bool, content: bytes | None = None, error: str | None = None):
        self.present = present
        self.content = content
        self.error = error


def read_small(path: Path, limit: int = READ_LIMIT) -> FileState:
    """Look at `path` without following a symlink and without blocking on a FIFO.

    A symlink, a non-regular file, an oversized file or a read error still count as present,
    with `error` saying why the content is unknown.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return FileState(False)
    except OSError as error:
        if error.errno == errno.ELOOP:
            return FileState(True, error="it is a symlink")
        return FileState(True, error=_describe(error))
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return FileState(True, error="not a regular file")
        if info.st_size > limit:
            return FileState(True, error=f"larger than {limit} bytes")
        content = os.read(fd, limit + 1)
        if len(content) > limit:  # it grew after fstat
            return FileState(True, error=f"larger than {limit} bytes")
        return FileState(True, content=content)
    except OSError as error:
        return FileState(True, error=_describe(error))
    finally:
        os.close(fd)
