"""Tests for pretix_agent.adapters.logs: renderers, journald detection, redaction of secrets."""

from __future__ import annotations

import io
import json
import os
import re

import pytest
import structlog

from pretix_agent.adapters import journal, logs


@pytest.fixture(autouse=True)
def fresh_structlog(monkeypatch, tmp_path):
    """Every test starts and ends with structlog's defaults and without JOURNAL_STREAM, and with no
    journald socket: on a machine booted with systemd (a developer's, or the booted Debian 13 of
    the end-to-end tier) the journal format would otherwise send to the real journal, not `stream`."""
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    monkeypatch.setenv(journal.SOCKET_ENV, str(tmp_path / "no-journald-socket"))
    structlog.reset_defaults()
    yield
    structlog.reset_defaults()


def emit(fmt: str, method: str, event: str, level: str = "debug", **fields) -> list[str]:
    stream = io.StringIO()
    assert logs.configure(level, fmt, stream=stream) == fmt
    getattr(logs.get_logger(), method)(event, **fields)
    return stream.getvalue().splitlines()


# ---------------------------------------------------------------------------------------------
# journal


@pytest.mark.parametrize(("method", "prefix"), [
    pytest.param("debug", "<7>", id="debug"),
    pytest.param("info", "<6>", id="info"),
    pytest.param("warning", "<4>", id="warning"),
    pytest.param("error", "<3>", id="error"),
    pytest.param("critical", "<2>", id="critical"),
])
def test_journal_lines_start_with_the_syslog_priority(method, prefix):
    assert emit("journal", method, "maintenance.enabled", why="lock") == [f"{prefix}maintenance.enabled why=lock"]


def test_journal_line_of_an_event_without_fields_is_just_priority_and_name():
    assert emit("journal", "info", "agent.stopping") == ["<6>agent.stopping"]


def test_journal_line_has_no_timestamp_because_journald_stamps_lines_itself():
    (line,) = emit("journal", "info", "agent.started", pid=42)
    assert line == "<6>agent.started pid=42"


def test_exception_logs_at_error_priority_with_the_traceback_on_the_same_line():
    stream = io.StringIO()
    logs.configure("info", "journal", stream=stream)
    try:
        raise RuntimeError("boom\nsecond line")
    except RuntimeError:
        logs.get_logger().exception("loop.cycle_failed")
    (line,) = stream.getvalue().splitlines()
    assert line.startswith('<3>loop.cycle_failed exception="Traceback (most recent call last):\\n')
    assert "RuntimeError: boom\\nsecond line" in line


def test_a_value_with_a_newline_stays_on_one_line():
    assert emit("journal", "warning", "x", detail="line1\nline2\r\n") == ['<4>x detail="line1\\nline2\\r\\n"']


def test_a_value_with_other_control_characters_is_escaped():
    (line,) = emit("journal", "info", "x", a="nul\0here", b="\x1b[31mred", c="tab\there")
    assert line == '<6>x a="nul\\u0000here" b="\\u001b[31mred" c="tab\\there"'


def test_an_event_name_with_a_newline_stays_on_one_line():
    assert emit("journal", "error", "bad\nname", k=1) == ['<3>"bad\\nname" k=1']


@pytest.mark.parametrize(("value", "shown"), [
    pytest.param("hello world", '"hello world"', id="space-is-quoted"),
    pytest.param("a=b", '"a=b"', id="equals-is-quoted"),
    pytest.param('say "hi"', '"say \\"hi\\""', id="quote-is-escaped"),
    pytest.param("back\\slash", '"back\\\\slash"', id="backslash-is-escaped"),
    pytest.param("", '""', id="empty-string-is-visible"),
    pytest.param("plain", "plain", id="plain-word-is-bare"),
    pytest.param("größer\u2013🚧", "größer\u2013🚧", id="non-ascii-stays-readable"),
    pytest.param(None, "-", id="none-is-a-dash"),
    pytest.param(True, "true", id="true"),
    pytest.param(False, "false", id="false"),
    pytest.param(3, "3", id="integer"),
    pytest.param(0.25, "0.25", id="float"),
    pytest.param([1, "a b"], '"[1,\\"a b\\"]"', id="list-as-quoted-json"),
    pytest.param({"k": "v"}, '"{\\"k\\":\\"v\\"}"', id="dict-as-quoted-json"),
])
def test_values_are_rendered_as_readable_key_value_pairs(value, shown):
    assert emit("journal", "info", "x", v=value) == [f"<6>x v={shown}"]


