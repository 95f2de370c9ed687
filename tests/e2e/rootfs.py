"""A Debian 12 root file system for the booted-systemd tier: built once with debootstrap, cached
outside the repository as a tarball, and unpacked afresh for every container, so no test ever
changes the cache.

The cache holds only the base system (minbase, systemd, dbus, man-db for the man-page check). The
package's own dependencies are deliberately not in it: the tests install the .deb with apt, which
must resolve them from the Debian archive, as on an operator's machine.
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
from dataclasses import dataclass
from pathlib import Path

SUITE = "bookworm"
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


@dataclass(frozen=True)
class Mirrors:
    """Where the container's apt fetches from: the same archive the host uses."""

    archive: str
    security: str

    def sources_list(self) -> str:
        return (f"deb {self.archive} {SUITE} main\n"
                f"deb {self.archive} {SUITE}-updates main\n"
                f"deb {self.security} {SUITE}-security main\n")


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
    """Given the host's apt sources, return its Debian archive and security mirrors (or the defaults)."""
    archive = security = None
    for uri, suites in _entries(sources_dir):
        uri = uri.rstrip("/")
        if not uri.startswith(("http://", "https://")):
            continue
        if f"{SUITE}-security" in suites and security is None:
            security = uri
        elif SUITE in suites and archive is None:
            archive = uri
    return Mirrors(archive or DEFAULT_MIRROR, security or DEFAULT_SECURITY_MIRROR)


def _cache_key(mirrors: Mirrors) -> str:
    text = "\n".join([SUITE, "minbase", *INCLUDE, mirrors.archive, mirrors.security, "1"])
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def cached_root(mirrors: Mirrors, cache_dir: Path = DEFAULT_CACHE) -> Path:
    """Return the cached root tarball, building it with debootstrap if it is missing or too old.

    Concurrent sessions wait on a lock; the tarball appears atomically (rename), so a build that
    is interrupted leaves no half-made cache behind.
    """
    cache_dir.mkdir(parents=True, exist_ok=True)
    tarball = cache_dir / f"{SUITE}-{_cache_key(mirrors)}.tar"
    with open(cache_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if tarball.exists() and time.time() - tarball.stat().st_mtime < MAX_AGE_SECONDS:
            return tarball
        for old in cache_dir.glob(f"{SUITE}-*.tar"):
            old.unlink()
        for stale in cache_dir.glob("build-*"):  # left by an interrupted build (we hold the lock)
            shutil.rmtree(stale, ignore_errors=True)
        _build(tarball, mirrors, cache_dir)
    return tarball


def _build(tarball: Path, mirrors: Mirrors, cache_dir: Path) -> None:
    work = Path(tempfile.mkdtemp(prefix="build-", dir=cache_dir))
    try:
        root = work / "root"
        result = subprocess.run(
            ["debootstrap", "--variant=minbase", f"--include={','.join(INCLUDE)}", SUITE, str(root),
             mirrors.archive], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            timeout=DEBOOTSTRAP_TIMEOUT)
        if result.returncode != 0:
            raise RuntimeError(f"debootstrap failed ({result.returncode}):\n{result.stdout[-4000:]}")
        (root / "etc/apt/sources.list").write_text(mirrors.sources_list())
        (root / "etc/hostname").write_text("pretix-e2e\n")
        # A fresh machine id per boot (systemd makes a transient one when the file is empty).
        (root / "etc/machine-id").write_text("")
        for path in (root / "var/cache/apt/archives").glob("*.deb"):
            path.unlink()
        partial = work / "root.tar"
        subprocess.run(["tar", "--numeric-owner", "--xattrs", "-C", str(root), "-cf", str(partial), "."],
                       check=True)
        os.replace(partial, tarball)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def unpack(tarball: Path, parent: Path) -> Path:
    """Unpack a fresh working copy of the cached root below `parent`; return its path."""
    root = Path(tempfile.mkdtemp(prefix="root-", dir=parent))
    subprocess.run(["tar", "--numeric-owner", "--xattrs", "--xattrs-include=*", "-C", str(root), "-xf",
                    str(tarball)], check=True)
    return root
