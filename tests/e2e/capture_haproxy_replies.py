"""Capture Debian 13's haproxy Runtime API replies into tests/unit/data/haproxy/3.0/, inside the
booted Debian 13 of the end-to-end tier (the cached root of test_debian13_components.py). As root,
from the repository root, when Debian 13's haproxy changes what it says:

    /usr/bin/python3 -m tests.e2e.capture_haproxy_replies

It runs tests/integration/capture_haproxy_replies.py inside and copies what it wrote back here.
(Debian 12's replies, 2.6, are captured on the host by that module directly.)
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

from . import rootfs
from .conftest import REPO, cache_dir
from .container import Container
from .test_debian13_components import CHECKOUT, HAPROXY_DATA, PACKAGES, RELEASE, copy_checkout


def main() -> int:
    if os.geteuid() != 0:
        print("capture_haproxy_replies: booting a container needs root", file=sys.stderr)
        return 2
    tarball = rootfs.cached_components(RELEASE, PACKAGES, rootfs.host_mirrors(), cache_dir())
    work = Path(tempfile.mkdtemp(prefix="pretix-agent-capture-", dir="/var/tmp"))
    try:
        root = rootfs.unpack(tarball, work)
        copy_checkout(root / CHECKOUT.lstrip("/"))
        container = Container(root, f"pretix-capture-{os.getpid()}", work / "console.log", private_network=True)
        try:
            container.boot()
            result = container.run(["/usr/bin/python3", "-m", "tests.integration.capture_haproxy_replies"],
                                   cwd=CHECKOUT, timeout=120, env={"PYTHONDONTWRITEBYTECODE": "1"})
            print(result.stdout.strip())
        finally:
            container.poweroff()
        target = REPO / HAPROXY_DATA
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(root / CHECKOUT.lstrip("/") / HAPROXY_DATA, target)
        print(f"copied to {target}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
