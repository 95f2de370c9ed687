"""The agent-check port under a flood, polled by a real haproxy: every one of haproxy's polls is
answered, whatever other clients do, and a source outside `allow` gets nothing.

haproxy's polls go through a counting relay (tests/integration/agent_check_flood.py), so the test
counts exactly the polls haproxy made and the answers it got. The flood runs in a process of its own.
The former responder (a fixed limit of 64 open connections, new ones closed unanswered beyond it)
answered 0 of 13 polls under 64 holding clients and 10 of 13 under 64 reconnecting ones.
"""

from __future__ import annotations

from collections.abc import Iterator
from ipaddress import ip_network

import pytest

from pretix_agent.haproxy.agent_check import AgentCheckResponder, agent_answer
from tests.waiting import wait_until

from .agent_check_flood import Flood, PollRelay
from .haproxy_fixture import HaproxyFixture, haproxy_unavailable_reason

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(haproxy_unavailable_reason() is not None, reason=haproxy_unavailable_reason() or ""),
]

POLLS = 20  # real polls counted under the flood (agent-inter 100ms: about two seconds)


@pytest.fixture
def polled() -> Iterator[tuple[AgentCheckResponder, PollRelay, HaproxyFixture]]:
    """A responder (allow: 127.0.0.1 only), polled by haproxy through a counting relay."""
    responder = AgentCheckResponder("127.0.0.1:0", lambda: agent_answer(True, False),
                                    allow=[ip_network("127.0.0.1/32")])
    responder.start()
    assert responder.address is not None
    try:
        with PollRelay(responder.address[1]) as relay, \
                HaproxyFixture(servers=2, agent_ports={"app1": relay.port}, agent_inter="100ms") as hx:
            hx.wait_for(lambda: hx.stat_row("pretix", "app1").get("last_agt") == "via agent : up",
                        "haproxy to read the agent's first answer")
            yield responder, relay, hx
    finally:
        responder.stop()


def polls_during(relay: PollRelay, hx: HaproxyFixture, count: int) -> tuple[int, int]:
    """Wait for `count` more of haproxy's polls; return (polls, answered) among them."""
    before_polls, before_answered = relay.counts()
    hx.wait_for(lambda: relay.counts()[0] >= before_polls + count, f"{count} more polls by haproxy", timeout=60)
    after_polls, after_answered = relay.counts()
    return after_polls - before_polls, after_answered - before_answered


@pytest.mark.parametrize(("clients", "mode"), [(64, "hold"), (256, "hold"), (64, "churn")])
def test_every_real_poll_is_answered_while_clients_flood_the_port(polled, clients, mode):
    responder, relay, hx = polled
    with Flood(responder.address[1], clients=clients, mode=mode) as flood:
        # in effect: each flood client answered, and (hold) connections closed to make room
        wait_until(lambda: responder.answered > 2 * clients and (mode != "hold" or responder.evicted > clients),
                   timeout=30, message=lambda: f"the flood to take hold: {responder.counters()}")
        polls, answered = polls_during(relay, hx, POLLS)
        counts = flood.stop()
    print(f"{clients} {mode} clients: {answered} of {polls} polls answered; flood {counts}; "
          f"responder {responder.counters()}")
    assert answered == polls, relay.unanswered[-5:]
    assert counts["connects"] > clients and counts["errors"] == 0
    # haproxy's reading of the agent is still "up". Sampled at one instant under a loaded machine it
    # once read blank right after every poll had been answered: wait for it with a deadline instead.
    hx.wait_for(lambda: hx.stat_row("pretix", "app1").get("last_agt") == "via agent : up",
                "haproxy to read the agent as up after the flood", timeout=10)
    assert responder.alive()


def test_a_flood_from_a_source_outside_allow_gets_nothing_and_costs_the_polls_nothing(polled):
    responder, relay, hx = polled
    with Flood(responder.address[1], clients=64, mode="churn", source="127.0.0.2") as flood:
        wait_until(lambda: responder.refused > 200, timeout=30,
                   message=lambda: f"the refused flood to take hold: {responder.counters()}")
        polls, answered = polls_during(relay, hx, POLLS)
        counts = flood.stop()
    assert answered == polls, relay.unanswered[-5:]
    assert counts["answers"] == 0  # not one line reached the refused source
    assert responder.last_refused == "127.0.0.2"
    assert responder.open_connections <= responder.max_per_source
