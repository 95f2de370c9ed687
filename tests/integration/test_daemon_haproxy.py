"""The agent reconfiguring a real haproxy: gated servers, the min_ready guard, reloads, agent-check,
and a planned drain under load that loses no request."""

import threading
import time

import pytest

from tests.waiting import wait_until

from .agent_fixture import ctl
from .haproxy_fixture import HaproxyFixture, haproxy_unavailable_reason

pytestmark = [pytest.mark.integration, pytest.mark.skipif(haproxy_unavailable_reason() is not None,
                                                          reason=str(haproxy_unavailable_reason()))]


def agent_config(hx, state_file=True, local=None, agent_port=None, extra=""):
    text = ""
    for name, backend in hx.backends.items():
        text += f"""
[checks.web-{name}]
type = "http"
url = "http://127.0.0.1:{backend.port}/healthcheck/"
host = "tickets.example.org"
interval = "200ms"
timeout = "150ms"
fall = 2
rise = 2
"""
    text += f"""
[haproxy]
socket = "{hx.admin_socket}"
interval = "500ms"
hold_down = "1s"
min_ready = 1
{'state_file = "' + str(hx.state_file) + '"' if state_file else ''}
"""
    for name in hx.backends:
        text += f"""
[[haproxy.server]]
backend = "pretix"
server = "{name}"
checks = ["web-{name}"]
{'local = true' if name == local else ''}
"""
    if agent_port:
        text += f"""
[agent_check]
listen = "127.0.0.1:{agent_port}"
checks = ["web-app1"]
"""
    return text + extra


@pytest.fixture
def hx():
    with HaproxyFixture(servers=2) as haproxy:
        yield haproxy


def admin(hx, server):
    return hx.server_admin("pretix", server)


def test_a_killed_backend_goes_to_maint_and_comes_back_after_recovery(agent_factory, hx):
    agent = agent_factory(agent_config(hx))
    agent.wait_status(lambda d: all(c["state"] == "passing" for c in d["checks"].values()))
    hx.backends["app1"].kill()
    wait_until(lambda: admin(hx, "app1") == "maint", message="app1 in maint")
    wait_until(lambda: "haproxy.server_state_changed backend=pretix server=app1 state=maint" in agent.log(),
               message="the change logged")  # logged right after haproxy took it: do not race it
    assert admin(hx, "app2") == "ready"
    hx.backends["app1"].revive()
    wait_until(lambda: admin(hx, "app1") == "ready", timeout=10, message="app1 ready again")
    document = agent.wait_status(lambda d: d["haproxy"].get("taken_out") == [])
    assert document["haproxy"]["reachable"]


def test_when_every_server_fails_the_last_one_stays_and_status_says_why(agent_factory, hx):
    agent = agent_factory(agent_config(hx))
    agent.wait_status(lambda d: all(c["state"] == "passing" for c in d["checks"].values()))
    for backend in hx.backends.values():
        backend.kill()
    document = agent.wait_status(lambda d: d.get("haproxy", {}).get("held"))
    held = document["haproxy"]["held"]
    assert len(held) == 1
    assert sorted(admin(hx, s) for s in ("app1", "app2")) == ["maint", "ready"]
    report = {r["server"]: r for r in document["haproxy"]["servers"]}[held[0].split("/")[1]]
    assert "min_ready is 1" in report["why"]
    assert "haproxy.guard_held" in agent.log()
    shown = ctl(agent.config, "status")
    assert shown.returncode == 1


def test_a_haproxy_reload_keeps_what_the_agent_set(agent_factory, hx):
    agent = agent_factory(agent_config(hx, state_file=True))
    agent.wait_status(lambda d: all(c["state"] == "passing" for c in d["checks"].values()))
    hx.backends["app1"].kill()
    wait_until(lambda: admin(hx, "app1") == "maint", message="app1 in maint")
    hx.reload()  # a plain reload: the state file the agent wrote is what haproxy loads
    assert admin(hx, "app1") == "maint"  # at once, not after the agent re-applies it
    wait_until(lambda: "haproxy.reloaded" in agent.log(), message="the reload noticed")


