"""The configuration: one schema that validates, documents and builds frozen typed objects.

`load(path)` reads one TOML file and returns a `Config`, or raises `ConfigError` carrying every
problem found at once, each with its TOML path and (where the text shows it) its line. Every
section is optional, so one package serves app nodes, load balancers and database nodes alike.
Defaults live in the schema below and nowhere else; `reference_markdown()` renders the same schema
as the configuration reference in the README.
"""

from __future__ import annotations

import dataclasses
import difflib
import itertools
import json
import re
import socket
import sys
import zoneinfo
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError, ConfigProblem
from .schedule import Window, parse_weekly_time

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Ubuntu 22.04 only
    import tomli as tomllib

DEFAULT_PATH = Path("/etc/pretix-agent/agent.toml")

Path_ = tuple[str | int, ...]


# ---------------------------------------------------------------------------------------------
# Value kinds: each turns a raw TOML value into a typed one or raises ValueError(one sentence).


def _type_name(value: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a float", str: "a string", list: "an array",
            dict: "a table"}.get(type(value), type(value).__name__)


_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")


def parse_duration(value: Any) -> float:
    """Given "500ms", "2s", "1m30s", "5m", "1h" or "1d", return seconds as a float.

    Raise ValueError for anything else, bare numbers included: a unit-less 2 could mean
    seconds or milliseconds, and a wrong guess makes a check time out or never fire.
    """
    if isinstance(value, bool) or not isinstance(value, str):
        # Only suggest a spelling that would itself be accepted (not "-5s", "0s", "nans" or "infs").
        number = isinstance(value, int | float) and not isinstance(value, bool)
        hint = f' (write "{value}s" or "{value}ms")' if number and 0 < value < float("inf") else ""
        raise ValueError(f'expected a duration such as "2s" or "500ms", got {_type_name(value)}{hint}')
    text = value.strip()
    pos, total = 0, 0.0
    for match in _DURATION_RE.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        pos = match.end()
    if pos != len(text) or not text:
        raise ValueError(f'expected a duration such as "2s", "500ms" or "1m30s", got "{value}"')
    if total <= 0:
        raise ValueError(f'expected a duration greater than zero, got "{value}"')
    return total


_SIZE_UNITS = {"": 1, "b": 1, "kb": 1000, "mb": 1000**2, "gb": 1000**3, "kib": 1024, "mib": 1024**2,
               "gib": 1024**3}
_SIZE_RE = re.compile(r"(\d+(?:\.\d+)?)\s*([a-z]*)")


def parse_size(value: Any) -> int:
    """Given a byte count (an integer) or "16MiB", "512kB", "1GiB", return bytes as an int.

    Raise ValueError for negative numbers, unknown units or other types.
    """
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise ValueError(f"expected a size of zero or more bytes, got {value}")
        return value
    if not isinstance(value, str):
        raise ValueError(f'expected a size such as "16MiB" or a number of bytes, got {_type_name(value)}')
    match = _SIZE_RE.fullmatch(value.strip().lower())
    if not match or match.group(2) not in _SIZE_UNITS:
        raise ValueError(f'expected a size such as "16MiB", "512kB" or a number of bytes, got "{value}"')
    return int(float(match.group(1)) * _SIZE_UNITS[match.group(2)])


