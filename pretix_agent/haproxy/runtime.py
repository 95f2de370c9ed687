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
replies captured from haproxy 2.6 (tests/unit/data/haproxy/).
"""

from __future__ import annotations

import csv
import io
import socket
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from ..adapters.files import write_atomic
from ..errors import AgentError, FileWriteError

MAX_REPLY = 16 * 1024 * 1024  # `show stat` of a large farm is well below this; a runaway peer is not

# srv_admin_state bits (haproxy include/haproxy/server-t.h `enum srv_admin`, the same in 2.6 and
# 3.x; management guide "show servers state"). `set server B/S state maint|drain|ready` and an
# agent-check's maint/drain/ready words set and clear only the two forced ones, FMAINT and FDRAIN
# (setting one clears the other).
SRV_ADMF_FMAINT = 0x01  # forced into maintenance: `set server ... state maint`, agent "maint"
SRV_ADMF_IMAINT = 0x02  # maintenance inherited from a tracked server (`track`)
SRV_ADMF_CMAINT = 0x04  # maintenance from the configuration (`disabled`; comes with FMAINT)
SRV_ADMF_FDRAIN = 0x08  # forced into drain: `set server ... state drain`, agent "drain"
SRV_ADMF_IDRAIN = 0x10  # drain inherited from a tracked server
SRV_ADMF_RMAINT = 0x20  # maintenance because the server's address did not resolve (DNS)
SRV_ADMF_HMAINT = 0x40  # 2.6 docs' name; server-t.h: FQDN_CHANGED, "fqdn set from the CLI" (not a state)
ADMIN_MAINT_MASK = SRV_ADMF_FMAINT | SRV_ADMF_IMAINT | SRV_ADMF_CMAINT | SRV_ADMF_RMAINT
ADMIN_DRAIN_MASK = SRV_ADMF_FDRAIN | SRV_ADMF_IDRAIN
ADMIN_FLAG_NAMES = ((SRV_ADMF_FMAINT, "FMAINT"), (SRV_ADMF_IMAINT, "IMAINT"), (SRV_ADMF_CMAINT, "CMAINT"),
                    (SRV_ADMF_FDRAIN, "FDRAIN"), (SRV_ADMF_IDRAIN, "IDRAIN"), (SRV_ADMF_RMAINT, "RMAINT"),
                    (SRV_ADMF_HMAINT, "HMAINT"))

# srv_op_state (`enum srv_state`): only STOPPED means down; STOPPING is up but soft-stopping (a
# check answered 404 with `http-check disable-on-404`), STARTING is up and warming up (`slowstart`).
OP_STATES = {0: "stopped", 1: "starting", 2: "running", 3: "stopping"}

ADMIN_STATES = ("ready", "drain", "maint")

# The Runtime API's refusals as haproxy 2.6 words them (captured, tests/unit/data/haproxy/).
_REFUSALS = (
    ("No such backend.", "unknown_backend"),  # set server / get weight with an unknown backend
    ("Can't find backend.", "unknown_backend"),  # show servers state <unknown backend>
    ("No such server.", "unknown_server"),
    ("Permission denied", "denied"),  # the socket's `level` is below what the command needs
    ("Unknown command", "rejected"),  # 2.6: "Unknown command, but maybe one of the following ..."
)


class RuntimeApiError(AgentError):
    """The Runtime API could not be used, or haproxy refused a command. `kind` says which."""

    def __init__(self, message: str, kind: str):
        super().__init__(message)
        self.kind = kind


# ---------------------------------------------------------------------------------------------
# Parsed replies.


@dataclass(frozen=True)
class ServerState:
    """One server from `show servers state` (format version 1)."""

    backend: str
    server: str
    backend_id: int
    server_id: int
    address: str
    port: int | None
    op_state: int  # 0 stopped, 1 starting, 2 running, 3 stopping
    admin_flags: int  # srv_admin_state, the SRV_ADMF_* bits above
    weight: int  # srv_uweight: the current (user-visible) weight; 0 takes no new sessions
    initial_weight: int  # srv_iweight: the weight in the configuration
    seconds_since_change: int  # srv_time_since_last_change (operational changes)
    fields: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)  # every column

    @property
    def admin(self) -> str:
        """Effective admin state, by haproxy's own rule: any maint flag, else any drain flag, else ready.

        Includes states the agent cannot clear (configured `disabled`, a tracked server's state, a
        DNS failure); compare `forced` to see what `set server ... state` last set.
        """
        if self.admin_flags & ADMIN_MAINT_MASK:
            return "maint"
        if self.admin_flags & ADMIN_DRAIN_MASK:
            return "drain"
        return "ready"

    @property
    def forced(self) -> str:
        """The admin state `set server ... state` (or an agent-check word) set: FMAINT, FDRAIN or neither."""
        if self.admin_flags & SRV_ADMF_FMAINT:
            return "maint"
        if self.admin_flags & SRV_ADMF_FDRAIN:
            return "drain"
        return "ready"

    @property
    def admin_flag_names(self) -> tuple[str, ...]:
        return tuple(name for bit, name in ADMIN_FLAG_NAMES if self.admin_flags & bit)

    @property
    def operational(self) -> str:
        return OP_STATES.get(self.op_state, f"state {self.op_state}")

    @property
    def up(self) -> bool:
        """Operationally up in haproxy's view (its checks, agent checks): anything but stopped."""
        return self.op_state != 0


