"""Logs to Loki, a failing unit taken out of haproxy, and the drain before a reboot, in a booted Debian
12 and 13 (haproxy 2.6 and 3.0, systemd 252 and 257).

One container for the module (the .deb installed with apt, as in test_installed_package.py), its
tests in file order: first the Loki shipping (issue 6), then haproxy and polkitd are installed and
the agent watches a real pretix-web.service (issue 7); the last test reboots the container, which
ends it.

The Loki receiver (tests/integration/loki_receiver.py) runs in this pytest process on the host's
127.0.0.1: systemd-nspawn is started without --private-network (container.py), so the container's
127.0.0.1 is the host's. The agent-check port is polled from the host the same way.

The agent runs with the shipped unit's hardening: only the two drop-ins the documentation asks
operators for are added, SupplementaryGroups=systemd-journal (to read the journal, docs/logs.md)
and SupplementaryGroups=haproxy (the admin socket). No test-only ProtectProc=default: inside
nspawn, ProtectProc=invisible gives the service a /proc without nspawn's boot_id overmount, so the
agent sees the host's boot id, and `journalctl --follow` would filter on a boot this journal does
not have; the agent passes --merge, which drops that filter, and these tests prove it ships.
"""

from __future__ import annotations

import json
import socket
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from tests.integration.loki_receiver import LokiReceiver
from tests.ports import PortInUse, address_in_use, start_with_ports
from tests.waiting import wait_until

from .conftest import SYSTEM_PATH, Node
from .container import CommandFailed, Container
from .rootfs import Release

UNIT = "pretix-agent.service"
WEB = "pretix-web.service"
CONFIG = "/etc/pretix-agent/agent.toml"
NODE = "e2e-node"
DROP_INS = "/etc/systemd/system/pretix-agent.service.d"
CURSOR_FILE = "/var/lib/pretix-agent/loki.cursor"
STATUS_FILE = "/run/pretix-agent/status.json"
SECRET = "/etc/pretix-agent/loki-password"
CREDENTIAL = "/run/credentials/pretix-agent.service/loki-password"
WEB_STOP = "/run/pretix-web-e2e.stop"
HAPROXY_SOCKET = "/run/haproxy/admin.sock"
DRAIN_SECONDS = 2.0
# logind's default InhibitDelayMaxSec: had the agent not released its lock, logind would have gone
# on after this long anyway.
LOGIND_DELAY_MAX = 5.0
FMAINT = 0x01  # haproxy's admin state bit (`show servers state`, srv_admin_state) of a forced maint
REBOOT_EXIT_STATUS = 133  # systemd-nspawn's exit status when the container rebooted
# journald stamps a line when it reads it: lines that reach it on different sockets (native,
# stdout streams, haproxy's syslog) can be stamped a fraction of a millisecond out of causal order.
# Comparisons across sources allow this much.
SKEW = 0.05

HAPROXY_CFG = f"""\
global
    stats socket {HAPROXY_SOCKET} mode 660 level admin group haproxy
    stats timeout 30s
    user haproxy
    group haproxy

defaults
    mode http
    timeout connect 5s
    timeout client 30s
    timeout server 30s

# No frontend: nothing binds a port in the host's network namespace. app1 is this node (gated by
# pretix-web.service), app2 another node the agent does not manage. No `check` on the servers:
# both are up as far as haproxy knows.
backend pretix
    server app1 127.0.0.1:8001
    server app2 127.0.0.1:8002
"""

WEB_UNIT = """\
[Unit]
Description=pretix web (a stand-in for the end-to-end tests)

[Service]
ExecStart=/bin/sleep infinity
Restart=no
"""


@pytest.fixture(scope="module")
def c(node: Node) -> Container:
    return node.container


@pytest.fixture(scope="module")
def loki(release: Release) -> Iterator[LokiReceiver]:
    """A receiver for one release's container: what Debian 12's agent shipped must not count for 13's."""
    receiver = LokiReceiver().start()
    try:
        yield receiver
    finally:
        receiver.release()
        receiver.stop()


def loki_toml(url: str) -> str:
    # Short timeout and backoff so the outage test takes seconds; retries never stop anyway.
    return (f'[loki]\nurl = "{url}"\nunits = ["{WEB}"]\ntimeout = "2s"\nmin_backoff = "200ms"\n'
            'max_backoff = "1s"\n')


