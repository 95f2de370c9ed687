"""haproxy decisions that see the whole backend, end to end: the real daemon, a real haproxy, backends
that answer 500, slowly or not at all, a real Redis as the shared dependency, and pretix's read path
to a real PostgreSQL replica with the primary as backup.

The checks here probe every 500 ms and fall after 3 failures, so a server's check turns failing
about 1.5 s after its backend breaks; backends broken together show failed probes on every server
long before the first check turns failing, whatever the scheduling."""

from __future__ import annotations

import re
from collections.abc import Iterator

import psycopg
import pytest

from tests.waiting import wait_until

from .agent_fixture import ctl
from .haproxy_fixture import HaproxyFixture, TcpServer, haproxy_unavailable_reason
from .pg_fixture import PgReplicationCluster, pg_unavailable_reason
from .redis_fixture import RedisReplicationPair, redis_unavailable_reason

pytestmark = [pytest.mark.integration, pytest.mark.skipif(haproxy_unavailable_reason() is not None,
                                                          reason=str(haproxy_unavailable_reason()))]


def checks_for(hx: HaproxyFixture) -> str:
    return "".join(f"""
[checks.web-{name}]
type = "http"
url = "http://127.0.0.1:{backend.port}/healthcheck/"
host = "tickets.example.org"
interval = "500ms"
timeout = "400ms"
fall = 3
rise = 2
""" for name, backend in hx.backends.items())


def agent_config(hx: HaproxyFixture, haproxy: str = "", extra: str = "") -> str:
    servers = "".join(f"""
[[haproxy.server]]
backend = "pretix"
server = "{name}"
checks = ["web-{name}"]
""" for name in hx.backends)
    return checks_for(hx) + f"""
[haproxy]
socket = "{hx.admin_socket}"
interval = "500ms"
state_file = "{hx.state_file}"
{haproxy}
""" + servers + extra


@pytest.fixture
def hx() -> Iterator[HaproxyFixture]:
    with HaproxyFixture(servers=2) as haproxy:
        yield haproxy


def admin(hx: HaproxyFixture, server: str, backend: str = "pretix") -> str:
    return hx.server_admin(backend, server)


def all_passing(document) -> bool:
    return bool(document["checks"]) and all(c["state"] == "passing" for c in document["checks"].values())


def changes(agent) -> list[str]:
    """The agent's `set server` events, in order: ["app1 maint", "app1 ready", ...]."""
    return [f"{m.group(2)} {m.group(3)}" for m in re.finditer(
        r"haproxy\.server_state_changed backend=(\S+) server=(\S+) state=(\S+)", agent.log())]


def wait_changes(agent, expected: list[str]) -> None:
    """Wait until the agent has logged exactly `expected`: each change is logged right after haproxy
    accepted it, so a test that saw haproxy's new state waits for the line rather than race it."""
    wait_until(lambda: changes(agent) == expected, message=lambda: f"changes {expected}; logged: {changes(agent)}")


# --------------------------------------------------------------------------------------------- shared causes


def test_every_server_answering_500_at_once_takes_none_out_and_status_names_the_cause(agent_factory, hx):
    agent = agent_factory(agent_config(hx))
    agent.wait_status(all_passing)
    for backend in hx.backends.values():
        backend.error(500)
    cause = "2 of 2 servers failing at once, none taken out"
    document = agent.wait_status(lambda d: d["haproxy"]["shared"] == {"pretix": cause}
                                 and all(c["state"] == "failing" for c in d["checks"].values()))
    assert (admin(hx, "app1"), admin(hx, "app2")) == ("ready", "ready") and changes(agent) == []
    assert {s["server"]: s["desired"] for s in document["haproxy"]["servers"]} == {"app1": "ready", "app2": "ready"}
    assert agent.log().count("haproxy.shared_cause ") == 1
    shown = ctl(agent.config, "status")
    assert f"haproxy pretix: SHARED CAUSE: {cause}" in shown.stdout, shown.stdout
    for backend in hx.backends.values():
        backend.revive()
    agent.wait_status(lambda d: all_passing(d) and d["haproxy"]["shared"] == {})
    wait_until(lambda: "haproxy.shared_cause_ended" in agent.log(), message="the end of the episode logged")
    assert changes(agent) == []


