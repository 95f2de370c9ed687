"""What pretix-agentctl prints, from typed status documents: drain/ready lines that tell what haproxy
does now and what the node waits for, and the status lines for shared causes and flap damping."""

from __future__ import annotations

import dataclasses

from pretix_agent import render, status

BASE = status.Document(format=status.FORMAT, state="running", written_at="2026-12-02T12:00:00.000+00:00",
                       written_at_unix=1_796_212_800.0, stale_after=20.0, node="app1", pid=4242, version="0.1.0",
                       started_at="2026-12-02T11:00:00+00:00", config="/etc/pretix-agent/agent.toml",
                       sentence="maintenance off", cycles=3, healthy=True,
                       maintenance=status.Maintenance("/m", "/l", "UTC", on=False),
                       drain=status.Drain("/var/lib/pretix-agent/drain"))


def check(state: str, passes: int = 0, rise: int = 2, reason: str = "HTTP 200 in 3 ms") -> status.Check:
    return status.Check(type="http", state=state, interval=1.0, timeout=0.8, fall=3, rise=rise, reason=reason,
                        outcome="pass" if passes else "fail", passes=passes,
                        failure=None if state == "passing" else "timeout: no answer within 0.8 s (a minute ago)")


def server(actual: str, desired: str | None = None, **extra) -> status.HaproxyServer:
    return status.HaproxyServer("pretix", "app1", actual, True, desired or actual, "why", checks=["pretix"],
                                local=True, **extra)


def document(**changes) -> status.Document:
    return dataclasses.replace(BASE, **changes)


def drained(reason: str = "kernel update") -> status.Drain:
    return status.Drain("/var/lib/pretix-agent/drain", status.Holder(True, by="alice"), reason=reason)


def test_a_drained_node_says_what_haproxy_does_and_that_ready_ends_it():
    line = render.ready_line(document(
        drain=drained(), checks={"pretix": check("passing", 5)},
        agent_check=status.AgentCheck("0.0.0.0:8999", "up 0% #kernel update\n"),
        haproxy=status.Haproxy("/run/haproxy/admin.sock", reachable=True, servers=[server("drain")])))
    assert line == ("this node is DRAINING (kernel update); agent-check answers 'up 0% #kernel update': haproxy "
                    "sends it no new requests; haproxy pretix/app1 is drain: no new requests, current ones finish; "
                    "back in rotation after pretix-agentctl ready")


def test_a_ready_node_in_rotation_waits_for_nothing():
    line = render.ready_line(document(
        checks={"pretix": check("passing", 5)}, agent_check=status.AgentCheck("0.0.0.0:8999", "up 100%\n"),
        haproxy=status.Haproxy("/run/haproxy/admin.sock", reachable=True, servers=[server("ready")])))
    assert line == ("this node is not drained; agent-check answers 'up 100%': haproxy sends it requests; haproxy "
                    "pretix/app1 is ready: it takes requests")


def test_a_node_whose_check_rises_again_says_how_many_passes_it_waits_for_and_no_stale_reason():
    line = render.ready_line(document(
        checks={"pretix": check("failing", passes=1)},
        agent_check=status.AgentCheck("0.0.0.0:8999", "down 100% #pretix: timeout\n"),
        haproxy=status.Haproxy("/run/haproxy/admin.sock", reachable=True, servers=[server("maint")])))
    assert line.endswith("; back when pretix passes 2 probes in a row (1 so far)")
    assert "a minute ago" not in line and "HTTP 200" not in line
    assert "haproxy pretix/app1 is maint: no requests" in line


def test_a_flap_hold_is_named_with_its_end():
    line = render.ready_line(document(
        checks={"pretix": check("passing", 5)},
        haproxy=status.Haproxy("/run/haproxy/admin.sock", reachable=True, servers=[server(
            "maint", hold_seconds=20.0, hold_until="2026-12-02T12:00:20+00:00")])))
    assert line.endswith("back when its flap damping ends at 2026-12-02T12:00:20+00:00 (20 s)")


def test_status_names_a_shared_cause_and_a_flap_hold():
    haproxy = status.Haproxy("/run/haproxy/admin.sock", reachable=True,
                             shared={"pretix": "redis failing: 2 of 2 servers failing, none taken out"},
                             servers=[server("maint", hold_seconds=10.0, hold_until="2026-12-02T12:00:10+00:00",
                                             flap_level=1)])
    lines = render.status_lines(document(haproxy=haproxy), status.Liveness(True, "running", 1.0))
    assert "haproxy pretix: SHARED CAUSE: redis failing: 2 of 2 servers failing, none taken out" in lines
    assert "haproxy pretix/app1: maint: why [flap damping: held out 10 s, until 2026-12-02T12:00:10+00:00]" in lines


def test_maintenance_closed_by_a_check_says_so_and_that_it_ends_by_itself():
    maintenance = status.Maintenance("/m", "/l", "UTC", on=True, cause="check:redis")
    assert render.maintenance_line(document(maintenance=maintenance)) == (
        "maintenance is ON: check redis failing ([maintenance] on_failing); ends by itself when it passes again")
