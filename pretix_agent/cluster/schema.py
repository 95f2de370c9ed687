"""The agent's schema in the cluster's PostgreSQL, and every statement the agent sends.

`pretix-agentctl cluster init` runs SCHEMA (idempotent) through the daemon; `--print` shows it for
a DBA. The role the agent connects as needs nothing but its own schema (ROLE_SETUP).

The statements go out over libpq's simple query protocol (the non-blocking `Session` of
checks/postgres.py), so values are quoted here, by psycopg's own quoting (`psycopg.sql.quote`,
which copes with standard_conforming_strings either way); every value that comes from a person
(a lock reason, a user name) passes through it. A multi-statement text runs as one implicit
transaction: the lock and its NOTIFY commit together or not at all.

Times are returned as Unix seconds of the server's clock (`extract(epoch ...)`), never as text in
the session's TimeZone.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from .model import ClusterLock, NodeRow, NodeState, View

SCHEMA_NAME = "pretix_agent"
CHANNEL = "pretix_agent"  # NOTIFY payloads: "lock:<cluster>", "node:<cluster>"
VERSION = 1

SCHEMA = f"""\
-- pretix-agent: the cluster's shared state (SPEC 9). Idempotent: run it again at any time.
-- (Not CREATE SCHEMA IF NOT EXISTS: that asks for CREATE on the database even when the schema
-- exists, a right the agent's role does not need once a DBA created the schema for it.)
DO $$ BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = '{SCHEMA_NAME}') THEN
        CREATE SCHEMA {SCHEMA_NAME};
    END IF;
END $$;

-- One row per cluster: its lock (lock_id NULL: not locked) and when it last changed.
CREATE TABLE IF NOT EXISTS {SCHEMA_NAME}.cluster (
    name        text PRIMARY KEY,
    lock_id     text,
    locked_by   text,
    locked_at   timestamptz,
    reason      text,
    host        text,
    changed_at  timestamptz NOT NULL DEFAULT now(),
    changed_by  text
);

-- One row per node, replaced at every heartbeat.
CREATE TABLE IF NOT EXISTS {SCHEMA_NAME}.node (
    cluster             text NOT NULL,
    node                text NOT NULL,
    seen_at             timestamptz NOT NULL DEFAULT now(),
    heartbeat_interval  double precision NOT NULL,
    version             text NOT NULL,
    roles               text[] NOT NULL,
    maintenance         boolean,
    cause               text,
    locked              text,
    cluster_lock_id     text,
    dismissed           text,
    failing_checks      text[] NOT NULL,
    haproxy             text[] NOT NULL,
    windows             text[] NOT NULL,
    timezone            text NOT NULL,
    windows_digest      text NOT NULL,
    clock_offset        double precision,
    started_at          timestamptz NOT NULL,
    PRIMARY KEY (cluster, node)
);

CREATE TABLE IF NOT EXISTS {SCHEMA_NAME}.schema_version (version integer NOT NULL);
INSERT INTO {SCHEMA_NAME}.schema_version (version)
    SELECT {VERSION} WHERE NOT EXISTS (SELECT 1 FROM {SCHEMA_NAME}.schema_version);
