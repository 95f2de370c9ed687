"""Drain before shutdown: the logind delay lock held, a PrepareForShutdown(true) drains the node,
the lock is released after the drain, and a cancelled shutdown takes the lock again."""

import pytest

from tests.waiting import wait_until

from .dbus_fixture import LogindMock, PrivateBus, dbus_unavailable_reason
from .haproxy_fixture import free_port

pytestmark = [pytest.mark.integration, pytest.mark.skipif(dbus_unavailable_reason() is not None,
                                                          reason=str(dbus_unavailable_reason()))]


def ours(logind):
    return [entry for entry in logind.inhibitors() if entry[1] == "pretix-agent"]


def test_shutdown_drains_the_node_then_releases_the_delay_lock(agent_factory, tmp_path):
    with PrivateBus(tmp_path / "bus") as bus:
        logind = LogindMock(bus).start()
        port = free_port()
        # The agent section is written by the fixture; agent_check alone is enough to arm the drain.
        agent = agent_factory(f'[agent_check]\nlisten = "127.0.0.1:{port}"\n', env=bus.env())
        wait_until(lambda: ours(logind), message="the delay lock taken")
        (what, _who, why, mode, _uid, _pid) = ours(logind)[0]
        assert (what, mode, why) == ("shutdown", "delay", "drain haproxy before shutdown")
        assert agent.status()["agent_check"]["answer"] == "up 100%\n"
        logind.prepare_for_shutdown(True)
        agent.wait_status(lambda d: d["agent_check"]["answer"] == "up 0% #system shutdown\n", timeout=5)
        assert ours(logind), "released before the drain time passed"
        wait_until(lambda: not ours(logind), timeout=10, message="the lock released after the drain")
        assert "shutdown_drain.released" in agent.log()
        # Nothing persisted: a reboot must not come back drained.
        assert not agent.status()["drain"]["request"]["present"]
        logind.prepare_for_shutdown(False)
        agent.wait_status(lambda d: d["agent_check"]["answer"] == "up 100%\n", timeout=5)
        wait_until(lambda: ours(logind), message="the lock taken again")
