"""The cluster as one: three real agents, each in a network namespace of its own, and PostgreSQL
(primary + streaming replica) in a fourth (tests/integration/cluster_fixture.py).

Heartbeats are 2 s with a 1 s deadline per call: short enough for the tests, long enough that a
loaded machine does not make a healthy database look away.
"""

from __future__ import annotations

import time

import psycopg
import pytest

from tests.waiting import wait_until

from .cluster_fixture import DATABASE, ROLE, ClusterRig, environment_ready

pytestmark = pytest.mark.integration

_reason = environment_ready()
if _reason:
    pytest.skip(_reason, allow_module_level=True)

HEARTBEAT = 2.0
# What "within one heartbeat" may take beyond the heartbeat itself on a loaded machine: the worker's
# connect and read, the report to the loop, the lock file and the marker written (each fsynced).
MARGIN = 1.5


def markers(rig: ClusterRig) -> list[bool]:
    return [rig.marker(index).exists() for index in range(rig.count)]


@pytest.fixture
def rig(tmp_path):
    with ClusterRig(tmp_path, heartbeat=f"{HEARTBEAT:g}s") as cluster:
        yield cluster


def test_lock_cluster_puts_the_marker_on_every_node_and_unlock_cluster_takes_only_the_cluster_lock(rig):
    rig.ctl(1, "lock", "--reason", "app2's own lock")  # a node's own lock, before the cluster's
    locked = rig.ctl(0, "lock", "--cluster", "--reason", "inventory")
    assert locked.returncode == 0, locked.stdout + locked.stderr
    assert "cluster locked by" in locked.stdout and "(inventory)" in locked.stdout
    assert "all 3 nodes in maintenance" in locked.stdout
    assert markers(rig) == [True, True, True]
    for index in (0, 2):
        content = rig.lock_file(index).read_text()
        assert '"origin": "cluster"' in content and "inventory" in content, content
    assert '"origin"' not in rig.lock_file(1).read_text()  # app2's own lock stays its own

    # app1's daemon confirmed from its view of the nodes' rows; app3's view is its own reading of the
    # same rows, refreshed on every NOTIFY, and may trail app1's by the moment that reading takes.
    shown = wait_until(lambda: (s := rig.ctl(2, "status", "--cluster")).stdout.count("maintenance ON") == 3 and s,
                       timeout=10, message=lambda: rig.ctl(2, "status", "--cluster").stdout)
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert "LOCKED by" in shown.stdout and "on app1 (inventory)" in shown.stdout
    assert "all 3 nodes agree" in shown.stdout

    unlocked = rig.ctl(2, "unlock", "--cluster")
    assert unlocked.returncode == 0, unlocked.stdout + unlocked.stderr
    assert "cluster unlocked (was locked by" in unlocked.stdout
    wait_until(lambda: markers(rig) == [False, True, False], timeout=10, message=lambda: f"markers {markers(rig)}")
    assert rig.lock_file(1).exists() and not rig.lock_file(0).exists() and not rig.lock_file(2).exists()


def test_a_cluster_lock_ended_on_one_node_by_hand_stays_ended_there_and_the_node_is_flagged(rig):
    assert rig.ctl(0, "lock", "--cluster").returncode == 0
    unlocked = rig.ctl(2, "unlock")  # the operator ends it on app3 only
    assert unlocked.returncode == 0, unlocked.stdout + unlocked.stderr
    assert "that was the cluster lock" in unlocked.stdout
    rig.wait_all(lambda c: any(n["node"] == "app3" and any("maintenance OFF while the cluster is locked" in p
                                                           for p in n["problems"]) for n in c["nodes"]),
                 timeout=15, what="app3 flagged", nodes=[0])
    assert markers(rig) == [True, True, False]  # not mirrored again: a human ended it there
    shown = rig.ctl(0, "status", "--cluster")
    assert shown.returncode == 1 and "app3" in shown.stdout and "ended there by hand" in shown.stdout

    assert rig.ctl(0, "unlock", "--cluster").returncode == 0
    assert rig.ctl(0, "lock", "--cluster", "--reason", "next").returncode == 0  # a new cluster lock: mirrored again
    assert markers(rig) == [True, True, True]


def test_a_node_cut_off_during_the_lock_converges_within_one_heartbeat_of_its_link_coming_back(rig):
    rig.link_down(1)
    locked = rig.ctl(0, "lock", "--cluster", "--timeout", "3s")
    assert locked.returncode == 1, locked.stdout + locked.stderr  # not every node confirmed: said so
    assert "cluster locked by" in locked.stdout and "app2" in locked.stderr
    assert markers(rig) == [True, False, True]
    rig.wait_all(lambda c: c["state"] == "unreachable" and c["stale_since"], timeout=10, what="app2 sees the outage",
                 nodes=[1])
    assert not rig.marker(1).exists()

    rig.link_up(1)
    back = time.monotonic()
    wait_until(lambda: rig.marker(1).exists(), timeout=HEARTBEAT + 10, message="the marker on app2")
    took = time.monotonic() - back
    print(f"app2 converged {took:.3f} s after its link came back")
    assert took <= HEARTBEAT + MARGIN, f"app2 took {took:.2f} s after its link came back"
    assert '"origin": "cluster"' in rig.lock_file(1).read_text()