def test_without_a_state_file_a_reload_is_repaired_within_one_interval(agent_factory, hx):
    agent = agent_factory(agent_config(hx, state_file=False))
    agent.wait_status(lambda d: all(c["state"] == "passing" for c in d["checks"].values()))
    hx.backends["app1"].kill()
    wait_until(lambda: admin(hx, "app1") == "maint", message="app1 in maint")
    hx.state_file.unlink(missing_ok=True)
    hx.reload()
    # Within one [haproxy] interval (0.5 s) as bench/haproxy.py's reload_repair figure shows; here
    # within a deadline of ten intervals.
    wait_until(lambda: admin(hx, "app1") == "maint", timeout=5, message="app1 in maint again")
    wait_until(lambda: "haproxy.reloaded" in agent.log(), message="the reload logged")


def test_agent_check_answers_are_read_back_from_haproxy(agent_with_port):
    # weight 100: haproxy applies the agent's percentage to the configured weight, rounding down
    with HaproxyFixture(servers=2, agent_inter="200ms", server_options={"app1": "weight 100"}) as hx:
        checks = agent_config(hx).split("[haproxy]")[0]  # the checks only: this node answers agent-check
        agent, port = agent_with_port(
            lambda port: checks + f'\n[agent_check]\nlisten = "127.0.0.1:{port}"\nchecks = ["web-app1"]\n')
        hx.configure(agent_ports={"app1": port})  # haproxy polls the port the agent got
        hx.reload()
        agent.wait_status(lambda d: d["agent_check"]["answer"] == "up 100%\n")
        row = lambda: hx.stat_row("pretix", "app1")  # noqa: E731
        server = lambda: hx.server_state("pretix", "app1")  # noqa: E731
        wait_until(lambda: row().get("last_agt") == "via agent : up", message=lambda: f"haproxy reading up: {row()}")
        drained = ctl(agent.config, "drain", "--reason", "kernel update")
        assert drained.returncode == 0, drained.stderr
        assert "agent-check answers 'up 0% #kernel update'" in drained.stdout
        wait_until(lambda: server().weight == 0, message=lambda: f"weight 0 in haproxy: {server()}")
        assert row().get("last_agt") == "via agent : up (kernel update)"
        assert ctl(agent.config, "ready").returncode == 0
        wait_until(lambda: server().weight == 100, message=lambda: f"weight back: {server()}")
        hx.backends["app1"].kill()
        wait_until(lambda: row().status == "DOWN (agent)", message=lambda: f"DOWN via the agent: {row()}")
        assert row().get("last_agt").startswith("via agent : down (web-app1: connection refused")


def test_a_planned_drain_under_load_loses_no_request(agent_factory, hx):
    agent = agent_factory(agent_config(hx, local="app1"))
    agent.wait_status(lambda d: all(c["state"] == "passing" for c in d["checks"].values()))
    results, stop = [], threading.Event()

    def load():
        deadline = time.monotonic() + 20  # bounded in time and count
        while not stop.is_set() and time.monotonic() < deadline and len(results) < 20000:
            try:
                results.append(hx.request("/org/event/").status)
            except OSError as error:
                results.append(repr(error))

    workers = [threading.Thread(target=load) for _ in range(4)]
    for worker in workers:
        worker.start()
    wait_until(lambda: len(results) > 200, message="load running")
    assert ctl(agent.config, "drain", "--reason", "planned").returncode == 0
    wait_until(lambda: admin(hx, "app1") == "drain", message="app1 draining")
    before = len(results)
    wait_until(lambda: len(results) > before + 200, message="load after the drain")
    assert ctl(agent.config, "ready").returncode == 0
    wait_until(lambda: admin(hx, "app1") == "ready", timeout=10, message="app1 back")
    stop.set()
    for worker in workers:
        worker.join()
    failed = [r for r in results if r != 200]
    assert failed == [], failed[:5]
    assert len(results) > 400


def test_ctl_status_shows_haproxy_servers_desired_against_actual(agent_factory, hx):
    agent = agent_factory(agent_config(hx))
    agent.wait_status(lambda d: all(c["state"] == "passing" for c in d["checks"].values()))
    hx.backends["app1"].kill()
    # Taken out, and seen so: the report after the change says haproxy has it in maint.
    agent.wait_status(lambda d: any(s["server"] == "app1" and s["actual"] == "maint"
                                    for s in d["haproxy"].get("servers", [])))
    shown = ctl(agent.config, "status")
    assert "haproxy pretix/app1: maint: web-app1: connection refused" in shown.stdout, shown.stdout
    assert "haproxy pretix/app2: ready: gating checks pass" in shown.stdout
    assert shown.returncode == 1  # a check is failing
