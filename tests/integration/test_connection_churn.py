"""tools/connection_churn.py, the load `make test-churn` runs beside the tiers: it really opens and
closes connections, stops cleanly on SIGTERM, and reports what it did."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.waiting import wait_until

pytestmark = pytest.mark.integration

TOOL = Path(__file__).resolve().parents[2] / "tools" / "connection_churn.py"


def test_a_short_run_opens_and_closes_connections_and_reports_them():
    done = subprocess.run([sys.executable, str(TOOL), "--rate", "200", "--duration", "1"], capture_output=True,
                          text=True, timeout=30)
    assert done.returncode in (0, 1), done.stderr  # 1: below half the rate on a very busy machine
    report = json.loads(done.stdout)
    assert report["opened"] > 0 and report["errors"] == 0
    assert report["established"] == report["opened"]
    assert report["closed"] > 0  # each held for 0.2 s of the second
    assert 0 < report["bound_first"] < report["opened"]  # both of the kernel's port searches
    assert report["listener"].startswith("127.0.0.1:")


def test_sigterm_stops_it_with_its_report(tmp_path):
    progress = tmp_path / "progress"
    with open(progress, "w") as err:
        process = subprocess.Popen([sys.executable, str(TOOL), "--rate", "100", "--every", "0.2"],
                                   stdout=subprocess.PIPE, stderr=err, text=True)
    try:
        wait_until(lambda: "opened" in progress.read_text(), timeout=10, message="a progress line")
        process.send_signal(signal.SIGTERM)
        out, _ = process.communicate(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    report = json.loads(out)
    assert report["opened"] > 0 and report["errors"] == 0


def test_nonsense_options_are_one_line_of_usage_error():
    done = subprocess.run([sys.executable, str(TOOL), "--rate", "0"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert "--rate must be positive" in done.stderr
    assert "Traceback" not in done.stderr
