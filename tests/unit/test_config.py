"""Tests for pretix_agent.config: the TOML schema, its error messages (path, words, line) and defaults."""

from __future__ import annotations

import dataclasses
import errno
import os
import socket
import textwrap
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from pretix_agent import config
from pretix_agent.errors import ConfigError
from pretix_agent.schedule import WeeklyTime, Window


def problems_of(text: str) -> list:
    with pytest.raises(ConfigError) as caught:
        config.parse(textwrap.dedent(text), "agent.toml")
    return caught.value.problems


# ---------------------------------------------------------------------------------------------
# One bad input, one problem: its TOML path, a meaningful part of its message, and its line.

BAD_INPUTS = [
    pytest.param(
        """
        [agent]
        reconcile_intervall = "5s"
        """,
        "agent.reconcile_intervall", 'unknown key; did you mean "reconcile_interval"?', 3,
        id="unknown-key-suggests-the-close-one"),
    pytest.param(
        """
        [log]
        levle = "debug"
        """,
        "log.levle", 'did you mean "level"?', 3, id="unknown-key-in-log-suggests-level"),
    pytest.param(
        """
        [[maintenance.window]]
        strat = "Sun 22:00"
        start = "Sun 22:00"
        end = "Mon 05:00"
        """,
        "maintenance.window[0].strat", 'did you mean "start"?', 3, id="unknown-key-inside-a-window"),
    pytest.param(
        """
        [agent]
        colour = "blue"
        """,
        "agent.colour",
        "unknown key; known keys: node, status_file, state_dir, shutdown_drain_time, reconcile_interval", 3,
        id="unknown-key-without-close-match-lists-known-keys"),
    pytest.param(
        """
        agent.reconcile_intervall = "5s"
        """,
        "agent.reconcile_intervall", 'did you mean "reconcile_interval"?', 2, id="unknown-dotted-key"),
    pytest.param(
        """
        agent = { reconcile_intervall = "5s" }
        """,
        "agent.reconcile_intervall", 'did you mean "reconcile_interval"?', 2,
        id="unknown-key-in-inline-table-points-at-the-table-line"),
    pytest.param(
        """
        [agnet]
        node = "app1"
        """,
        "agnet", 'unknown key; did you mean "agent"?', 2, id="misspelt-section"),
    pytest.param(
        """
        # a comment first

        [frobnicator]
        speed = 3
        """,
        "frobnicator", "unknown key; known keys: agent, log, maintenance", 4, id="unknown-section"),
    pytest.param(
        """
        agent = "app1"
        """,
        "agent", "expected a table, got a string", 2, id="string-where-a-table-belongs"),
    pytest.param(
        """
        log = [1, 2]
        """,
        "log", "expected a table, got an array", 2, id="array-where-a-table-belongs"),
    pytest.param(
        """
        [agent]
        reconcile_interval = 5
        """,
        "agent.reconcile_interval", 'got an integer (write "5s" or "5ms")', 3,
        id="bare-integer-duration-suggests-a-unit"),
    pytest.param(
        """
        [agent]
        reconcile_interval = 2.5
        """,
        "agent.reconcile_interval", 'got a float (write "2.5s" or "2.5ms")', 3,
        id="bare-float-duration-suggests-a-unit"),
    pytest.param(
        """
        [agent]
        reconcile_interval = -5
        """,
        "agent.reconcile_interval", 'expected a duration such as "2s" or "500ms", got an integer', 3,
        id="negative-integer-duration"),
    pytest.param(
        """
        [agent]
        reconcile_interval = true
        """,
        "agent.reconcile_interval", "got a boolean", 3, id="boolean-duration"),
    pytest.param(
        """
        [agent]
        reconcile_interval = "-5s"
        """,
        "agent.reconcile_interval", 'got "-5s"', 3, id="negative-duration"),
    pytest.param(
        """
        [agent]
        reconcile_interval = "0s"
        """,
        "agent.reconcile_interval", 'expected a duration greater than zero, got "0s"', 3, id="zero-duration"),
    pytest.param(
        """
        [agent]
        reconcile_interval = "0ms"
        """,
        "agent.reconcile_interval", "greater than zero", 3, id="zero-milliseconds"),
    pytest.param(
        """
        [agent]
        reconcile_interval = "5 seconds"
        """,
        "agent.reconcile_interval", 'got "5 seconds"', 3, id="duration-with-a-word-unit"),
    pytest.param(
        """
        [agent]
        reconcile_interval = "5"
        """,
        "agent.reconcile_interval", 'expected a duration such as "2s", "500ms" or "1m30s", got "5"', 3,
        id="duration-string-without-unit"),
    pytest.param(
        """
        [agent]
        reconcile_interval = ""
        """,
        "agent.reconcile_interval", 'got ""', 3, id="empty-duration"),
    pytest.param(
        """
        [agent]
        node = ""
        """,
        "agent.node", "must not be empty", 3, id="empty-node-name"),
    pytest.param(
        """
        [agent]
        node = 7
        """,
        "agent.node", "expected a string, got an integer", 3, id="integer-node-name"),
    pytest.param(
        """
        [agent]
        status_file = "run/status.json"
        """,
        "agent.status_file", 'expected an absolute path, got "run/status.json"', 3, id="relative-status-file"),
    pytest.param(
        """
        [agent]
        state_dir = "./state"
        """,
        "agent.state_dir", "expected an absolute path", 3, id="relative-state-dir"),
    pytest.param(
        """
        [maintenance]
        marker = "maintenance"
        """,
        "maintenance.marker", 'expected an absolute path, got "maintenance"', 3, id="relative-marker"),
    pytest.param(
        """
        [maintenance]
        lock = "/var/lib/pretix-agent/\\u0000lock"
        """,
        "maintenance.lock", "NUL byte", 3, id="path-with-nul-byte"),
    pytest.param(
        """
        [maintenance]
        lock = ["/a"]
        """,
        "maintenance.lock", "expected a string, got an array", 3, id="path-given-as-array"),
    pytest.param(
        """
        [maintenance]
        timezone = "Europe/Berln"
        """,
        "maintenance.timezone", 'unknown timezone "Europe/Berln": use an IANA name such as "Europe/Berlin"', 3,
        id="unknown-timezone"),
    pytest.param(
        """
        [maintenance]
        timezone = "CEST"
        """,
        "maintenance.timezone", 'unknown timezone "CEST"', 3, id="timezone-abbreviation"),
    pytest.param(
        """
        [maintenance]
        timezone = "../../etc/passwd"
        """,
        "maintenance.timezone", "unknown timezone", 3, id="timezone-path-traversal"),
    pytest.param(
        """
        [maintenance]
        timezone = ""
        """,
        "maintenance.timezone", 'unknown timezone ""', 3, id="empty-timezone"),
    pytest.param(
        """
        [maintenance]
        timezone = 1
        """,
        "maintenance.timezone", "expected a string, got an integer", 3, id="integer-timezone"),
    pytest.param(
        """
        [log]
        level = "verbose"
        """,
        "log.level", 'expected one of debug, info, warning, error, got "verbose"', 3, id="unknown-log-level"),
    pytest.param(
        """
        [log]
        format = "syslog"
        """,
        "log.format", 'expected one of auto, journal, console, json, got "syslog"', 3, id="unknown-log-format"),
    pytest.param(
        """
        [log]
        level = "INFO"
        """,
        "log.level", 'got "INFO"', 3, id="log-level-is-case-sensitive"),
    pytest.param(
        """
        [[maintenance.window]]
        start = "su 22:00"
        end = "Mon 05:00"
        """,
        "maintenance.window[0].start", "'su 22:00' is not a weekly time", 3,
        id="two-letter-weekday-from-the-broken-shell-script"),
    pytest.param(
        """
        [[maintenance.window]]
        start = "Sun 22:00"
        end = "Sun 25:00"
        """,
        "maintenance.window[0].end", "a time HH:MM from 00:00 to 23:59", 4, id="hour-25"),
    pytest.param(
        """
        [[maintenance.window]]
        start = "Sun 22:60"
        end = "Mon 05:00"
        """,
        "maintenance.window[0].start", "'Sun 22:60' is not a weekly time", 3, id="minute-60"),
    pytest.param(
        """
        [[maintenance.window]]
        start = "Sonntag 22:00"
        end = "Mon 05:00"
        """,
        "maintenance.window[0].start", "Mon to Sun or Monday to Sunday", 3, id="german-weekday"),
    pytest.param(
        """
        [[maintenance.window]]
        start = "22:00"
        end = "Mon 05:00"
        """,
        "maintenance.window[0].start", "is not a weekly time", 3, id="time-without-weekday"),
    pytest.param(
        """
        [[maintenance.window]]
        start = 2200
        end = "Mon 05:00"
        """,
        "maintenance.window[0].start", "expected a string, got an integer", 3, id="integer-weekly-time"),
    pytest.param(
        """
        [[maintenance.window]]
        start = "Sun 22:00"
        end = "Sun 22:00"
        """,
        "maintenance.window[0]", "has zero length: start and end must differ", 2, id="zero-length-window"),
    pytest.param(
        """
        [[maintenance.window]]
        start = "Sun 22:00"
        end = "Mon 05:00"

        [[maintenance.window]]
        start = "sunday 22:00"
        end = "Sun 22:00"
        """,
        "maintenance.window[1]", "zero length", 6, id="zero-length-second-window-points-at-its-header"),
    pytest.param(
        """
        [[maintenance.window]]
        end = "Mon 05:00"
        """,
        "maintenance.window[0].start", "is required", 2, id="window-without-start"),
    pytest.param(
        """
        [[maintenance.window]]
        start = "Sun 22:00"
        """,
        "maintenance.window[0].end", "is required", 2, id="window-without-end"),
    pytest.param(
        """
        [maintenance]
        window = { start = "Sun 22:00", end = "Mon 05:00" }
        """,
        "maintenance.window", "expected an array of tables ([[maintenance.window]]), got a table", 3,
        id="window-as-a-single-table"),
    pytest.param(
        """
        [maintenance.window]
        start = "Sun 22:00"
        end = "Mon 05:00"
        """,
        "maintenance.window", "expected an array of tables", 2, id="window-with-single-brackets"),
    pytest.param(
        """
        [maintenance]
        window = ["Sun 22:00"]
        """,
        "maintenance.window[0]", "expected a table, got a string", 3, id="window-array-of-strings"),
    pytest.param(
        """
        [maintenance]
        marker = "/var/lib/pretix-agent/maintenance"
        lock = "/var/lib/pretix-agent/maintenance"
        """,
        "maintenance.lock", "must differ from maintenance.marker", 4, id="marker-equals-lock"),
    pytest.param(
        """
        [maintenance]
        lock = "/var/lib/pretix-agent/maintenance"
        """,
        "maintenance.lock", "must differ from maintenance.marker", 3, id="lock-equals-default-marker"),
    pytest.param(
        """
        [agent]
        node = "app1"
        reconcile_interval =
        """,
        "", "not valid TOML: Invalid value", 4, id="broken-toml-reports-its-line"),
    pytest.param(
        """
        [agent]
        node = "app1"
        node = "app2"
        """,
        "", "not valid TOML", 4, id="duplicate-key"),
    pytest.param(
        """
        [agent
        """,
        "", "not valid TOML", 2, id="unclosed-header"),
]


