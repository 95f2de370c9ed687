"""A real pretix from PyPI, in a venv cached by version under /var/cache/pretix-agent-pretix/<version>/.

    venv = ensure_venv()          # builds once (about 5 minutes on two cores), then reuses
    venv.python                   # /var/cache/pretix-agent-pretix/2026.8.0/venv/bin/python

The venv is built by Debian's /usr/bin/python3 (`-m venv`) with `pip install pretix==VERSION
gunicorn` in a temporary directory beside its final place and renamed into place only once pip and
the import check succeeded, under an fcntl lock: two test runs never build twice, and a half-built
venv is never used. Scripts in a venv carry the absolute path of the directory they were built in,
so everything is run as `venv/bin/python -m ...` (pretix, gunicorn, celery), never by its script.

Run directly (`/usr/bin/python3 -m tests.pretix.pretix_venv`) to build the cache ahead of a run.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

# The newest pretix release on PyPI when this tier was written; the issue measured this one.
PRETIX_VERSION = os.environ.get("PRETIX_AGENT_TEST_PRETIX_VERSION", "2026.8.0")
GUNICORN_SPEC = "gunicorn"
CACHE_ROOT = Path(os.environ.get("PRETIX_AGENT_PRETIX_CACHE", "/var/cache/pretix-agent-pretix"))
BUILD_PYTHON = "/usr/bin/python3"
PIP_TIMEOUT = 1800  # seconds: a cold build on a loaded two-core machine, downloads included


class VenvError(RuntimeError):
    """The pretix venv could not be built (the message carries pip's output)."""


@dataclass(frozen=True)
class PretixVenv:
    version: str
    root: Path  # CACHE_ROOT/<version>

    @property
    def venv(self) -> Path:
        return self.root / "venv"

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    @property
    def site_packages(self) -> Path:
        found = sorted((self.venv / "lib").glob("python3*/site-packages"))
        if not found:
            raise VenvError(f"no site-packages in {self.venv}")
        return found[0]

    @property
    def pretix_source(self) -> Path:
        """The installed pretix package (read its settings.py, locking.py, ... here)."""
        return self.site_packages / "pretix"

    def ready(self) -> bool:
        return (self.root / "READY").is_file() and self.python.exists()


@contextlib.contextmanager
def cache_lock(name: str) -> Iterator[None]:
    """An exclusive fcntl lock on CACHE_ROOT/<name>.lock, held for the block (other runs wait)."""
    CACHE_ROOT.mkdir(parents=True, exist_ok=True)
    with open(CACHE_ROOT / f"{name}.lock", "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _run(args: list[str], what: str, timeout: float, log: Path) -> None:
    with open(log, "ab") as out:
        out.write(f"\n$ {' '.join(args)}\n".encode())
        out.flush()
        try:
            result = subprocess.run(args, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                    timeout=timeout, env=_clean_env())
        except subprocess.TimeoutExpired:
            raise VenvError(f"{what} took longer than {timeout:.0f} s; see {log}") from None
    if result.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-40:])
        raise VenvError(f"{what} failed (exit {result.returncode}); last lines of {log}:\n{tail}")


def _clean_env() -> dict[str, str]:
    # pyenv's shims and a caller's venv must not leak into the build.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env["PATH"] = "/usr/sbin:/usr/bin:/sbin:/bin"
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def ensure_venv(version: str = PRETIX_VERSION) -> PretixVenv:
    """Return the cached venv of pretix `version`, building it first if it is not there."""
    target = PretixVenv(version, CACHE_ROOT / version)
    if target.ready():
        return target
    with cache_lock(f"venv-{version}"):
        if target.ready():  # another run built it while we waited for the lock
            return target
        target.root.mkdir(parents=True, exist_ok=True)
        build = Path(tempfile.mkdtemp(prefix=".venv-build-", dir=target.root))
        log = target.root / "build.log"
        started = time.monotonic()
        try:
            _run([BUILD_PYTHON, "-m", "venv", str(build)], "python3 -m venv", 300, log)
            pip = [str(build / "bin" / "python"), "-m", "pip", "install", "--no-input", "--progress-bar", "off"]
            _run([*pip, "--upgrade", "pip", "wheel", "setuptools"], "upgrading pip", PIP_TIMEOUT, log)
            _run([*pip, f"pretix=={version}", GUNICORN_SPEC], f"pip install pretix=={version}", PIP_TIMEOUT, log)
            check = "import pretix, gunicorn, celery, django; print(pretix.__version__)"
            _run([str(build / "bin" / "python"), "-c", check], "importing pretix", 120, log)
            final = target.venv
            if final.exists():  # a half-built leftover without READY
                shutil.rmtree(final)
            os.rename(build, final)
        except BaseException:
            shutil.rmtree(build, ignore_errors=True)
            raise
        (target.root / "READY").write_text(f"built in {time.monotonic() - started:.0f} s\n")
    return target


if __name__ == "__main__":
    started = time.monotonic()
    venv = ensure_venv(sys.argv[1] if len(sys.argv) > 1 else PRETIX_VERSION)
    print(f"pretix {venv.version}: {venv.python} ({time.monotonic() - started:.0f} s)")
