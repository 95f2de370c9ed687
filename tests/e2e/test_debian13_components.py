"""The agent against Debian 13's own components, inside a booted Debian 13.

The integration tests (tests/integration/) run inside the container, on Debian 13's python3 (3.13)
and libraries (structlog 25, watchdog 6, redis 6, psycopg 3.2), against its haproxy 3.0,
PostgreSQL 17, Redis 8, Valkey 8.1 and nginx 1.26: the same tests, and so the same scenarios, that
prove the agent on the host's Debian 12. The fixtures find PostgreSQL 17's binaries by version;
Redis or Valkey is chosen here through PRETIX_AGENT_TEST_REDIS_SERVER. Last, `make deb` runs inside
(Debian 13's debhelper and lintian) and what it built is installed and started, as the README's
install section has a Debian 13 operator do.

The root is a cached Debian 13 with those packages installed by apt (rootfs.cached_components),
their own services masked; the checkout is copied in. The container has a private network: every
port the fixtures bind is on its own loopback. Each scenario must run every test it selects:
an inner test that skips fails the scenario, as one that fails does.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import xml.etree.ElementTree as ElementTree
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from . import rootfs
from .conftest import REPO, SYSTEM_PATH, cache_dir, require, selected_releases
from .conftest import version as version_of_checkout
from .container import Container
from .test_unit_and_package import MAX_EXPOSURE, exposure

RELEASE = rootfs.TRIXIE
PG_BINDIR = "/usr/lib/postgresql/17/bin"
# The components under test, and what the tests inside need to run: python3 with pytest and the
# agent's libraries (Debian 13's versions), openssl for the tests' throw-away certificates, and
# what `make deb` needs (the Makefile's DEB_BUILD_DEBS; build-essential brings make).
PACKAGES = ("haproxy", "postgresql-17", "redis-server", "valkey-server", "nginx",
            "python3-pytest", "python3-hypothesis", "python3-psycopg", "python3-redis", "python3-watchdog",
            "python3-structlog", "python3-pydbus", "python3-gi", "python3-prometheus-client", "openssl", "procps",
            "tzdata",
            "build-essential", "debhelper", "dh-python", "pybuild-plugin-pyproject", "python3-setuptools",
            "python3-all", "lintian", "dpkg-dev", "git")
# World-readable: some tests run a command as another user (nobody) on the checkout's modules.
CHECKOUT = "/srv/pretix-agent"
REPORTS = "/root"
# The one unit test that has nothing to test as root (as on the host, where `make test` runs as root).
ROOT_SKIP = "root reads a chmod 000 file anyway"
HAPROXY_DATA = "tests/unit/data/haproxy/3.0"
INNER_TIMEOUT = 900


@pytest.fixture(scope="module")
def debian13(workdir: Path) -> Iterator[Container]:
    """A booted Debian 13 with its components installed and a copy of this checkout in CHECKOUT."""
    if RELEASE not in selected_releases():
        pytest.skip(f"PRETIX_AGENT_E2E_RELEASES leaves out {RELEASE.name}")
    require("debootstrap", "systemd-nspawn", "nsenter", "tar", "git", root=True)
    tarball = rootfs.cached_components(RELEASE, PACKAGES, rootfs.host_mirrors(), cache_dir())
    root = rootfs.unpack(tarball, workdir)
    copy_checkout(root / CHECKOUT.lstrip("/"))
    container = Container(root, f"pretix-e2e-components-{os.getpid()}", root.with_suffix(".console.log"),
                          private_network=True)
    try:
        container.boot()
        yield container
    finally:
        container.poweroff()
        shutil.rmtree(root, ignore_errors=True)


def copy_checkout(target: Path) -> None:
    """Copy the tracked and new files of the checkout (nothing .gitignore'd: no venv, no caches)."""
    listed = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            capture_output=True, check=True, timeout=60, env={"PATH": SYSTEM_PATH}).stdout
    for name in listed.decode().split("\0"):
        source = REPO / name
        if name and source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)


@dataclass(frozen=True)
class InnerRun:
    """What pytest inside the container ran: its counts from the JUnit report, and its output."""

    tests: int
    failures: int
    errors: int
    skipped: int
    output: str


