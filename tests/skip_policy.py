"""Which skips a green run may contain: the written list in tests/expected_skips.txt.

Under CI a skipped test is a test that did not run, and a green run must mean every test ran: the
suite fails when anything skipped that the list does not name (tests/conftest.py applies this to
every tier). Locally skips stay friendly: the run passes and says which skips CI would refuse.

The list has one expected skip per line, three fields separated by `|`:

    tests/unit/test_dbus.py::*  |  venv  |  the PyPI tier's venv has no gi or pydbus (Debian packages them)

- a pytest node ID, `*` and `?` as in shell patterns (a parametrised test is `name[*]`);
- when the skip is expected: `always`, `venv` (running in a virtualenv: the PyPI tier), `root`
  or `not-root`;
- why: required, it is the whole point of the list.
Blank lines and lines starting with `#` are ignored.

Plain functions: parse the list, decide which skips are unexpected. No pytest here.
"""

from __future__ import annotations

import fnmatch
import os
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

EXPECTED_SKIPS = Path(__file__).parent / "expected_skips.txt"
CONDITIONS = ("always", "venv", "root", "not-root")
# CI=true (what .ci/run exports, as most CI systems do) turns the policy on; PRETIX_AGENT_STRICT_SKIPS
# says it explicitly either way (1 on a developer's machine, 0 to look at a CI failure locally).
STRICT_VARIABLES = ("PRETIX_AGENT_STRICT_SKIPS", "CI")
_FALSE = ("", "0", "false", "no", "off")


class SkipListError(ValueError):
    """tests/expected_skips.txt has a line that does not say what, when and why."""


@dataclass(frozen=True)
class ExpectedSkip:
    pattern: str
    condition: str
    why: str
    line: int


@dataclass(frozen=True)
class Skip:
    nodeid: str
    reason: str


def parse_expected(text: str, source: str = "expected_skips.txt") -> list[ExpectedSkip]:
    """Given the text of the list, return its entries. Raise SkipListError naming every bad line."""
    entries, problems = [], []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        fields = [field.strip() for field in line.split("|", 2)]
        if len(fields) != 3 or not fields[0]:
            problems.append(f"{source}:{number}: expected 'NODE-ID | CONDITION | WHY', got {line!r}")
        elif fields[1] not in CONDITIONS:
            problems.append(f"{source}:{number}: condition {fields[1]!r} is not one of {', '.join(CONDITIONS)}")
        elif not fields[2]:
            problems.append(f"{source}:{number}: {fields[0]} has no reason: say why this skip is expected")
        else:
            entries.append(ExpectedSkip(fields[0], fields[1], fields[2], number))
    if problems:
        raise SkipListError("\n".join(problems))
    return entries


def current_conditions() -> frozenset[str]:
    """The conditions that hold in this interpreter and process."""
    held = {"always", "root" if os.geteuid() == 0 else "not-root"}
    if sys.prefix != sys.base_prefix:
        held.add("venv")
    return frozenset(held)


def strict(environ: Mapping[str, str]) -> bool:
    """True if unexpected skips fail the run: PRETIX_AGENT_STRICT_SKIPS if set, else CI."""
    for name in STRICT_VARIABLES:
        if name in environ:
            return environ[name].strip().lower() not in _FALSE
    return False


def unexpected(skips: Iterable[Skip], expected: Iterable[ExpectedSkip], conditions: frozenset[str]) -> list[Skip]:
    """The skips no entry whose condition holds allows, in the order given."""
    allowed = [entry for entry in expected if entry.condition in conditions]
    return [skip for skip in skips
            if not any(fnmatch.fnmatchcase(skip.nodeid, entry.pattern) for entry in allowed)]


def skip_reason(longrepr: object) -> str:
    """The reason pytest recorded for a skip (its longrepr is (path, line, "Skipped: reason"))."""
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        text = str(longrepr[2])
    else:
        text = str(longrepr)
    return text.removeprefix("Skipped: ")