def test_a_failing_shared_dependency_keeps_servers_in_that_fail_one_after_the_other(agent_factory, hx):
    # The measured case: Redis killed, both nodes' /healthcheck/ answered 500, one node's check
    # turned failing well before the other's. Without shared_checks the first one would go out.
    if redis_unavailable_reason() is not None:
        pytest.skip(str(redis_unavailable_reason()))
    with RedisReplicationPair(with_replica=False) as redis:
        shared = f"""
[checks.redis]
type = "redis"
url = "{redis.url()}"
interval = "500ms"
timeout = "400ms"
"""
        agent = agent_factory(agent_config(hx, haproxy='shared_checks = ["redis"]', extra=shared))
        agent.wait_status(all_passing)
        redis.master.kill()
        agent.wait_status(lambda d: d["checks"]["redis"]["state"] == "failing")
        hx.backends["app1"].error(500)
        agent.wait_status(lambda d: d["haproxy"]["shared"] == {
            "pretix": "redis failing: 1 of 2 servers failing, none taken out"})
        hx.backends["app2"].error(500)
        document = agent.wait_status(lambda d: d["haproxy"]["shared"] == {
            "pretix": "redis failing: 2 of 2 servers failing, none taken out"})
        assert "redis failing: 2 of 2 servers failing, none taken out" in {
            s["server"]: s for s in document["haproxy"]["servers"]}["app1"]["why"]
        assert (admin(hx, "app1"), admin(hx, "app2")) == ("ready", "ready") and changes(agent) == []
        assert agent.log().count("haproxy.shared_cause ") == 1
        # A hard failure is no shared cause: a node that refuses connections goes out at once.
        hx.backends["app1"].refuse()
        wait_until(lambda: admin(hx, "app1") == "maint", message="app1 in maint: refused")
        assert admin(hx, "app2") == "ready"


def test_one_server_failing_alone_goes_out_after_the_others_have_reported(agent_factory, hx):
    agent = agent_factory(agent_config(hx))
    agent.wait_status(all_passing)
    hx.backends["app1"].error(500)
    wait_changes(agent, ["app1 maint"])
    assert (admin(hx, "app1"), admin(hx, "app2")) == ("maint", "ready")
    assert agent.status()["haproxy"]["shared"] == {}


# --------------------------------------------------------------------------------------------- a fast return


def test_a_slow_server_goes_out_and_returns_as_soon_as_its_checks_pass_again(agent_factory, hx):
    # hold_down is long: a server taken out for the first time must not wait for it.
    agent = agent_factory(agent_config(hx, haproxy='hold_down = "1h"'))
    agent.wait_status(all_passing)
    hx.backends["app1"].slow(2.0)  # every probe times out (400 ms): a soft failure
    wait_until(lambda: admin(hx, "app1") == "maint", message="app1 in maint")
    hx.backends["app1"].revive()
    agent.wait_status(lambda d: d["checks"]["web-app1"]["state"] == "passing")
    wait_until(lambda: admin(hx, "app1") == "ready", timeout=10, message="app1 back after rise, not after hold_down")
    wait_changes(agent, ["app1 maint", "app1 ready"])


def test_a_flapping_server_is_held_out_and_status_shows_the_hold_and_its_end(agent_factory, hx):
    # The hold is long enough that the check passes again well before it ends, whatever the load.
    agent = agent_factory(agent_config(hx, haproxy='hold_down = "6s"\nflap_window = "5m"'))
    agent.wait_status(all_passing)
    app1 = hx.backends["app1"]
    app1.error(500)
    wait_until(lambda: admin(hx, "app1") == "maint", message="app1 out the first time")
    app1.revive()
    wait_until(lambda: admin(hx, "app1") == "ready", timeout=10, message="app1 back at once the first time")
    app1.error(500)
    wait_until(lambda: admin(hx, "app1") == "maint", message="app1 out the second time")
    app1.revive()

    def held(document):
        server = {s["server"]: s for s in document["haproxy"]["servers"]}["app1"]
        return "held out by its flap damping" in server["why"] and server

    document = agent.wait_status(held)
    app1_status = {s["server"]: s for s in document["haproxy"]["servers"]}["app1"]
    assert document["checks"]["web-app1"]["state"] == "passing" and app1_status["actual"] == "maint"
    assert app1_status["hold_seconds"] == 6.0 and app1_status["hold_until"] and app1_status["flap_level"] == 1
    assert "held out by its flap damping: 6 s after its 2nd take-out" in app1_status["why"]
    shown = ctl(agent.config, "status")
    assert "[flap damping: held out 6 s, until " in shown.stdout, shown.stdout
    wait_until(lambda: admin(hx, "app1") == "ready", timeout=15, message="app1 back when its hold ends")
    wait_changes(agent, ["app1 maint", "app1 ready", "app1 maint", "app1 ready"])


# --------------------------------------------------------------------------------------------- ctl drain / ready


def test_ctl_drain_and_ready_say_what_haproxy_does_now_and_what_the_node_waits_for(agent_factory, hx):
    config = agent_config(hx).replace('server = "app1"\n', 'server = "app1"\nlocal = true\n')
    agent = agent_factory(config)
    agent.wait_status(all_passing)
    drained = ctl(agent.config, "drain", "--reason", "planned")
    assert drained.returncode == 0, drained.stderr
    assert "this node is DRAINING (planned); haproxy pretix/app1 is drain: no new requests, current ones finish; " \
           "back in rotation after pretix-agentctl ready" in drained.stdout, drained.stdout
    assert admin(hx, "app1") == "drain"
    hx.backends["app1"].error(500)  # pretix on this node breaks meanwhile
    agent.wait_status(lambda d: d["checks"]["web-app1"]["state"] == "failing")
    ready = ctl(agent.config, "ready")
    assert ready.returncode == 0, ready.stderr
    assert ready.stdout.splitlines()[-1] == (
        "this node is not drained; haproxy pretix/app1 is drain: no new requests, current ones finish; "
        "back when web-app1 passes 2 probes in a row"), ready.stdout
    assert "HTTP 500" not in ready.stdout  # states and counts, no probe reasons
    hx.backends["app1"].revive()
    wait_until(lambda: admin(hx, "app1") == "ready", timeout=10, message="app1 back once its check passes")


