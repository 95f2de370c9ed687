"""The cluster's fault injection helpers do what they say (the next issues' scenarios rest on them)."""

from __future__ import annotations

import pytest

from tests.integration.processes import process_state, wait_until

pytestmark = pytest.mark.pretix


def test_a_slowed_node_is_stopped_and_continued_in_turn_and_serves_again_at_full_speed_after(cluster):
    node = cluster.nodes["app2"]
    node.slow()
    try:
        wait_until(lambda: any(process_state(pid) == "T" for pid in node.gunicorn.pids()), timeout=10,
                   what="a gunicorn process of app2 stopped by the slow cycle")
        assert node.healthcheck() == 200  # slow, not dead: it still answers
    finally:
        node.unslow()
    assert all(process_state(pid) != "T" for pid in node.gunicorn.pids())
    assert node.healthcheck() == 200
    cluster.wait_settled()


def test_redis_killed_fails_pretixs_healthcheck_on_both_nodes_and_a_restart_brings_it_back(cluster):
    cluster.redis.kill()
    try:
        for node in cluster.nodes.values():
            wait_until(lambda node=node: node.healthcheck() not in (200, None), timeout=30,
                       what=f"{node.name}'s /healthcheck/ to fail without Redis")
    finally:
        cluster.redis.start()
    for node in cluster.nodes.values():
        wait_until(lambda node=node: node.healthcheck() == 200, timeout=60,
                   what=f"{node.name}'s /healthcheck/ to pass with Redis back")
    cluster.wait_settled()


def test_paused_replay_fails_the_agents_replica_check_and_resumed_replay_passes_it(cluster):
    agent = cluster.lb_agent

    def replica() -> dict:
        return agent.status()["checks"]["replica"]

    cluster.pg.pause_replay()
    try:
        failing = wait_until(lambda: (c := replica())["state"] == "failing" and c, timeout=30,
                             what="the replica check to fail on paused replay")
        assert "paused" in failing["reason"]
    finally:
        cluster.pg.resume_replay()
    wait_until(lambda: replica()["state"] == "passing", timeout=30, what="the replica check to pass again")