@pytest.mark.parametrize(("text", "path", "words", "line"), BAD_INPUTS)
def test_bad_input_is_reported_with_its_path_words_and_line(text, path, words, line):
    problems = problems_of(text)
    assert len(problems) == 1, problems
    problem = problems[0]
    assert problem.path == path
    assert words in problem.message
    assert problem.line == line
    assert problem.file == "agent.toml"
    assert "\n" not in str(problem)


def test_problem_reads_file_line_path_and_message_in_one_line():
    problems = problems_of("""
        [agent]
        reconcile_intervall = "5s"
        """)
    assert str(problems[0]) == ('agent.toml:3: agent.reconcile_intervall: unknown key; did you mean '
                                '"reconcile_interval"?')


def test_error_without_a_path_reads_file_line_and_message():
    problems = problems_of("[agent\n")
    assert str(problems[0]).startswith("agent.toml:1: not valid TOML: ")


def test_several_errors_in_one_file_are_all_reported_at_once():
    text = """
        [agent]
        reconcile_interval = 5
        node = 1
        status_file = "status.json"

        [log]
        level = "loud"

        [maintenance]
        timezone = "Mars/Olympus_Mons"
        marker = "/srv/m"
        lock = "/srv/m"

        [[maintenance.window]]
        start = "su 22:00"
        end = "Mon 05:00"

        [[maintenance.window]]
        start = "Sun 22:00"

        [bogus]
        """
    problems = problems_of(text)
    found = {(problem.path, problem.line) for problem in problems}
    assert found == {
        ("bogus", 22),
        ("agent.reconcile_interval", 3),
        ("agent.node", 4),
        ("agent.status_file", 5),
        ("log.level", 8),
        ("maintenance.timezone", 11),
        ("maintenance.lock", 13),
        ("maintenance.window[0].start", 16),
        ("maintenance.window[1].end", 19),
    }
    assert len(problems) == 9
    with pytest.raises(ConfigError) as caught:
        config.parse(textwrap.dedent(text), "agent.toml")
    assert str(caught.value) == "; ".join(str(problem) for problem in caught.value.problems)
    assert "\n" not in str(caught.value)


