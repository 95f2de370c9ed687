"""The configuration: one schema that validates, documents and builds frozen typed objects.

`load(path)` reads one TOML file and returns a `Config`, or raises `ConfigError` carrying every
problem found at once, each with its TOML path and (where the text shows it) its line. Every
section is optional, so one package serves app nodes, load balancers and database nodes alike.
Defaults live in the schema below and nowhere else; `reference_markdown()` renders the same schema
as the configuration reference in the README.
"""

from __future__ import annotations

import dataclasses
import decimal
import difflib
import ipaddress
import itertools
import json
import math
import os
import re
import socket
import stat
import sys
import zoneinfo
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .display import printable
from .errors import ConfigError, ConfigProblem
from .redact import redact_text
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


MAX_DURATION = 366 * 86400.0
MAX_SIZE = 1024**5
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
    if text.startswith("-"):
        try:
            parse_duration(text[1:])
        except ValueError:
            pass
        else:
            raise ValueError(f'expected a duration greater than zero, got "{_excerpt(value)}"')
    pos, total = 0, 0.0
    for match in _DURATION_RE.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        pos = match.end()
    if pos != len(text) or not text:
        raise ValueError(f'expected a duration such as "2s", "500ms" or "1m30s", got "{_excerpt(value)}"')
    if total <= 0:
        raise ValueError(f'expected a duration greater than zero, got "{value}"')
    # Every duration ends up added to a clock or passed to select(): a year is more than any of them
    # means, and far less than what time.time() + it or a timerfd can hold.
    if not math.isfinite(total) or total > MAX_DURATION:
        raise ValueError(f'expected a duration of at most 366d, got "{_excerpt(value)}"')
    return total


_SIZE_UNITS = {"": 1, "b": 1, "kb": 1000, "mb": 1000**2, "gb": 1000**3, "kib": 1024, "mib": 1024**2,
               "gib": 1024**3}
_SIZE_RE = re.compile(r"(\d+(?:\.\d+)?)\s*([a-z]*)")


def parse_size(value: Any, maximum: int | None = None) -> int:
    """Given a byte count (an integer) or "16MiB", "512kB", "1GiB", return bytes as an int.

    Raise ValueError for negative numbers, unknown units, other types, and sizes above `maximum`
    (default MAX_SIZE, 1 PiB: more than any disk or WAL backlog this measures).
    """
    limit = MAX_SIZE if maximum is None else maximum
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise ValueError(f"expected a size of zero or more bytes, got {value}")
        if value > limit:
            raise ValueError(f"expected a size of at most {_show_size(limit)}, got {_excerpt(str(value))}")
        return value
    if not isinstance(value, str):
        raise ValueError(f'expected a size such as "16MiB" or a number of bytes, got {_type_name(value)}')
    match = _SIZE_RE.fullmatch(value.strip().lower())
    if not match or match.group(2) not in _SIZE_UNITS:
        raise ValueError(f'expected a size such as "16MiB", "512kB" or a number of bytes, got "{_excerpt(value)}"')
    size = decimal.Decimal(match.group(1)) * _SIZE_UNITS[match.group(2)]  # exact, however long the number
    if size > limit:
        raise ValueError(f'expected a size of at most {_show_size(limit)}, got "{_excerpt(value)}"')
    return int(size)


def _size_at_most(maximum: int) -> Callable[[Any], int]:
    def convert(value: Any) -> int:
        return parse_size(value, maximum)
    convert.kind = f"size (at most {_show_size(maximum)})"  # type: ignore[attr-defined]
    return convert


