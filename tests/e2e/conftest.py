"""Fixtures of the end-to-end tier: the .deb, the cached Debian roots, booted containers.

Every test that boots a container runs once per Debian release (`release`, ids `debian12` and
`debian13`): the same .deb, built once, installed with apt into a booted Debian 12 "bookworm" and a
booted Debian 13 "trixie". PRETIX_AGENT_E2E_RELEASES=debian13 (comma-separated) narrows a local run.

Booting containers needs root (debootstrap, systemd-nspawn, nsenter). Without root, or without the
tools `make deps` installs, those tests skip and say why; under CI (CI=true) they fail instead,
since CI must prove the tier, not skip it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from . import rootfs
from .container import Container

REPO = Path(__file__).resolve().parents[2]
SYSTEM_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"  # never pyenv's shims


def version() -> str:
    text = (REPO / "pretix_agent/__init__.py").read_text()
    match = re.search(r'^__version__ = "([^"]+)"$', text, re.MULTILINE)
    assert match, "pretix_agent/__init__.py has no __version__"
    return match.group(1)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if Path(item.fspath).parent == here:
            item.add_marker(pytest.mark.e2e)


def under_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def cannot_run(reason: str) -> None:
    """Skip with the reason on a developer's machine; fail under CI, where nothing may skip silently."""
    if under_ci():
        pytest.fail(f"CI=true, and the end-to-end tier cannot run: {reason}", pytrace=False)
    pytest.skip(reason)


def require(*tools: str, root: bool = False) -> None:
    """Skip (with the reason) what truly cannot run here: not root, or the tools are missing."""
    if root and os.geteuid() != 0:
        cannot_run("booting a container needs root (debootstrap, systemd-nspawn): run `make e2e` as root")
    missing = [tool for tool in tools if shutil.which(tool, path=SYSTEM_PATH) is None]
    if missing:
        cannot_run(f"missing {', '.join(missing)}: run `make deps` (as root) first")


def selected_releases() -> list[rootfs.Release]:
    """The releases to boot: all of them, or those PRETIX_AGENT_E2E_RELEASES names (debian12,debian13)."""
    names = [n.strip() for n in os.environ.get("PRETIX_AGENT_E2E_RELEASES", "").split(",") if n.strip()]
    known = {release.name: release for release in rootfs.RELEASES}
    unknown = sorted(set(names) - set(known))
    if unknown:
        raise pytest.UsageError(f"PRETIX_AGENT_E2E_RELEASES: unknown {', '.join(unknown)}; "
                                f"known: {', '.join(known)}")
    return [known[n] for n in names] if names else list(rootfs.RELEASES)


@pytest.fixture(scope="session", params=selected_releases(), ids=lambda release: release.name)
def release(request: pytest.FixtureRequest) -> rootfs.Release:
    """The Debian release under test; session-scoped, so pytest runs every test of one release
    (each module in file order) before the next release's."""
    return request.param


@pytest.fixture(scope="session")
def deb() -> Path:
    """The .deb under test: $PRETIX_AGENT_E2E_DEB (`make e2e` builds it first), else `make deb` now."""
    require("dpkg-buildpackage", "dpkg-deb", "lintian")
    given = os.environ.get("PRETIX_AGENT_E2E_DEB")
    path = (REPO / given) if given else REPO / "dist" / f"pretix-agent_{version()}_all.deb"
    if not given:
        if os.geteuid() != 0:
            cannot_run("no PRETIX_AGENT_E2E_DEB given, and building it (`make deb`, with `make deps`) needs root")
        subprocess.run(["make", "-C", str(REPO), "deb"], check=True, env={**os.environ, "PATH": SYSTEM_PATH})
    assert path.is_file(), f"no package at {path}: run `make deb`"
    return path


def cache_dir() -> Path:
    return Path(os.environ.get("PRETIX_AGENT_E2E_CACHE", str(rootfs.DEFAULT_CACHE)))


@pytest.fixture(scope="session")
def root_tarball(release: rootfs.Release) -> Path:
    """The cached root of `release` (built by debootstrap on first use, a few minutes)."""
    require("debootstrap", "systemd-nspawn", "nsenter", "tar", root=True)
    return rootfs.cached_root(release, rootfs.host_mirrors(), cache_dir())


@pytest.fixture(scope="session")
def workdir() -> Iterator[Path]:
    """Where this session's container roots are unpacked (outside the repository); removed at the end."""
    path = Path(tempfile.mkdtemp(prefix="pretix-agent-e2e-", dir="/var/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def readme_install(deb: Path) -> list[list[str]]:
    """The README's install section, command by command: as root, in the checkout, after `make deb`."""
    return [["apt-get", "update"],
            ["apt-get", "install", "-y", f"./dist/{deb.name}"]]  # dependencies resolve from the archive


class Node:
    """A booted container with the package installed by apt, as an operator would have it."""

    def __init__(self, container: Container, deb: Path):
        self.container = container
        self.deb = deb
        self.apt_output = ""

    def install(self) -> None:
        c = self.container
        checkout = c.root / "root"  # stands for the checkout: `make deb` left the package in dist/
        (checkout / "dist").mkdir()
        shutil.copy(self.deb, checkout / "dist" / self.deb.name)
        for command in readme_install(self.deb):
            result = c.run(command, env={"DEBIAN_FRONTEND": "noninteractive"}, cwd="/root", timeout=600)
            self.apt_output += result.stdout


@pytest.fixture(scope="module")
def node(deb: Path, release: rootfs.Release, root_tarball: Path, workdir: Path) -> Iterator[Node]:
    """A fresh booted `release` with the package installed, shared by the tests of one module."""
    root = rootfs.unpack(root_tarball, workdir)
    container = Container(root, f"pretix-e2e-{release.number}-{os.getpid()}", root.with_suffix(".console.log"))
    try:
        container.boot()
        node = Node(container, deb)
        node.install()
        yield node
    finally:
        container.poweroff()
        shutil.rmtree(root, ignore_errors=True)