def test_a_table_of_the_wrong_type_does_not_echo_one_error_per_required_key():
    problems = problems_of("""
        [maintenance]
        window = [1]
        """)
    assert [(p.path, p.message) for p in problems] == [("maintenance.window[0]", "expected a table, got an integer")]


def test_line_numbers_follow_array_of_tables_by_index():
    problems = problems_of("""
        [[maintenance.window]]
        start = "Sun 22:00"
        end = "Mon 05:00"
        [[maintenance.window]]
        start = "Wed 01:00"
        end = "Wed 02:00"
        [[maintenance.window]]
        start = "Fri 01:00"
        end = "Fri 61:00"
        """)
    assert [(p.path, p.line) for p in problems] == [("maintenance.window[2].end", 10)]


# ---------------------------------------------------------------------------------------------
# Reading the file.


def test_load_of_a_missing_file_says_how_to_fix_it(tmp_path):
    path = tmp_path / "agent.toml"
    with pytest.raises(ConfigError) as caught:
        config.load(path)
    (problem,) = caught.value.problems
    assert problem.file == str(path)
    assert problem.path == ""
    assert "no such file" in problem.message
    assert "an empty file is valid" in problem.message
    assert "-c FILE" in problem.message


def test_load_of_a_directory_says_it_is_a_directory(tmp_path):
    with pytest.raises(ConfigError) as caught:
        config.load(tmp_path)
    assert caught.value.problems[0].message == "is a directory, not a configuration file"


