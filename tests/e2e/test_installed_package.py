"""The .deb installed with apt into a booted Debian 12 and 13: what an operator sees, step by step.

All tests of this module share one container (in file order); each one leaves the daemon running
on the shipped configuration.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest

from tests.waiting import wait_until

from .conftest import REPO, Node
from .container import Container
from .rootfs import Release
from .test_unit_and_package import MAX_EXPOSURE, exposure

UNIT = "pretix-agent.service"
CONFIG = "/etc/pretix-agent/agent.toml"
STATE = "/var/lib/pretix-agent"
MARKER = f"{STATE}/maintenance"
LOCK = f"{STATE}/maintenance.lock"
STALL_DROP_IN = "/run/systemd/system/pretix-agent.service.d/50-e2e-stall.conf"
LIBRARIES = ("python3-watchdog", "python3-structlog", "python3-psycopg", "python3-redis", "python3-pydbus",
             "python3-prometheus-client")


@pytest.fixture(scope="module")
def c(node: Node) -> Container:
    return node.container


@pytest.fixture(scope="module")
def operators(c: Container) -> Container:
    """alice runs pretix-agentctl without root (group pretix-agent); bob is not in the group."""
    c.run(["useradd", "--create-home", "alice"])
    c.run(["usermod", "-aG", "pretix-agent", "alice"])
    c.run(["useradd", "--create-home", "bob"])
    return c


@pytest.fixture
def shipped_config(c: Container) -> Iterator[str]:
    """The configuration as installed; put back (and reloaded) after the test."""
    original = c.read(CONFIG)
    yield original
    c.write(CONFIG, original)
    c.run(["systemctl", "reload", UNIT])
    wait_until(lambda: published(c).get("node") == "pretix-e2e", timeout=10, message="the shipped config back")


def status(c: Container, user: str | None = None) -> dict[str, Any]:
    """The daemon's status as pretix-agentctl (which needs a valid configuration) shows it."""
    return json.loads(c.run(["pretix-agentctl", "status", "--json"], user=user).stdout)


def published(c: Container) -> dict[str, Any]:
    """The daemon's status file itself (world-readable), whatever the configuration on disk."""
    return json.loads(c.read("/run/pretix-agent/status.json"))


def main_pid(c: Container) -> int:
    return int(c.show(UNIT, "MainPID"))


def entries(c: Container, prefix: str, after: str = "") -> list[dict[str, Any]]:
    return [e for e in c.journal(UNIT, after) if str(e.get("MESSAGE", "")).startswith(prefix)]


def test_the_container_runs_the_debian_release_under_test_with_its_systemd_and_python(c: Container,
                                                                                      release: Release):
    os_release = dict(line.split("=", 1) for line in c.read("/etc/os-release").splitlines() if "=" in line)
    assert (os_release["VERSION_ID"].strip('"'), os_release["VERSION_CODENAME"]) == (str(release.number),
                                                                                    release.suite)
    # "systemd 257 (257.9-1~deb13u1)"
    assert c.run(["systemctl", "--version"]).stdout.split()[:2] == ["systemd", str(release.systemd)]
    python = c.run(["python3", "-c", "import sys; print('%d.%d' % sys.version_info[:2])"]).stdout.strip()
    assert python == release.python


def test_apt_installs_the_package_and_its_dependencies_from_the_debian_archive(node: Node, c: Container):
    for name in (*LIBRARIES, "procps", "pretix-agent"):
        state = c.run(["dpkg-query", "-W", "-f=${Status}", name]).stdout
        assert state == "install ok installed", (name, state)
    for name in LIBRARIES:  # not in the cached base system: this install fetched them
        assert f"Setting up {name} " in node.apt_output, name


def test_install_creates_the_system_user_and_enables_and_starts_the_daemon(c: Container):
    _, _, uid, _, _, home, shell = c.run(["getent", "passwd", "pretix-agent"]).stdout.strip().split(":")
    assert int(uid) < 1000 and home == STATE and shell == "/usr/sbin/nologin"
    assert c.run(["systemctl", "is-enabled", UNIT]).stdout.strip() == "enabled"
    assert c.run(["systemctl", "is-active", UNIT]).stdout.strip() == "active"
    process = c.read(f"/proc/{main_pid(c)}/status")
    assert re.search(rf"^Uid:\s+{uid}\s+{uid}\s", process, re.MULTILINE), process


