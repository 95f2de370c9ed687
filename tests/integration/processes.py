"""Process plumbing shared by the real-component fixtures (pg_fixture, redis_fixture, haproxy_fixture,
nginx_fixture, dbus_fixture). Plain functions, no pytest:

    wait_until(lambda: server.ready(), timeout=10, what="the server", details=server.log_tail)
    process_state(pid)                  # "R", "S", "T" (stopped), "Z" (zombie), ..., None once gone
    pid_alive(pid); any_alive(pids); children_of(ppid); signal_pids(pids, signal.SIGKILL)
    wait_stopped(pids)                  # SIGSTOP is delivered asynchronously
    subprocess.Popen(..., preexec_fn=die_with_parent)               # PR_SET_PDEATHSIG=SIGKILL
    subprocess.Popen(..., preexec_fn=pdeathsig(signal.SIGTERM))     # another signal
    log_tail(path); titled_log_tail(path)
    candidate_port(); start_with_ports(start); PortInUse; address_in_use(text)   # from tests.ports
    Resources                           # the servers and directory a fixture must clean up

``pid_alive``, ``any_alive`` and ``children_of`` do not count zombies: a zombie has exited, only its parent
has not reaped it yet.
The fixture modules import what they use from here and go on exporting the names tests import from them
(``pg_fixture.wait_until``, ``redis_fixture.any_alive``, ...).

No fixture picks a port by binding port 0 and closing it (another process's outbound connection can
take it before the server binds it): ports come from ``tests.ports``, outside the ephemeral range,
and a server that reports EADDRINUSE is started again on a fresh one.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import time
import weakref
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Generic, Protocol, TypeVar

from tests.ports import PortInUse, address_in_use, candidate_port, start_with_ports

__all__ = ["FixtureError", "PortInUse", "Resources", "ServerGroup", "address_in_use", "any_alive", "candidate_port",
           "children_of", "die_with_parent", "log_tail", "pdeathsig", "pid_alive", "process_state", "signal_pids",
           "start_with_ports", "titled_log_tail", "wait_stopped", "wait_until"]

T = TypeVar("T")


class FixtureError(RuntimeError):
    """A fixture could not reach the state it was asked for (the message carries the log tail)."""


def log_tail(path: Path | str, lines: int = 30) -> str:
    """The last ``lines`` lines of a log file, or a note saying why it cannot be read."""
    try:
        text = Path(path).read_text(errors="replace")
    except OSError as exc:
        return f"<cannot read {path}: {exc}>"
    return "\n".join(text.splitlines()[-lines:])


def titled_log_tail(path: Path | str, lines: int = 30) -> str:
    """``log_tail`` under a ``--- last lines of PATH ---`` line (for FixtureError messages)."""
    return f"--- last lines of {path} ---\n{log_tail(path, lines)}"


def wait_until(
    predicate: Callable[[], T],
    *,
    timeout: float,
    what: str,
    details: Callable[[], str] | None = None,
    interval: float = 0.02,
) -> T:
    """Poll ``predicate`` until it returns something truthy; return that, or raise FixtureError.

    Exceptions from the predicate count as "not yet" (the last one is reported), except FixtureError,
    which ends the wait at once. ``details`` is called on timeout for extra context (e.g. the tail of
    a server log).
    """
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while True:
        try:
            result = predicate()
        except FixtureError:
            raise
        except Exception as exc:
            last_exc = exc
        else:
            if result:
                return result
        if time.monotonic() >= deadline:
            msg = f"timed out after {timeout:.1f}s waiting for {what}"
            if last_exc is not None:
                msg += f"\nlast error: {type(last_exc).__name__}: {last_exc}"
            if details is not None:
                msg += "\n" + details()
            raise FixtureError(msg)
        time.sleep(interval)


# ------------------------------------------------------------------------------------------------ /proc


def _state_and_ppid(pid: int | str) -> tuple[bytes, int]:
    """State letter and parent PID from /proc/PID/stat; OSError once the process is gone."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        stat = f.read()
    # "pid (comm) state ppid ..." -- comm may contain spaces and parentheses
    state, ppid = stat[stat.rindex(b")") + 2 :].split()[:2]
    return state, int(ppid)


def process_state(pid: int) -> str | None:
    """State letter of ``pid`` from /proc (R, S, D, T = stopped, Z = zombie, ...), None if gone."""
    try:
        return _state_and_ppid(pid)[0].decode()
    except OSError:
        return None