def test_load_of_a_non_utf8_file_names_the_byte(tmp_path):
    path = tmp_path / "agent.toml"
    path.write_bytes(b'[agent]\nnode = "M\xfcnchen"\n')
    with pytest.raises(ConfigError) as caught:
        config.load(path)
    assert caught.value.problems[0].message == "not UTF-8 text (byte 17)"


def test_load_of_an_unreadable_file_says_permission_denied(tmp_path, monkeypatch):
    path = tmp_path / "agent.toml"
    path.write_text("")

    def refuse(*_args):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(config.os, "open", refuse)
    with pytest.raises(ConfigError) as caught:
        config.load(path)
    assert caught.value.problems[0].message.startswith("permission denied: run as root or as a member")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a chmod 000 file anyway; the branch is "
                    "covered by the monkeypatched test above")
def test_load_of_a_chmod_000_file_says_permission_denied(tmp_path):
    path = tmp_path / "agent.toml"
    path.write_text("")
    path.chmod(0)
    with pytest.raises(ConfigError) as caught:
        config.load(path)
    assert "permission denied" in caught.value.problems[0].message


def test_load_of_a_file_that_fails_to_read_reports_the_os_error(tmp_path, monkeypatch):
    path = tmp_path / "agent.toml"
    path.write_text("")

    def fail(*_args):
        raise OSError(errno.EIO, os.strerror(errno.EIO), str(path))

    monkeypatch.setattr(config.os, "read", fail)
    with pytest.raises(ConfigError) as caught:
        config.load(path)
    assert caught.value.problems[0].message == "cannot read: Input/output error"


def test_load_reports_toml_errors_with_the_file_name(tmp_path):
    path = tmp_path / "agent.toml"
    path.write_text("[agent]\nreconcile_interval = 5\n")
    with pytest.raises(ConfigError) as caught:
        config.load(str(path))
    assert str(caught.value) == (f"{path}:2: agent.reconcile_interval: expected a duration such as \"2s\" or "
                                 f"\"500ms\", got an integer (write \"5s\" or \"5ms\")")


