"""pretix's dependencies fail: a stopped celery worker and a stopped replica are seen by the agent."""

from __future__ import annotations

import re

import pytest

from . import scenarios

pytestmark = pytest.mark.pretix


def test_a_stopped_celery_worker_fails_the_queue_check_on_age_then_on_length_naming_pretixs_queue(cluster):
    """The check (fall 1) fails at the first probe that measures a queue over a limit. pretix's API
    orders leave notification and webhook tasks, sent at high priority (the bare `notifications`
    list) while the organizer is quiet and at priority 5 (`notifications:4`) once it sends 50 a
    minute (pretix's fair-use rule, helpers/celery.py; the test sets that counter). `consistent`:
    no probe ever saw a queue over a limit and passed. How soon after the limit it failed is in the
    bench (within two intervals: one for the oldest task's first sighting, one for the probe after
    the limit)."""
    outcome = scenarios.celery_stopped(cluster)
    print(outcome.figures, outcome.orders)
    age = outcome.figures["age"]
    assert age["reason"].startswith(f"oldest task waiting over {cluster.max_queue_age:g} s: "), age
    assert re.search(r": notifications in notifications for \d+ s$", age["reason"]), age  # high priority
    assert age["values"]["queue_ages"]["notifications"] >= cluster.max_queue_age  # rounded to 0.1 s
    assert age["values"]["queues"]["notifications"] <= cluster.max_queue_length  # the age alone failed it
    assert age["consistent"]
    message = outcome.figures["message"]  # a real task: a delivery tag, and no time it was sent
    assert "delivery_tag" in message["property_keys"], message
    assert "created" not in message["top_level_keys"], message  # what pretix's own /metrics reads
    length = outcome.figures["length"]
    assert re.fullmatch(rf"queue over {cluster.max_queue_length} tasks: notifications (\d+) \(notifications:4 \1\)",
                        length["reason"]), length
    assert length["values"]["queues"]["notifications"] > cluster.max_queue_length
    # at priority 5 every task waits in notifications:4, and the check counts every one of them
    lists = length["lists_at_end"]
    assert set(lists) == {"notifications:4"}, lists
    assert length["depths_at_end"]["notifications"] == lists["notifications:4"]
    assert length["consistent"]
    assert outcome.figures["passing_again"]


def test_a_stopped_replica_fails_the_agents_postgres_check_at_once_and_passes_again_once_it_streams(cluster):
    outcome = scenarios.replica_stopped(cluster)
    print(outcome.figures, outcome.orders)
    assert outcome.figures["state"] == "failing"
    assert "sock-replica" in outcome.figures["reason"], outcome.figures  # names the server it could not reach
    assert outcome.orders["pretix"]["lost"] == 0