def _show_size(size: int) -> str:
    for unit, factor in (("PiB", 1024**5), ("TiB", 1024**4), ("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if size >= factor and size % factor == 0:
            return f"{size // factor}{unit}"
    return f"{size} bytes"


def _excerpt(text: str, limit: int = 40) -> str:
    """A value quoted in an error message: at most `limit` characters, control characters escaped."""
    shown = printable(text)
    return shown if len(shown) <= limit else shown[: limit - 3] + "..."


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
                             f"got \"{_excerpt(redact_text(text), 80)}\"")
        return text
    convert.kind = "URL (" + ", ".join(schemes) + ")"  # type: ignore[attr-defined]
    return convert


_HOSTNAME_RE = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)(?:\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*\.?")


def split_host_port(text: str) -> tuple[str, int]:
    """Given "HOST:PORT" ("127.0.0.1:8080", "[::1]:8080", "app1.example.org:8080"), return the host
    (without brackets) and the port. Raise ValueError (one sentence) for anything else."""
    host, colon, port = text.rpartition(":")
    bracketed = host.startswith("[") and host.endswith("]")
    name = host[1:-1] if bracketed else host
    if not colon or not name or not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536:
        raise ValueError(f'expected "HOST:PORT" with a port from 1 to 65535, got "{_excerpt(text)}"')
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        if not _HOSTNAME_RE.fullmatch(name):
            raise ValueError(f'"{_excerpt(name)}" is neither an IP address nor a host name (in "{_excerpt(text)}")'
                             ) from None
        return name, int(port)
    if address.version == 6 and not bracketed:
        raise ValueError(f'write an IPv6 address in brackets, e.g. "[::1]:{port}", got "{_excerpt(text)}"')
    return name, int(port)


def _listen(value: Any) -> str:
    text = _string(value)
    if text:
        split_host_port(text)
    return text


def _endpoint(value: Any) -> str:
    text = _string(value)
    if text == "":
        return text
    if text.startswith("/"):
        return str(_absolute_path(text))
    try:
        split_host_port(text)
    except ValueError as error:
        raise ValueError(f'expected a Unix socket path or "HOST:PORT": {error}') from None
    return text


def _optional_path(value: Any) -> Path:
    return _absolute_path(value)


def _textfile(value: Any) -> Path:
    path = _absolute_path(value)
    if not path.name.endswith(".prom") or path.name == ".prom":
        raise ValueError(f'expected a file name ending in ".prom" (node_exporter\'s textfile collector reads only '
                         f'those), got "{_excerpt(str(path))}"')
    return path


_textfile.kind = "absolute path ending in .prom"  # type: ignore[attr-defined]


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


Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# Who may ask the agent-check port by default: loopback and the private ranges (RFC 1918, IPv6
# unique local). Its answers carry operational reasons ("pretix-web.service failed") and every
# connection costs the daemon's thread a little work, while the load balancers of a cluster poll
# from its private network; one that polls from elsewhere is listed by hand (its polls get no answer
# until then, and the refusal is counted and logged).
AGENT_CHECK_ALLOW: tuple[Network, ...] = tuple(ipaddress.ip_network(text) for text in (
    "127.0.0.0/8", "::1/128", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7"))


def _networks(value: Any) -> tuple[Network, ...]:
    texts = _string_list(value)
    if not texts:
        raise ValueError('expected at least one network; to allow every address write ["0.0.0.0/0", "::/0"]')
    networks = []
    for text in texts:
        try:
            networks.append(ipaddress.ip_network(text.strip()))
        except ValueError:
            try:
                loose = ipaddress.ip_network(text.strip(), strict=False)
            except ValueError:
                raise ValueError(f'"{text}" is not a network: write an address with its prefix length, e.g. '
                                 '"10.0.0.0/8", "192.0.2.7/32" or "2001:db8::/32"') from None
            raise ValueError(f'"{text}" has host bits set: write "{loose}"') from None
    return tuple(networks)


def _dsn(value: Any) -> str:
    text = _nonempty_string(value)
    if "://" in text and not text.startswith(("postgresql://", "postgres://")):
        raise ValueError(f'expected a libpq DSN ("host=... dbname=...") or a postgresql:// URL, got '
                         f'"{_excerpt(redact_text(text), 80)}"')
    return text


def _optional_dsn(value: Any) -> str:
    return "" if value == "" else _dsn(value)


_optional_dsn.kind = "libpq DSN or URL"  # type: ignore[attr-defined]
def _cluster_dsn(value: Any) -> str:
    """A DSN for the cluster's shared state: no password in it (agent.toml is readable by the
    operators' group, who must never need the database's credentials), and several hosts only
    with target_session_attrs=read-write (else a replica may be chosen and every write fails)."""
    text = _dsn(value)
    if redact_text(text) != text:
        raise ValueError("holds a password, and agent.toml is readable by the operators' group: put it in a "
                         "passfile readable by the daemon alone ([cluster] passfile) and remove it here")
    try:
        from psycopg import Error as PsycopgError
        from psycopg.conninfo import conninfo_to_dict
    except ImportError:
        raise ValueError("needs psycopg 3: apt install python3-psycopg") from None
    try:
        params = conninfo_to_dict(text)
    except PsycopgError as error:
        # libpq quotes the word or value it choked on; keep the words, never the value
        message = re.sub(r'(after|value) "[^"]*"', r'\1 "…"', str(error).strip().splitlines()[0])
        raise ValueError(f"not a valid libpq DSN: {message}") from None
    hosts = str(params.get("host") or params.get("hostaddr") or "").split(",")
    if len(hosts) > 1 and params.get("target_session_attrs") != "read-write":
        raise ValueError("lists several hosts: add target_session_attrs=read-write, so the agent connects "
                         "to the primary and follows a failover")
    return text


_CLUSTER_ROLES = ("app", "load-balancer", "database")


def _cluster_roles(value: Any) -> tuple[str, ...]:
    roles = _string_list(value)
    for role in roles:
        if role not in _CLUSTER_ROLES:
            raise ValueError(f'unknown role "{_excerpt(role)}", expected some of {", ".join(_CLUSTER_ROLES)}')
    return tuple(dict.fromkeys(roles))


_cluster_roles.kind = "array of " + ", ".join(f'"{r}"' for r in _CLUSTER_ROLES)  # type: ignore[attr-defined]


def _cluster_name(value: Any) -> str:
    text = _string(value)
    if not _NAME_RE.fullmatch(text):
        raise ValueError("a name may use only letters, digits, _ and - (1 to 64)")
    return text


_KIND_NAMES: dict[Callable[[Any], Any], str] = {
    parse_duration: "duration", parse_size: "size", _string: "string", _nonempty_string: "string",
    _absolute_path: "absolute path", _timezone: "IANA timezone", _weekly_time: "weekday and time",
    _endpoint: "socket path or HOST:PORT", _listen: "HOST:PORT", _optional_path: "absolute path", _boolean: "boolean",
    _ratio: "fraction", _string_list: "array of strings", _priority_steps: "array of integers",
    _dsn: "libpq DSN or URL", _unit_list: "array of units",
    _networks: "array of networks (CIDR)",
    _cluster_dsn: "libpq DSN or URL, no password", _cluster_name: "name",
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


@dataclass(frozen=True)
class Derived:
    """A default that is a file in `[agent] state_dir`, whatever that is set to."""

    name: str
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
                         "Directory for the daemon's durable state (systemd's StateDirectory=): the drain "
                         "request, haproxy's memory, the Loki cursor, and by default the maintenance marker "
                         "and lock."),
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
        "marker": Key(_absolute_path, Derived("maintenance"),
                      "Exists exactly while maintenance is on; nginx answers 503 while it exists."),
        "lock": Key(_absolute_path, Derived("maintenance.lock"),
                    "While it exists, maintenance is on (`pretix-agentctl lock`, or `touch`)."),
        "timezone": Key(_timezone, zoneinfo.ZoneInfo("UTC"), "IANA timezone of the windows."),
        "on_failing": Key(_string_list, (), "Checks (of shared dependencies, such as Redis) that close the shop "
                          "while one fails: maintenance is on with cause `check:NAME` and ends by itself when the "
                          "check passes again (its `rise`); the lock is never touched. Default: none."),
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
        "hold_down": Key(parse_duration, 10.0, "Damping for a server that flaps: taken out again within "
                         "`flap_window`, it stays out at least this long, twice as long for each further time "
                         "(at most `hold_down_max`). A server taken out once returns as soon as its checks pass "
                         "again (their `rise`)."),
        "hold_down_max": Key(parse_duration, 300.0, "Longest a flapping server is held out by its damping."),
        "flap_window": Key(parse_duration, 300.0, "A server taken out again within this time of its last "
                           "take-out is flapping (its hold-down doubles); each quiet `flap_window` halves it "
                           "again."),
        "shared_checks": Key(_string_list, (), "Checks of dependencies every server shares (Redis, the primary "
                             "database): while one fails, a soft failure takes no server out, and status names "
                             "the cause. Hard failures (refused, gone) still act."),
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
            "shared_checks": Key(_string_list, None, "This server's own `shared_checks` (e.g. `[]` for a database "
                                 "replica that Redis does not explain); none: the section's."),
            "shutdown_sessions": Key(_boolean, False, "When the agent takes this server out, also shut the "
                                     "sessions haproxy holds to it (`shutdown sessions server`), so persistent "
                                     "connections (pretix's database connections to a replica) move at once."),
        })),
    }),
    "agent_check": Table("Answer haproxy's agent-check for this node, so haproxy elsewhere can poll it.", {
        "listen": Key(_listen, "", 'Address to listen on, "HOST:PORT" (an IPv6 address in brackets); empty '
                      "disables the responder."),
        "checks": Key(_string_list, (), "Checks that must pass for this node to answer `up 100%`."),
        "shared_checks": Key(_string_list, (), "Checks of dependencies every node shares (Redis, the primary): "
                             "while one fails, a soft failure of `checks` is that cause's, the same on every node, "
                             "and the answer stays `up` (with the cause) instead of taking every node out at once; a "
                             "hard failure (refused, unit gone) still answers `down`."),
        "weight": Key(_integer(0, 256), None, "Weight to announce (a percentage of the weight in haproxy.cfg, "
                      "0..256) while ready; none announces 100%."),
        "allow": Key(_networks, AGENT_CHECK_ALLOW, "Source networks that get an answer (IPv4 and IPv6 CIDR); a "
                     "connection from elsewhere is closed at once, unanswered. The default is loopback and the "
                     'private ranges; list public load balancers by hand, or ["0.0.0.0/0", "::/0"] for any.'),
        "idle_timeout": Key(parse_duration, 1.0, "Longest a connection stays open after its answer (haproxy closes "
                            "at once; a client that does not is closed)."),
        "max_connections": Key(_integer(1, 65536), 256, "Most answered connections left open at once; beyond it "
                               "the oldest of the busiest source is closed. New connections are always answered."),
        "max_per_source": Key(_integer(1, 65536), 8, "Most answered connections left open per source address (an "
                              "IPv6 /64 counts as one); beyond it that source's oldest is closed."),
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
        "batch_size": Key(_size_at_most(64 * 1024**2), 1024**2, "Largest batch, uncompressed (held in memory "
                          "while it is sent)."),
        "min_backoff": Key(parse_duration, 0.5, "First retry delay after 429, 5xx or a network error."),
        "max_backoff": Key(parse_duration, 300.0, "Longest retry delay; retries never stop."),
        "timeout": Key(parse_duration, 10.0, "Longest a push may take."),
        "structured_metadata": Key(_boolean, True, "Send each line's level and event name as structured metadata "
                                   "(Loki 3, or 2.9 with allow_structured_metadata); set false for an older Loki, "
                                   "which refuses such lines with 400."),
    }),
    "metrics": Table("Prometheus metrics: served over HTTP, or written for node_exporter's textfile collector.", {
        "listen": Key(_listen, "", 'Address to serve `/metrics` on, "HOST:PORT" (e.g. "0.0.0.0:8998"; an IPv6 '
                      "address in brackets); empty serves none."),
        "textfile": Key(_textfile, None, "A file for node_exporter's textfile collector (e.g. "
                        '"/var/lib/prometheus/node-exporter/pretix-agent.prom"), replaced atomically; none writes '
                        "none."),
    }),
    "lock_fencing": Table("On a node that reaches the primary: terminate a hung session that holds pretix's "
                          "advisory locks while other sessions wait for them (docs/lock_fencing.md).", {
        "dsn": Key(_optional_dsn, "", 'libpq DSN of the primary, e.g. "host=10.0.0.10 dbname=postgres '
                   'user=pretix_agent_fencing", as a role with pg_signal_backend and pg_read_all_stats; keep '
                   "the password in a passfile; empty disables lock fencing."),
        "max_hold": Key(parse_duration, 2.0, "Longest a session may sit idle in transaction holding an advisory "
                        "lock others wait for; below pretix's 3 s lock_timeout, at least 500ms."),
        "interval": Key(parse_duration, 1.0, "How often the locks are looked at (at most max_hold); a holder "
                        "seen before max_hold is looked at again the moment it passes max_hold."),
        "timeout": Key(parse_duration, 0.5, "Longest one query (or connecting) may take; less than interval."),
        "enforce": Key(_boolean, True, "false: a dry run that reports whom it would terminate and terminates "
                       "nobody."),
        "databases": Key(_string_list, (), 'Only locks in these databases count, e.g. ["pretix"]; empty: '
                         "every database."),
        "users": Key(_string_list, (), 'Only sessions of these roles are terminated, e.g. ["pretix"]; empty: '
                     "every role."),
    }),
    "cluster": Table("The cluster as one, through PostgreSQL: a cluster-wide lock every node mirrors into its "
                     "lock file, and every node's heartbeat.", {
        "dsn": Key(_cluster_dsn, "", 'libpq DSN of the cluster\'s PostgreSQL as the agent\'s own role, every host '
                   'listed, e.g. "host=db1,db2 dbname=pretix_agent user=pretix_agent '
                   'target_session_attrs=read-write"; no password (see `passfile`); empty: not in a cluster.'),
        "name": Key(_cluster_name, "pretix", "The cluster's name: nodes with the same name share one lock and one "
                    "view, so several clusters may share one database."),
        "passfile": Key(_optional_path, None, "libpq password file for the DSN's role, readable by the daemon alone "
                        "(mode 0600, or a systemd credential); none: libpq's default (~/.pgpass of the daemon's "
                        "user)."),
        "heartbeat_interval": Key(parse_duration, 3.0, "How often this node publishes its row and reads the "
                                  "others' and the lock (the backstop to LISTEN/NOTIFY); a node silent for "
                                  "three of its heartbeats is flagged."),
        "timeout": Key(parse_duration, 2.0, "Longest one database call may take, per host tried (less than "
                       "`heartbeat_interval`)."),
        "max_clock_skew": Key(parse_duration, 1.0, "A node whose wall clock is further off the database server's "
                              "is flagged."),
        "listen": Key(_boolean, True, "LISTEN/NOTIFY: every node learns of a lock within milliseconds; false: "
                      "at its next heartbeat only (a pooler in transaction mode cannot deliver notifications)."),
        "roles": Key(_cluster_roles, (), "This node's roles as shown to the others; empty: derived from this file "
                     "(app: agent_check, an http check or pretix units; load-balancer: haproxy; database: a "
                     "postgres check of a local server). Windows are compared among app nodes."),
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
    on_failing: tuple[str, ...] = ()


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


@dataclass(frozen=True)
class LockFencingSection:
    dsn: str
    max_hold: float
    interval: float
    timeout: float
    enforce: bool
    databases: tuple[str, ...]
    users: tuple[str, ...]


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
    shared_checks: tuple[str, ...] = ()  # resolved: the server's own, else the section's
    shutdown_sessions: bool = False


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
    hold_down_max: float = 300.0
    flap_window: float = 300.0
    shared_checks: tuple[str, ...] = ()


@dataclass(frozen=True)
class AgentCheckSection:
    listen: str
    checks: tuple[str, ...]
    weight: int | None
    shared_checks: tuple[str, ...] = ()
    allow: tuple[Network, ...] = AGENT_CHECK_ALLOW
    idle_timeout: float = 1.0
    max_connections: int = 256
    max_per_source: int = 8


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
    structured_metadata: bool = True


@dataclass(frozen=True)
class MetricsSection:
    listen: str  # "" when only the textfile is written
    textfile: Path | None


@dataclass(frozen=True)
class ClusterSection:
    dsn: str
    name: str
    passfile: Path | None
    heartbeat_interval: float
    timeout: float
    max_clock_skew: float
    listen: bool
    roles: tuple[str, ...]


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
    lock_fencing: LockFencingSection | None = None
    cluster: ClusterSection | None = None
    metrics: MetricsSection | None = None
    raw_sections: frozenset[str] = field(default_factory=frozenset)
    lines: Mapping[Path_, int] = field(default_factory=dict, compare=False, repr=False)

    def problem(self, path: Path_, message: str) -> ConfigProblem:
        """A problem found after parsing (a missing directory, an address that does not resolve),
        placed like a parse problem: file, line where the text shows it, TOML path."""
        collector = _Collector(self.source, dict(self.lines))
        collector.add(path, message)
        return collector.problems[0]


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
        known = ", ".join(f'"{t}"' for t in spec.types)
        if kind is None:
            problems.add((*here, "type"), f"is required, one of {known}")
            continue
        if not isinstance(kind, str):
            problems.add((*here, "type"), f"expected a string, one of {known}; got {_type_name(kind)}")
            continue
        if kind not in spec.types:
            problems.add((*here, "type"), f'unknown type "{_excerpt(kind)}", expected one of {known}')
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
    def in_state_dir(value: Any) -> Any:
        if isinstance(value, Derived):
            return agent["state_dir"] / value.name if agent["state_dir"] is not INVALID else INVALID
        return value

    if INVALID not in (in_state_dir(maintenance["marker"]), in_state_dir(maintenance["lock"])) and in_state_dir(
            maintenance["marker"]) == in_state_dir(maintenance["lock"]):
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
    unknown_checks(("haproxy", "shared_checks"), raw_haproxy["shared_checks"])
    unknown_checks(("maintenance", "on_failing"), maintenance["on_failing"])
    servers = []
    seen_servers: set[tuple[str, str]] = set()
    for index, server in enumerate(raw_haproxy["server"]):
        here: Path_ = ("haproxy", "server", index)
        unknown_checks((*here, "checks"), server["checks"])
        unknown_checks((*here, "shared_checks"), server["shared_checks"])
        if any(value is INVALID for value in server.values()) or raw_haproxy["shared_checks"] is INVALID:
            continue
        key = (server["backend"], server["server"])
        if key in seen_servers:
            problems.add(here, f"{key[0]}/{key[1]} is listed twice")
        seen_servers.add(key)
        own = server["shared_checks"] is not None
        shared = server["shared_checks"] if own else raw_haproxy["shared_checks"]
        both = [name for name in shared if name in server["checks"]]
        if both:
            # A failing gating check that is also "shared" would excuse itself: the server could
            # never be taken out for a soft failure of it.
            problems.add((*here, "shared_checks") if own else ("haproxy", "shared_checks"),
                         f'names check "{both[0]}", which also gates {key[0]}/{key[1]}: a check cannot both '
                         "gate a server and excuse its failures" + ("" if own else
                                                                    " (give that server shared_checks = [])"))
        servers.append(HaproxyServer(server["backend"], server["server"], server["checks"], server["on_failure"],
                                     server["local"], shared, server["shutdown_sessions"]))
    if servers and not raw_haproxy["socket"]:
        problems.add(("haproxy", "socket"), "is required when [[haproxy.server]] entries exist")
    haproxy = HaproxySection(**{k: v for k, v in raw_haproxy.items() if k != "server"},
                             servers=tuple(servers)) if raw_haproxy["socket"] else None
    raw_agent_check = values["agent_check"]
    unknown_checks(("agent_check", "checks"), raw_agent_check["checks"])
    unknown_checks(("agent_check", "shared_checks"), raw_agent_check["shared_checks"])
    if INVALID not in (raw_agent_check["checks"], raw_agent_check["shared_checks"]):
        both = [name for name in raw_agent_check["shared_checks"] if name in raw_agent_check["checks"]]
        if both:
            problems.add(("agent_check", "shared_checks"), f'names check "{both[0]}", which is also in '
                         "agent_check.checks: a check cannot both judge this node and excuse its failures")
    agent_check = AgentCheckSection(**raw_agent_check) if raw_agent_check["listen"] else None
    raw_loki = values["loki"]
    if raw_loki["password_file"] is not None and raw_loki["bearer_token_file"] is not None:
        problems.add(("loki", "bearer_token_file"), "set either password_file (basic auth) or bearer_token_file")
    if raw_loki["username"] and raw_loki["password_file"] is None:
        problems.add(("loki", "password_file"), "is required with loki.username")
    loki = LokiSection(**raw_loki) if raw_loki["url"] else None
    lock_fencing = _lock_fencing(values["lock_fencing"], problems)
    raw_cluster = values["cluster"]
    if INVALID not in (raw_cluster["timeout"], raw_cluster["heartbeat_interval"]) and (
            raw_cluster["timeout"] >= raw_cluster["heartbeat_interval"]):
        problems.add(("cluster", "timeout"), f"is {raw_cluster['timeout']:g} s, must be less than heartbeat_interval "
                     f"({raw_cluster['heartbeat_interval']:g} s): a call must end before the next heartbeat")
    cluster = ClusterSection(**raw_cluster) if raw_cluster["dsn"] and INVALID not in raw_cluster.values() else None
    raw_metrics = values["metrics"]
    metrics = MetricsSection(**raw_metrics) if raw_metrics["listen"] or raw_metrics["textfile"] is not None else None
    return Config(
        source=source,
        agent=AgentSection(node=agent["node"] or socket.gethostname(), status_file=agent["status_file"],
                           state_dir=agent["state_dir"], reconcile_interval=agent["reconcile_interval"],
                           shutdown_drain_time=agent["shutdown_drain_time"]),
        log=LogSection(**values["log"]),
        maintenance=MaintenanceSection(marker=in_state_dir(maintenance["marker"]),
                                       lock=in_state_dir(maintenance["lock"]), timezone=maintenance["timezone"],
                                       windows=tuple(windows), on_failing=maintenance["on_failing"]),
        checks=tuple(checks),
        haproxy=haproxy,
        agent_check=agent_check,
        loki=loki,
        lock_fencing=lock_fencing,
        cluster=cluster,
        metrics=metrics,
        raw_sections=sections,
    )


# pretix waits this long for its advisory locks (LOCK_ACQUISITION_TIMEOUT in
# pretix/base/services/locking.py) before the order fails with 409.
PRETIX_LOCK_TIMEOUT = 3.0


def _lock_fencing(raw: dict[str, Any], problems: _Collector) -> LockFencingSection | None:
    here: Path_ = ("lock_fencing",)
    max_hold, interval, timeout = raw["max_hold"], raw["interval"], raw["timeout"]
    if max_hold is not INVALID and max_hold >= PRETIX_LOCK_TIMEOUT:
        problems.add((*here, "max_hold"), f"is {max_hold:g} s, must be less than pretix's lock timeout "
                     f"({PRETIX_LOCK_TIMEOUT:g} s): a fence after that comes too late for the orders waiting")
    if max_hold is not INVALID and max_hold < 0.5:
        problems.add((*here, "max_hold"), f"is {max_hold:g} s, must be at least 500ms: a shorter hold would fence "
                     "healthy transactions caught between two statements on a busy node")
    if INVALID not in (max_hold, interval) and interval > max_hold:
        problems.add((*here, "interval"), f"is {interval:g} s, must be at most max_hold ({max_hold:g} s): a "
                     "waiting order could otherwise wait longer than max_hold before the holder is seen")
    if INVALID not in (interval, timeout) and timeout >= interval:
        problems.add((*here, "timeout"), f"is {timeout:g} s, must be less than interval ({interval:g} s): a look "
                     "must end before the next one starts")
    if not raw["dsn"] or any(value is INVALID for value in raw.values()):
        return None
    return LockFencingSection(**raw)


def parse(text: str, source: str = "<config>") -> Config:
    """Given TOML text, return the Config it describes. Raise ConfigError listing every problem."""
    # Editors on other systems save UTF-8 with a byte order mark; TOML readers refuse it with
    # "Invalid statement", which tells nobody what is wrong. It carries no meaning: drop it.
    text = text.removeprefix("\ufeff")
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        # tomllib says "... (at line 3, column 7)": keep its words, put the line where ours go.
        message = str(error)
        match = re.search(r"\(at line (\d+), column \d+\)$", message)
        line = int(match.group(1)) if match else None
        raise ConfigError([ConfigProblem(source, "", f"not valid TOML: {message}", line)]) from None
    lines = locate_lines(text)
    problems = _Collector(source, lines)
    values = _walk(SCHEMA, raw, (), problems)
    config = _build(values, problems, source, frozenset(raw))
    if problems.problems:
        raise ConfigError(problems.problems)
    return dataclasses.replace(config, lines=lines)


# A real configuration is a few KiB; anything near this is a mistake (`-c /dev/zero`, a log file),
# and reading and parsing it must not stall the daemon's loop on a reload.
MAX_CONFIG_BYTES = 1024 * 1024


def read_config_file(path: Path | str) -> str:
    """Return the text of the configuration file at `path`. Raise ConfigError (one problem) if it is
    not a readable regular file of UTF-8 text of at most MAX_CONFIG_BYTES.

    Opened non-blocking, so a FIFO never hangs the caller (the daemon's loop on SIGHUP), and checked
    with fstat before a byte is read, so a device or a huge file is refused at once. A symlink to a
    regular file is fine (configuration management links files into /etc)."""
    source = str(path)

    def refuse(message: str) -> ConfigError:
        return ConfigError([ConfigProblem(source, "", message)])

    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except FileNotFoundError:
        raise refuse("no such file: create it (every section is optional, an empty file is valid) or "
                     "pass -c FILE") from None
    except PermissionError:
        raise refuse("permission denied: run as root or as a member of the group that may read it") from None
    except OSError as error:
        raise refuse(f"cannot open: {error.strerror or error}") from None
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise refuse("is a directory, not a configuration file")
        if not stat.S_ISREG(info.st_mode):
            raise refuse("is not a regular file (a FIFO, socket or device): give the path of a TOML file")
        if info.st_size > MAX_CONFIG_BYTES:
            raise refuse(f"is {info.st_size} bytes, more than a configuration can be "
                         f"({MAX_CONFIG_BYTES // 1024} KiB at most)")
        chunks, size = [], 0
        while size <= MAX_CONFIG_BYTES:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as error:
        raise refuse(f"cannot read: {error.strerror or error}") from None
    finally:
        os.close(fd)
    if size > MAX_CONFIG_BYTES:
        raise refuse(f"grew beyond {MAX_CONFIG_BYTES // 1024} KiB while being read")
    data = b"".join(chunks)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise refuse(f"not UTF-8 text (byte {error.start})") from None


def load(path: Path | str) -> Config:
    """Read and parse the file at `path`. Raise ConfigError listing every problem."""
    return parse(read_config_file(path), str(path))


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
    if isinstance(value, Derived):
        return f'`state_dir` + `"/{value.name}"`'

    if key.convert is parse_duration:
        return f'`"{value * 1000:g}ms"`' if value < 1 else f'`"{value:g}s"`'
    if (key.convert is parse_size or "size" in key.kind) and value and value % 1024**2 == 0:
        return f'`"{value // 1024**2}MiB"`'
    if isinstance(value, bool):
        return "`true`" if value else "`false`"
    if isinstance(value, tuple):
        items = [item if isinstance(item, int) and not isinstance(item, bool) else str(item) for item in value]
        return "`[]`" if not items else "`" + json.dumps(items) + "`"
    if isinstance(value, zoneinfo.ZoneInfo):
        return f'`"{value.key}"`'
    if isinstance(value, Path | str):
        return f'`"{value}"`'
    return f"`{value}`"