# ---------------------------------------------------------------------------------------------
# Valid values.


@pytest.mark.parametrize(("text", "seconds"), [
    pytest.param("500ms", 0.5, id="milliseconds"),
    pytest.param("2s", 2.0, id="seconds"),
    pytest.param("1m30s", 90.0, id="minutes-and-seconds"),
    pytest.param("5m", 300.0, id="minutes"),
    pytest.param("1h", 3600.0, id="hour"),
    pytest.param("1d", 86400.0, id="day"),
    pytest.param("1.5s", 1.5, id="fractional-seconds"),
    pytest.param("1h2m3s4ms", 3723.004, id="every-unit-but-days"),
    pytest.param(" 2s ", 2.0, id="surrounding-blanks"),
])
def test_parse_duration_accepts_units(text, seconds):
    assert config.parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("value", [
    pytest.param(5, id="bare-integer"), pytest.param(2.5, id="bare-float"), pytest.param("5", id="digits"),
    pytest.param("5S", id="upper-case-unit"), pytest.param("1m 30s", id="inner-blank"),
    pytest.param("5 s", id="blank-before-unit"), pytest.param("1e3s", id="exponent"),
    pytest.param("s", id="unit-only"), pytest.param("0s", id="zero"), pytest.param("-1s", id="negative"),
    pytest.param(None, id="none"), pytest.param(True, id="boolean"), pytest.param(["2s"], id="list"),
])
def test_parse_duration_rejects_everything_else(value):
    with pytest.raises(ValueError):
        config.parse_duration(value)


@pytest.mark.parametrize(("value", "hinted"), [
    pytest.param(5, '(write "5s" or "5ms")', id="positive-integer"),
    pytest.param(0, None, id="zero"),
    pytest.param(-3, None, id="negative"),
    pytest.param(float("nan"), None, id="nan"),
    pytest.param(float("inf"), None, id="inf"),
])
def test_parse_duration_only_suggests_a_spelling_that_would_be_accepted(value, hinted):
    with pytest.raises(ValueError) as caught:
        config.parse_duration(value)
    if hinted:
        assert str(caught.value).endswith(hinted)
    else:
        assert "write" not in str(caught.value)


@pytest.mark.parametrize(("value", "size"), [
    pytest.param("16MiB", 16 * 1024 * 1024, id="mebibytes"),
    pytest.param("512kB", 512_000, id="kilobytes"),
    pytest.param(1048576, 1048576, id="integer-bytes"),
    pytest.param(0, 0, id="zero"),
    pytest.param("1GiB", 1024**3, id="gibibytes"),
    pytest.param("1.5KiB", 1536, id="fractional"),
    pytest.param("2MB", 2_000_000, id="megabytes"),
    pytest.param("100", 100, id="digits-in-a-string"),
    pytest.param("100b", 100, id="bytes-unit"),
    pytest.param("1 MiB", 1024 * 1024, id="blank-before-unit"),
    pytest.param("16mib", 16 * 1024 * 1024, id="unit-in-any-case"),
])
def test_parse_size_accepts_bytes_and_units(value, size):
    assert config.parse_size(value) == size


@pytest.mark.parametrize(("value", "words"), [
    pytest.param(-1, "zero or more bytes, got -1", id="negative-integer"),
    pytest.param("-1MiB", 'got "-1MiB"', id="negative-string"),
    pytest.param("1TB", 'got "1TB"', id="unknown-unit"),
    pytest.param("MiB", 'got "MiB"', id="unit-only"),
    pytest.param("", 'got ""', id="empty"),
    pytest.param(1.5, "got a float", id="float"),
    pytest.param(True, "got a boolean", id="boolean"),
    pytest.param([1], "got an array", id="array"),
])
def test_parse_size_rejects_bad_sizes(value, words):
    with pytest.raises(ValueError) as caught:
        config.parse_size(value)
    assert words in str(caught.value)


