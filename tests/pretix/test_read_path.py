"""Issue 13, pretix's read path through haproxy (tests/pretix/read_path.py): app1 reads through
`listen pretix_replica`, gated by the agent; app2 through the same section gated by haproxy's own
TCP check alone, at the agent's interval and fall.

The figures (how soon, against haproxy alone and against no proxy at all) are in `make bench`."""

from __future__ import annotations

import pytest

from . import read_path
from .test_node_failures import assert_no_order_lost_or_duplicated

pytestmark = pytest.mark.pretix


def test_a_stopped_replica_leaves_the_read_path_and_at_most_one_probe_fails_for_want_of_a_connection(cluster):
    """The issue asks for at most 1 of 15 one-second probes of the event page failing. What else
    fails is pretix's, not the read path's: pretix keeps [replica] connections for CONN_MAX_AGE
    (120 s) without checking them (no CONN_HEALTH_CHECKS for [replica] in pretix/settings.py), so
    each worker's first read on the connection the stopped replica closed fails once ("stale"),
    whatever any proxy does."""
    outcome = read_path.replica_stopped(cluster)
    print(outcome.figures)
    figures = outcome.figures
    pages = figures["pages"]["app1"]
    workers = len(figures["workers_on_replica_at_stop"]["app1"])
    assert pages["probes"] >= 15, pages
    assert pages["failed"] == sum(pages["errors"].values()), pages  # every failed probe is explained
    assert pages["errors"].get("connect", 0) <= 1, pages
    assert pages["errors"].get("stale", 0) <= workers, pages  # at most once per worker
    assert pages["errors"].get("other", 0) == 0, pages
    assert figures["replica_out_after_stop_s"]["pretix_replica"] is not None, figures
    assert any("server=replica state=maint" in change for change in figures["agent_changes"]), figures


def test_paused_replay_moves_the_reads_to_the_primary_before_the_lag_passes_max_lag_seconds_and_one_interval(
        cluster):
    outcome = read_path.replay_paused(cluster)
    print(outcome.figures, outcome.orders)
    figures = outcome.figures
    assert figures["out_before_lag_plus_interval"]["pretix_replica"], figures
    # shutdown_sessions: app1's workers no longer read the paused replica, they reconnected to the
    # primary; app2's, behind haproxy's own TCP check alone, still read it (the replica is alive).
    assert figures["workers_on_replica_at_end"]["app1"] == [], figures
    assert figures["workers_on_replica_at_end"]["app2"], figures
    pages = figures["pages"]["app1"]
    assert pages["failed"] == pages["errors"].get("stale", 0), pages  # only the shut connections, once each
    assert pages["errors"].get("stale", 0) <= len(figures["workers_on_replica_at_pause"]["app1"]), pages
    assert_no_order_lost_or_duplicated(outcome.orders)
