"""Tests that conf/agent.toml and the README's configuration reference match the schema."""

from __future__ import annotations

import dataclasses
import re
import sys
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from pretix_agent import config
from pretix_agent.schedule import Schedule, WeeklyTime, Window, is_inside

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "conf" / "agent.toml"
README = ROOT / "README.md"
START_MARKER = "<!-- config-reference:start -->"
END_MARKER = "<!-- config-reference:end -->"

# Commented-out settings whose value is an example rather than the default, as the file says.
EXAMPLES = {("agent", "node"): "pretix-app1", ("maintenance", "timezone"): ZoneInfo("Europe/Berlin")}


def uncommented(text: str) -> str:
    """Turn every commented-out setting ("#key = ...", "#[[table]]") into a real one; keep prose."""
    return re.sub(r"^#(?=[^\s#])", "", text, flags=re.MULTILINE)


@pytest.fixture
def example_uncommented(tmp_path) -> config.Config:
    path = tmp_path / "agent.toml"
    path.write_text(uncommented(EXAMPLE.read_text(encoding="utf-8")), encoding="utf-8")
    return config.load(path)


def schema_keys(table: config.Table, path: tuple = ()):
    for name, spec in table.keys.items():
        if isinstance(spec, config.Key):
            yield (*path, name)
        elif isinstance(spec, config.Table):
            yield from schema_keys(spec, (*path, name))
        else:
            yield from schema_keys(spec.table, (*path, name, 0))


def lookup(raw, path):
    for part in path:
        raw = raw[part]
    return raw


def test_example_config_as_shipped_loads_and_changes_nothing():
    loaded = config.load(EXAMPLE)
    assert loaded.raw_sections == frozenset({"agent", "log", "maintenance"})
    assert loaded == dataclasses.replace(config.defaults(), source=str(EXAMPLE), raw_sections=loaded.raw_sections)
    assert loaded.maintenance.windows == ()


def test_example_config_documents_every_key_of_the_schema():
    raw = tomllib.loads(uncommented(EXAMPLE.read_text(encoding="utf-8")))
    for path in schema_keys(config.SCHEMA):
        try:
            lookup(raw, path)
        except (KeyError, IndexError):
            pytest.fail(f"conf/agent.toml does not show {config.format_path(path)}")


def test_example_config_explains_every_key_in_a_comment_above_it():
    lines = EXAMPLE.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines):
        if re.match(r"#[a-z_]+ = ", line) and not re.match(r"#(start|end) = ", line):
            assert lines[number - 1].startswith("# "), f"conf/agent.toml:{number + 1}: {line} is not explained"


def test_example_config_commented_settings_show_the_defaults_or_the_examples_it_names(example_uncommented):
    defaults = config.defaults()
    for path in schema_keys(config.SCHEMA):
        if "window" in path:
            continue
        section, key = path
        shown = getattr(getattr(example_uncommented, section), key)
        expected = EXAMPLES.get(path, getattr(getattr(defaults, section), key))
        assert shown == expected, config.format_path(path)


def test_example_config_windows_are_the_accounting_cut_off_and_the_upgrade_slot(example_uncommented):
    assert example_uncommented.maintenance.windows == (
        Window(WeeklyTime(6, 22, 0), WeeklyTime(0, 5, 0)),
        Window(WeeklyTime(2, 1, 0), WeeklyTime(2, 1, 30)),
    )


@pytest.mark.parametrize(("local", "inside"), [
    pytest.param(datetime(2026, 1, 11, 21, 59), False, id="sunday-just-before-22"),
    pytest.param(datetime(2026, 1, 11, 22, 0), True, id="sunday-22-berlin"),
    pytest.param(datetime(2026, 1, 12, 4, 59), True, id="monday-before-5"),
    pytest.param(datetime(2026, 1, 12, 5, 0), False, id="monday-5-berlin"),
    pytest.param(datetime(2026, 1, 14, 1, 15), True, id="wednesday-upgrade-slot"),
])
def test_example_config_cut_off_window_is_read_in_berlin_time(example_uncommented, local, inside):
    section = example_uncommented.maintenance
    now = local.replace(tzinfo=ZoneInfo("Europe/Berlin"))
    assert is_inside(Schedule(section.windows, section.timezone), now) is inside


def test_readme_configuration_reference_is_current():
    if not README.exists():
        pytest.skip("README.md does not exist yet; once it does, it must carry the configuration reference "
                    f"between {START_MARKER} and {END_MARKER}")
    text = README.read_text(encoding="utf-8")
    if START_MARKER not in text or END_MARKER not in text:
        pytest.skip(f"README.md has no {START_MARKER} ... {END_MARKER} section (yet)")
    between = text.split(START_MARKER, 1)[1].split(END_MARKER, 1)[0]
    assert between.strip("\n") == config.reference_markdown().strip("\n"), (
        "README.md's configuration reference is out of date: replace the text between the markers with "
        "the output of `pretix-agent --config-reference` (make readme-reference)")
