"""The ctl side of the cluster: `status --cluster` read from the daemon's status, and the requests that
are refused before any waiting (no daemon, no cluster, another request pending)."""

from __future__ import annotations

import json
import os
import time
from datetime import datetime, timezone

import pytest

from pretix_agent import config, ctl, status
from pretix_agent.adapters.status_file import publish
from pretix_agent.cluster import command
from pretix_agent.cluster.model import Request
from pretix_agent.cluster.request import encode
from pretix_agent.maintenance.decide import CLUSTER_ORIGIN, encode_lock


@pytest.fixture
def conf(tmp_path):
    (tmp_path / "state").mkdir()
    path = tmp_path / "agent.toml"
    path.write_text(f"""
[agent]
node = "app1"
state_dir = "{tmp_path}/state"
status_file = "{tmp_path}/status.json"
[cluster]
dsn = "host=db1 dbname=pretix_agent user=pretix_agent"
""")
    return config.load(path)


def node(name: str, **changes) -> status.ClusterNode:
    base = {"node": name, "seen_at": "2026-01-01T00:00:00+00:00", "age": 0.5, "heartbeat_interval": 3.0,
            "version": "0.1.0", "roles": ["app"], "maintenance": True, "cause": "lock", "locked": "cluster",
            "cluster_lock_id": "L1", "windows_digest": "0123456789ab", "clock_offset": 0.002}
    return status.ClusterNode(**{**base, **changes})


def cluster(**changes) -> status.Cluster:
    base = {"name": "pretix", "database": "host=db1", "heartbeat_interval": 3.0, "listen": True, "state": "connected",
            "request_file": "/x", "server": "db1:5432", "view_at": "now", "view_at_unix": time.time(), "locked": True,
            "lock": status.ClusterLock("L1", "alice", "2026-01-01T00:00:00+00:00", "inventory", "app2"),
            "mirror": "locked by alice", "nodes": [node("app1"), node("app2")]}
    return status.Cluster(**{**base, **changes})


def write_status(conf, section: status.Cluster | None) -> None:
    now = time.time()
    publish(conf.agent.status_file, status.Document(
        format=status.FORMAT, state="running", written_at="x", written_at_unix=now, stale_after=30.0, node="app1",
        pid=os.getpid(), version="0", started_at="x", config="x", sentence="", cycles=1, healthy=True,
        cluster=section))


def test_status_cluster_shows_the_lock_and_one_line_per_node_and_exits_0_when_all_agree(conf, capsys):
    write_status(conf, cluster())
    assert command.show(conf, False) == ctl.EXIT_OK
    out = capsys.readouterr().out.splitlines()
    assert out[1].startswith("cluster:     pretix, connected to db1:5432, view ")
    assert out[2] == "lock:        LOCKED by alice at 2026-01-01T00:00:00+00:00 (inventory) on app2"
    assert out[4] == ("node app1: maintenance ON (the cluster lock), checks ok, seen 0.5 s ago, clock +0.002 s, "
                      "windows 0123456789ab [app]")
    assert out[-1] == "agreement:   all 2 nodes agree"


def test_status_cluster_exits_1_naming_a_node_that_disagrees(conf, capsys):
    odd = node("app2", problems=["windows differ: Sun 22:00 - Mon 05:00 (UTC) against ..."])
    write_status(conf, cluster(nodes=[node("app1"), odd], problems=["app2: windows differ: ..."]))
    assert command.show(conf, False) == ctl.EXIT_FAILING
    out = capsys.readouterr().out
    assert "node app2: maintenance ON" in out and "-- windows differ" in out
    assert "PROBLEM:     app2: windows differ: ..." in out


def test_status_cluster_exits_1_and_says_since_when_the_view_is_stale(conf, capsys):
    write_status(conf, cluster(state="unreachable", error="db1:5432: connection refused",
                               stale_since="2026-01-01T00:00:05+00:00", view_at_unix=time.time() - 60))
    assert command.show(conf, False) == ctl.EXIT_FAILING
    out = capsys.readouterr().out
    assert ("cluster:     pretix, DATABASE UNREACHABLE since 2026-01-01T00:00:05+00:00: db1:5432: connection "
            "refused") in out
    assert "the view below is 60.0 s old" in out and "every node keeps its lock as it is" in out


def test_status_cluster_exits_1_when_the_worker_stopped_reporting(conf, capsys):
    write_status(conf, cluster(view_at_unix=time.time() - 30))
    assert command.show(conf, False) == ctl.EXIT_FAILING


def test_status_cluster_json_is_one_document(conf, capsys):
    write_status(conf, cluster())
    assert command.show(conf, True) == ctl.EXIT_OK
    document = json.loads(capsys.readouterr().out)
    assert document["cluster"]["lock"]["by"] == "alice" and document["daemon"]["alive"] is True


def test_status_cluster_without_a_daemon_exits_3(conf, capsys):
    assert command.show(conf, False) == ctl.EXIT_NOT_RUNNING
    assert "no status file" in capsys.readouterr().err


def test_a_cluster_request_without_a_cluster_section_is_a_usage_error(tmp_path, capsys):
    conf = config.parse(f'[agent]\nstate_dir = "{tmp_path}"\n', str(tmp_path / "agent.toml"))
    assert command.request(conf, "lock", 1.0) == ctl.EXIT_USAGE
    assert "this node is not in a cluster: set [cluster] dsn in" in capsys.readouterr().err


def test_a_cluster_request_without_the_daemon_says_what_to_do_instead(conf, capsys):
    assert command.request(conf, "lock", 1.0) == ctl.EXIT_NOT_RUNNING
    (line,) = capsys.readouterr().err.splitlines()
    assert line.endswith("or lock each node instead: pretix-agentctl lock on every node")
    assert not (conf.agent.state_dir / "cluster-request").exists()


def test_a_cluster_request_while_another_is_pending_is_refused_naming_it(conf, capsys):
    write_status(conf, cluster())
    other = Request(id="r0", action="unlock", by="bob", at=time.time(), host="app2", expires_at=time.time() + 60)
    (conf.agent.state_dir / "cluster-request").write_bytes(encode(other))
    assert command.request(conf, "lock", 1.0) == ctl.EXIT_FAILING
    assert "another cluster request is pending (unlock by bob): try again in a moment" in capsys.readouterr().err


def test_a_local_unlock_of_the_cluster_lock_says_the_other_nodes_stay_locked(conf, capsys):
    conf.maintenance.lock.write_bytes(encode_lock("L1", "alice", datetime(2026, 1, 1, tzinfo=timezone.utc), None,
                                                  "app2", origin=CLUSTER_ORIGIN))
    ctl.unlock(conf, 0.1)  # the daemon is down: it returns at once
    assert "that was the cluster lock: this node leaves it until the cluster lock changes" in capsys.readouterr().out
    assert not conf.maintenance.lock.exists()


def test_cluster_init_print_needs_no_configuration(capsys, tmp_path):
    assert ctl.main(["-c", str(tmp_path / "missing.toml"), "cluster", "init", "--print"]) == ctl.EXIT_OK
    assert "CREATE TABLE IF NOT EXISTS pretix_agent.cluster" in capsys.readouterr().out