# ---------------------------------------------------------------------------------------------
# console and json


def test_console_line_has_time_level_event_and_fields():
    (line,) = emit("console", "warning", "maintenance.marker_restored", why="lock", path="/var/lib/m")
    assert re.fullmatch(r"\d\d:\d\d:\d\d warning maintenance\.marker_restored why=lock path=/var/lib/m", line)


def test_console_pads_the_level_so_events_line_up():
    (info,) = emit("console", "info", "a")
    (error,) = emit("console", "error", "a")
    assert info.index(" a") == error.index(" a")


def test_json_line_is_valid_json_with_ts_level_event_and_fields():
    (line,) = emit("json", "warning", "maintenance.marker_restored", why="lock", lag=None, detail="a\nb")
    document = json.loads(line)
    assert list(document)[:3] == ["ts", "level", "event"]
    assert document["level"] == "warning"
    assert document["event"] == "maintenance.marker_restored"
    assert document["why"] == "lock"
    assert document["lag"] is None
    assert document["detail"] == "a\nb"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z", document["ts"])


def test_json_keeps_non_ascii_text_and_stringifies_unknown_objects():
    (line,) = emit("json", "info", "x", text="Wartung \u2013 größer 🚧", obj=object)
    document = json.loads(line)
    assert document["text"] == "Wartung \u2013 größer 🚧"
    assert document["obj"] == "<class 'object'>"
    assert "Wartung \u2013 größer 🚧" in line


@pytest.mark.parametrize("fmt", ["journal", "console", "json"])
def test_levels_below_the_configured_one_are_dropped(fmt):
    stream = io.StringIO()
    logs.configure("warning", fmt, stream=stream)
    log = logs.get_logger()
    log.debug("d")
    log.info("i")
    log.warning("w")
    log.error("e")
    assert len(stream.getvalue().splitlines()) == 2


def test_reconfiguring_switches_the_output_of_an_existing_logger():
    first, second = io.StringIO(), io.StringIO()
    logs.configure("info", "journal", stream=first)
    log = logs.get_logger()
    log.info("one")
    logs.configure("info", "json", stream=second)
    log.info("two")
    assert first.getvalue() == "<6>one\n"
    assert json.loads(second.getvalue())["event"] == "two"


# ---------------------------------------------------------------------------------------------
# redaction


@pytest.mark.parametrize(("value", "shown"), [
    pytest.param("postgresql://pretix:s3cret@db1/pretix", "postgresql://pretix:***@db1/pretix", id="postgres-url"),
    pytest.param("redis://:s3cret@redis1:6379/0", "redis://:***@redis1:6379/0", id="redis-url-without-user"),
    pytest.param("host=db1 password=s3cret user=pretix", "host=db1 password=*** user=pretix", id="libpq-dsn"),
    pytest.param("host=db1 password='se cret' user=pretix", "host=db1 password=*** user=pretix",
                 id="libpq-dsn-quoted"),
    pytest.param("host=db1 password='it\\'s' user=pretix", "host=db1 password=*** user=pretix",
                 id="libpq-dsn-escaped-quote"),
    pytest.param("host=db1 PASSWORD = s3cret", "host=db1 PASSWORD = ***", id="libpq-dsn-upper-case-and-blanks"),
    pytest.param("connection to postgresql://u:pw@h/db failed", "connection to postgresql://u:***@h/db failed",
                 id="url-inside-a-sentence"),
    pytest.param("https://user@host/path", "https://user@host/path", id="url-without-password-unchanged"),
    pytest.param("http://host/a:b@c", "http://host/a:b@c", id="colon-in-the-path-unchanged"),
])
def test_redact_text_hides_passwords_in_urls_and_dsns(value, shown):
    assert logs.redact_text(value) == shown


