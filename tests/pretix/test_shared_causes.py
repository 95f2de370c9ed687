"""Issue 13, a cause every node shares, and a fast return (tests/pretix/shared_causes.py).

The figures (how soon, against haproxy alone at the agent's interval and fall and at its defaults)
are in `make bench`; here: what must hold whatever the timing."""

from __future__ import annotations

import pytest

from . import shared_causes
from .test_node_failures import assert_no_order_lost_or_duplicated

pytestmark = pytest.mark.pretix


def test_redis_killed_under_orders_takes_no_server_out_and_the_closing_node_shows_its_maintenance_page(cluster):
    outcome = shared_causes.redis_killed(cluster)
    print(outcome.figures, outcome.orders)
    figures = outcome.figures
    # The load balancer's agent: its own Redis check names the cause, no server is taken out for it.
    assert figures["agent_took_out"] == [], figures["agent_changes"]
    assert any(cause.startswith("redis failing: ") for cause in figures["lb_shared_causes"]), figures
    # The nodes' agents gate agent-check on their /healthcheck/, which fails: Redis (shared) keeps them up.
    for node, answers in figures["agent_check_answers"].items():
        assert answers and all(answer.startswith("up ") for answer in answers), (node, answers)
    # [maintenance] on_failing = ["redis"] on app1 alone: its customers get the maintenance page with
    # Retry-After while Redis fails, app2's get pretix's 500; it ended by itself once Redis was back
    # (the scenario waits for that), and the lock was never taken.
    closing, other = figures["pages_during_outage"]["app1"], figures["pages_during_outage"]["app2"]
    assert closing["statuses"] and set(closing["statuses"]) == {"503"}, figures
    assert closing["with_retry_after"] == closing["statuses"]["503"], figures
    assert other["statuses"] and set(other["statuses"]) == {"500"}, figures
    assert "check:redis" in figures["maintenance"]["causes"]["app1"], figures["maintenance"]
    assert figures["maintenance"]["causes"]["app2"] == ["None"], figures["maintenance"]
    assert not any(node.agent and node.agent.lock.exists() for node in cluster.nodes.values())
    assert_no_order_lost_or_duplicated(outcome.orders)


def test_a_node_slowed_until_taken_out_comes_back_after_its_checks_rise_without_a_flap_hold(cluster):
    outcome = shared_causes.slow_node(cluster)
    print(outcome.figures, outcome.orders)
    figures = outcome.figures
    assert figures["time_to_out_s"]["pretix"] is not None, figures  # forced: the scenario waits for it
    assert figures["back_after_recovery_s"]["pretix"] is not None, figures
    # A first take-out within the flap window: back as soon as its check passed `rise` times.
    assert not figures["held_by_flap_damping"], figures
    node = figures["node"]
    assert any(f'backend=pretix server={node} state=ready reason="gating checks pass"' in change
               for change in figures["agent_changes"]), figures
    assert_no_order_lost_or_duplicated(outcome.orders)
