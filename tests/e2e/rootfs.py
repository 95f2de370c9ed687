"""Debian root file systems for the booted-systemd tier, one per release: built once with
debootstrap, cached outside the repository as a tarball keyed by suite, and unpacked afresh for
every container, so no test ever changes the cache.

A base root holds only the base system (minbase, systemd, dbus, man-db for the man-page check). The
package's own dependencies are deliberately not in it: the tests install the .deb with apt, which
must resolve them from the Debian archive, as on an operator's machine.

A components root (`cached_components`) is a base root plus a list of that release's packages
(its PostgreSQL, Redis, haproxy, nginx and Python libraries), installed once with apt and cached
beside it, for tests that run the agent against those components inside a container.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Release:
    """A Debian release the tier boots: its suite (as apt and debootstrap name it), its number, and
    the major versions of its systemd and python3 (the tests check the container has them)."""

    suite: str
    number: int
    systemd: int
    python: str

    @property
    def name(self) -> str:
        """The test id: "debian12", "debian13"."""
        return f"debian{self.number}"


BOOKWORM = Release("bookworm", 12, systemd=252, python="3.11")  # oldstable
TRIXIE = Release("trixie", 13, systemd=257, python="3.13")  # stable
RELEASES = (BOOKWORM, TRIXIE)
# Suite names that mark an apt source as Debian's archive (the host's own release among them).
DEBIAN_SUITES = frozenset({*(r.suite for r in RELEASES), "bullseye", "forky", "sid", "oldoldstable", "oldstable",
                           "stable", "testing", "unstable"})

# systemd-sysv makes systemd the init; dbus for `systemd-analyze security` and the daemon's later
# D-Bus use; man-db so `systemd-analyze verify` can check the unit's Documentation= man pages.
INCLUDE = ("systemd", "systemd-sysv", "dbus", "man-db")
DEFAULT_CACHE = Path("/var/cache/pretix-agent-e2e")
DEFAULT_MIRROR = "http://deb.debian.org/debian"
DEFAULT_SECURITY_MIRROR = "http://deb.debian.org/debian-security"
# Rebuilt when older than this: the base system then carries a month of updates at most.
MAX_AGE_SECONDS = 30 * 86400
SOURCES_DIR = Path("/etc/apt")
DEBOOTSTRAP_TIMEOUT = 900
APT_TIMEOUT = 1200


@dataclass(frozen=True)
class Mirrors:
    """Where the container's apt fetches from: the same archive the host uses."""

    archive: str
    security: str

    def sources_list(self, suite: str) -> str:
        return (f"deb {self.archive} {suite} main\n"
                f"deb {self.archive} {suite}-updates main\n"
                f"deb {self.security} {suite}-security main\n")


def _entries(sources_dir: Path) -> list[tuple[str, list[str]]]:
    """Return (uri, suites) of every enabled deb entry in the host's apt sources."""
    entries: list[tuple[str, list[str]]] = []
    files = [sources_dir / "sources.list", *sorted((sources_dir / "sources.list.d").glob("*.list"))]
    for path in files:
        if not path.is_file():
            continue
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            words = re.sub(r"\[[^]]*\]", " ", line.split("#", 1)[0]).split()  # "[signed-by=...]" options
            if len(words) >= 3 and words[0] == "deb":
                entries.append((words[1], [words[2]]))
    for path in sorted((sources_dir / "sources.list.d").glob("*.sources")):
        for stanza in re.split(r"\n\s*\n", path.read_text(encoding="utf-8", errors="replace")):
            fields: dict[str, str] = {}
            for line in stanza.splitlines():
                if line.startswith("#") or ":" not in line or line[:1].isspace():
                    continue
                key, value = line.split(":", 1)
                fields[key.strip().lower()] = value.strip()
            if fields.get("enabled", "yes").lower() == "no" or "deb" not in fields.get("types", "").split():
                continue
            entries.extend((uri, fields.get("suites", "").split()) for uri in fields.get("uris", "").split())
    return entries


def host_mirrors(sources_dir: Path = SOURCES_DIR) -> Mirrors:
    """Given the host's apt sources, return its Debian archive and security mirrors (or the defaults).

    The archive is the first http(s) source that serves a Debian suite (the host's own release,
    bookworm here): the same mirror serves every other release, so a Debian 13 root is fetched from
    where the host fetches Debian 12. Third-party sources (their suites are no Debian names) are
    never taken.
    """
    archive = security = None
    for uri, suites in _entries(sources_dir):
        uri = uri.rstrip("/")
        if not uri.startswith(("http://", "https://")):
            continue
        bases = {suite.split("-", 1)[0] for suite in suites} & DEBIAN_SUITES
        if not bases:
            continue
        if any(suite.endswith("-security") for suite in suites):
            security = security or uri
        else:
            archive = archive or uri
    return Mirrors(archive or DEFAULT_MIRROR, security or DEFAULT_SECURITY_MIRROR)


def _cache_key(suite: str, mirrors: Mirrors, extra: Sequence[str] = ()) -> str:
    # For a base root this is the key the Debian-12-only tier used ("bookworm-<key>.tar"), so its
    # cache stays valid and worktrees on either version share it instead of rebuilding in turns.
    text = "\n".join([suite, "minbase", *INCLUDE, mirrors.archive, mirrors.security, "1", *extra])
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _fresh(tarball: Path) -> bool:
    return tarball.exists() and time.time() - tarball.stat().st_mtime < MAX_AGE_SECONDS