def main_pid(c: Container) -> int:
    return int(c.show(UNIT, "MainPID"))


def restart_agent(c: Container) -> int:
    """Restart the agent (after daemon-reload); return its new main PID once it is active."""
    c.run(["systemctl", "daemon-reload"])
    c.run(["systemctl", "restart", UNIT], timeout=120)
    assert c.show(UNIT, "ActiveState") == "active"
    return main_pid(c)


def messages(entries: list[dict[str, Any]]) -> list[str]:
    return [str(e.get("MESSAGE", "")) for e in entries]


def shipped(loki: LokiReceiver, service_name: str) -> list[dict[str, Any]]:
    return [r for r in loki.lines() if r["labels"].get("service_name") == service_name]


def slice_at(haystack: list[str], needle: list[str]) -> int:
    """Return where `needle` starts as a contiguous run in `haystack`, or -1."""
    for start in range(len(haystack) - len(needle) + 1):
        if haystack[start:start + len(needle)] == needle:
            return start
    return -1


def stop_web(c: Container) -> None:
    c.run(["systemctl", "stop", WEB], check=False)
    c.run(["systemctl", "reset-failed", WEB], check=False)


# -- issue 6: journald lines of the agent and of pretix-web reach Loki ------------------------------------


@pytest.fixture(scope="module")
def shipping(c: Container, loki: LokiReceiver) -> str:
    """The agent ships to the receiver, reading the journal; return the journal cursor before its start."""
    c.run(["mkdir", "-p", DROP_INS])
    c.write(f"{DROP_INS}/50-journal.conf", "[Service]\nSupplementaryGroups=systemd-journal\n")
    c.write(CONFIG, f'[agent]\nnode = "{NODE}"\n\n' + loki_toml(loki.url))
    cursor = c.cursor()
    restart_agent(c)
    return cursor


def test_the_agents_events_and_pretix_webs_lines_reach_loki_with_their_labels_in_order(
        c: Container, loki: LokiReceiver, shipping: str):
    pid = main_pid(c)
    started = wait_until(lambda: [r for r in shipped(loki, "pretix-agent")
                                  if r["line"].startswith("agent.started ") and f" pid={pid} " in r["line"]],
                         timeout=15, interval=0.1, message=lambda: f"agent.started in Loki; got {loki.texts()[-20:]}")
    assert started[0]["labels"] == {"host": NODE, "service_name": "pretix-agent", "unit": UNIT}
    # Loki's time is the journal's (µs), the last three digits the entry's sequence number.
    entry = next(e for e in c.journal(UNIT, shipping) if str(e["MESSAGE"]).startswith("agent.started version="))
    assert int(started[0]["ts"]) // 1000 == int(entry["__REALTIME_TIMESTAMP"])

    cursor = c.cursor()
    try:
        c.run(["systemd-run", "--quiet", "--wait", f"--unit={WEB}", "sh", "-c",
               'for i in $(seq 1 50); do echo "web-line-$i"; done'], timeout=60)
    finally:
        stop_web(c)
    journal = messages(c.journal(WEB, cursor))
    assert [m for m in journal if m.startswith("web-line-")] == [f"web-line-{i}" for i in range(1, 51)]
    wait_until(lambda: slice_at([r["line"] for r in shipped(loki, "pretix-web")], journal) >= 0, timeout=15,
               interval=0.1, message=lambda: f"pretix-web's journal in Loki: {journal}\ngot "
                                             f"{[r['line'] for r in shipped(loki, 'pretix-web')]}")
    web = shipped(loki, "pretix-web")
    assert all(r["labels"] == {"host": NODE, "service_name": "pretix-web", "unit": WEB} for r in web), web
    # systemd's own lines about the unit carry it too ("Started ...", "Deactivated successfully.").
    assert any(line.startswith(f"{WEB}: Deactivated successfully") for line in journal), journal