# --------------------------------------------------------------------------------------------- pretix's read path


@pytest.fixture
def read_path() -> Iterator[tuple[PgReplicationCluster, HaproxyFixture]]:
    if pg_unavailable_reason() is not None:
        pytest.skip(str(pg_unavailable_reason()))
    with PgReplicationCluster() as pg:
        assert pg.replica is not None
        sections = {"pretix_replica": [TcpServer("replica", pg.replica.port),
                                       TcpServer("primary", pg.primary.port, backup=True)]}
        with HaproxyFixture(servers=1, tcp_sections=sections) as hx:
            yield pg, hx


def replica_config(pg: PgReplicationCluster, hx: HaproxyFixture) -> str:
    return f"""
[checks.replica]
type = "postgres"
dsn = "{pg.dsn(server='replica')}"
primary_dsn = "{pg.dsn(server='primary')}"
role = "standby"
max_lag_seconds = "5s"
interval = "500ms"
timeout = "400ms"
fall = 2
rise = 2

[haproxy]
socket = "{hx.admin_socket}"
interval = "500ms"

[[haproxy.server]]
backend = "pretix_replica"
server = "replica"
checks = ["replica"]
shutdown_sessions = true
"""


def through_haproxy(hx: HaproxyFixture) -> psycopg.Connection:
    """A connection as pretix's [replica] makes it: through haproxy's TCP section."""
    return psycopg.connect(host="127.0.0.1", port=hx.tcp_port("pretix_replica"), user="postgres", dbname="postgres",
                           connect_timeout=3, autocommit=True)


def reads_from_replica(hx: HaproxyFixture) -> bool:
    with through_haproxy(hx) as connection:
        row = connection.execute("SELECT pg_is_in_recovery()").fetchone()
        assert row is not None
        return bool(row[0])


def session_is_shut(connection: psycopg.Connection) -> bool:
    try:
        connection.execute("SELECT 1")
    except psycopg.OperationalError:
        return True
    return False


def test_a_replica_with_replay_paused_is_replaced_by_the_primary_and_its_sessions_are_shut(agent_factory,
                                                                                            read_path):
    pg, hx = read_path
    agent = agent_factory(replica_config(pg, hx))
    agent.wait_status(all_passing)
    persistent = through_haproxy(hx)  # pretix's connection, kept open (CONN_MAX_AGE)
    assert persistent.execute("SELECT pg_is_in_recovery()").fetchone() == (True,)
    pg.pause_replay()
    pg.write_load(100)  # the replica receives it, replays none of it: stale pages
    wait_until(lambda: admin(hx, "replica", "pretix_replica") == "maint", timeout=15, message="the replica out")
    wait_until(lambda: "haproxy.sessions_shut backend=pretix_replica server=replica" in agent.log(),
               message="its sessions shut")
    assert session_is_shut(persistent)  # the live session was closed by haproxy, not by PostgreSQL
    assert pg.replica is not None and pg.replica.running and pg.replay_pause_state() == "paused"
    assert not reads_from_replica(hx)  # a new connection lands on the primary
    assert hx.sessions("pretix_replica", "replica") == 0
    pg.resume_replay()
    pg.wait_caught_up()
    wait_until(lambda: admin(hx, "replica", "pretix_replica") == "ready", timeout=15,
               message="the replica back once caught up")
    assert reads_from_replica(hx)
    persistent.close()


def test_a_stopped_replica_sends_new_connections_to_the_primary_and_returns_after_rise(agent_factory, read_path):
    pg, hx = read_path
    assert pg.replica is not None
    agent = agent_factory(replica_config(pg, hx))
    agent.wait_status(all_passing)
    persistent = through_haproxy(hx)
    assert persistent.execute("SELECT 1").fetchone() == (1,)
    pg.replica.stop()
    wait_until(lambda: admin(hx, "replica", "pretix_replica") == "maint", timeout=15, message="the replica out")
    wait_until(lambda: "haproxy.sessions_shut backend=pretix_replica server=replica" in agent.log(),
               message="its sessions shut")
    assert session_is_shut(persistent)
    assert not reads_from_replica(hx)
    assert hx.sessions("pretix_replica", "replica") == 0
    pg.replica.start()
    pg.wait_streaming()
    pg.wait_caught_up()
    wait_until(lambda: admin(hx, "replica", "pretix_replica") == "ready", timeout=15,
               message="the replica back after rise")
    assert reads_from_replica(hx)
    wait_changes(agent, ["replica maint", "replica ready"])
    persistent.close()