def test_with_the_primary_stopped_cluster_requests_fail_in_one_line_and_every_node_keeps_its_state(rig):
    assert rig.ctl(0, "lock", "--cluster").returncode == 0
    assert rig.pg is not None
    rig.pg.primary.stop()
    rig.wait_all(lambda c: c["state"] == "unreachable", timeout=15, what="the outage seen")

    unlocked = rig.ctl(0, "unlock", "--cluster")
    assert unlocked.returncode == 1
    assert unlocked.stdout == ""
    (line,) = unlocked.stderr.splitlines()
    assert line.startswith("pretix-agentctl: unlock --cluster failed: ") and "unlock each node instead" in line
    locked = rig.ctl(1, "lock", "--cluster")
    assert locked.returncode == 1 and "lock each node instead" in locked.stderr
    assert len(locked.stderr.splitlines()) == 1

    assert markers(rig) == [True, True, True]  # fail-static: the lock holds everywhere
    for index in range(3):
        local = rig.ctl(index, "status")
        assert local.returncode == 1 and "cluster view stale since" in local.stdout, local.stdout
        assert "maintenance: ON: locked (the cluster lock)" in local.stdout
        shown = rig.ctl(index, "status", "--cluster")
        assert shown.returncode == 1 and "DATABASE UNREACHABLE since" in shown.stdout, shown.stdout
        assert "LOCKED by" in shown.stdout  # the last view, said to be stale


def test_after_the_replica_is_promoted_the_agents_follow_the_dsn_and_lock_cluster_works_again(rig):
    assert rig.pg is not None and rig.pg.replica is not None
    rig.pg.primary.stop()
    rig.pg.replica.execute("SELECT pg_promote()")
    promoted = f"10.213.0.2:{rig.pg.replica.port}"
    rig.wait_all(lambda c: c["state"] == "connected" and c["server"] == promoted, timeout=20,
                 what="connected to the promoted replica")
    locked = rig.ctl(2, "lock", "--cluster", "--reason", "after failover")
    assert locked.returncode == 0, locked.stdout + locked.stderr
    assert markers(rig) == [True, True, True]
    assert rig.ctl(1, "unlock", "--cluster").returncode == 0
    wait_until(lambda: markers(rig) == [False, False, False], timeout=10, message=lambda: f"markers {markers(rig)}")


def test_a_node_with_another_window_is_flagged_with_an_event(tmp_path):
    window = '[[maintenance.window]]\nstart = "Sun 22:00"\nend = "Mon 05:00"\n'
    with ClusterRig(tmp_path, heartbeat=f"{HEARTBEAT:g}s", windows={2: window}) as rig:
        rig.wait_all(lambda c: any("windows differ" in p for p in c["problems"]), timeout=15, what="windows flagged")
        shown = rig.ctl(0, "status", "--cluster")
        assert shown.returncode == 1
        (flagged,) = [line for line in shown.stdout.splitlines() if line.startswith("PROBLEM:")]
        assert "app3: windows differ: Sun 22:00 - Mon 05:00 (UTC) against the other app nodes' no windows" in flagged
        wait_until(lambda: "cluster.disagreement" in rig.agent(0).log(), timeout=10, message="the event")
        assert "node=app3 kind=windows" in rig.agent(0).log()


def test_a_skewed_clock_and_a_silent_node_are_flagged(tmp_path):
    with ClusterRig(tmp_path, heartbeat=f"{HEARTBEAT:g}s",
                    env={2: {"PRETIX_AGENT_TEST_CLOCK_OFFSET": "5"}}) as rig:
        rig.wait_all(lambda c: any(p.startswith("app3: clock off by +5.") for p in c["problems"]), timeout=15,
                     what="the skew flagged", nodes=[0])
        rig.stop_agent(1)
        rig.wait_all(lambda c: any(p.startswith("app2: silent for") for p in c["problems"]), timeout=3 * HEARTBEAT + 10,
                     what="app2 silent", nodes=[0])
        shown = rig.ctl(0, "status", "--cluster")
        assert shown.returncode == 1 and "silent for" in shown.stdout and "clock off by +5." in shown.stdout


def test_the_agents_role_reaches_its_schema_and_nothing_else(rig):
    assert rig.pg is not None
    dsn = rig.pg.primary.superuser_dsn(dbname=DATABASE).replace("user=postgres", f"user={ROLE}")
    with psycopg.connect(dsn, autocommit=True) as connection:
        assert connection.execute("SELECT count(*) FROM pretix_agent.node").fetchone() == (3,)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            connection.execute("CREATE TABLE public.intruder (id int)")
    other = dsn.replace(f"dbname={DATABASE}", "dbname=postgres")
    with psycopg.connect(other, autocommit=True) as connection, pytest.raises(psycopg.errors.InsufficientPrivilege):
        connection.execute("SELECT * FROM fixture_load")  # a table of the application's: out of reach
