"""haproxy's Runtime API (the stats socket): one short exchange per call, and pure parsers.

Each call opens one connection (a Unix socket path, or "HOST:PORT" for `stats socket ipv4@...`),
sends its commands on one line separated by `;` (haproxy's non-interactive mode), half-closes,
and reads until haproxy closes. One timeout bounds the whole exchange, connect and read together,
so a stopped or wedged haproxy can delay a cycle by at most `timeout`, never stall it.

haproxy ends each command's output with an empty line and promises that no output contains one
(management guide, 9.3), which is how several commands in one exchange are told apart. Writing
succeeds silently: `set server` answers an empty output, and any text is an error message.

Everything that can go wrong raises `RuntimeApiError`, one line for a human plus a `kind` for the
caller (`missing`, `refused`, `permission`, `timeout`, `io`, `unknown_backend`, `unknown_server`,
`denied`, `rejected`, `garbage`). The parsers are pure functions of the reply text, tested on
replies captured from haproxy 2.6 and 3.0 (tests/unit/data/haproxy/); they live in replies.py.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from ..adapters.files import write_atomic
from ..errors import FileWriteError
from .replies import (
    ADMIN_STATES,
    ProcessIdentity,
    RuntimeApiError,
    ServerState,
    StatRow,
    parse_info,
    parse_servers_state,
    parse_stat_csv,
    process_identity,
    refusal,
    split_outputs,
)

MAX_REPLY = 16 * 1024 * 1024  # `show stat` of a large farm is well below this; a runaway peer is not



def _check_name(name: str, what: str) -> str:
    # haproxy names are [A-Za-z0-9_.:-]; refusing anything else also keeps `;` and newlines from
    # smuggling a second command into the line.
    if not name or not all(ch.isalnum() or ch in "_.:-" for ch in name) or not name.isascii():
        raise RuntimeApiError(f"{what} name {name!r} is not a valid haproxy name", "rejected")
    return name


class RuntimeApi:
    """A client for one Runtime API socket. Cheap to create; holds no connection between calls."""

    def __init__(self, address: str, timeout: float = 2.0):
        if not address:
            raise ValueError("address must be a socket path or HOST:PORT")
        self.address = address
        self.timeout = timeout

    def __repr__(self) -> str:
        return f"RuntimeApi({self.address!r}, timeout={self.timeout:g})"

    # -- transport ------------------------------------------------------------------------------

    def _connect(self, deadline: float) -> socket.socket:
        if self.address.startswith("/"):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            target: Any = self.address
        else:
            host, _, port = self.address.rpartition(":")
            host = host.strip("[]")
            if not host or not port.isdigit():
                raise RuntimeApiError(f"haproxy Runtime API address {self.address!r} is neither a socket path "
                                      "nor HOST:PORT", "io")
            try:
                family, kind, proto, _, target = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)[0]
            except (OSError, UnicodeError) as error:
                raise RuntimeApiError(f"haproxy Runtime API at {self.address}: cannot resolve {host}: {error}",
                                      "io") from None
            sock = socket.socket(family, kind, proto)
        try:
            sock.settimeout(max(0.001, deadline - time.monotonic()))
            sock.connect(target)
        except BaseException:
            sock.close()
            raise
        return sock

    def _exchange(self, line: str) -> str:
        """Send one line, return everything haproxy answers until it closes the connection."""
        where = f"haproxy Runtime API at {self.address}"
        deadline = time.monotonic() + self.timeout
        chunks: list[bytes] = []
        size = 0
        try:
            with self._connect(deadline) as sock:
                sock.settimeout(max(0.001, deadline - time.monotonic()))
                sock.sendall(line.encode("ascii") + b"\n")
                # Half-close: the worker answers a line at once, but the master CLI waits for the
                # end of input; socat, which haproxy's documentation uses, does the same.
                sock.shutdown(socket.SHUT_WR)
                while True:
                    sock.settimeout(max(0.001, deadline - time.monotonic()))
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    chunks.append(chunk)
                    size += len(chunk)
                    if size > MAX_REPLY:
                        raise RuntimeApiError(f"{where}: the reply exceeds {MAX_REPLY} bytes", "garbage")
        except FileNotFoundError:
            raise RuntimeApiError(f"{where}: no such socket: is haproxy running, with `stats socket "
                                  f"{self.address} level admin` in its global section?", "missing") from None
        except ConnectionRefusedError:
            raise RuntimeApiError(f"{where}: connection refused: haproxy is not running (or is reloading)",
                                  "refused") from None
        except PermissionError:
            raise RuntimeApiError(f"{where}: permission denied: give the socket a group the agent's user is "
                                  "in (stats socket ... mode 660 group GROUP)", "permission") from None
        except TimeoutError:
            raise RuntimeApiError(f"{where}: no complete answer within {self.timeout:g} s", "timeout") from None
        except ConnectionResetError:
            raise RuntimeApiError(f"{where}: haproxy reset the connection", "io") from None
        except OSError as error:
            raise RuntimeApiError(f"{where}: {error.strerror or error}", "io") from None
        try:
            return b"".join(chunks).decode("utf-8")
        except UnicodeDecodeError:
            raise RuntimeApiError(f"{where}: the reply is not text", "garbage") from None

    def execute(self, *commands: str) -> list[str]:
        """Send `commands` in one exchange and return each one's output (text, maybe empty).

        Commands must not contain `;` or newlines (names are checked by the typed methods below).
        Raise RuntimeApiError when the exchange fails or the reply is not haproxy's.
        """
        if not commands:
            return []
        for command in commands:
            if not command or any(ch in command for ch in ";\n\r\\") or not command.isascii():
                raise RuntimeApiError(f"refusing to send {command!r}: a command must be one plain ASCII line",
                                      "rejected")
        return split_outputs(self._exchange("; ".join(commands)), len(commands))

    def command(self, command: str) -> str:
        """Send one command and return its output; raise RuntimeApiError if haproxy refused it."""
        output = self.execute(command)[0]
        error = refusal(command, output)
        if error is not None:
            raise error
        return output

    # -- typed commands -------------------------------------------------------------------------

    def servers_state_text(self, backend: str | None = None) -> str:
        """The raw `show servers state` reply, as haproxy's server-state-file wants it."""
        command = "show servers state" if backend is None else f"show servers state {_check_name(backend, 'backend')}"
        text = self.command(command)
        parse_servers_state(text)  # never hand on (or save) a reply that is not one
        return text

    def servers_state(self, backend: str | None = None) -> list[ServerState]:
        """Every server's state (or one backend's). Raise RuntimeApiError (unknown_backend, ...)."""
        return parse_servers_state(self.servers_state_text(backend))

    def info(self) -> dict[str, str]:
        return parse_info(self.command("show info"))

    def process_identity(self) -> ProcessIdentity:
        """Which haproxy process answers now; compare with the last one to detect reloads/restarts."""
        return process_identity(self.info())

    def stat(self) -> list[StatRow]:
        return parse_stat_csv(self.command("show stat"))

    def set_server_state(self, backend: str, server: str, state: str) -> None:
        """Set a server's admin state to ready, drain or maint (clearing the other forced state).

        Raise RuntimeApiError: unknown_backend, unknown_server, denied (socket not `level admin`),
        or any transport kind. Success is silent in haproxy; any other text is an error.
        """
        command = set_state_command(backend, server, state)
        output = self.command(command)
        if output.strip():
            raise RuntimeApiError(f"haproxy refused {command!r}: {output.strip().splitlines()[0]}", "rejected")

    def set_server_states(self, changes: Sequence[tuple[str, str, str]]) -> list[RuntimeApiError | None]:
        """Set many servers' admin states in one exchange; return, per change, None or why it failed.

        Raise RuntimeApiError only when the exchange itself fails (then nothing is known to be set).
        """
        return self.run_silent([set_state_command(backend, server, state) for backend, server, state in changes])

    def shutdown_sessions(self, backend: str, server: str) -> None:
        """Close every session haproxy holds to a server (its clients see the connection end).

        Raise RuntimeApiError: unknown_backend, unknown_server, denied, or any transport kind."""
        (error,) = self.run_silent([shutdown_sessions_command(backend, server)])
        if error is not None:
            raise error

    def run_silent(self, commands: Sequence[str]) -> list[RuntimeApiError | None]:
        """Send commands that answer nothing on success (`set server`, `shutdown sessions`) in one
        exchange; return, per command, None or why haproxy refused it.

        Raise RuntimeApiError only when the exchange itself fails (then nothing is known to be done).
        """
        results: list[RuntimeApiError | None] = []
        for command, output in zip(commands, self.execute(*commands), strict=True):
            error = refusal(command, output)
            if error is None and output.strip():
                error = RuntimeApiError(f"haproxy refused {command!r}: {output.strip().splitlines()[0]}", "rejected")
            results.append(error)
        return results

    def save_server_state(self, path: Path) -> str:
        """Write `show servers state` to `path` atomically (haproxy's `server-state-file`) and
        return the text, so the next reload or restart starts with the current states.

        Raise RuntimeApiError if haproxy cannot be asked, FileWriteError if the file cannot be written.
        """
        text = self.servers_state_text()
        write_state_file(path, text)
        return text


