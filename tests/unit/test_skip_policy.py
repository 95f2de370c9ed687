"""Under CI a skip the written list does not expect fails the run (tests/skip_policy.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.skip_policy import (
    EXPECTED_SKIPS,
    ExpectedSkip,
    Skip,
    SkipListError,
    parse_expected,
    skip_reason,
    strict,
    unexpected,
)

REPO = Path(__file__).resolve().parents[2]
LIST = """
# a comment, then a blank line

tests/unit/test_dbus.py::*  |  venv  |  no gi in the venv
tests/e2e/*  |  not-root  |  containers need root
"""


def test_the_list_gives_pattern_condition_and_reason_per_line():
    assert parse_expected(LIST) == [
        ExpectedSkip("tests/unit/test_dbus.py::*", "venv", "no gi in the venv", 4),
        ExpectedSkip("tests/e2e/*", "not-root", "containers need root", 5),
    ]


def test_a_line_without_a_reason_or_with_an_unknown_condition_is_refused_naming_every_line():
    with pytest.raises(SkipListError) as error:
        parse_expected("tests/a.py::t | always |\ntests/b.py::t | sometimes | why\ntests/c.py::t\n", "list")
    assert str(error.value).splitlines() == [
        "list:1: tests/a.py::t has no reason: say why this skip is expected",
        "list:2: condition 'sometimes' is not one of always, venv, root, not-root",
        "list:3: expected 'NODE-ID | CONDITION | WHY', got 'tests/c.py::t'",
    ]


def test_a_skip_is_expected_only_where_its_condition_holds():
    expected = parse_expected(LIST)
    gi = Skip("tests/unit/test_dbus.py::test_start_fails", "needs python3-gi")
    e2e = Skip("tests/e2e/test_installed_package.py::test_x[a]", "booting a container needs root")
    other = Skip("tests/integration/test_check_redis.py", "redis-server not found")
    assert unexpected([gi, e2e, other], expected, frozenset({"always", "venv", "root"})) == [e2e, other]
    assert unexpected([gi, e2e, other], expected, frozenset({"always", "not-root"})) == [gi, other]
    assert unexpected([], expected, frozenset({"always"})) == []


@pytest.mark.parametrize(("environ", "expected"), [
    ({}, False),
    ({"CI": "true"}, True),
    ({"CI": "1"}, True),
    ({"CI": "false"}, False),
    ({"CI": ""}, False),
    ({"PRETIX_AGENT_STRICT_SKIPS": "1"}, True),
    ({"CI": "true", "PRETIX_AGENT_STRICT_SKIPS": "0"}, False),  # explicit beats CI
])
def test_the_policy_is_on_under_ci_or_when_asked_for(environ, expected):
    assert strict(environ) is expected


def test_the_reason_is_taken_from_pytests_record():
    assert skip_reason(("/x/test_a.py", 12, "Skipped: needs nginx")) == "needs nginx"
    assert skip_reason("Skipped: whole module") == "whole module"


def test_the_shipped_list_parses_and_names_only_test_files_that_exist():
    entries = parse_expected(EXPECTED_SKIPS.read_text())
    assert entries, "an empty list is fine, but then this test should say so"
    for entry in entries:
        assert (REPO / entry.pattern.split("::")[0]).is_file(), f"line {entry.line}: no such test file"
