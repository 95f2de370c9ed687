"""Issue 18 against the real pretix (tests/pretix/lock_holder.py): a node hangs while one of its
workers holds the quota lock; the fencing agent ends that worker's session after max_hold.

The figures (how soon orders resume, against the same scenario with fencing in dry run) are in
`make bench`."""

from __future__ import annotations

import pytest

from . import lock_holder
from .test_node_failures import assert_no_order_lost_or_duplicated

pytestmark = pytest.mark.pretix


def test_a_node_hung_holding_the_quota_lock_is_fenced_and_only_its_own_orders_in_flight_fail(cluster):
    outcome = lock_holder.lock_holder_stopped(cluster, fencing=True)
    print(outcome.figures, outcome.orders)
    figures = outcome.figures
    fence = figures["fence"]
    assert fence["outcome"] == "terminated" and fence["session"] == figures["caught"]["session"], figures
    assert figures["fences_total"] == 1, figures
    # Orders on the other node went on while the hung node was still stopped ...
    assert figures["orders_resumed_while_stopped"], figures
    # ... at most the orders in flight on the hung node failed (none answered 409 elsewhere) ...
    assert figures["failed_orders_not_on_stopped_node"] == [], figures
    assert figures["failed_orders"] <= figures["orders_in_flight_on_stopped_node"], figures
    # ... and the healthy node was never taken out of haproxy.
    assert not figures["healthy_node_out"], figures
    assert_no_order_lost_or_duplicated(outcome.orders)
