"""Session policy for every tier (unit, unit-pypi, integration, e2e): under CI, a skip that
tests/expected_skips.txt does not list fails the run (see tests/skip_policy.py).

Without CI the run stays friendly: skips pass, and the summary names those CI would refuse.
"""

from __future__ import annotations

import os

import pytest

from tests.skip_policy import (
    EXPECTED_SKIPS,
    ExpectedSkip,
    Skip,
    SkipListError,
    current_conditions,
    parse_expected,
    skip_reason,
    strict,
    unexpected,
)

_expected: list[ExpectedSkip] = []
_skips: list[Skip] = []


def pytest_configure(config: pytest.Config) -> None:
    try:
        _expected[:] = parse_expected(EXPECTED_SKIPS.read_text(), str(EXPECTED_SKIPS))
    except (OSError, SkipListError) as error:
        raise pytest.UsageError(f"the list of expected skips: {error}") from None
    _skips.clear()


def pytest_collectreport(report: pytest.CollectReport) -> None:
    if report.skipped:  # pytest.skip(..., allow_module_level=True): the whole module did not run
        _skips.append(Skip(report.nodeid, skip_reason(report.longrepr)))


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped and not hasattr(report, "wasxfail"):
        _skips.append(Skip(report.nodeid, skip_reason(report.longrepr)))


def _unexpected() -> list[Skip]:
    return unexpected(_skips, _expected, current_conditions())


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if strict(os.environ) and _unexpected() and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    found = _unexpected()
    if not found:
        return
    relative = os.path.relpath(EXPECTED_SKIPS)
    if strict(os.environ):
        terminalreporter.section("unexpected skips", sep="=", red=True, bold=True)
        terminalreporter.write_line(f"{len(found)} test(s) skipped that {relative} does not expect; under CI a "
                                    "skipped test fails the run (install what it needs, or list it with why):")
    else:
        terminalreporter.section("skips CI would refuse", sep="-", yellow=True)
        terminalreporter.write_line(f"{len(found)} test(s) skipped that {relative} does not expect (fine here; "
                                    "under CI=true the run would fail):")
    for skip in found:
        terminalreporter.write_line(f"  {skip.nodeid}: {skip.reason}")