def run_inside(c: Container, name: str, paths: list[str], env: dict[str, str] | None = None,
               expected_skips: tuple[str, ...] = ()) -> InnerRun:
    """Run pytest on `paths` inside, with Debian 13's /usr/bin/python3, as root, in the checkout;
    assert that every test it collected ran and passed (but the skips named, by their reason)."""
    report = f"{REPORTS}/junit-{name}.xml"
    result = c.run(["/usr/bin/python3", "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs",
                    f"--junitxml={report}", *paths], cwd=CHECKOUT, check=False, timeout=INNER_TIMEOUT,
                   env={"PYTHONDONTWRITEBYTECODE": "1", **(env or {})})
    verdicts = [line for line in result.stdout.splitlines() if line.startswith(("FAILED ", "ERROR ", "SKIPPED "))]
    output = "\n".join([result.stdout[-8000:], result.stderr[-2000:], *verdicts])
    assert c.exists(report), f"pytest wrote no report:\n{output}"
    document = ElementTree.fromstring(c.read(report))
    suite = document if document.tag == "testsuite" else document.find("testsuite")
    assert suite is not None, output
    tests, failures, errors, skipped = (int(suite.get(key, "0")) for key in ("tests", "failures", "errors", "skipped"))
    run = InnerRun(tests, failures, errors, skipped, output)
    assert result.returncode == 0 and run.failures == run.errors == 0, output
    skips = [line for line in verdicts if line.startswith("SKIPPED ")]  # "SKIPPED [2] path:line: reason"
    unexpected = [line for line in skips if not any(reason in line for reason in expected_skips)]
    counted = sum(int(match.group(1)) if (match := re.search(r"\[(\d+)\]", line)) else 1 for line in skips)
    assert run.tests > 0 and not unexpected and run.skipped == counted, \
        f"{run.skipped} of {run.tests} skipped inside Debian 13:\n{output}"
    print(f"\nDebian 13, {name}: {run.tests} tests passed")
    return run


def version(c: Container, *command: str) -> str:
    result = c.run(list(command))
    return (result.stdout + result.stderr).strip()


def test_the_container_has_debian_13s_components_and_python_libraries(debian13: Container):
    c = debian13
    assert version(c, "haproxy", "-v").startswith("HAProxy version 3.0.")
    assert version(c, f"{PG_BINDIR}/postgres", "--version").startswith("postgres (PostgreSQL) 17.")
    assert version(c, "redis-server", "--version").startswith("Redis server v=8.")
    assert version(c, "valkey-server", "--version").startswith("Valkey server v=8.1.")
    assert version(c, "nginx", "-v").startswith("nginx version: nginx/1.26.")
    script = ("import sys, importlib.metadata as m; print('%d.%d' % sys.version_info[:2], "
              "*(m.version(n).split('.')[0] + '.' + m.version(n).split('.')[1] for n in sys.argv[1:]))")
    found = version(c, "python3", "-c", script, "structlog", "watchdog", "redis", "psycopg").split()
    python, structlog, watchdog, redis, psycopg = found
    assert python == RELEASE.python
    assert (structlog.split(".")[0], watchdog.split(".")[0], redis.split(".")[0], psycopg) == ("25", "6", "6", "3.2")


def test_every_module_compiles_on_python_3_13_without_a_warning(debian13: Container):
    # py3compile byte-compiles the package at install; Python 3.12+ warns (SyntaxWarning) where
    # 3.11 was silent, and a later Python makes some of those warnings errors.
    script = ("import pathlib, sys, warnings\nwarnings.simplefilter('error')\n"
              "for path in sorted(pathlib.Path('pretix_agent').rglob('*.py')):\n"
              "    compile(path.read_text(), str(path), 'exec')\n"
              "print('compiled')\n")
    assert debian13.run(["/usr/bin/python3", "-c", script], cwd=CHECKOUT).stdout.strip() == "compiled"


def test_haproxy_3_0_takes_servers_out_and_back_keeps_them_across_a_reload_and_reads_agent_checks(
        debian13: Container):
    run_inside(debian13, "haproxy", ["tests/integration/test_haproxy.py", "tests/integration/test_daemon_haproxy.py"])