def test_empty_file_gives_every_default():
    cfg = config.parse("", "agent.toml")
    assert cfg.source == "agent.toml"
    assert cfg.agent.node == socket.gethostname()
    assert cfg.agent.status_file == Path("/run/pretix-agent/status.json")
    assert cfg.agent.state_dir == Path("/var/lib/pretix-agent")
    assert cfg.agent.reconcile_interval == 5.0
    assert cfg.log.level == "info"
    assert cfg.log.format == "auto"
    assert cfg.maintenance.marker == Path("/var/lib/pretix-agent/maintenance")
    assert cfg.maintenance.lock == Path("/var/lib/pretix-agent/maintenance.lock")
    assert cfg.maintenance.timezone == ZoneInfo("UTC")
    assert cfg.maintenance.windows == ()
    assert cfg.raw_sections == frozenset()
    assert config.defaults() == dataclasses.replace(cfg, source="<defaults>")


def test_empty_file_on_disk_loads_as_defaults(tmp_path):
    path = tmp_path / "agent.toml"
    path.write_bytes(b"")
    assert config.load(path) == dataclasses.replace(config.defaults(), source=str(path))


def test_full_file_builds_typed_values():
    cfg = config.parse(textwrap.dedent("""
        [agent]
        node = "app1"
        status_file = "/run/x/status.json"
        state_dir = "/srv/state"
        reconcile_interval = "1m30s"

        [log]
        level = "debug"
        format = "json"

        [maintenance]
        marker = "/srv/marker"
        lock = "/srv/lock"
        timezone = "Europe/Berlin"

        [[maintenance.window]]
        start = "Sun 22:00"
        end = "Mon 05:00"

        [[maintenance.window]]
        start = "wednesday 1:30"
        end = "Wed 02:00"
        """))
    assert cfg.agent.node == "app1"
    assert cfg.agent.status_file == Path("/run/x/status.json")
    assert cfg.agent.state_dir == Path("/srv/state")
    assert cfg.agent.reconcile_interval == 90.0
    assert (cfg.log.level, cfg.log.format) == ("debug", "json")
    assert cfg.maintenance.marker == Path("/srv/marker")
    assert cfg.maintenance.lock == Path("/srv/lock")
    assert cfg.maintenance.timezone == ZoneInfo("Europe/Berlin")
    assert cfg.maintenance.windows == (
        Window(WeeklyTime(6, 22, 0), WeeklyTime(0, 5, 0)),
        Window(WeeklyTime(2, 1, 30), WeeklyTime(2, 2, 0)),
    )
    assert cfg.raw_sections == frozenset({"agent", "log", "maintenance"})


def test_config_is_frozen():
    cfg = config.defaults()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.agent.reconcile_interval = 1.0  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.log = None  # type: ignore[misc]


# ---------------------------------------------------------------------------------------------
# Helpers and the reference.


def test_format_path_joins_names_with_dots_and_indexes_with_brackets():
    assert config.format_path(("maintenance", "window", 0, "start")) == "maintenance.window[0].start"
    assert config.format_path(()) == ""


def test_locate_lines_finds_headers_keys_and_array_items():
    lines = config.locate_lines(textwrap.dedent("""\
        # comment
        [agent]
        node = "x"
        "quoted.key" = 1
        [[maintenance.window]]
        start = "Sun 22:00"
        [[maintenance.window]]
        start = "Mon 22:00"
        """))
    assert lines[("agent",)] == 2
    assert lines[("agent", "node")] == 3
    assert lines[("agent", "quoted.key")] == 4
    assert lines[("maintenance", "window", 0)] == 5
    assert lines[("maintenance", "window", 0, "start")] == 6
    assert lines[("maintenance", "window", 1, "start")] == 8


def _schema_keys(table: config.Table, path=()):
    for name, spec in table.keys.items():
        if isinstance(spec, config.Key):
            yield (*path, name)
        elif isinstance(spec, config.Table):
            yield from _schema_keys(spec, (*path, name))
        elif isinstance(spec, config.TableMap):
            yield from _schema_keys(spec.common, (*path, name, "NAME"))
            for kind, table in spec.types.items():
                yield from _schema_keys(table, (*path, name, kind))
        else:
            yield from _schema_keys(spec.table, (*path, name))


