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
EXAMPLES = {("agent", "node"): "pretix-app1", ("maintenance", "timezone"): ZoneInfo("Europe/Berlin"),
            ("checks", "pretix", "url"): "http://127.0.0.1:8345/healthcheck/",
            ("checks", "pretix", "host"): "tickets.example.org",
            ("checks", "redis", "url"): "redis://127.0.0.1:6379/2",
            ("checks", "redis", "queues"): ("default", "checkout", "mail", "background", "notifications"),
            ("checks", "database", "dsn"): "host=10.0.0.11 dbname=postgres user=pretix_agent",
            ("checks", "database", "primary_dsn"): "host=10.0.0.10 dbname=postgres user=pretix_agent",
            ("checks", "database", "role"): "primary",
            ("checks", "units", "units"): ("pretix-web.service", "pretix-worker.service"),
            ("haproxy", "socket"): "/run/haproxy/admin.sock",
            ("haproxy", "state_file"): Path("/var/lib/haproxy/server-state"),
            ("haproxy", "server", 0, "backend"): "pretix", ("haproxy", "server", 0, "server"): "app1",
            ("haproxy", "server", 0, "checks"): ("pretix",), ("haproxy", "server", 0, "shared_checks"): (),
            ("haproxy", "shared_checks"): ("redis", "database"), ("maintenance", "on_failing"): ("redis",),
            ("agent_check", "listen"): "0.0.0.0:8999", ("agent_check", "checks"): ("pretix",),
            ("agent_check", "shared_checks"): ("redis",),
            ("agent_check", "weight"): 100,
            ("loki", "url"): "https://loki.example.org", ("loki", "username"): "123456",
            ("loki", "password_file"): Path("/run/credentials/pretix-agent.service/loki-password"),
            ("loki", "env"): "prod",
            ("loki", "units"): ("pretix-web.service", "pretix-worker.service", "nginx.service"),
            ("lock_fencing", "dsn"): "host=10.0.0.10 dbname=postgres user=pretix_agent_fencing",
            ("lock_fencing", "databases"): ("pretix",), ("lock_fencing", "users"): ("pretix",),
            ("cluster", "dsn"): "host=10.0.0.10,10.0.0.11 dbname=pretix_agent user=pretix_agent "
                                "target_session_attrs=read-write",
            ("cluster", "passfile"): Path("/run/credentials/pretix-agent.service/cluster-pgpass"),
            ("cluster", "roles"): ("app",),
            ("metrics", "listen"): "0.0.0.0:8998",
            ("metrics", "textfile"): Path("/var/lib/prometheus/node-exporter/pretix-agent.prom")}

# Keys shown as an alternative in prose rather than as a setting: they exclude one that is set.
ALTERNATIVES = {("loki", "bearer_token_file")}

# The example check of each type in conf/agent.toml; the timing keys all types share are shown
# (with their defaults) in the first one only.
EXAMPLE_CHECKS = {"http": "pretix", "redis": "redis", "postgres": "database", "systemd": "units"}


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
        elif isinstance(spec, config.TableMap):
            for kind, options in spec.types.items():
                check = (*path, name, EXAMPLE_CHECKS[kind])
                if kind == next(iter(EXAMPLE_CHECKS)):
                    yield from schema_keys(spec.common, check)
                yield from schema_keys(options, check)
        else:
            yield from schema_keys(spec.table, (*path, name, 0))


def shown_value(loaded: config.Config, path: tuple):
    """The value the loaded configuration has at a schema path."""
    if path[0] == "checks":
        _, name, key = path
        (check,) = [check for check in loaded.checks if check.name == name]
        return getattr(check, key) if hasattr(check, key) else getattr(check.options, key)
    if path[:2] == ("haproxy", "server"):
        return getattr(loaded.haproxy.servers[path[2]], path[3])
    section, key = path
    return getattr(getattr(loaded, section), key)


def default_value(path: tuple):
    """The schema's default at a path (for a check: of its type's table, else the common one)."""
    if path[0] == "checks":
        spec = config.SCHEMA.keys["checks"]
        kind = next(kind for kind, name in EXAMPLE_CHECKS.items() if name == path[1])
        key = spec.types[kind].keys.get(path[2]) or spec.common.keys[path[2]]
        return key.default
    node = config.SCHEMA
    for part in path:
        if isinstance(node, config.TableArray):
            node = node.table
        if isinstance(part, int):
            continue
        node = node.keys[part]
    return node.default


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
    text = EXAMPLE.read_text(encoding="utf-8")
    raw = tomllib.loads(uncommented(text))
    for path in schema_keys(config.SCHEMA):
        if path in ALTERNATIVES:
            assert f"{path[-1]} = " in text, f"conf/agent.toml does not mention {config.format_path(path)}"
            continue
        try:
            lookup(raw, path)
        except (KeyError, IndexError):
            pytest.fail(f"conf/agent.toml does not show {config.format_path(path)}")


def test_example_config_explains_every_key_in_a_comment_above_it():
    lines = EXAMPLE.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines):
        if re.match(r"#[a-z_]+ = ", line) and not re.match(r"#(start|end|type) = ", line):
            assert lines[number - 1].startswith("# "), f"conf/agent.toml:{number + 1}: {line} is not explained"


def test_example_config_commented_settings_show_the_defaults_or_the_examples_it_names(example_uncommented):
    for path in schema_keys(config.SCHEMA):
        if "window" in path or path in ALTERNATIVES:
            continue
        shown = shown_value(example_uncommented, path)
        expected = EXAMPLES.get(path, default_value(path))
        if isinstance(expected, config.Derived):  # a file in state_dir: the example shows the default one
            expected = config.defaults().agent.state_dir / expected.name
        assert shown == expected, config.format_path(path)


def test_example_config_shows_one_check_of_each_type_for_an_app_node(example_uncommented):
    assert {check.name: check.type for check in example_uncommented.checks} == {
        name: kind for kind, name in EXAMPLE_CHECKS.items()}


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
