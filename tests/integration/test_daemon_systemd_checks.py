"""A `systemd` check in the real daemon, against mock systemd on a private D-Bus."""

import time

import pytest

from .dbus_fixture import PrivateBus, SystemdMock, dbus_unavailable_reason

pytestmark = [pytest.mark.integration, pytest.mark.skipif(dbus_unavailable_reason() is not None,
                                                          reason=str(dbus_unavailable_reason()))]

CHECK = """
[checks.units]
type = "systemd"
units = ["pretix-web.service", "pretix-worker.service"]
interval = "30s"
timeout = "1s"
rise = 1
"""
# A long interval, so that only D-Bus signals can explain changes seen within seconds; rise = 1
# because with one signal per change the next periodic probe would come only 30 s later.


def test_a_unit_that_fails_turns_the_check_failing_at_once_not_at_the_next_interval(agent_factory, tmp_path):
    with PrivateBus(tmp_path / "bus") as bus:
        systemd = SystemdMock(bus, {"pretix-web.service": ("active", "running"),
                                    "pretix-worker.service": ("active", "running")}).start()
        agent = agent_factory(CHECK, env=bus.env())
        agent.wait_status(lambda d: d["checks"]["units"]["state"] == "passing")
        failed_at = time.monotonic()
        systemd.set_state("pretix-worker.service", "failed", "failed")
        document = agent.wait_status(lambda d: d["checks"]["units"]["state"] == "failing", timeout=5)
        seen_after = time.monotonic() - failed_at
        assert seen_after < 2.0, seen_after  # the interval is 30 s: only the D-Bus signal explains this
        assert "pretix-worker.service" in document["checks"]["units"]["reason"]
        assert document["checks"]["units"]["hard"] is True
        systemd.set_state("pretix-worker.service", "active", "running")
        agent.wait_status(lambda d: d["checks"]["units"]["state"] == "passing", timeout=5)


def test_without_a_system_bus_systemd_checks_are_unknown_and_the_daemon_runs(agent_factory, tmp_path):
    agent = agent_factory(CHECK, env={"DBUS_SYSTEM_BUS_ADDRESS": f"unix:path={tmp_path}/no-bus"})
    document = agent.wait_status(lambda d: d["checks"]["units"]["probes"] >= 1)
    assert document["checks"]["units"]["outcome"] == "unknown"
    assert "systemd.checks_unavailable" in agent.log()
    assert agent.process.poll() is None