def set_state_command(backend: str, server: str, state: str) -> str:
    """`set server B/S state ready|drain|maint`, its names checked."""
    if state not in ADMIN_STATES:
        raise ValueError(f"state must be one of {', '.join(ADMIN_STATES)}, not {state!r}")
    return f"set server {_check_name(backend, 'backend')}/{_check_name(server, 'server')} state {state}"


def shutdown_sessions_command(backend: str, server: str) -> str:
    """`shutdown sessions server B/S`: close the sessions haproxy holds to a server. A server put in
    maint gets no new sessions, but those it has go on: a database client's persistent connection
    (pretix keeps them 120 s) would keep reading from a lagging replica."""
    return f"shutdown sessions server {_check_name(backend, 'backend')}/{_check_name(server, 'server')}"


def write_state_file(path: Path, text: str) -> None:
    """Replace haproxy's server-state file with `text` atomically (readable by haproxy, 0644).

    haproxy reads the file once, while it starts (a reload re-executes it): a torn file would make
    it ignore servers, so the file is written to a temporary name and renamed.
    """
    try:
        write_atomic(path, text.encode("utf-8"), mode=0o644)
    except FileWriteError as error:
        raise FileWriteError(f"haproxy server-state file: {error}") from None


def states_by_server(states: Iterable[ServerState]) -> dict[tuple[str, str], ServerState]:
    """Index `show servers state` rows by (backend, server)."""
    return {(state.backend, state.server): state for state in states}
