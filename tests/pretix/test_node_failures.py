"""A node of the real cluster fails under orders: the agent on the load balancer takes it out.

Each scenario sends orders at 5 a second through the three frontends in turn (the shipped backend
the agent gates, and haproxy's own checks at the agent's interval and fall, and at haproxy's
defaults), so the same fault is seen by every detector; the numbers are in `make bench`
(bench/pretix.py). Here: what must hold whatever the timing."""

from __future__ import annotations

import pytest

from . import scenarios

pytestmark = pytest.mark.pretix


def assert_no_order_lost_or_duplicated(orders):
    for frontend, reckoning in orders.items():
        assert reckoning["lost"] == 0, (frontend, reckoning)  # a 201 is an order in the database
        assert reckoning["duplicated"] == 0, (frontend, reckoning)  # nothing retried a placed order
        assert reckoning["sent"] > 0, (frontend, reckoning)


def test_a_sigkilled_node_is_taken_out_of_haproxy_by_the_agent_and_no_order_is_lost_or_placed_twice(cluster):
    outcome = scenarios.kill(cluster, "app1")
    print(outcome.figures, outcome.orders)
    assert "pretix" in outcome.figures["time_to_out_s"], outcome.figures
    assert outcome.figures["agent_check"]["state"] == "failing", outcome.figures  # nginx's 502: gunicorn is gone
    assert_no_order_lost_or_duplicated(outcome.orders)


def test_a_sigstopped_node_is_taken_out_by_the_agent_while_the_other_node_serves(cluster):
    outcome = scenarios.sigstop(cluster, "app1")
    print(outcome.figures, outcome.orders)
    assert "pretix" in outcome.figures["time_to_out_s"], outcome.figures
    assert outcome.figures["agent_check"]["state"] == "failing", outcome.figures
    assert outcome.figures["agent_check"]["reason"].startswith("timeout"), outcome.figures  # nginx waits on it
    assert_no_order_lost_or_duplicated(outcome.orders)


def test_a_planned_drain_takes_a_node_down_without_a_single_failed_order(cluster):
    outcome = scenarios.planned_stop(cluster, "app1", drain=True)
    print(outcome.figures, outcome.orders)
    orders = outcome.orders["pretix"]
    assert orders["sent"] > 0
    assert (orders["failed"], orders["committed_with_error"], orders["lost"], orders["not_sent"]) == (0, 0, 0, 0), \
        orders
    assert orders["ok"] == orders["sent"]