@pytest.mark.parametrize("fmt", ["journal", "console", "json"])
def test_no_renderer_ever_shows_a_secret(fmt):
    lines = emit(fmt, "error", "check.failed",
                 dsn="postgresql://pretix:s3cret@db1/pretix",
                 libpq="host=db1 password='se cret'",
                 password="s3cret", token="s3cret", secret="s3cret", authorization="Bearer s3cret",
                 db_password="s3cret", accessToken="s3cret", Authorization="Basic s3cret",
                 nested={"dsn": "redis://:s3cret@r/0", "api_token": "s3cret", "list": ["password=s3cret"]},
                 listed=["postgresql://u:s3cret@h/db"])
    (line,) = lines
    assert "s3cret" not in line
    assert "se cret" not in line
    assert line.count("***") == 13


@pytest.mark.parametrize("key", ["password", "PASSWORD", "db_password", "passwd", "pass", "token", "auth_token",
                                 "accessToken", "secret", "client_secret", "authorization", "Authorization",
                                 "credentials", "PGPASSWORD", "X-Auth-Token"])
def test_keys_named_like_secrets_are_hidden(key):
    event = logs.redact(None, "info", {"event": "x", key: "s3cret"})
    assert event[key] == "***"


@pytest.mark.parametrize("key", ["passing", "failing", "bypass", "compass", "passive", "tokenizer",
                                 "secretary", "node", "path"])
def test_keys_that_merely_contain_a_secret_word_are_shown(key):
    event = logs.redact(None, "info", {"event": "x", key: 3})
    assert event[key] == 3


def test_an_empty_or_missing_secret_is_shown_as_such():
    event = logs.redact(None, "info", {"event": "x", "password": "", "token": None})
    assert event == {"event": "x", "password": "", "token": None}


def test_the_event_name_is_never_replaced_but_a_dsn_in_it_is_hidden():
    event = logs.redact(None, "info", {"event": "connect postgresql://u:pw@h/db"})
    assert event == {"event": "connect postgresql://u:***@h/db"}


# ---------------------------------------------------------------------------------------------
# journald detection


def test_under_journald_is_true_when_journal_stream_names_the_stream(tmp_path, monkeypatch):
    with open(tmp_path / "stream", "w") as stream:
        info = os.fstat(stream.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{info.st_dev}:{info.st_ino}")
        assert logs.under_journald(stream) is True


def test_under_journald_is_false_when_journal_stream_names_another_file(tmp_path, monkeypatch):
    other = tmp_path / "other"
    other.write_text("")
    info = os.stat(other)
    monkeypatch.setenv("JOURNAL_STREAM", f"{info.st_dev}:{info.st_ino}")
    with open(tmp_path / "stream", "w") as stream:
        assert logs.under_journald(stream) is False


@pytest.mark.parametrize("value", ["", "garbage", "1:2:3", "1:", ":5", "a:b"])
def test_under_journald_is_false_for_a_missing_or_garbled_journal_stream(tmp_path, monkeypatch, value):
    monkeypatch.setenv("JOURNAL_STREAM", value)
    with open(tmp_path / "stream", "w") as stream:
        assert logs.under_journald(stream) is False


def test_under_journald_is_false_for_a_stream_without_a_file_descriptor(monkeypatch):
    monkeypatch.setenv("JOURNAL_STREAM", "1:2")
    assert logs.under_journald(io.StringIO()) is False


def test_auto_format_picks_journal_under_journald(tmp_path, monkeypatch):
    path = tmp_path / "stream"
    with open(path, "w") as stream:
        info = os.fstat(stream.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{info.st_dev}:{info.st_ino}")
        assert logs.configure("info", "auto", stream=stream) == "journal"
        logs.get_logger().warning("maintenance.marker_restored", why="lock")
    assert path.read_text() == "<4>maintenance.marker_restored why=lock\n"


def test_auto_format_picks_console_elsewhere(tmp_path):
    path = tmp_path / "stream"
    with open(path, "w") as stream:
        assert logs.configure("info", "auto", stream=stream) == "console"
        logs.get_logger().info("agent.started")
    assert re.fullmatch(r"\d\d:\d\d:\d\d info    agent\.started\n", path.read_text())


def test_auto_format_on_a_string_buffer_is_console():
    assert logs.configure("info", "auto", stream=io.StringIO()) == "console"
