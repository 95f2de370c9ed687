"""`apt remove` and `apt purge` in a container of their own: what Debian policy keeps, and nothing else.

remove keeps the configuration (a conffile) and the state (the lock may be an operator's act);
purge removes both. The system user and group stay, as Debian keeps system users.
"""

from __future__ import annotations

import pytest

from .conftest import Node
from .container import Container

UNIT = "pretix-agent.service"
APT = {"DEBIAN_FRONTEND": "noninteractive"}


@pytest.fixture(scope="module")
def c(node: Node) -> Container:
    return node.container


@pytest.fixture(scope="module")
def packaged_files(c: Container) -> list[str]:
    """Every file (not directory) the package installed, listed before it is removed."""
    listed = c.run(["dpkg-query", "-L", "pretix-agent"]).stdout.split()
    return [path for path in listed if c.run(["test", "-d", path], check=False).returncode != 0]


def package_state(c: Container) -> str:
    return c.run(["dpkg-query", "-W", "-f=${db:Status-Abbrev}", "pretix-agent"], check=False).stdout.strip()


def test_apt_remove_stops_the_daemon_and_keeps_configuration_and_state(c: Container, packaged_files: list[str]):
    c.run(["pretix-agentctl", "lock", "--reason", "before remove"])
    assert c.exists("/run/pretix-agent/status.json")
    c.run(["apt-get", "remove", "-y", "pretix-agent"], env=APT, timeout=300)

    assert package_state(c) == "rc"
    assert c.run(["systemctl", "is-active", UNIT], check=False).stdout.strip() == "inactive"
    left = [path for path in packaged_files if c.exists(path)]
    assert left == ["/etc/pretix-agent/agent.toml"]  # the conffile
    assert c.exists("/var/lib/pretix-agent/maintenance.lock")  # state stays until purge
    assert not c.exists("/run/pretix-agent")


def test_apt_purge_leaves_nothing_but_the_system_user(c: Container, packaged_files: list[str]):
    c.run(["apt-get", "purge", "-y", "pretix-agent"], env=APT, timeout=300)

    assert package_state(c) == ""
    assert [path for path in packaged_files if c.exists(path)] == []
    for directory in ("/etc/pretix-agent", "/var/lib/pretix-agent", "/run/pretix-agent", "/usr/share/pretix-agent",
                      "/usr/share/doc/pretix-agent", "/usr/lib/python3/dist-packages/pretix_agent"):
        assert not c.exists(directory), directory
    found = c.run(["find", "/etc", "/var", "/run", "/usr", "/lib", "-name", "*pretix*"]).stdout.split()
    assert found == []
    assert c.run(["systemctl", "list-unit-files", UNIT, "--no-legend"], check=False).stdout.strip() == ""
    # Kept, as Debian keeps system users: files they own may remain (backups), ids must not be reused.
    assert c.run(["getent", "passwd", "pretix-agent"]).stdout.startswith("pretix-agent:")
    assert c.run(["getent", "group", "pretix-agent"]).stdout.startswith("pretix-agent:")