def test_a_loki_outage_across_an_agent_restart_loses_no_line_and_shows_none_twice(
        c: Container, loki: LokiReceiver, shipping: str):
    cursor = c.cursor()
    c.run(["rm", "-f", WEB_STOP])
    # pretix-web logs about 20 lines a second throughout: before, during and after the outage, and
    # while the agent is down for its restart.
    c.run(["systemd-run", "--quiet", f"--unit={WEB}", "sh", "-c",
           f'i=0; until [ -e {WEB_STOP} ]; do i=$((i+1)); echo "outage-line-$i"; sleep 0.05; done; echo web-done'])
    try:
        wait_until(lambda: sum(r["line"].startswith("outage-line-") for r in shipped(loki, "pretix-web")) >= 20,
                   timeout=15, interval=0.1, message="pretix-web's first lines in Loki")
        # The outage: the next push is stored but never answered (Loki took the batch, the agent
        # never hears so: it times out), then every push gets 503 until the outage ends.
        pushes = len(loki.pushes())
        loki.script(["store-then-hang"])
        loki.fail_for(3600, 503)
        wait_until(lambda: any(p.status == 503 for p in loki.pushes()[pushes:]), timeout=20, interval=0.1,
                   message="the agent to retry into the 503s")
        old_pid = main_pid(c)
        new_pid = restart_agent(c)  # its flush at stop fails too (5 s at most): the cursor stays behind
        assert new_pid != old_pid
        pushes = len(loki.pushes())
        wait_until(lambda: any(p.status == 503 for p in loki.pushes()[pushes:]), timeout=20, interval=0.1,
                   message="the restarted agent to retry into the 503s")
        loki.fail_for(0)  # Loki is back
        loki.release()
        c.run(["touch", WEB_STOP])
        wait_until(lambda: c.show(WEB, "ActiveState") != "active", timeout=15, interval=0.1,
                   message="pretix-web to end")
    finally:
        loki.fail_for(0)
        loki.release()
        stop_web(c)
        c.run(["rm", "-f", WEB_STOP])

    web_journal = messages(c.journal(WEB, cursor))
    outage_lines = [m for m in web_journal if m.startswith("outage-line-")]
    assert outage_lines == [f"outage-line-{i}" for i in range(1, len(outage_lines) + 1)] and "web-done" in web_journal
    agent_journal = messages(c.journal(UNIT, cursor))
    assert "agent.stopping" in agent_journal  # the old instance's last lines: shipped by the new one

    def everything_arrived() -> bool:
        return (slice_at([r["line"] for r in shipped(loki, "pretix-web")], web_journal) >= 0
                and slice_at([r["line"] for r in shipped(loki, "pretix-agent")], agent_journal) >= 0)

    wait_until(everything_arrived, timeout=30, interval=0.2,
               message=lambda: f"every journal line in Loki; missing from pretix-web: "
                               f"{sorted(set(web_journal) - set(loki.texts()))[:20]}, from pretix-agent: "
                               f"{sorted(set(agent_journal) - set(loki.texts()))[:20]}")
    # Each line exactly once and in order: the batch Loki stored during the hang was sent again
    # after the restart with the same times and text, and dropped as an exact duplicate.
    texts = [r["line"] for r in shipped(loki, "pretix-web")]
    for line in [*outage_lines, "web-done"]:
        assert texts.count(line) == 1, line
    assert loki.duplicates > 0
    assert c.exists(CURSOR_FILE)
    position = c.read(CURSOR_FILE).strip()
    assert position.startswith("s=")
    c.run(["journalctl", f"--after-cursor={position}", "-n", "1", "--no-pager", "-q"])  # a cursor journalctl takes


