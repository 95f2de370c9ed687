"""The real daemon as systemd sees it: notifications, watchdog pings, reload, stop."""

import itertools
import signal
import time

import pytest

from tests.waiting import wait_until

pytestmark = pytest.mark.integration


def test_daemon_sends_ready_with_a_status_line_after_the_first_evaluation(agent_factory):
    agent = agent_factory()
    ready = agent.notify.wait_for("READY", "1")
    assert ready[0][1]["STATUS"].startswith("maintenance off")
    document = agent.status()
    assert document["state"] == "running" and document["cycles"] >= 1
    assert document["maintenance"]["on"] is False


def test_watchdog_pings_arrive_at_half_the_watchdog_interval(agent_factory):
    agent = agent_factory(watchdog_usec=1_000_000)
    pings = agent.notify.wait_for("WATCHDOG", "1", count=5, timeout=10)
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(pings)]
    # Half of WATCHDOG_USEC apart: never so often as to spam, always well inside the 1 s that
    # systemd allows before it kills the service.
    assert all(0.3 < gap < 0.9 for gap in gaps), gaps


def test_sighup_sends_reloading_then_ready_and_applies_the_new_config(agent_factory):
    agent = agent_factory()
    agent.config.write_text(agent.config.read_text().replace('node = "test-node"', 'node = "renamed"'))
    agent.signal(signal.SIGHUP)
    agent.notify.wait_for("RELOADING", "1")
    agent.notify.wait_for("READY", "1", count=2)
    reloading_at = agent.notify.with_key("RELOADING")[0][0]
    assert agent.notify.with_key("READY")[1][0] >= reloading_at
    agent.wait_status(lambda d: d["node"] == "renamed")
    assert "config.reloaded" in agent.log()


def test_bad_config_on_sighup_keeps_the_daemon_running_on_the_old_config(agent_factory):
    agent = agent_factory()
    good = agent.config.read_text()
    agent.config.write_text(good.replace('reconcile_interval = "2s"', 'reconcile_interval = "fast"')
                            .replace('node = "test-node"', 'node = "never"'))
    agent.signal(signal.SIGHUP)
    agent.notify.wait_for("READY", "1", count=2)
    wait_until(lambda: "config.reload_failed" in agent.log(), message="reload_failed in the log")
    log = agent.log()
    assert "agent.reconcile_interval" in log and "reload_rejected" in log
    assert agent.process.poll() is None
    assert agent.status()["node"] == "test-node"
    status_after = agent.notify.with_key("READY")[1][1]["STATUS"]
    assert status_after.startswith("reload failed, running on the old configuration")


def test_watchdog_pings_stop_while_the_main_loop_is_stalled(agent_factory):
    agent = agent_factory(watchdog_usec=400_000, env={"PRETIX_AGENT_TEST_STALL_SECONDS": "2.5"})
    agent.notify.wait_for("WATCHDOG", "1", count=3)
    agent.signal(signal.SIGUSR2)
    wait_until(lambda: "agent.test_stall" in agent.log(), message="the stall to begin")
    stall_began = time.monotonic()
    # While stalled, no ping may arrive; after it the pings resume.
    agent.notify.wait_for("WATCHDOG", "1", count=len(agent.notify.with_key("WATCHDOG")) + 1, timeout=10)
    pings = [t for t, _ in agent.notify.with_key("WATCHDOG")]
    during = [t for t in pings if stall_began + 0.05 < t < stall_began + 2.3]
    assert during == [], during
    assert max(pings) > stall_began + 2.3


def test_sigterm_sends_stopping_and_exits_zero(agent_factory):
    agent = agent_factory()
    agent.signal(signal.SIGTERM)
    assert agent.process.wait(10) == 0
    agent.notify.wait_for("STOPPING", "1")
    assert agent.status()["state"] == "stopped"


def test_daemon_without_notify_socket_runs_quietly(tmp_path):
    from .agent_fixture import Agent, write_config

    config = write_config(tmp_path)
    agent = Agent(tmp_path, config, env={"NOTIFY_SOCKET": ""})
    try:
        agent.wait_status(lambda d: d["state"] == "running")
        assert agent.notify.all() == []
        assert "systemd.notify_failed" not in agent.log()
    finally:
        agent.stop()