def test_reference_markdown_documents_every_key_of_the_schema():
    reference = config.reference_markdown()
    for path in _schema_keys(config.SCHEMA):
        assert f"| `{path[-1]}` |" in reference, path
    for header in ("#### `[agent]`", "#### `[log]`", "#### `[maintenance]`", "#### `[[maintenance.window]]`"):
        assert header in reference
    assert '| `reconcile_interval` | duration | `"5s"` |' in reference
    assert '| `timezone` | IANA timezone | `"UTC"` |' in reference
    assert '| `start` | weekday and time | (required) |' in reference
    assert '| `level` | one of "debug", "info", "warning", "error" | `"info"` |' in reference
    assert reference.endswith("\n") and not reference.endswith("\n\n")


def test_optional_keys_left_at_their_none_default_still_build_their_section():
    cfg = config.parse(textwrap.dedent("""
        [checks.db]
        type = "postgres"
        dsn = "host=127.0.0.1 dbname=postgres"

        [agent_check]
        listen = "127.0.0.1:8999"
        checks = ["db"]
        """))
    assert [check.name for check in cfg.checks] == ["db"]
    assert cfg.agent_check is not None and cfg.agent_check.weight is None


def test_a_wrong_value_inside_a_check_reports_it_and_builds_nothing_from_it():
    with pytest.raises(config.ConfigError) as raised:
        config.parse('[checks.db]\ntype = "postgres"\ndsn = "host=x"\nfall = 0\n', "agent.toml")
    (problem,) = raised.value.problems
    assert (problem.path, problem.line) == ("checks.db.fall", 4)
    assert "expected an integer from 1 to 100, got 0" in problem.message


# ---------------------------------------------------------------------------------------------
# haproxy: shared causes, flap damping, sessions; maintenance on a failing check.

HAPROXY_CHECKS = """
[checks.web1]
type = "http"
url = "http://10.0.0.11/healthcheck/"
[checks.redis]
type = "redis"
url = "redis://10.0.0.5:6379/0"
[checks.replica]
type = "postgres"
dsn = "host=10.0.0.22 dbname=postgres user=pretix_agent"
"""


def test_shared_checks_are_the_sections_unless_a_server_names_its_own():
    loaded = config.parse(HAPROXY_CHECKS + """
[haproxy]
socket = "/run/haproxy/admin.sock"
shared_checks = ["redis"]
[[haproxy.server]]
backend = "pretix"
server = "app1"
checks = ["web1"]
[[haproxy.server]]
backend = "pretix_replica"
server = "replica"
checks = ["replica"]
shared_checks = []
shutdown_sessions = true
""")
    assert loaded.haproxy is not None
    app1, replica = loaded.haproxy.servers
    assert (app1.shared_checks, app1.shutdown_sessions) == (("redis",), False)
    assert (replica.shared_checks, replica.shutdown_sessions) == ((), True)
    assert (loaded.haproxy.hold_down, loaded.haproxy.hold_down_max, loaded.haproxy.flap_window) == (10.0, 300.0, 300.0)


def test_a_check_that_gates_a_server_cannot_also_excuse_it():
    problems = problems_of(HAPROXY_CHECKS + """
[haproxy]
socket = "/run/haproxy/admin.sock"
shared_checks = ["web1"]
[[haproxy.server]]
backend = "pretix"
server = "app1"
checks = ["web1"]
""")
    assert [(p.path, p.line) for p in problems] == [("haproxy.shared_checks", 14)]
    assert 'names check "web1", which also gates pretix/app1' in problems[0].message
    assert "give that server shared_checks = []" in problems[0].message


def test_unknown_shared_and_on_failing_checks_are_named_with_their_paths():
    problems = problems_of(HAPROXY_CHECKS + """
[maintenance]
on_failing = ["rediss"]
[haproxy]
socket = "/run/haproxy/admin.sock"
shared_checks = ["primary"]
[[haproxy.server]]
backend = "pretix"
server = "app1"
checks = ["web1"]
shared_checks = ["nosuch"]
""")
    assert sorted(p.path for p in problems) == ["haproxy.server[0].shared_checks", "haproxy.shared_checks",
                                                "maintenance.on_failing"]
    assert any('did you mean "redis"?' in p.message for p in problems)


def test_on_failing_names_the_checks_that_close_the_shop():
    loaded = config.parse(HAPROXY_CHECKS + '[maintenance]\non_failing = ["redis"]\n')
    assert loaded.maintenance.on_failing == ("redis",)
    assert config.defaults().maintenance.on_failing == ()
