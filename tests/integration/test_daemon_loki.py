"""The daemon's own events shipped to a Loki-compatible receiver (without journald: the bounded
in-memory queue), with the labels and tenant configured, surviving an outage."""

import pytest

from tests.waiting import wait_until

from .agent_fixture import ctl
from .loki_receiver import LokiReceiver

pytestmark = pytest.mark.integration


@pytest.fixture
def loki():
    with LokiReceiver() as receiver:
        yield receiver


def loki_config(receiver, tenant="pretix"):
    return f"""
[loki]
url = "{receiver.url}"
tenant = "{tenant}"
env = "test"
batch_wait = "100ms"
min_backoff = "20ms"
max_backoff = "200ms"
"""


def texts(receiver):
    return [line["line"] for line in receiver.lines(tenant="pretix")]


def test_the_agents_events_arrive_with_their_labels(agent_factory, loki):
    agent = agent_factory(loki_config(loki))
    wait_until(lambda: any("agent.started" in text for text in texts(loki)), message="agent.started in Loki")
    line = next(line for line in loki.lines(tenant="pretix") if "agent.started" in line["line"])
    # no `unit` label: outside systemd there is no unit (under systemd the journal supplies it)
    assert line["labels"] == {"host": "test-node", "service_name": "pretix-agent", "env": "test"}
    assert "loki.memory_source" in agent.log()
    # the receiver holds the line before the shipper has read its answer and the loop has published
    # the status that follows: wait for that status rather than read between the two
    wait_until(lambda: agent.status()["loki"]["state"] in ("idle", "sending"),
               message=lambda: f"loki idle or sending in the status: {agent.status()['loki']}")


def test_the_agents_events_carry_their_level_and_event_name_for_logql(agent_factory, loki):
    agent = agent_factory(loki_config(loki))
    assert ctl(agent.config, "lock", "--reason", "metadata").returncode == 0
    wait_until(lambda: any("maintenance.enabled" in text for text in texts(loki)), message="maintenance.enabled")
    by_event = {line["metadata"].get("event"): line["metadata"] for line in loki.lines(tenant="pretix")}
    assert by_event["maintenance.enabled"] == {"level": "info", "event": "maintenance.enabled"}
    assert by_event["agent.started"]["level"] == "info"


def test_events_logged_during_a_loki_outage_arrive_after_it(agent_factory, loki):
    agent = agent_factory(loki_config(loki))
    wait_until(lambda: any("agent.started" in text for text in texts(loki)), message="agent.started in Loki")
    loki.fail_for(1.5, status=503)
    assert ctl(agent.config, "lock", "--reason", "during the outage").returncode == 0
    wait_until(lambda: any("maintenance.enabled" in text for text in texts(loki)), timeout=15,
               message="the event logged during the outage")
    document = agent.wait_status(lambda d: d["loki"]["failed_pushes"] >= 1 and d["loki"]["last_success_at"])
    assert document["loki"]["drops"]["queue_full"] == 0