def _string(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {_type_name(value)}")
    return value


def _nonempty_string(value: Any) -> str:
    text = _string(value)
    if not text.strip():
        raise ValueError("must not be empty")
    return text


def _absolute_path(value: Any) -> Path:
    text = _string(value)
    if not text.startswith("/"):
        raise ValueError(f'expected an absolute path, got "{text}"')
    if "\0" in text:
        raise ValueError("a path cannot contain a NUL byte")
    return Path(text)


def _timezone(value: Any) -> zoneinfo.ZoneInfo:
    text = _string(value)
    try:
        return zoneinfo.ZoneInfo(text)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ValueError(f'unknown timezone "{text}": use an IANA name such as "Europe/Berlin" or "UTC"'
                         ) from None


def _choice(*choices: str) -> Callable[[Any], str]:
    def convert(value: Any) -> str:
        text = _string(value)
        if text not in choices:
            raise ValueError(f'expected one of {", ".join(choices)}, got "{text}"')
        return text
    convert.choices = choices  # type: ignore[attr-defined]
    return convert


def _weekly_time(value: Any) -> Any:
    return parse_weekly_time(_string(value))


def _boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {_type_name(value)}")
    return value


def _integer(low: int, high: int) -> Callable[[Any], int]:
    def convert(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"expected an integer from {low} to {high}, got {_type_name(value)}")
        if not low <= value <= high:
            raise ValueError(f"expected an integer from {low} to {high}, got {value}")
        return value
    convert.kind = f"integer {low}..{high}"  # type: ignore[attr-defined]
    return convert


def _ratio(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 1:
        raise ValueError(f"expected a number greater than 0 and at most 1 (a fraction), got {value!r}")
    return float(value)


def _priority_steps(value: Any) -> tuple[int, ...]:
    # kombu puts step 0 in the list named after the queue and maps a priority to the highest step
    # not above it, so the steps must start at 0 and rise.
    if not isinstance(value, list) or not value or not all(
            isinstance(step, int) and not isinstance(step, bool) and 0 <= step <= 255 for step in value):
        raise ValueError(f"expected a non-empty array of integers from 0 to 255, got {_type_name(value)}")
    if value[0] != 0 or any(b <= a for a, b in itertools.pairwise(value)):
        raise ValueError(f"expected steps rising from 0 such as [0, 4, 8], got {value}")
    return tuple(value)


def _string_list(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(item, str) and item for item in value):
        raise ValueError(f"expected an array of non-empty strings, got {_type_name(value)}")
    return tuple(value)


def _url(*schemes: str) -> Callable[[Any], str]:
    def convert(value: Any) -> str:
        text = _string(value)
        scheme = text.split("://", 1)[0] if "://" in text else ""
        if scheme not in schemes or not text.split("://", 1)[1]:
            raise ValueError(f"expected a URL starting with {' or '.join(s + '://' for s in schemes)}, "
                             f"got \"{_redacted_url(text)}\"")
        return text
    convert.kind = "URL (" + ", ".join(schemes) + ")"  # type: ignore[attr-defined]
    return convert


def _redacted_url(text: str) -> str:
    # Error messages are printed and logged: never echo a password from a DSN or URL.
    return re.sub(r"(://[^:@/\s]*):[^@/\s]+@", r"\1:***@", text)


def _endpoint(value: Any) -> str:
    text = _string(value)
    if text == "" or text.startswith("/"):
        return text
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f'expected a Unix socket path or "HOST:PORT", got "{text}"')
    return text


def _optional_path(value: Any) -> Path:
    return _absolute_path(value)


_UNIT_RE = re.compile(r"[A-Za-z0-9:_.\\@-]+\.(service|socket|target|timer|mount|path|slice|scope|device|swap"
                      r"|automount)")


def _unit_list(value: Any) -> tuple[str, ...]:
    units = _string_list(value)
    if not units:
        raise ValueError("expected at least one unit")
    for unit in units:
        if not _UNIT_RE.fullmatch(unit):
            raise ValueError(f'"{unit}" is not a unit name: give the full name with its type, e.g. '
                             '"pretix-web.service" or "pretix-worker@mail.service"')
    return units


def _dsn(value: Any) -> str:
    text = _nonempty_string(value)
    if "://" in text and not text.startswith(("postgresql://", "postgres://")):
        raise ValueError(f'expected a libpq DSN ("host=... dbname=...") or a postgresql:// URL, got '
                         f'"{_redacted_url(text)}"')
    return text


_KIND_NAMES: dict[Callable[[Any], Any], str] = {
    parse_duration: "duration", parse_size: "size", _string: "string", _nonempty_string: "string",
    _absolute_path: "absolute path", _timezone: "IANA timezone", _weekly_time: "weekday and time",
    _endpoint: "socket path or HOST:PORT", _optional_path: "absolute path", _boolean: "boolean",
    _ratio: "fraction", _string_list: "array of strings", _priority_steps: "array of integers",
    _dsn: "libpq DSN or URL", _unit_list: "array of units",
}


# ---------------------------------------------------------------------------------------------
# The schema.


@dataclass(frozen=True)
class Key:
    convert: Callable[[Any], Any]
    default: Any
    doc: str

    @property
    def kind(self) -> str:
        choices = getattr(self.convert, "choices", None)
        if choices:
            return "one of " + ", ".join(f'"{c}"' for c in choices)
        return getattr(self.convert, "kind", None) or _KIND_NAMES.get(self.convert, "value")


REQUIRED = object()
# What a key gets whose value was wrong or missing: a problem is already reported for it, and the
# typed configuration is not built from it. (None is a legitimate default for optional keys.)
INVALID: Any = type("Invalid", (), {"__repr__": lambda self: "<invalid>"})()


@dataclass(frozen=True)
class Table:
    doc: str
    keys: Mapping[str, Key | Table | TableArray | TableMap]


@dataclass(frozen=True)
class TableArray:
    doc: str
    table: Table


@dataclass(frozen=True)
class TableMap:
    """Named tables (`[checks.NAME]`) whose `type` key selects which keys apply besides `common`."""

    doc: str
    common: Table
    types: Mapping[str, Table]


_NAME_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")


SCHEMA = Table("", {
    "agent": Table("The daemon itself.", {
        "node": Key(_nonempty_string, "", "This node's name in status, logs and Loki labels; empty means "
                    "the host name."),
        "status_file": Key(_absolute_path, Path("/run/pretix-agent/status.json"),
                           "Where the daemon publishes its status (atomically) for pretix-agentctl."),
        "state_dir": Key(_absolute_path, Path("/var/lib/pretix-agent"),
                         "Directory for the daemon's durable state (systemd's StateDirectory=); the "
                         "default parent of the maintenance files."),
        "shutdown_drain_time": Key(parse_duration, 4.0, "At shutdown, how long this node is drained (agent-check "
                                   "answers drain, local haproxy servers drain) before logind may go on; keep it "
                                   "below logind's InhibitDelayMaxSec."),
        "reconcile_interval": Key(parse_duration, 5.0, "Backstop: the longest time between two full "
                                  "evaluations when nothing happens."),
    }),
    "log": Table("Logging.", {
        "level": Key(_choice("debug", "info", "warning", "error"), "info", "Lowest level logged."),
        "format": Key(_choice("auto", "journal", "console", "json"), "auto",
                      "auto: journal lines with `<N>` priority prefixes under systemd, key=value on a "
                      "terminal."),
    }),
    "maintenance": Table("Maintenance mode: the marker nginx looks at, the lock, the weekly windows.", {
        "marker": Key(_absolute_path, Path("/var/lib/pretix-agent/maintenance"),
                      "Exists exactly while maintenance is on; nginx answers 503 while it exists."),
        "lock": Key(_absolute_path, Path("/var/lib/pretix-agent/maintenance.lock"),
                    "While it exists, maintenance is on (`pretix-agentctl lock`, or `touch`)."),
        "timezone": Key(_timezone, zoneinfo.ZoneInfo("UTC"), "IANA timezone of the windows."),
        "window": TableArray("Weekly windows during which maintenance is on.", Table("", {
            "start": Key(_weekly_time, REQUIRED, 'Weekday and time, e.g. "Sun 22:00".'),
            "end": Key(_weekly_time, REQUIRED, 'Weekday and time, e.g. "Mon 05:00"; may be in the next '
                       "week."),
        })),
    }),
    "haproxy": Table("Reconfigure haproxy over its Runtime API when the checks gating a server fail.", {
        "socket": Key(_endpoint, "", 'Runtime API: a Unix socket path ("/run/haproxy/admin.sock") or "HOST:PORT"; '
                      "empty disables haproxy control."),
        "timeout": Key(parse_duration, 2.0, "Longest a Runtime API exchange may take."),
        "interval": Key(parse_duration, 2.0, "How often the actual state is read back (reloads, drift)."),
        "min_ready": Key(_integer(0, 1000), 1, "Never take out the last `min_ready` servers of a backend."),
        "hold_down": Key(parse_duration, 10.0, "Least time a server stays in a state the agent set before the "
                         "agent changes it again (hard failures excepted), so a flapping check cannot flap "
                         "haproxy."),
        "max_changes_per_minute": Key(_integer(1, 10000), 6, "Most state changes the agent sends per backend per "
                                      "minute."),
        "state_file": Key(_optional_path, None, "haproxy's `server-state-file`: after every change the agent "
                          "writes `show servers state` there, so a reload keeps what the agent set."),
        "server": TableArray("A haproxy server gated by checks.", Table("", {
            "backend": Key(_nonempty_string, REQUIRED, "Backend name, as in haproxy.cfg."),
            "server": Key(_nonempty_string, REQUIRED, "Server name within the backend."),
            "checks": Key(_string_list, REQUIRED, "Checks that must pass for the server to be ready."),
            "on_failure": Key(_choice("maint", "drain"), "maint", "Admin state while a gating check fails."),
            "local": Key(_boolean, False, "This server is this node: `pretix-agentctl drain` and a shutdown drain "
                         "it through the socket."),
        })),
    }),
    "agent_check": Table("Answer haproxy's agent-check for this node, so haproxy elsewhere can poll it.", {
        "listen": Key(_endpoint, "", 'Address to listen on, "HOST:PORT"; empty disables the responder.'),
        "checks": Key(_string_list, (), "Checks that must pass for this node to answer `up 100%`."),
        "weight": Key(_integer(0, 256), None, "Weight to announce (a percentage of the weight in haproxy.cfg, "
                      "0..256) while ready; none announces 100%."),
    }),
    "loki": Table("Ship logs to Grafana Loki (push API), with the journal as the buffer under systemd.", {
        "url": Key(_url("http", "https"), "", 'Base URL, e.g. "https://loki.example.org"; empty disables '
                   "shipping."),
        "tenant": Key(_string, "", "X-Scope-OrgID header (multi-tenant Loki); empty sends none."),
        "username": Key(_string, "", "Basic auth user (the password comes from `password_file`)."),
        "password_file": Key(_optional_path, None, "File holding the basic auth password (e.g. a systemd "
                             "credential)."),
        "bearer_token_file": Key(_optional_path, None, "File holding a bearer token."),
        "env": Key(_string, "", "The `env` label (e.g. \"prod\"); empty sends none."),
        "service_name": Key(_nonempty_string, "pretix-agent", "The `service_name` label of the agent's own lines."),
        "units": Key(_string_list, (), 'systemd units whose journal lines to ship too, e.g. ["pretix-web.service", '
                     '"pretix-worker.service", "nginx.service"].'),
        "batch_wait": Key(parse_duration, 1.0, "Longest a line waits before its batch is sent."),
        "batch_size": Key(parse_size, 1024**2, "Largest batch, uncompressed."),
        "min_backoff": Key(parse_duration, 0.5, "First retry delay after 429, 5xx or a network error."),
        "max_backoff": Key(parse_duration, 300.0, "Longest retry delay; retries never stop."),
        "timeout": Key(parse_duration, 10.0, "Longest a push may take."),
    }),
    "checks": TableMap("Named health checks, `[checks.NAME]`, each with a `type`.", Table("", {
        "interval": Key(parse_duration, 2.0, "Time between the starts of two probes."),
        "timeout": Key(parse_duration, 1.0, "Longest a probe may take (less than `interval`); a probe that "
                       "takes longer fails as a timeout."),
        "fall": Key(_integer(1, 100), 3, "Consecutive failed probes that make a passing check failing."),
        "rise": Key(_integer(1, 100), 2, "Consecutive passed probes that make a failing check passing."),
    }), {
        "postgres": Table("PostgreSQL: role, replication lag, WAL receiver, replay paused; the role needs "
                          "only `pg_monitor`.", {
            "dsn": Key(_dsn, REQUIRED, 'libpq DSN of the server to check, e.g. "host=db2 dbname=postgres '
                       'user=pretix_agent"; keep passwords in a passfile, not here.'),
            "primary_dsn": Key(_dsn, "", "Optional DSN of the primary (empty: none): on a standby, lag is "
                               "then also measured against the primary's current WAL position."),
            "role": Key(_choice("any", "primary", "standby"), "any", "The role this server must have."),
            "max_lag_bytes": Key(parse_size, 16 * 1024**2, "On a standby: most WAL not yet replayed."),
            "max_lag_seconds": Key(parse_duration, 30.0, "On a standby: most replay delay while the primary "
                                   "writes (does not grow on an idle primary)."),
        }),
        "redis": Table("Redis: PING latency, write probe, role and replication link, memory, celery queues.", {
            "url": Key(_url("redis", "rediss", "unix"), REQUIRED, 'e.g. "redis://127.0.0.1:6379/0"; a password '
                       "in the URL is never logged."),
            "write_probe": Key(_boolean, True, "Write a key with a short TTL (catches a read-only replica "
                               "behind a proxy)."),
            "max_latency": Key(parse_duration, 0.25, "Slowest acceptable PING."),
            "max_memory_ratio": Key(_ratio, 0.95, "Most used_memory / maxmemory (when maxmemory is set)."),
            "max_master_io": Key(parse_duration, 30.0, "On a replica: most master_last_io_seconds_ago (an idle "
                                 "master pings every 10 s)."),
            "queues": Key(_string_list, (), 'Celery queues to measure, e.g. ["default", "checkout", "mail", '
                          '"background", "notifications"].'),
            "max_queue_length": Key(_integer(1, 10**9), 1000, "Most tasks waiting in any listed queue."),
            "max_queue_age": Key(parse_duration, 300.0, "Longest a listed queue's oldest task may stay next in "
                                 "line (observed across probes: a lower bound, exact to one interval); a worker "
                                 "takes a task within seconds, and 5 minutes leaves room for long exports."),
            "queue_separator": Key(_nonempty_string, ":", "kombu's `sep` between a queue's name and its priority "
                                   'step ("mail:4"); pretix sets ":", kombu\'s own default, written in TOML, is '
                                   '"\\u0006\\u0016".'),
            "priority_steps": Key(_priority_steps, (0, 4, 8), "kombu's `priority_steps`: each queue is one list per "
                                  "step; pretix sets [0, 4, 8] (kombu's own default is [0, 3, 6, 9])."),
        }),
        "systemd": Table("systemd units, event-driven over D-Bus: a unit that fails is seen within "
                         "milliseconds.", {
            "units": Key(_unit_list, REQUIRED, 'Units that must be active, e.g. ["pretix-web.service", '
                         '"pretix-worker.service"].'),
        }),
        "http": Table("HTTP: pretix's `GET /healthcheck/`; 200 passes, anything else fails.", {
            "url": Key(_url("http", "https"), REQUIRED, 'e.g. "http://127.0.0.1:8345/healthcheck/".'),
            "host": Key(_string, "", "Host header (pretix answers 400 to a bare IP); empty means the URL's host."),
            "verify_tls": Key(_boolean, True, "Verify the certificate of an https URL."),
        }),
    }),
})


# ---------------------------------------------------------------------------------------------
# Typed configuration.


@dataclass(frozen=True)
class AgentSection:
    node: str
    status_file: Path
    state_dir: Path
    reconcile_interval: float
    shutdown_drain_time: float = 4.0


@dataclass(frozen=True)
class LogSection:
    level: str
    format: str


@dataclass(frozen=True)
class MaintenanceSection:
    marker: Path
    lock: Path
    timezone: zoneinfo.ZoneInfo
    windows: tuple[Window, ...]


@dataclass(frozen=True)
class PostgresCheck:
    dsn: str
    primary_dsn: str  # "" when not set
    role: str
    max_lag_bytes: int
    max_lag_seconds: float


@dataclass(frozen=True)
class RedisCheck:
    url: str
    write_probe: bool
    max_latency: float
    max_memory_ratio: float
    max_master_io: float
    queues: tuple[str, ...]
    max_queue_length: int
    max_queue_age: float = 300.0
    queue_separator: str = ":"
    priority_steps: tuple[int, ...] = (0, 4, 8)


@dataclass(frozen=True)
class SystemdCheck:
    units: tuple[str, ...]


@dataclass(frozen=True)
class HttpCheck:
    url: str
    host: str
    verify_tls: bool


_CHECK_OPTIONS: dict[str, Any] = {"postgres": PostgresCheck, "redis": RedisCheck, "http": HttpCheck,
                                  "systemd": SystemdCheck}


@dataclass(frozen=True)
class CheckSpec:
    name: str
    type: str
    interval: float
    timeout: float
    fall: int
    rise: int
    options: PostgresCheck | RedisCheck | HttpCheck | SystemdCheck


@dataclass(frozen=True)
class HaproxyServer:
    backend: str
    server: str
    checks: tuple[str, ...]
    on_failure: str
    local: bool = False


@dataclass(frozen=True)
class HaproxySection:
    socket: str
    timeout: float
    interval: float
    min_ready: int
    hold_down: float
    max_changes_per_minute: int
    state_file: Path | None
    servers: tuple[HaproxyServer, ...]


@dataclass(frozen=True)
class AgentCheckSection:
    listen: str
    checks: tuple[str, ...]
    weight: int | None


@dataclass(frozen=True)
class LokiSection:
    url: str
    tenant: str
    username: str
    password_file: Path | None
    bearer_token_file: Path | None
    env: str
    service_name: str
    units: tuple[str, ...]
    batch_wait: float
    batch_size: int
    min_backoff: float
    max_backoff: float
    timeout: float


@dataclass(frozen=True)
class Config:
    source: str
    agent: AgentSection
    log: LogSection
    maintenance: MaintenanceSection
    checks: tuple[CheckSpec, ...] = ()
    haproxy: HaproxySection | None = None
    agent_check: AgentCheckSection | None = None
    loki: LokiSection | None = None
    raw_sections: frozenset[str] = field(default_factory=frozenset)


# ---------------------------------------------------------------------------------------------
# Parsing.


def format_path(path: Path_) -> str:
    """Given ("maintenance", "window", 0, "start"), return "maintenance.window[0].start"."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + part
    return out


_HEADER_RE = re.compile(r"^\[\[\s*(.+?)\s*\]\]|^\[\s*(.+?)\s*\]")
_KEY_RE = re.compile(r'^((?:[A-Za-z0-9_-]+|"[^"]*"|\'[^\']*\')(?:\s*\.\s*(?:[A-Za-z0-9_-]+|"[^"]*"|\'[^\']*\'))*)\s*=')


def _split_dotted(text: str) -> tuple[str, ...]:
    parts = re.findall(r'"([^"]*)"|\'([^\']*)\'|([A-Za-z0-9_-]+)', text)
    return tuple(a or b or c for a, b, c in parts)


def locate_lines(text: str) -> dict[Path_, int]:
    """Given TOML text, return the line number of each table header and key, by TOML path.

    A light line scanner, not a parser: it is only used to point at lines in error messages, so a
    path it cannot place (inside a multi-line string, say) just gets no line number.
    """
    lines: dict[Path_, int] = {}
    counts: dict[tuple[str, ...], int] = {}
    current: Path_ = ()
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        header = _HEADER_RE.match(stripped)
        if header:
            if header.group(1):
                name = _split_dotted(header.group(1))
                counts[name] = counts.get(name, -1) + 1
                current = (*name, counts[name])
            else:
                current = _split_dotted(header.group(2))
            lines.setdefault(current, number)
            continue
        key = _KEY_RE.match(stripped)
        if key:
            lines.setdefault((*current, *_split_dotted(key.group(1))), number)
    return lines


class _Collector:
    def __init__(self, file: str, lines: dict[Path_, int]):
        self.file = file
        self.lines = lines
        self.problems: list[ConfigProblem] = []

    def add(self, path: Path_, message: str) -> None:
        line = None
        probe = path
        while probe and line is None:
            line = self.lines.get(probe)
            probe = probe[:-1]
        self.problems.append(ConfigProblem(self.file, format_path(path), message, line))


def _walk(table: Table, raw: Any, path: Path_, problems: _Collector) -> dict[str, Any]:
    """Validate `raw` against `table`; return converted values with defaults filled in."""
    not_a_table = not isinstance(raw, dict)
    if not_a_table:
        problems.add(path, f"expected a table, got {_type_name(raw)}")
        raw = {}
    known = list(table.keys)
    for name in raw:
        if name not in table.keys:
            close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
            hint = f'; did you mean "{close[0]}"?' if close else (
                f"; known keys: {', '.join(known)}" if known else "")
            problems.add((*path, name), f"unknown key{hint}")
    out: dict[str, Any] = {}
    for name, spec in table.keys.items():
        here = (*path, name)
        if isinstance(spec, Table):
            out[name] = _walk(spec, raw.get(name, {}), here, problems)
        elif isinstance(spec, TableArray):
            items = raw.get(name, [])
            if not isinstance(items, list):
                problems.add(here, f"expected an array of tables ([[{format_path(here)}]]), got "
                                   f"{_type_name(items)}")
                items = []
            out[name] = [_walk(spec.table, item, (*here, i), problems) for i, item in enumerate(items)]
        elif isinstance(spec, TableMap):
            out[name] = _walk_map(spec, raw.get(name, {}), here, problems)
        elif name in raw:
            try:
                out[name] = spec.convert(raw[name])
            except ValueError as error:
                problems.add(here, str(error))
                out[name] = INVALID
        elif spec.default is REQUIRED:
            if not not_a_table:  # "expected a table" already says it all; no echo per required key
                problems.add(here, "is required")
            out[name] = INVALID
        else:
            out[name] = spec.default
    return out


def _walk_map(spec: TableMap, raw: Any, path: Path_, problems: _Collector) -> dict[str, dict[str, Any]]:
    if not isinstance(raw, dict):
        problems.add(path, f"expected a table of named tables ([{format_path(path)}.NAME]), got {_type_name(raw)}")
        return {}
    out = {}
    for entry_name, entry in raw.items():
        here = (*path, entry_name)
        if not _NAME_RE.fullmatch(entry_name):
            problems.add(here, "a name may use only letters, digits, _ and - (at most 64)")
            continue
        if not isinstance(entry, dict):
            problems.add(here, f"expected a table, got {_type_name(entry)}")
            continue
        kind = entry.get("type")
        if kind not in spec.types:
            known = ", ".join(f'"{t}"' for t in spec.types)
            problems.add((*here, "type"), f"is required, one of {known}" if kind is None else
                         f'unknown type "{kind}", expected one of {known}')
            continue
        table = Table("", {"type": Key(_string, REQUIRED, ""), **spec.common.keys, **spec.types[str(kind)].keys})
        out[entry_name] = _walk(table, entry, here, problems)
    return out


def _build(values: dict[str, Any], problems: _Collector, source: str, sections: frozenset[str]) -> Config:
    agent = values["agent"]
    maintenance = values["maintenance"]
    windows = []
    for index, window in enumerate(maintenance["window"]):
        if INVALID in (window["start"], window["end"]):
            continue
        try:
            windows.append(Window(window["start"], window["end"]))
        except ValueError as error:
            problems.add(("maintenance", "window", index), str(error))
    if maintenance["marker"] is not INVALID and maintenance["marker"] == maintenance["lock"]:
        problems.add(("maintenance", "lock"), "must differ from maintenance.marker: the lock pins "
                     "maintenance on, the marker only shows it")
    checks = []
    for name, check in values["checks"].items():
        if INVALID not in (check["timeout"], check["interval"]) and check["timeout"] >= check["interval"]:
            problems.add(("checks", name, "timeout"), f"is {check['timeout']:g} s, must be less than interval "
                         f"({check['interval']:g} s): a probe must end before the next one starts")
        if any(value is INVALID for value in check.values()):
            continue  # already reported
        kind = _CHECK_OPTIONS[check["type"]]
        names = {option.name for option in dataclasses.fields(kind)}
        options = kind(**{k: v for k, v in check.items() if k in names})
        checks.append(CheckSpec(name=name, type=check["type"], interval=check["interval"], timeout=check["timeout"],
                                fall=check["fall"], rise=check["rise"], options=options))
    known_checks = set(values["checks"])

    def unknown_checks(path: Path_, names: Any) -> None:
        if names is INVALID:
            return
        for name in names or ():
            if name not in known_checks:
                close = difflib.get_close_matches(name, sorted(known_checks), n=1)
                problems.add(path, f'names check "{name}", which is not configured'
                             + (f'; did you mean "{close[0]}"?' if close else f" (add [checks.{name}])"))

    raw_haproxy = values["haproxy"]
    servers = []
    seen_servers: set[tuple[str, str]] = set()
    for index, server in enumerate(raw_haproxy["server"]):
        here: Path_ = ("haproxy", "server", index)
        unknown_checks((*here, "checks"), server["checks"])
        if any(value is INVALID for value in server.values()):
            continue
        key = (server["backend"], server["server"])
        if key in seen_servers:
            problems.add(here, f"{key[0]}/{key[1]} is listed twice")
        seen_servers.add(key)
        servers.append(HaproxyServer(server["backend"], server["server"], server["checks"], server["on_failure"],
                                     server["local"]))
    if servers and not raw_haproxy["socket"]:
        problems.add(("haproxy", "socket"), "is required when [[haproxy.server]] entries exist")
    haproxy = HaproxySection(**{k: v for k, v in raw_haproxy.items() if k != "server"},
                             servers=tuple(servers)) if raw_haproxy["socket"] else None
    raw_agent_check = values["agent_check"]
    unknown_checks(("agent_check", "checks"), raw_agent_check["checks"])
    agent_check = AgentCheckSection(**raw_agent_check) if raw_agent_check["listen"] else None
    raw_loki = values["loki"]
    if raw_loki["password_file"] is not None and raw_loki["bearer_token_file"] is not None:
        problems.add(("loki", "bearer_token_file"), "set either password_file (basic auth) or bearer_token_file")
    if raw_loki["username"] and raw_loki["password_file"] is None:
        problems.add(("loki", "password_file"), "is required with loki.username")
    loki = LokiSection(**raw_loki) if raw_loki["url"] else None
    return Config(
        source=source,
        agent=AgentSection(node=agent["node"] or socket.gethostname(), status_file=agent["status_file"],
                           state_dir=agent["state_dir"], reconcile_interval=agent["reconcile_interval"],
                           shutdown_drain_time=agent["shutdown_drain_time"]),
        log=LogSection(**values["log"]),
        maintenance=MaintenanceSection(marker=maintenance["marker"], lock=maintenance["lock"],
                                       timezone=maintenance["timezone"], windows=tuple(windows)),
        checks=tuple(checks),
        haproxy=haproxy,
        agent_check=agent_check,
        loki=loki,
        raw_sections=sections,
    )


def parse(text: str, source: str = "<config>") -> Config:
    """Given TOML text, return the Config it describes. Raise ConfigError listing every problem."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        # tomllib says "... (at line 3, column 7)": keep its words, put the line where ours go.
        message = str(error)
        match = re.search(r"\(at line (\d+), column \d+\)$", message)
        line = int(match.group(1)) if match else None
        raise ConfigError([ConfigProblem(source, "", f"not valid TOML: {message}", line)]) from None
    problems = _Collector(source, locate_lines(text))
    values = _walk(SCHEMA, raw, (), problems)
    config = _build(values, problems, source, frozenset(raw))
    if problems.problems:
        raise ConfigError(problems.problems)
    return config


def load(path: Path | str) -> Config:
    """Read and parse the file at `path`. Raise ConfigError (one problem) if it cannot be read."""
    source = str(path)
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise ConfigError([ConfigProblem(source, "", "no such file: create it (every section is "
                                         "optional, an empty file is valid) or pass -c FILE")]) from None
    except IsADirectoryError:
        raise ConfigError([ConfigProblem(source, "", "is a directory, not a configuration file")]) from None
    except PermissionError:
        raise ConfigError([ConfigProblem(source, "", "permission denied: run as root or as a member "
                                         "of the group that may read it")]) from None
    except OSError as error:
        raise ConfigError([ConfigProblem(source, "", f"cannot read: {error.strerror}")]) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError([ConfigProblem(source, "", f"not UTF-8 text (byte {error.start})")]) from None
    return parse(text, source)


def defaults() -> Config:
    """Return the configuration an empty file gives."""
    return parse("", "<defaults>")


def reference_markdown() -> str:
    """Render the schema as the configuration reference (kept in the README, checked by a test)."""
    out: list[str] = []

    def render(table: Table, path: Path_) -> None:
        rows = []
        for name, spec in table.keys.items():
            if isinstance(spec, Key):
                default = "(required)" if spec.default is REQUIRED else _show_default(spec, name)
                rows.append(f"| `{name}` | {spec.kind} | {default} | {spec.doc} |")
        if path:
            header = f"[[{format_path(path)}]]" if isinstance(path[-1], int) else f"[{format_path(path)}]"
            out.append(f"#### `{header.replace('[0]', '')}`\n")
            if table.doc:
                out.append(table.doc + "\n")
        if rows:
            out.append("| key | kind | default | meaning |\n| --- | --- | --- | --- |")
            out.extend(rows)
            out.append("")
        for name, spec in table.keys.items():
            if isinstance(spec, Table):
                render(spec, (*path, name))
            elif isinstance(spec, TableArray):
                render(Table(spec.doc, spec.table.keys), (*path, name, 0))
            elif isinstance(spec, TableMap):
                render(Table(spec.doc + " Keys every check has:", spec.common.keys), (*path, name, "NAME"))
                for kind, table in spec.types.items():
                    out.append(f'#### `[{format_path((*path, name, "NAME"))}]` with `type = "{kind}"`\n')
                    render(table, ())

    render(SCHEMA, ())
    return "\n".join(out).rstrip() + "\n"


def _show_default(key: Key, name: str) -> str:
    value = key.default
    if name == "node":
        return "host name"
    if value is None:
        return "none"
    if key.convert is parse_duration:
        return f'`"{value * 1000:g}ms"`' if value < 1 else f'`"{value:g}s"`'
    if key.convert is parse_size and value and value % 1024**2 == 0:
        return f'`"{value // 1024**2}MiB"`'
    if isinstance(value, bool):
        return "`true`" if value else "`false`"
    if isinstance(value, tuple):
        return "`[]`" if not value else "`" + json.dumps(list(value)) + "`"
    if isinstance(value, zoneinfo.ZoneInfo):
        return f'`"{value.key}"`'
    if isinstance(value, Path | str):
        return f'`"{value}"`'
    return f"`{value}`"