def test_directories_and_configuration_have_the_documented_owners_and_modes(c: Container):
    assert c.stat(STATE) == "2775 pretix-agent pretix-agent"
    assert c.stat("/run/pretix-agent") == "755 pretix-agent pretix-agent"
    assert c.stat("/run/pretix-agent/status.json") == "644 pretix-agent pretix-agent"
    assert c.stat(CONFIG) == "640 root pretix-agent"
    assert c.read("/lib/systemd/system/pretix-agent.service") == (REPO / "systemd/pretix-agent.service").read_text()


def test_systemctl_start_leaves_the_daemon_active_with_a_status_line(c: Container):
    c.run(["systemctl", "start", UNIT])
    assert c.run(["systemctl", "is-active", UNIT]).stdout.strip() == "active"
    assert c.show(UNIT, "StatusText").startswith("maintenance off")
    assert status(c)["sentence"] == c.show(UNIT, "StatusText")


def test_the_daemon_runs_without_capabilities_under_seccomp_and_no_new_privileges(c: Container):
    process = dict(line.split(":", 1) for line in c.read(f"/proc/{main_pid(c)}/status").splitlines())
    assert int(process["CapEff"], 16) == 0 and int(process["CapBnd"], 16) == 0
    assert process["NoNewPrivs"].strip() == "1" and process["Seccomp"].strip() == "2"
    assert c.show(UNIT, "MemoryDenyWriteExecute") == "yes"  # and the daemon started under it (ctypes)


def test_the_journal_has_the_daemon_events_at_info_priority(c: Container):
    for event in ("agent.started ", "loop.decided "):
        found = entries(c, event)
        assert found and all(e["PRIORITY"] == "6" for e in found), (event, found)


def test_a_group_member_locks_and_unlocks_without_root_and_nginx_can_see_the_marker(operators: Container):
    c = operators
    locked = c.run(["pretix-agentctl", "lock", "--reason", "e2e"], user="alice")
    assert "maintenance is ON: locked by alice" in locked.stdout
    assert c.stat(LOCK) == "664 alice pretix-agent"  # the setgid directory gave it the group
    for outsider in ("www-data", "bob"):  # nginx's workers, and anyone: the marker can be seen
        assert c.exists(MARKER, user=outsider), outsider
    document = status(c, user="alice")
    assert document["maintenance"]["on"] is True
    assert (document["maintenance"]["lock"]["by"], document["maintenance"]["lock"]["reason"]) == ("alice", "e2e")

    denied = c.run(["pretix-agentctl", "status"], user="bob", check=False)
    assert denied.returncode == 2 and "permission denied" in denied.stderr  # agent.toml is 0640

    unlocked = c.run(["pretix-agentctl", "unlock"], user="alice")
    assert "maintenance is OFF" in unlocked.stdout
    assert not c.exists(MARKER) and not c.exists(LOCK)


def test_a_marker_deleted_by_hand_while_locked_comes_back_with_a_warning(operators: Container):
    c = operators
    cursor = c.cursor()
    c.run(["pretix-agentctl", "lock"], user="alice")
    c.run(["rm", MARKER], user="alice")
    wait_until(lambda: c.exists(MARKER), timeout=10, message="the marker to be restored")
    restored = wait_until(lambda: entries(c, "maintenance.marker_restored ", cursor), timeout=10,
                          message="maintenance.marker_restored in the journal")
    assert restored[0]["PRIORITY"] == "4"
    # What the README promises operators. (No --after-cursor here: journalctl 252 then finds nothing.)
    warnings = c.run(["journalctl", "-p", "warning", "-u", UNIT, "--no-pager"]).stdout
    assert "maintenance.marker_restored" in warnings
    c.run(["pretix-agentctl", "unlock"], user="alice")


def test_reload_with_a_broken_config_fails_and_the_daemon_keeps_the_old_one(c: Container, shipped_config: str):
    pid, cursor = main_pid(c), c.cursor()
    c.write(CONFIG, '[agent]\nnode = "never"\nreconcile_interval = "fast"\n')
    reload = c.run(["systemctl", "reload", UNIT], check=False)
    assert reload.returncode != 0
    assert f"{CONFIG}:3: agent.reconcile_interval" in c.messages(UNIT, cursor)  # from the ExecReload= check
    assert c.show(UNIT, "ReloadResult") == "exit-code"
    assert main_pid(c) == pid and c.show(UNIT, "ActiveState") == "active"
    assert published(c)["node"] == "pretix-e2e"


