"""haproxy's Runtime API replies, parsed: pure functions of the text haproxy sends.

`show servers state`, `show info` and `show stat` (CSV) into frozen values; several commands'
outputs told apart (each ends with an empty line, management guide 9.3); haproxy's refusals
("No such server.", "Permission denied", "Unknown command") recognised and named. Tested on replies
captured from haproxy 2.6 and 3.0 (tests/unit/data/haproxy/). The exchange itself is runtime.py.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from ..errors import AgentError

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