def test_a_loki_password_in_a_root_only_file_reaches_the_agent_as_a_systemd_credential(
        c: Container, loki: LokiReceiver, shipping: str):
    # docs/logs.md's way, on systemd 252 and 257 alike: LoadCredential= has systemd (as root) copy
    # the file for the service at its start; the daemon's own user cannot read the file.
    c.write(SECRET, "e2e-secret\n")
    c.run(["chmod", "0600", SECRET])
    denied = c.run(["cat", SECRET], user="pretix-agent", check=False)
    assert denied.returncode != 0 and "Permission denied" in denied.stderr
    c.write(f"{DROP_INS}/55-credential.conf", f"[Service]\nLoadCredential=loki-password:{SECRET}\n")
    c.write(CONFIG, f'[agent]\nnode = "{NODE}"\n\n' + loki_toml(loki.url)
            + f'username = "e2e"\npassword_file = "{CREDENTIAL}"\n')
    loki.basic_auth = ("e2e", "e2e-secret")  # from now on a push without the password gets 401
    cursor = c.cursor()
    try:
        pid = restart_agent(c)
        wait_until(lambda: any(r["line"].startswith("agent.started ") and f" pid={pid} " in r["line"]
                               for r in shipped(loki, "pretix-agent")), timeout=15, interval=0.1,
                   message=lambda: f"agent.started of pid {pid} in Loki; pushes: {loki.pushes()[-5:]}")
        assert "e2e-secret" not in c.messages(UNIT, cursor) and "e2e-secret" not in c.read(STATUS_FILE)
    finally:
        loki.basic_auth = None
        c.run(["rm", "-f", f"{DROP_INS}/55-credential.conf", SECRET])
        c.write(CONFIG, f'[agent]\nnode = "{NODE}"\n\n' + loki_toml(loki.url))
        restart_agent(c)


# -- issue 7: a failed unit takes its haproxy server out; a reboot drains first ---------------------------


@pytest.fixture(scope="module")
def balanced_node(c: Container, loki: LokiReceiver) -> tuple[Container, int]:
    """haproxy with a backend pretix (app1 = this node), pretix-web.service running, the agent gating
    app1 on it, answering agent-check, and holding logind's delay lock (polkitd lets it); and the
    agent-check port. The container shares the host's network: the port is a candidate outside the
    ephemeral range, and a fresh one if the agent finds it in use."""
    c.run(["apt-get", "install", "-y", "--no-install-recommends", "haproxy", "polkitd"],
          env={"DEBIAN_FRONTEND": "noninteractive"}, timeout=600)
    c.write("/etc/haproxy/haproxy.cfg", HAPROXY_CFG)
    c.run(["systemctl", "restart", "haproxy.service"])
    c.write(f"/etc/systemd/system/{WEB}", WEB_UNIT)
    c.write(f"{DROP_INS}/60-haproxy.conf", "[Service]\nSupplementaryGroups=haproxy\n")
    c.run(["systemctl", "daemon-reload"])
    c.run(["systemctl", "start", WEB])
    port = start_with_ports(lambda port: start_balanced_agent(c, loki, port),
                            what="the agent's agent-check listener in the container")
    return c, port


@pytest.fixture(scope="module")
def balanced(balanced_node: tuple[Container, int]) -> Container:
    return balanced_node[0]


@pytest.fixture(scope="module")
def agent_check_port(balanced_node: tuple[Container, int]) -> int:
    return balanced_node[1]


def start_balanced_agent(c: Container, loki: LokiReceiver, agent_check_port: int) -> int:
    """Configure the agent with this agent-check port and restart it; raise PortInUse if it was taken."""
    c.write(CONFIG, f"""\
[agent]
node = "{NODE}"
shutdown_drain_time = "{DRAIN_SECONDS:g}s"

# A unit that fails is a hard failure: it acts at once, whatever interval and fall say (a fall of 5
# every 5 s would otherwise take 25 s).
[checks.web]
type = "systemd"
units = ["{WEB}"]
interval = "5s"
fall = 5
rise = 1

[haproxy]
socket = "{HAPROXY_SOCKET}"
interval = "1s"
hold_down = "1s"

[[haproxy.server]]
backend = "pretix"
server = "app1"
checks = ["web"]
on_failure = "maint"
local = true

[agent_check]
listen = "127.0.0.1:{agent_check_port}"
checks = ["web"]

""" + loki_toml(loki.url))
    cursor = c.cursor()
    try:
        restart_agent(c)
    except CommandFailed:
        said = c.messages(UNIT, cursor)
        if address_in_use(said):
            raise PortInUse(said[-500:]) from None
        raise
    wait_until(lambda: agent_check(agent_check_port) == "up 100%", timeout=15, interval=0.05,
               message=lambda: f"the agent-check to answer up; journal:\n{c.messages(UNIT)[-3000:]}")
    return agent_check_port