def test_reload_with_a_good_config_applies_it_in_the_running_daemon(c: Container, shipped_config: str):
    pid, cursor = main_pid(c), c.cursor()
    assert "\n[agent]\n" in shipped_config
    c.write(CONFIG, shipped_config.replace("\n[agent]\n", '\n[agent]\nnode = "e2e-reloaded"\n', 1))
    c.run(["systemctl", "reload", UNIT])
    # systemd 252 ends the reload job when `kill -HUP` returns; the daemon applies it just after.
    wait_until(lambda: published(c).get("node") == "e2e-reloaded", timeout=10, message="the new node name in status")
    wait_until(lambda: entries(c, "config.reloaded ", cursor), timeout=10, message="config.reloaded")
    assert main_pid(c) == pid and c.show(UNIT, "ReloadResult") == "success"


def test_a_stalled_main_loop_is_restarted_by_the_systemd_watchdog(c: Container):
    c.run(["mkdir", "-p", STALL_DROP_IN.rsplit("/", 1)[0]])
    c.write(STALL_DROP_IN, "[Service]\nEnvironment=PRETIX_AGENT_TEST_HOOKS=1\nWatchdogSec=3s\n")
    try:
        c.run(["systemctl", "daemon-reload"])
        c.run(["systemctl", "restart", UNIT])
        pid, restarts, cursor = main_pid(c), int(c.show(UNIT, "NRestarts")), c.cursor()
        c.run(["systemctl", "kill", "--kill-who=main", "--signal=SIGUSR2", UNIT])

        def restarted() -> bool:
            return (int(c.show(UNIT, "NRestarts")) > restarts and main_pid(c) not in (0, pid)
                    and c.show(UNIT, "ActiveState") == "active")

        wait_until(restarted, timeout=30, interval=0.2, message=lambda: c.messages(UNIT, cursor))
        messages = c.messages(UNIT, cursor)
        assert "agent.test_stall" in messages
        assert "Watchdog timeout (limit 3s)!" in messages
        assert "Failed with result 'watchdog'" in messages
    finally:
        c.run(["rm", "-f", STALL_DROP_IN])
        c.run(["systemctl", "daemon-reload"])
        c.run(["systemctl", "restart", UNIT])
    assert c.show(UNIT, "WatchdogUSec") == "10s"


def test_reinstalling_restarts_the_daemon_and_keeps_the_permissions(node: Node, c: Container):
    pid = main_pid(c)
    c.run(["apt-get", "install", "-y", "--reinstall", f"./dist/{node.deb.name}"], cwd="/root",
          env={"DEBIAN_FRONTEND": "noninteractive"}, timeout=300)
    assert main_pid(c) not in (0, pid) and c.show(UNIT, "ActiveState") == "active"
    assert c.stat(CONFIG) == "640 root pretix-agent"
    assert c.stat(STATE) == "2775 pretix-agent pretix-agent"


def test_the_installed_unit_scores_at_most_2_0_in_systemd_analyze_security(c: Container, release: Release):
    result = c.run(["systemd-analyze", "security", "--no-pager", UNIT])
    assert exposure(result.stdout) <= MAX_EXPOSURE, result.stdout
    print(f"\n{release.name} (systemd {release.systemd}): exposure {exposure(result.stdout)}")


def test_systemd_analyze_verify_prints_nothing_for_the_installed_unit(c: Container):
    result = c.run(["systemd-analyze", "verify", f"/lib/systemd/system/{UNIT}"], check=False)
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_type_notify_reload_which_the_unit_does_not_use_would_run_as_type_simple_on_systemd_252(
        c: Container, release: Release):
    # Why the unit says Type=notify on both releases (see its comment): systemd 252 does not refuse
    # an unknown type, it warns and falls back to the default, losing READY=1 and its ordering.
    probe = "/run/systemd/system/e2e-notify-reload-probe.service"
    c.write(probe, "[Service]\nType=notify-reload\nExecStart=/bin/sleep infinity\n")
    try:
        c.run(["systemctl", "daemon-reload"])
        verify = c.run(["systemd-analyze", "verify", probe], check=False)
        if release.systemd < 253:
            assert c.show("e2e-notify-reload-probe.service", "Type") == "simple"
            assert "Failed to parse service type, ignoring: notify-reload" in verify.stderr
        else:
            assert c.show("e2e-notify-reload-probe.service", "Type") == "notify-reload"
            assert verify.stderr == ""
    finally:
        c.run(["rm", "-f", probe])
        c.run(["systemctl", "daemon-reload"])


def test_both_man_pages_are_installed(c: Container):
    for page in ("pretix-agent", "pretix-agentctl"):
        assert c.run(["man", "-w", "8", page]).stdout.strip() == f"/usr/share/man/man8/{page}.8.gz"