@dataclass(frozen=True)
class ProcessIdentity:
    """Which haproxy process answered. Equal identities mean the same process: a reload (new
    worker, new Pid and Start_time_sec) or a restart gives a different one."""

    pid: int
    start_time: int | None  # Start_time_sec (Unix time); absent from haproxy older than 2.5
    version: str = field(default="", compare=False)
    uptime: int | None = field(default=None, compare=False)

    def __str__(self) -> str:
        started = f", started {self.start_time}" if self.start_time is not None else ""
        return f"haproxy {self.version or '?'} pid {self.pid}{started}"


@dataclass(frozen=True)
class StatRow:
    """One line of `show stat` (CSV): a frontend, backend or server."""

    proxy: str  # pxname
    name: str  # svname: FRONTEND, BACKEND or the server's name
    status: str  # UP, DOWN, MAINT, DRAIN, "UP 1/3", "no check", OPEN, ...
    fields: Mapping[str, str] = field(compare=False, repr=False)

    def get(self, column: str) -> str:
        """The raw value of `column` (empty when haproxy left it empty or does not have it)."""
        return self.fields.get(column, "")

    def number(self, column: str) -> int | None:
        value = self.fields.get(column, "")
        return int(value) if value.lstrip("-").isdigit() else None

    @property
    def is_server(self) -> bool:
        return self.name not in ("FRONTEND", "BACKEND")

    @property
    def weight(self) -> int | None:
        return self.number("weight")

    @property
    def sessions(self) -> int | None:
        """Current sessions (scur)."""
        return self.number("scur")


# ---------------------------------------------------------------------------------------------
# Parsers: pure, each raising RuntimeApiError(kind="garbage") with the line at fault.


def _garbage(what: str, detail: str) -> RuntimeApiError:
    return RuntimeApiError(f"haproxy's {what} reply is not in the expected format: {detail}", "garbage")


def _show(line: str, limit: int = 80) -> str:
    text = line if len(line) <= limit else line[:limit] + "..."
    return repr(text)


def _int(value: str, what: str, column: str, number: int) -> int:
    try:
        return int(value)
    except ValueError:
        raise _garbage(what, f"line {number}: {column} is {_show(value)}, not a number") from None


def parse_servers_state(text: str) -> list[ServerState]:
    """Given the reply to `show servers state` (version 1), return its servers in order.

    Columns are found by the header line's names, so the 20 to 25 columns different releases
    write all parse. Raise RuntimeApiError(kind="garbage") for anything else, naming the line.
    """
    what = "show servers state"
    lines = text.rstrip("\n").split("\n") if text.strip() else []
    if not lines:
        raise _garbage(what, "it is empty")
    if lines[0].strip() != "1":
        if lines[0].strip().isdigit():
            raise _garbage(what, f"format version {lines[0].strip()} is not supported (only 1)")
        raise _garbage(what, f"line 1 should be the format version 1, got {_show(lines[0])}")
    if len(lines) < 2 or not lines[1].startswith("#"):
        raise _garbage(what, "line 2 should be the column header (# be_id be_name ...)")
    header = lines[1].lstrip("#").split()
    required = ("be_id", "be_name", "srv_id", "srv_name", "srv_addr", "srv_op_state", "srv_admin_state",
                "srv_uweight", "srv_iweight", "srv_time_since_last_change")
    missing = [name for name in required if name not in header]
    if missing:
        raise _garbage(what, f"the header lacks {', '.join(missing)}")
    servers = []
    for number, line in enumerate(lines[2:], start=3):
        if not line.strip() or line.startswith("#"):
            continue
        values = line.split()
        if len(values) != len(header):
            raise _garbage(what, f"line {number} has {len(values)} columns, the header {len(header)}: {_show(line)}")
        row = dict(zip(header, values, strict=True))
        port = row.get("srv_port", "")
        servers.append(ServerState(
            backend=row["be_name"], server=row["srv_name"],
            backend_id=_int(row["be_id"], what, "be_id", number),
            server_id=_int(row["srv_id"], what, "srv_id", number),
            address=row["srv_addr"], port=int(port) if port.isdigit() else None,
            op_state=_int(row["srv_op_state"], what, "srv_op_state", number),
            admin_flags=_int(row["srv_admin_state"], what, "srv_admin_state", number),
            weight=_int(row["srv_uweight"], what, "srv_uweight", number),
            initial_weight=_int(row["srv_iweight"], what, "srv_iweight", number),
            seconds_since_change=_int(row["srv_time_since_last_change"], what, "srv_time_since_last_change",
                                      number),
            fields=MappingProxyType(row)))
    return servers


