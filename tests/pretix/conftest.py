"""One real pretix cluster for the whole tier (starting it takes about half a minute with warm
caches; each scenario leaves it as it found it). Nothing here is skipped: a missing component
(PostgreSQL, Redis, nginx, haproxy, the pretix venv) fails the tier, so CI never passes it silently."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tests.integration.processes import any_alive

from .cluster import PretixCluster


@pytest.fixture(scope="session")
def cluster() -> Iterator[PretixCluster]:
    running = PretixCluster()
    running.start()
    print("pretix cluster start-up timings (s):", json.dumps(running.timings))
    try:
        yield running
    finally:
        pids = running.all_known_pids()
        directory = running.dir
        running.close()
        # The tier cleans up after itself: every process it started is gone, its directory too.
        left = any_alive(pids)
        assert not left, f"processes left after the cluster closed: {sorted(left)}"
        assert not directory.exists() or running.keep_dir, f"{directory} left behind"