def start_time(pid: int) -> int | None:
    """When ``pid`` started, in clock ticks since boot (/proc/PID/stat field 22); None if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        return int(stat[stat.rindex(b")") + 2 :].split()[19])
    except (OSError, ValueError, IndexError):
        return None


Identity = tuple[int, int]  # (pid, start time): a process, not a number the kernel hands out again


def track(pids: Iterable[int]) -> set[Identity]:
    """The processes behind ``pids`` now, so that a later `any_alive` is not fooled by a PID the
    kernel gave to another process meanwhile (pid_max is 32768 here: under load PIDs come round in
    seconds)."""
    return {(pid, started) for pid in pids if (started := start_time(pid)) is not None}


def pid_alive(pid: int | Identity) -> bool:
    """True if the process exists and is not a zombie (for an Identity: the same process)."""
    if isinstance(pid, tuple):
        number, started = pid
        return start_time(number) == started and pid_alive(number)
    return process_state(pid) not in (None, "Z")


def any_alive(pids: Iterable[int | Identity]) -> set[int | Identity]:
    """The subset of ``pids`` (PIDs, or Identities from `track`) that still exist (non-zombie)."""
    return {pid for pid in pids if pid_alive(pid)}


def children_of(ppid: int) -> set[int]:
    """Live (non-zombie) children of ``ppid``, from /proc."""
    found: set[int] = set()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            state, parent = _state_and_ppid(entry.name)
        except (OSError, ValueError):
            continue  # exited meanwhile
        if state != b"Z" and parent == ppid:
            found.add(int(entry.name))
    return found


def signal_pids(pids: Iterable[int], sig: int) -> None:
    """Send ``sig`` to each of ``pids``; one that is gone already is skipped."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def wait_stopped(pids: Iterable[int], timeout: float = 5.0) -> None:
    """Wait until every one of ``pids`` is really stopped (SIGSTOP is delivered asynchronously)."""
    pids = set(pids)
    wait_until(
        lambda: all(process_state(pid) in ("T", "Z", None) for pid in pids),
        timeout=timeout,
        what=f"processes {sorted(pids)} to be stopped",
        interval=0.005,
    )


# ------------------------------------------------------------------------------------ PR_SET_PDEATHSIG

_libc = ctypes.CDLL(None, use_errno=True)  # loaded here, not in the child between fork and exec
_PR_SET_PDEATHSIG = 1


def pdeathsig(sig: int) -> Callable[[], None]:
    """A ``preexec_fn`` that makes the child get ``sig`` when the process that started it dies (e.g. a
    SIGKILLed pytest). It runs in the child between fork and exec, after Popen's setuid (which would
    clear it). The signal is tied to the starting *thread*: start children from the main thread."""

    def set_pdeathsig() -> None:
        _libc.prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)

    return set_pdeathsig


die_with_parent = pdeathsig(signal.SIGKILL)


# ----------------------------------------------------------------------------------------------- cleanup


class Server(Protocol):
    """What ``Resources.close()`` needs of a server (PgServer, RedisServer)."""

    name: str

    @property
    def running(self) -> bool: ...

    def sigcont(self) -> None: ...

    def stop(self) -> None: ...


S = TypeVar("S", bound=Server)


class Resources(Generic[S]):
    """What a fixture must clean up; separate from the fixture so weakref.finalize can own it."""

    def __init__(self) -> None:
        self.servers: list[S] = []  # in start order: a primary/master before its replica
        self.base_dir: Path | None = None
        self.keep_dir = False

    def close(self) -> None:
        """SIGCONT every server, stop them in reverse start order (each one even if another one fails),
        remove ``base_dir`` unless ``keep_dir``; raise FixtureError naming what could not be stopped."""
        errors: list[str] = []
        for server in self.servers:  # nothing may stay stopped: a stopped replica blocks the
            with contextlib.suppress(Exception):  # primary's shutdown (walsender waits for it)
                if server.running:
                    server.sigcont()
        for server in reversed(self.servers):  # replica first, then primary
            try:
                server.stop()
            except Exception as exc:  # keep going: the other servers must be stopped too
                errors.append(f"{server.name}: {exc!r}")
        if self.base_dir is not None and not self.keep_dir:
            shutil.rmtree(self.base_dir, ignore_errors=True)
        if errors:
            raise FixtureError("cleanup problems: " + "; ".join(errors))


class ServerGroup(Generic[S]):
    """The lifecycle a replication fixture shares: its Resources cleaned up by a finalizer (also if
    the test forgets close()), the temp dir kept on request, use as a context manager, one start.

    Subclasses call `_begin(what, unavailable_reason)` first thing in `start()`, then fill
    `self._res.base_dir` and `self._res.servers`.
    """

    def __init__(self, base_dir: str | Path | None, keep_dir: bool | None):
        self._res: Resources[S] = Resources()
        # keep the temp dir (data, logs) after close: keep_dir=True or PRETIX_AGENT_KEEP_FIXTURES=1
        self._res.keep_dir = bool(os.environ.get("PRETIX_AGENT_KEEP_FIXTURES")) if keep_dir is None else keep_dir
        self._finalizer = weakref.finalize(self, self._res.close)
        self._requested_base = Path(base_dir) if base_dir is not None else None
        self._started = False

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop every server (SIGCONT first, replicas before their primary), remove the temp dir.
        Idempotent."""
        self._finalizer()

    @property
    def base_dir(self) -> Path:
        assert self._res.base_dir is not None
        return self._res.base_dir

    @property
    def servers(self) -> list[S]:
        return list(self._res.servers)

    def _begin(self, what: str, unavailable_reason: str | None) -> None:
        if self._started:
            raise FixtureError(f"{what} already started")
        self._started = True
        if unavailable_reason:
            raise FixtureError(unavailable_reason)