def parse_info(text: str) -> dict[str, str]:
    """Given the reply to `show info`, return its "Key: value" lines as a dict of strings.

    Keys are kept as haproxy writes them (some contain spaces: "Unstoppable Jobs", "Build info").
    Raise RuntimeApiError(kind="garbage") for a line without ": " or a reply without Pid.
    """
    info: dict[str, str] = {}
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        key, separator, value = line.partition(":")
        if not separator or not key.strip():
            raise _garbage("show info", f"line {number} is not \"Key: value\": {_show(line)}")
        info[key.strip()] = value.strip()
    if "Pid" not in info:
        raise _garbage("show info", "there is no Pid line" if info else "it is empty")
    return info


def process_identity(info: Mapping[str, str]) -> ProcessIdentity:
    """Given a parsed `show info`, return the identity of the process that answered.

    Pid and Start_time_sec change on every reload (master-worker mode forks a new worker) and on
    every restart; nothing else changes them. Raise RuntimeApiError(kind="garbage") without Pid.
    """
    pid = info.get("Pid", "")
    if not pid.isdigit():
        raise _garbage("show info", f"Pid is {_show(pid)}, not a number")
    start = info.get("Start_time_sec", "")
    uptime = info.get("Uptime_sec", "")
    return ProcessIdentity(pid=int(pid), start_time=int(start) if start.isdigit() else None,
                           version=info.get("Version", ""), uptime=int(uptime) if uptime.isdigit() else None)


def parse_stat_csv(text: str) -> list[StatRow]:
    """Given the reply to `show stat` (CSV with a "# pxname,svname,..." header), return its rows.

    Raise RuntimeApiError(kind="garbage") when the header is missing or a row is malformed.
    """
    what = "show stat"
    lines = text.strip("\n").split("\n") if text.strip() else []
    if not lines or not lines[0].startswith("# pxname,svname,"):
        raise _garbage(what, f"line 1 should be the CSV header \"# pxname,svname,...\", got "
                       f"{_show(lines[0]) if lines else 'nothing'}")
    header = lines[0][2:].rstrip(",").split(",")
    rows = []
    for number, values in enumerate(csv.reader(io.StringIO("\n".join(lines[1:]))), start=2):
        if not values:
            continue
        if values[-1] == "":  # haproxy ends every line with a comma
            values = values[:-1]
        if len(values) != len(header):
            raise _garbage(what, f"line {number} has {len(values)} columns, the header {len(header)}")
        row = dict(zip(header, values, strict=True))
        rows.append(StatRow(proxy=row["pxname"], name=row["svname"], status=row.get("status", ""),
                            fields=MappingProxyType(row)))
    return rows


def split_outputs(reply: str, count: int) -> list[str]:
    """Given the reply to `count` commands sent in one exchange, return each command's output.

    haproxy ends every output with an empty line and never writes one inside an output, so the
    reply is `count` blocks, each of zero or more non-empty lines and an empty one. Raise
    RuntimeApiError(kind="garbage") when the reply does not have that shape (a truncated reply,
    or a peer that is not haproxy).
    """
    outputs: list[str] = []
    current: list[str] = []
    if reply and not reply.endswith("\n"):
        raise _garbage("Runtime API", f"it ends in the middle of a line (truncated?): {_show(reply[-80:])}")
    for line in reply.split("\n")[:-1]:
        if line == "":
            outputs.append("".join(f"{item}\n" for item in current))
            current = []
        else:
            current.append(line)
    if current or len(outputs) != count:
        got = f"{len(outputs)} complete output(s)" + (" and a partial one" if current else "")
        first = reply.split("\n", 1)[0]
        raise _garbage("Runtime API", f"expected {count} output(s) ending in an empty line, got {got}; it "
                       f"begins {_show(first)}")
    return outputs


def refusal(command: str, output: str) -> RuntimeApiError | None:
    """Given a command and its output, return the error haproxy's words mean, or None if none."""
    first = output.strip().split("\n", 1)[0]
    for words, kind in _REFUSALS:
        if first.startswith(words):
            hint = {
                "denied": ": the socket is not at `level admin` (stats socket ... level admin)",
                "unknown_backend": ": check the backend's name in haproxy.cfg",
                "unknown_server": ": check the server's name in haproxy.cfg",
                "rejected": ": this haproxy does not know the command",
            }[kind]
            return RuntimeApiError(f"haproxy refused {command!r}: {first.rstrip('.')}{hint}", kind)
    return None


# ---------------------------------------------------------------------------------------------
# The client.


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