def agent_check(port: int) -> str | None:
    """The agent-check line for this node, as haproxy would read it (None: nobody listens)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as connection:
            answer = b""
            while chunk := connection.recv(512):
                answer += chunk
    except (ConnectionRefusedError, ConnectionResetError, TimeoutError):
        return None
    return answer.decode("ascii").strip()


def haproxy_admin_states(c: Container) -> dict[str, int]:
    """Server name -> srv_admin_state of backend pretix, from haproxy's admin socket inside."""
    script = ("import socket, sys\n"
              "s = socket.socket(socket.AF_UNIX)\n"
              f"s.connect({HAPROXY_SOCKET!r})\n"
              "s.sendall(b'show servers state pretix\\n')\n"
              "sys.stdout.write(b''.join(iter(lambda: s.recv(65536), b'')).decode())\n")
    out = c.run(["python3", "-c", script]).stdout
    rows = [line.split() for line in out.splitlines() if line.strip() and not line.startswith("#")]
    rows = [row for row in rows if len(row) > 6 and row[1] == "pretix"]
    return {row[3]: int(row[6]) for row in rows}


def realtime(entry: dict[str, Any]) -> float:
    return int(entry["__REALTIME_TIMESTAMP"]) / 1e6


def first(entries: list[dict[str, Any]], prefix: str, what: str, *, anywhere: bool = False) -> dict[str, Any]:
    """The first entry whose message starts with `prefix` (or contains it, with `anywhere`)."""
    found = [e for e in entries if (prefix in str(e.get("MESSAGE", "")) if anywhere
                                    else str(e.get("MESSAGE", "")).startswith(prefix))]
    assert found, f"no {what} ({prefix!r}) in:\n" + "\n".join(messages(entries))
    return found[0]


def test_a_killed_pretix_web_is_seen_before_the_next_probe_and_app1_goes_to_maint(balanced: Container,
                                                                          agent_check_port: int):
    c = balanced
    assert haproxy_admin_states(c) == {"app1": 0, "app2": 0}
    cursor = c.cursor()
    c.run(["systemctl", "kill", "--signal=KILL", WEB])

    wait_until(lambda: haproxy_admin_states(c).get("app1", 0) & FMAINT, timeout=10, interval=0.05,
               message=lambda: f"app1 in maint; agent's journal:\n{c.messages(UNIT, cursor)}")
    assert haproxy_admin_states(c)["app2"] == 0
    assert c.show(WEB, "ActiveState") == "failed"
    answer = agent_check(agent_check_port)
    assert answer is not None and answer.startswith("down ") and "pretix-web.service failed" in answer, answer

    exited = first(c.journal(WEB, cursor), f"{WEB}: Main process exited, code=killed", "unit failure")
    agent = c.journal(UNIT, cursor)
    failing = first(agent, "check.failing check=web ", "check.failing")
    assert "hard=true" in str(failing["MESSAGE"])
    maint = first(agent, "haproxy.server_state_changed backend=pretix server=app1 state=maint", "app1 to maint")
    seen_ms = (realtime(failing) - realtime(exited)) * 1000
    out_ms = (realtime(maint) - realtime(exited)) * 1000
    # The figures (tens of milliseconds here) are benchmarks: bench/dbus.py (unit failure to the
    # watcher) and bench/haproxy.py (kill to out of rotation). What this test holds: the failure was
    # seen through D-Bus, before the check's next probe (interval 5 s) could have seen it, and app1
    # went to maint after that.
    print(f"\npretix-web killed -> check.failing: {seen_ms:.1f} ms; -> app1 maint: {out_ms:.1f} ms")
    assert 0 <= seen_ms < 5000, f"the agent saw the failure {seen_ms:.1f} ms after systemd"
    assert seen_ms <= out_ms, f"app1 went to maint {out_ms:.1f} ms after the failure, before it was seen"


