"""The cluster's plain parts: its configuration, the SQL it sends, what a node publishes, the request
file, and how a multi-host DSN is walked."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pretix_agent import config, status
from pretix_agent.checks.health import CheckState
from pretix_agent.cluster import node, request, schema
from pretix_agent.cluster.model import ClusterLock, NodeState, Request
from pretix_agent.cluster.store import host_dsns
from pretix_agent.errors import ConfigError
from pretix_agent.maintenance.decide import CLUSTER_ORIGIN, LockInfo, encode_lock, parse_lock

DSN = "host=db1,db2 dbname=pretix_agent user=pretix_agent target_session_attrs=read-write"


def cluster_config(extra: str = "", before: str = "") -> config.Config:
    return config.parse(f'{before}\n[cluster]\ndsn = "{DSN}"\n{extra}')


# ---------------------------------------------------------------------------------------------
# Configuration.


def test_a_cluster_section_builds_typed_values_with_its_defaults():
    section = cluster_config().cluster
    assert section == config.ClusterSection(dsn=DSN, name="pretix", passfile=None, heartbeat_interval=3.0,
                                            timeout=2.0, max_clock_skew=1.0, listen=True, roles=())
    assert config.parse("").cluster is None


@pytest.mark.parametrize(("text", "words"), [
    pytest.param('dsn = "host=db1 password=secret"', "holds a password", id="keyword-password"),
    pytest.param('dsn = "postgresql://agent:secret@db1/pretix_agent"', "holds a password", id="url-password"),
    pytest.param('dsn = "host=db1,db2 dbname=x"', "add target_session_attrs=read-write", id="multi-host"),
    pytest.param('dsn = "host=db1 colour=blue"', 'invalid connection option "colour"', id="bad-option"),
    pytest.param('dsn = "host=db1"\ntimeout = "3s"', "must be less than heartbeat_interval", id="timeout"),
    pytest.param('dsn = "host=db1"\nroles = ["app", "web"]', 'unknown role "web"', id="role"),
    pytest.param('dsn = "host=db1"\nname = "pretix prod"', "letters, digits", id="name"),
])
def test_a_cluster_section_that_cannot_work_is_refused_with_its_path(text, words):
    with pytest.raises(ConfigError) as raised:
        config.parse(f"[cluster]\n{text}\n")
    assert words in str(raised.value) and "cluster." in str(raised.value)
    assert "secret" not in str(raised.value)


# ---------------------------------------------------------------------------------------------
# The SQL.


def test_values_from_people_are_quoted_as_literals():
    assert schema.literal("it's") == "'it''s'"
    assert schema.literal(None) == "NULL" and schema.literal(True) == "true"
    assert "\0" not in schema.literal("a\0b")
    assert schema.text_array([]) == "'{}'::text[]"
    assert schema.text_array(["a", "b'c"]) == "ARRAY['a', 'b''c']::text[]"


def test_the_lock_statement_sets_the_lock_only_if_none_is_held_and_notifies_in_the_same_transaction():
    sql = schema.lock("prod", "id1", "alice (via sudo)", "db'upgrade", "app1")
    assert "WHERE c.lock_id IS NULL" in sql and "'db''upgrade'" in sql and "'alice (via sudo)'" in sql
    assert "pg_notify('pretix_agent', 'lock:prod')" in sql
    assert sql.rstrip().endswith("WHERE name = 'prod'")


def test_the_heartbeat_replaces_the_nodes_row_with_the_servers_time():
    state = NodeState(node="app'1", roles=("app",), version="0.1.0", heartbeat_interval=3.0, maintenance=None,
                      cause=None, locked=None, cluster_lock_id=None, dismissed=None, failing_checks=("x",),
                      haproxy=(), windows=(), timezone="UTC", windows_digest="abc", started_at=10.5)
    sql = schema.heartbeat("prod", state, 0.25)
    assert "VALUES ('prod', 'app''1', now()," in sql
    assert "ON CONFLICT (cluster, node) DO UPDATE SET seen_at = now()" in sql
    assert "ARRAY['x']::text[]" in sql and "to_timestamp(10.5)" in sql and "0.25" in sql


def test_the_view_is_read_from_one_json_document_of_server_times():
    text = json.dumps({"now": 1000.0, "cluster": {"lock_id": "L1", "locked_by": "alice", "locked_at": 990.0,
                                                   "reason": None, "host": "app1", "changed_at": 990.0},
                       "nodes": [{"node": "app1", "seen_at": 999.0, "heartbeat_interval": 3, "version": "0.1.0",
                                  "roles": ["app"], "maintenance": True, "cause": "lock", "locked": "cluster",
                                  "cluster_lock_id": "L1", "dismissed": None, "failing_checks": [], "haproxy": [],
                                  "windows": [], "timezone": "UTC", "windows_digest": "d", "clock_offset": None,
                                  "started_at": 1.0}, "garbage"]})
    view = schema.view_from_json(text)
    assert view.lock == ClusterLock("L1", "alice", 990.0, None, "app1")
    (row,) = view.nodes
    assert row.state.maintenance is True and row.state.cluster_lock_id == "L1" and row.clock_offset is None
    assert view.age(row) == 1.0
    with pytest.raises(ValueError):
        schema.view_from_json("[]")


def test_an_unlocked_cluster_reads_as_no_lock():
    view = schema.view_from_json(json.dumps({"now": 5.0, "cluster": {"lock_id": None, "changed_at": 4.0},
                                             "nodes": []}))
    assert view.lock is None and view.changed_at == 4.0


def test_the_script_for_a_dba_carries_the_role_as_comments_and_the_schema():
    script = schema.script()
    assert "--   CREATE ROLE pretix_agent LOGIN" in script
    assert "CREATE TABLE IF NOT EXISTS pretix_agent.node" in script
    statements = "\n".join(line for line in script.splitlines() if not line.startswith("--"))
    assert "CREATE SCHEMA IF NOT EXISTS" not in statements  # it would ask for CREATE on the database


def test_a_multi_host_dsn_is_tried_one_host_at_a_time_with_the_passfile():
    dsns = host_dsns("host=db1,db2 port=5433,5434 dbname=x user=y target_session_attrs=read-write",
                     Path("/run/credentials/pretix-agent.service/cluster-pgpass"))
    assert [target for target, _ in dsns] == ["db1:5433", "db2:5434"]
    assert "host=db2" in dsns[1][1] and "port=5434" in dsns[1][1] and "target_session_attrs=read-write" in dsns[1][1]
    assert "passfile=/run/credentials/pretix-agent.service/cluster-pgpass" in dsns[0][1]
    assert [t for t, _ in host_dsns("host=db1,db2 port=6432 dbname=x", None)] == ["db1:6432", "db2:6432"]
    assert [t for t, _ in host_dsns("dbname=x", None)] == ["local socket:5432"]


# ---------------------------------------------------------------------------------------------
# What a node publishes.


def test_roles_are_derived_from_the_configuration_unless_set():
    app = config.parse('[agent_check]\nlisten = "127.0.0.1:8999"\n')
    assert node.roles(app) == ("app",)
    lb = config.parse('[haproxy]\nsocket = "/run/haproxy/admin.sock"\n')
    assert node.roles(lb) == ("load-balancer",)
    db = config.parse('[checks.db]\ntype = "postgres"\ndsn = "host=/run/postgresql dbname=postgres"\n')
    assert node.roles(db) == ("database",)
    remote = config.parse('[checks.db]\ntype = "postgres"\ndsn = "host=10.0.0.10 dbname=postgres"\n')
    assert node.roles(remote) == ()
    assert node.roles(cluster_config('roles = ["database"]', '[agent_check]\nlisten = "127.0.0.1:8999"')) == (
        "database",)


def test_the_windows_digest_is_equal_exactly_when_windows_and_time_zone_are():
    sunday = ("Sun 22:00 - Mon 05:00",)
    assert node.windows_digest(sunday, "UTC") == node.windows_digest(sunday, "UTC")
    assert node.windows_digest(sunday, "UTC") != node.windows_digest(sunday, "Europe/Berlin")
    assert node.windows_digest(sunday, "UTC") != node.windows_digest((), "UTC")
    assert node.windows_digest(("a", "b"), "UTC") == node.windows_digest(("b", "a"), "UTC")


def test_the_nodes_row_says_its_maintenance_its_lock_its_failing_checks_and_its_haproxy_actions():
    conf = cluster_config(before='[maintenance]\ntimezone = "Europe/Berlin"\n[[maintenance.window]]\n'
                          'start = "Sun 22:00"\nend = "Mon 05:00"')
    maintenance = status.Maintenance(marker="/m", lock_file="/l", timezone="Europe/Berlin", on=True, cause="lock")
    haproxy = status.Haproxy(socket="/s", held=["pretix/app2"], servers=[
        status.HaproxyServer("pretix", "app1", "maint", False, "maint", "check pretix failing"),
        status.HaproxyServer("pretix", "app2", "ready", True, "ready", "checks pass")])
    checks = {"pretix": CheckState(state="failing"), "redis": CheckState(state="passing")}
    lock = LockInfo(True, lock_id="L1", origin=CLUSTER_ORIGIN)
    row = node.node_state(conf, maintenance, haproxy, checks, lock, None, 5.0)
    assert (row.maintenance, row.cause, row.locked, row.cluster_lock_id) == (True, "lock", "cluster", "L1")
    assert row.failing_checks == ("pretix",)
    assert row.haproxy == ("pretix/app1: maint (check pretix failing)", "pretix/app2: held in (min_ready)")
    assert row.windows == ("Sun 22:00 - Mon 05:00",) and row.timezone == "Europe/Berlin"
    own = node.node_state(conf, maintenance, None, {}, LockInfo(True, lock_id="x"), None, 5.0)
    assert (own.locked, own.cluster_lock_id) == ("local", None)


# ---------------------------------------------------------------------------------------------
# The lock file and the request file.


def test_a_mirrored_lock_file_says_it_is_the_clusters_and_describes_itself_so():
    from datetime import datetime, timezone

    content = encode_lock("L1", "alice", datetime(2026, 1, 1, tzinfo=timezone.utc), "inventory", "app1",
                          origin=CLUSTER_ORIGIN)
    lock = parse_lock(content)
    assert lock.origin == CLUSTER_ORIGIN and lock.lock_id == "L1"
    assert lock.describe() == "locked (the cluster lock) by alice at 2026-01-01T00:00:00+00:00 (inventory)"
    assert parse_lock(encode_lock("x", "bob", datetime(2026, 1, 1, tzinfo=timezone.utc), None, "h")).origin is None


def test_a_request_round_trips_through_its_file():
    wanted = Request(id="r1", action="forget", by="alice (via sudo)", at=1.5, host="app1", expires_at=11.5,
                     reason="gone", node="app9")
    assert request.parse(request.encode(wanted)).request == wanted


@pytest.mark.parametrize(("content", "words"), [
    pytest.param(b"", "not JSON", id="empty"),
    pytest.param(b"{}", "not written by pretix-agentctl", id="untagged"),
    pytest.param(b'{"pretix_agent_cluster_request": 1, "id": "r", "action": "drop"}', "unknown action", id="action"),
    pytest.param(b'{"pretix_agent_cluster_request": 1, "id": "r", "action": "lock"}', "lacks", id="incomplete"),
    pytest.param(b'{"pretix_agent_cluster_request": 1, "id": "r", "action": "forget", "by": "a", "host": "h", '
                 b'"at": 1, "expires_at": 2}', "names no node", id="forget-nobody"),
])
def test_a_request_file_not_as_ctl_writes_it_is_refused_saying_why(content, words):
    seen = request.parse(content)
    assert seen.request is None and words in (seen.refusal or "")


def test_an_unreadable_request_file_is_refused():
    assert "cannot be read (it is a symlink)" in (request.parse(None, "it is a symlink").refusal or "")
