"""The tier's caches: built once, reused by every later run."""

from __future__ import annotations

import pytest

from . import pretix_venv
from .cluster import ensure_db_template

pytestmark = pytest.mark.pretix


def test_a_second_start_reuses_the_cached_venv_and_migrated_database_without_building_again(cluster):
    venv = pretix_venv.ensure_venv()  # the cluster fixture built (or found) both already
    stamps = {path: path.stat().st_mtime_ns for path in (venv.root / "READY", venv.root / "pgdata-15" / "READY")}
    assert pretix_venv.ensure_venv() == venv
    assert ensure_db_template(venv) == venv.root / "pgdata-15" / "data"
    assert {path: path.stat().st_mtime_ns for path in stamps} == stamps