def test_a_reboot_drains_this_node_before_the_agent_is_stopped(balanced: Container, agent_check_port: int,
                                                               loki: LokiReceiver):
    c = balanced  # this test reboots the container, which ends it: it runs last
    c.run(["systemctl", "start", WEB])  # back from the previous test: app1 is put back, the node answers up
    wait_until(lambda: haproxy_admin_states(c) == {"app1": 0, "app2": 0}, timeout=15, interval=0.05,
               message=lambda: f"app1 ready again; agent's journal:\n{c.messages(UNIT)[-3000:]}")
    wait_until(lambda: agent_check(agent_check_port) == "up 100%", timeout=10, interval=0.05,
               message="the agent-check to answer up")
    inhibitors = c.run(["systemd-inhibit", "--list", "--no-pager"]).stdout
    assert any(line.split()[:1] == ["pretix-agent"] and "shutdown" in line.split() and line.split()[-1] == "delay"
               for line in inhibitors.splitlines()), inhibitors
    assert c.process is not None
    pid = main_pid(c)

    answers: list[str | None] = []

    def draining() -> bool:
        answers.append(agent_check(agent_check_port))
        return (answers[-1] or "").startswith("up 0% #")

    c.run(["systemctl", "reboot"])  # logind announces PrepareForShutdown and waits for the delay lock
    wait_until(draining, timeout=5, interval=0.01,
               message=lambda: f"the agent-check to answer drain; it said {sorted(set(map(str, answers)))}")
    status = c.process.wait(timeout=120)
    assert status == REBOOT_EXIT_STATUS, f"systemd-nspawn exited with {status}:\n{c.console()}"

    # The container is gone; its persistent journal stays in its root.
    out = subprocess.run(["journalctl", "-D", str(c.root / "var/log/journal"), "-o", "json", "--no-pager"],
                         capture_output=True, text=True, timeout=60, env={"PATH": SYSTEM_PATH}, check=True).stdout
    journal = [json.loads(line) for line in out.splitlines() if line.strip()]
    for entry in journal:
        if isinstance(entry.get("MESSAGE"), list):
            entry["MESSAGE"] = bytes(entry["MESSAGE"]).decode("utf-8", "replace")
    prepared = next(i for i, e in enumerate(journal) if e.get("MESSAGE") == "The system will reboot now!")
    after = journal[prepared:]
    agent = [e for e in after if e.get("_PID") == str(pid)]

    started = first(agent, "shutdown_drain.started ", "the start of the drain")
    drained = first(agent, "haproxy.server_state_changed backend=pretix server=app1 state=drain", "app1 to drain")
    released = first(agent, "shutdown_drain.released ", "the end of the drain")
    stopping = first(agent, "agent.stopping", "agent.stopping")
    # The agent's own lines, in the order it wrote them (one stream): drain, release, stop.
    assert [agent.index(e) for e in (started, drained, released, stopping)] == sorted(
        agent.index(e) for e in (started, drained, released, stopping)), "\n".join(messages(agent))
    haproxy_drained = first(after, "Server pretix/app1 enters drain state", "haproxy's own word on the drain",
                            anywhere=True)
    went_on = first(after, "System is rebooting.", "logind going on with the reboot")
    stop_requested = first(after, f"Stopping {UNIT} ", "systemd stopping the agent")
    haproxy_stopped = first(after, "Stopping haproxy.service ", "systemd stopping haproxy")
    # logind went on only after the drain time, and before its own limit: the agent let go of its
    # lock itself. Only then did systemd stop the agent and haproxy (each compared with the drain's
    # start: the agent writes shutdown_drain.released just after closing the lock, so systemd's
    # "Stopping" may come first).
    held = realtime(went_on) - realtime(started)
    assert DRAIN_SECONDS - SKEW <= held < LOGIND_DELAY_MAX, held
    assert realtime(started) - SKEW <= realtime(haproxy_drained) <= realtime(went_on)
    for stop in (stop_requested, stopping, haproxy_stopped):
        assert realtime(stop) - realtime(started) >= DRAIN_SECONDS - SKEW, stop["MESSAGE"]
    print(f"\nreboot: the node drained {held:.2f} s (drain time {DRAIN_SECONDS:g} s, app1 to drain "
          f"{(realtime(drained) - realtime(started)) * 1000:.1f} ms after PrepareForShutdown), then logind went on; "
          f"systemd stopped the agent {(realtime(stop_requested) - realtime(went_on)) * 1000:.0f} ms later")
    # The drain's start reached Loki before the lock was released (logs are flushed first).
    assert any(r["line"].startswith("shutdown_drain.started ") for r in shipped(loki, "pretix-agent"))