def test_the_unit_tests_parse_replies_in_the_format_debian_13s_haproxy_answers_today(debian13: Container):
    # The replies in HAPROXY_DATA were captured once; capture them again from the haproxy installed
    # now and compare what the parsers depend on: the files, the column headers, the words.
    c = debian13
    c.run(["/usr/bin/python3", "-m", "tests.integration.capture_haproxy_replies"], cwd=CHECKOUT, timeout=120,
          env={"PYTHONDONTWRITEBYTECODE": "1"})
    committed = REPO / HAPROXY_DATA
    names = sorted(p.name for p in committed.iterdir())
    assert c.run(["ls", f"{CHECKOUT}/{HAPROXY_DATA}"]).stdout.split() == names
    for name in names:
        if name in ("show_info.txt", "VERSION.txt"):  # pids, times and the Debian revision change
            continue
        now = c.read(f"{CHECKOUT}/{HAPROXY_DATA}/{name}")
        assert shape(now) == shape(committed.joinpath(name).read_text()), \
            f"{name} differs from what haproxy answers now: python3 -m tests.e2e.capture_haproxy_replies"


def shape(reply: str) -> list[str]:
    """What a parser depends on in a reply: headers and words whole, of each data row its names
    (a CSV row's proxy and server, a servers-state row's ids and names), not its counters."""
    lines = []
    for line in reply.splitlines():
        if "," in line and not line.startswith("#"):
            line = ",".join(line.split(",")[:2])
        elif line[:1].isdigit():
            line = " ".join(line.split()[:4])
        lines.append(line)
    return lines


def test_postgresql_17_replica_lag_cut_off_and_paused_replay_are_seen_by_the_postgres_check(debian13: Container):
    # The fixture finds PostgreSQL 17's binaries itself (the newest installed; 15 on Debian 12).
    run_inside(debian13, "postgresql", ["tests/integration/test_check_postgres.py"])


def test_redis_8_write_probe_replica_link_and_queues_are_seen_by_the_redis_check(debian13: Container):
    run_inside(debian13, "redis", ["tests/integration/test_check_redis.py"],
               {"PRETIX_AGENT_TEST_REDIS_SERVER": "/usr/bin/redis-server"})


def test_valkey_8_1_write_probe_replica_link_and_queues_are_seen_by_the_redis_check(debian13: Container):
    run_inside(debian13, "valkey", ["tests/integration/test_check_redis.py"],
               {"PRETIX_AGENT_TEST_REDIS_SERVER": "/usr/bin/valkey-server"})


def test_nginx_1_26_with_the_shipped_snippet_answers_503_while_the_agent_holds_the_marker(debian13: Container):
    run_inside(debian13, "nginx", ["tests/integration/test_nginx_maintenance.py",
                                   "tests/integration/test_agent_with_nginx.py"])


def test_the_unit_tests_pass_on_python_3_13_with_debian_13s_libraries(debian13: Container):
    run_inside(debian13, "unit", ["tests/unit"], expected_skips=(ROOT_SKIP,))


def test_the_daemon_runs_its_loop_checks_and_maintenance_on_python_3_13_with_debian_13s_libraries(
        debian13: Container):
    run_inside(debian13, "daemon", ["tests/integration/test_file_watcher.py",
                                    "tests/integration/test_daemon_lifecycle.py",
                                    "tests/integration/test_daemon_checks.py",
                                    "tests/integration/test_maintenance_daemon.py"])


def test_make_deb_on_debian_13_builds_a_lintian_clean_package_that_installs_and_runs_hardened(debian13: Container):
    # The README's install section on a Debian 13 machine itself: `make deb` builds with Debian 13's
    # debhelper, runs the unit tests on its libraries and must leave Debian 13's lintian silent;
    # then apt installs what it built. (Last in this module: the agent then runs in the container.)
    c = debian13
    c.run(["sh", "-c", "git init -q && git add -A"], cwd=CHECKOUT)  # `make deb` takes what git lists
    built = c.run(["make", "deb"], cwd=CHECKOUT, check=False, timeout=INNER_TIMEOUT)
    assert built.returncode == 0 and "lintian: nothing to report" in built.stdout, \
        built.stdout[-5000:] + built.stderr[-3000:]
    deb = f"./dist/pretix-agent_{version_of_checkout()}_all.deb"
    # No network here: the dependencies are installed already; polkitd (recommended) stays out.
    c.run(["apt-get", "install", "-y", "--no-install-recommends", deb], cwd=CHECKOUT, timeout=300,
          env={"DEBIAN_FRONTEND": "noninteractive"})
    assert c.run(["systemctl", "is-active", "pretix-agent.service"]).stdout.strip() == "active"
    assert c.show("pretix-agent.service", "StatusText").startswith("maintenance off")
    result = c.run(["systemd-analyze", "security", "--no-pager", "pretix-agent.service"])
    assert exposure(result.stdout) <= MAX_EXPOSURE, result.stdout