"""

ROLE_SETUP = f"""\
-- As a superuser, once, on the primary (a separate database keeps the agent away from pretix's):
CREATE ROLE pretix_agent LOGIN PASSWORD 'choose-one';
CREATE DATABASE pretix_agent OWNER postgres;
REVOKE ALL ON DATABASE pretix_agent FROM PUBLIC;
GRANT CONNECT ON DATABASE pretix_agent TO pretix_agent;
\\connect pretix_agent
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
CREATE SCHEMA {SCHEMA_NAME} AUTHORIZATION pretix_agent;
-- The role owns its schema and nothing else; it gets no right on pretix's database or tables.
"""


def script() -> str:
    """What `pretix-agentctl cluster init --print` prints: the role set-up as comments, then SCHEMA."""
    role = "\n".join(line if line.startswith("--") else f"--   {line}" for line in ROLE_SETUP.splitlines())
    return f"{role}\n--\n-- Then, as that role (pretix-agentctl cluster init does this through the daemon):\n\n{SCHEMA}"


def literal(value: Any) -> str:
    """Given None, a bool, a number or a string, return it as an SQL literal."""
    from psycopg import sql

    if isinstance(value, str) and "\0" in value:
        value = value.replace("\0", "\ufffd")  # PostgreSQL text cannot hold NUL
    return str(sql.quote(value))


def text_array(values: Iterable[str]) -> str:
    items = [literal(value) for value in values]
    return f"ARRAY[{', '.join(items)}]::text[]" if items else "'{}'::text[]"


def timestamp(unix: float | None) -> str:
    return "NULL" if unix is None else f"to_timestamp({float(unix)!r})"


# ---------------------------------------------------------------------------------------------
# Statements.


def schema_present() -> str:
    """One row: whether both tables exist (the role may lack the schema altogether)."""
    return (f"SELECT to_regclass('{SCHEMA_NAME}.cluster') IS NOT NULL AND "
            f"to_regclass('{SCHEMA_NAME}.node') IS NOT NULL")


def server_clock() -> str:
    return "SELECT extract(epoch FROM clock_timestamp())::float8"


def listen() -> str:
    return f"LISTEN {CHANNEL}"


def notify(kind: str, cluster: str) -> str:
    return f"SELECT pg_notify({literal(CHANNEL)}, {literal(f'{kind}:{cluster}')})"


def heartbeat(cluster: str, state: NodeState, clock_offset: float | None) -> str:
    """Insert or replace this node's row; seen_at is the server's now()."""
    columns = {
        "heartbeat_interval": repr(float(state.heartbeat_interval)), "version": literal(state.version),
        "roles": text_array(state.roles), "maintenance": literal(state.maintenance), "cause": literal(state.cause),
        "locked": literal(state.locked), "cluster_lock_id": literal(state.cluster_lock_id),
        "dismissed": literal(state.dismissed), "failing_checks": text_array(state.failing_checks),
        "haproxy": text_array(state.haproxy), "windows": text_array(state.windows),
        "timezone": literal(state.timezone), "windows_digest": literal(state.windows_digest),
        "clock_offset": "NULL" if clock_offset is None else repr(float(clock_offset)),
        "started_at": timestamp(state.started_at),
    }
    names = ", ".join(columns)
    values = ", ".join(columns.values())
    updates = ", ".join(f"{name} = EXCLUDED.{name}" for name in columns)
    return (f"INSERT INTO {SCHEMA_NAME}.node (cluster, node, seen_at, {names}) "
            f"VALUES ({literal(cluster)}, {literal(state.node)}, now(), {values}) "
            f"ON CONFLICT (cluster, node) DO UPDATE SET seen_at = now(), {updates}")


def read(cluster: str) -> str:
    """One row, one JSON text: the lock, every node, and the server's clock."""
    name = literal(cluster)
    return f"""SELECT json_build_object(
    'now', extract(epoch FROM clock_timestamp())::float8,
    'cluster', (SELECT json_build_object(
        'lock_id', lock_id, 'locked_by', locked_by, 'locked_at', extract(epoch FROM locked_at)::float8,
        'reason', reason, 'host', host, 'changed_at', extract(epoch FROM changed_at)::float8)
        FROM {SCHEMA_NAME}.cluster WHERE name = {name}),
    'nodes', (SELECT coalesce(json_agg(json_build_object(
        'node', node, 'seen_at', extract(epoch FROM seen_at)::float8, 'heartbeat_interval', heartbeat_interval,
        'version', version, 'roles', roles, 'maintenance', maintenance, 'cause', cause, 'locked', locked,
        'cluster_lock_id', cluster_lock_id, 'dismissed', dismissed, 'failing_checks', failing_checks,
        'haproxy', haproxy, 'windows', windows, 'timezone', timezone, 'windows_digest', windows_digest,
        'clock_offset', clock_offset, 'started_at', extract(epoch FROM started_at)::float8) ORDER BY node), '[]')
        FROM {SCHEMA_NAME}.node WHERE cluster = {name})
)::text"""


_LOCK_COLUMNS = ("lock_id, locked_by, extract(epoch FROM locked_at)::float8, reason, host")


def lock(cluster: str, lock_id: str, by: str, reason: str | None, host: str) -> str:
    """Set the lock unless one is held; then NOTIFY; return the lock now held (ours or the one before)."""
    name = literal(cluster)
    return (f"INSERT INTO {SCHEMA_NAME}.cluster AS c (name, lock_id, locked_by, locked_at, reason, host, changed_at,"
            f" changed_by) VALUES ({name}, {literal(lock_id)}, {literal(by)}, now(), {literal(reason)},"
            f" {literal(host)}, now(), {literal(by)}) ON CONFLICT (name) DO UPDATE SET lock_id = EXCLUDED.lock_id,"
            " locked_by = EXCLUDED.locked_by, locked_at = EXCLUDED.locked_at, reason = EXCLUDED.reason,"
            " host = EXCLUDED.host, changed_at = EXCLUDED.changed_at, changed_by = EXCLUDED.changed_by"
            " WHERE c.lock_id IS NULL;\n"
            f"{notify('lock', cluster)};\n"
            f"SELECT {_LOCK_COLUMNS} FROM {SCHEMA_NAME}.cluster WHERE name = {name}")


def unlock(cluster: str, by: str) -> str:
    """End the lock if one is held; then NOTIFY; return the lock that was ended (no row: none was held)."""
    name = literal(cluster)
    return (f"{notify('lock', cluster)};\n"
            f"UPDATE {SCHEMA_NAME}.cluster AS c SET lock_id = NULL, locked_by = NULL, locked_at = NULL,"
            f" reason = NULL, host = NULL, changed_at = now(), changed_by = {literal(by)}"
            f" FROM (SELECT name, {_LOCK_COLUMNS} FROM {SCHEMA_NAME}.cluster WHERE name = {name} FOR UPDATE) AS"
            " old (name, lock_id, locked_by, locked_at, reason, host)"
            " WHERE c.name = old.name AND old.lock_id IS NOT NULL"
            " RETURNING old.lock_id, old.locked_by, old.locked_at, old.reason, old.host")


def forget(cluster: str, node: str) -> str:
    """Delete a node's row (a node taken out of the cluster); return its name if it existed."""
    return (f"{notify('node', cluster)};\n"
            f"DELETE FROM {SCHEMA_NAME}.node WHERE cluster = {literal(cluster)} AND node = {literal(node)}"
            " RETURNING node")


# ---------------------------------------------------------------------------------------------
# Reading the answers.


def lock_from_row(row: tuple[str | None, ...]) -> ClusterLock | None:
    """Given (lock_id, locked_by, locked_at, reason, host) as text, return the lock or None."""
    lock_id, by, at, reason, host = row
    if lock_id is None:
        return None
    return ClusterLock(id=lock_id, by=by or "?", at=float(at) if at is not None else 0.0, reason=reason,
                       host=host or "?")


def _strings(value: Any) -> tuple[str, ...]:
    return tuple(str(item) for item in value) if isinstance(value, list) else ()


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def view_from_json(text: str) -> View:
    """Given the text `read()` returns, return the View. Raise ValueError if it is not that shape."""
    document = json.loads(text)
    if not isinstance(document, dict) or _number(document.get("now")) is None:
        raise ValueError("the cluster view is not a JSON object with the server's time")
    cluster = document.get("cluster") if isinstance(document.get("cluster"), dict) else None
    lock = None
    if cluster is not None and _text(cluster.get("lock_id")):
        lock = ClusterLock(id=str(cluster["lock_id"]), by=_text(cluster.get("locked_by")) or "?",
                           at=_number(cluster.get("locked_at")) or 0.0, reason=_text(cluster.get("reason")),
                           host=_text(cluster.get("host")) or "?")
    nodes = []
    for raw in document.get("nodes") or []:
        if not isinstance(raw, dict) or not _text(raw.get("node")):
            continue
        maintenance = raw.get("maintenance")
        state = NodeState(
            node=str(raw["node"]), roles=_strings(raw.get("roles")), version=_text(raw.get("version")) or "?",
            heartbeat_interval=_number(raw.get("heartbeat_interval")) or 0.0,
            maintenance=maintenance if isinstance(maintenance, bool) else None, cause=_text(raw.get("cause")),
            locked=_text(raw.get("locked")), cluster_lock_id=_text(raw.get("cluster_lock_id")),
            dismissed=_text(raw.get("dismissed")), failing_checks=_strings(raw.get("failing_checks")),
            haproxy=_strings(raw.get("haproxy")), windows=_strings(raw.get("windows")),
            timezone=_text(raw.get("timezone")) or "?", windows_digest=_text(raw.get("windows_digest")) or "?",
            started_at=_number(raw.get("started_at")) or 0.0)
        nodes.append(NodeRow(state, seen_at=_number(raw.get("seen_at")) or 0.0,
                             clock_offset=_number(raw.get("clock_offset"))))
    changed_at = _number(cluster.get("changed_at")) if cluster is not None else None
    return View(lock=lock, changed_at=changed_at, nodes=tuple(nodes), server_now=float(document["now"]))