def _replace_cached(cache_dir: Path, pattern: str) -> None:
    """Remove the cached tarballs whose names match `pattern` (a regex) and interrupted builds."""
    for old in cache_dir.glob("*.tar"):
        if re.fullmatch(pattern, old.name):
            old.unlink()
    for stale in cache_dir.glob("build-*"):  # left by an interrupted build (the caller holds the lock)
        shutil.rmtree(stale, ignore_errors=True)


def cached_root(release: Release, mirrors: Mirrors, cache_dir: Path = DEFAULT_CACHE) -> Path:
    """Return the cached base root tarball of `release`, building it with debootstrap if it is
    missing or too old.

    Concurrent sessions wait on one lock for every release (the lock file the Debian-12-only tier
    used, so both versions of this module never build at once); the tarball appears atomically
    (rename), so a build that is interrupted leaves no half-made cache behind.
    """
    cache_dir.mkdir(parents=True, exist_ok=True)
    tarball = cache_dir / f"{release.suite}-{_cache_key(release.suite, mirrors)}.tar"
    with open(cache_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _fresh(tarball):
            return tarball
        _replace_cached(cache_dir, rf"{release.suite}-[0-9a-f]{{12}}\.tar")
        _build(release, tarball, mirrors, cache_dir)
    return tarball


def cached_components(release: Release, packages: Sequence[str], mirrors: Mirrors,
                      cache_dir: Path = DEFAULT_CACHE) -> Path:
    """Return a cached root tarball of `release` with `packages` installed by apt (a base root
    first, from `cached_root`), building it if it is missing, too old, or older than its base.

    The packages' services are masked: they must not start when a container boots (tests start
    their own servers), and nothing must bind a port at all.
    """
    base = cached_root(release, mirrors, cache_dir)
    key = _cache_key(release.suite, mirrors, ["components", *sorted(packages)])
    tarball = cache_dir / f"components-{release.suite}-{key}.tar"
    with open(cache_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _fresh(tarball) and tarball.stat().st_mtime >= base.stat().st_mtime:
            return tarball
        _replace_cached(cache_dir, rf"components-{release.suite}-[0-9a-f]{{12}}\.tar")
        work = Path(tempfile.mkdtemp(prefix="build-", dir=cache_dir))
        try:
            root = unpack(base, work)
            _install(root, packages)
            _pack(root, work, tarball)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return tarball


def _build(release: Release, tarball: Path, mirrors: Mirrors, cache_dir: Path) -> None:
    work = Path(tempfile.mkdtemp(prefix="build-", dir=cache_dir))
    try:
        root = work / "root"
        result = subprocess.run(
            ["debootstrap", "--variant=minbase", f"--include={','.join(INCLUDE)}", release.suite, str(root),
             mirrors.archive], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            timeout=DEBOOTSTRAP_TIMEOUT)
        if result.returncode != 0:
            raise RuntimeError(f"debootstrap {release.suite} failed ({result.returncode}):\n{result.stdout[-4000:]}")
        (root / "etc/apt/sources.list").write_text(mirrors.sources_list(release.suite))
        (root / "etc/hostname").write_text("pretix-e2e\n")
        # A fresh machine id per boot (systemd makes a transient one when the file is empty).
        (root / "etc/machine-id").write_text("")
        _pack(root, work, tarball)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _install(root: Path, packages: Sequence[str]) -> None:
    """apt-get install `packages` into `root` (systemd-nspawn, not booted: no service starts),
    then mask every service unit they brought."""
    units_before = _service_units(root)
    policy = root / "usr/sbin/policy-rc.d"
    policy.write_text("#!/bin/sh\n# pretix-agent e2e cache build: start nothing\nexit 101\n")
    policy.chmod(0o755)
    try:
        script = ("set -e; apt-get update -q; apt-get install -y -q --no-install-recommends \"$@\"; "
                  "apt-get clean")
        result = subprocess.run(
            ["systemd-nspawn", "--quiet", "--register=no", "--keep-unit", "--pipe", "-D", str(root),
             "--setenv=DEBIAN_FRONTEND=noninteractive", "--setenv=PATH=/usr/sbin:/usr/bin:/sbin:/bin",
             "sh", "-c", script, "sh", *packages],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            timeout=APT_TIMEOUT)
        if result.returncode != 0:
            raise RuntimeError(f"apt-get install {' '.join(packages)} failed ({result.returncode}):\n"
                               f"{result.stdout[-4000:]}")
    finally:
        policy.unlink(missing_ok=True)
    masked = root / "etc/systemd/system"
    for unit in sorted(_service_units(root) - units_before):
        link = masked / unit
        link.unlink(missing_ok=True)
        link.symlink_to("/dev/null")


def _service_units(root: Path) -> set[str]:
    """The names of the service and socket units installed in `root` (templates included)."""
    names: set[str] = set()
    for directory in ("usr/lib/systemd/system", "lib/systemd/system"):
        path = root / directory
        if path.is_dir() and not path.is_symlink():
            names |= {p.name for p in path.iterdir() if p.suffix in (".service", ".socket", ".timer")}
    return names


def _pack(root: Path, work: Path, tarball: Path) -> None:
    for path in (root / "var/cache/apt/archives").glob("*.deb"):
        path.unlink()
    partial = work / "root.tar"
    subprocess.run(["tar", "--numeric-owner", "--xattrs", "-C", str(root), "-cf", str(partial), "."], check=True)
    os.replace(partial, tarball)


def unpack(tarball: Path, parent: Path) -> Path:
    """Unpack a fresh working copy of the cached root below `parent`; return its path."""
    root = Path(tempfile.mkdtemp(prefix="root-", dir=parent))
    subprocess.run(["tar", "--numeric-owner", "--xattrs", "--xattrs-include=*", "-C", str(root), "-xf",
                    str(tarball)], check=True)
    return root
