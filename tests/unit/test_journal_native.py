"""journald's native protocol: fields a person can filter on, and the stream as the fallback."""

import io
import socket
import struct

import pytest
import structlog

from pretix_agent.adapters import logs
from pretix_agent.adapters.journal import JournalSender, encode, field_name


def parse(datagram: bytes) -> dict[str, str]:
    fields, rest = {}, datagram
    while rest:
        head, _, tail = rest.partition(b"\n")
        if b"=" in head:
            name, _, value = head.partition(b"=")
            fields[name.decode()] = value.decode()
            rest = tail
        else:
            (size,) = struct.unpack("<Q", tail[:8])
            fields[head.decode()] = tail[8:8 + size].decode()
            rest = tail[8 + size + 1:]
    return fields


@pytest.fixture
def journal_socket(tmp_path, monkeypatch):
    path = tmp_path / "journal.socket"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(str(path))
    server.settimeout(2)
    monkeypatch.setenv("PRETIX_AGENT_JOURNAL_SOCKET", str(path))
    yield server
    server.close()
    structlog.reset_defaults()


def test_field_names_are_valid_journal_names():
    assert field_name("lag_bytes") == "PRETIX_AGENT_LAG_BYTES"
    assert field_name("value-x.y") == "PRETIX_AGENT_VALUE_X_Y"


def test_a_value_with_a_newline_uses_the_binary_form():
    assert encode([("A", "x\ny")]) == b"A\n" + struct.pack("<Q", 3) + b"x\ny\n"
    assert parse(encode([("A", "one"), ("B", "two\nlines"), ("C", "")])) == {"A": "one", "B": "two\nlines", "C": ""}


def test_events_go_to_the_journal_with_their_name_priority_and_fields(journal_socket):
    stream = io.StringIO()
    logs.configure("info", "journal", stream=stream)
    logs.get_logger().warning("maintenance.marker_restored", why="lock", detail="line one\nline two",
                              password="hunter2")
    fields = parse(journal_socket.recv(65536))
    assert fields["PRETIX_AGENT_EVENT"] == "maintenance.marker_restored"
    assert fields["PRIORITY"] == "4" and fields["SYSLOG_IDENTIFIER"] == "pretix-agent"
    assert fields["PRETIX_AGENT_WHY"] == "lock"
    assert fields["PRETIX_AGENT_DETAIL"] == "line one\nline two"
    assert fields["PRETIX_AGENT_PASSWORD"] == "***"
    assert fields["MESSAGE"].startswith("maintenance.marker_restored why=lock")
    assert stream.getvalue() == ""  # sent once, not also on the stream


def test_without_the_socket_the_stream_gets_the_prefixed_line(tmp_path, monkeypatch):
    monkeypatch.setenv("PRETIX_AGENT_JOURNAL_SOCKET", str(tmp_path / "absent"))
    stream = io.StringIO()
    logs.configure("info", "journal", stream=stream)
    logs.get_logger().error("config.reload_failed", problems=2)
    structlog.reset_defaults()
    assert stream.getvalue() == "<3>config.reload_failed problems=2\n"


def test_a_send_that_fails_falls_back_to_the_stream(journal_socket, monkeypatch):
    stream = io.StringIO()
    logs.configure("info", "journal", stream=stream)
    monkeypatch.setattr(JournalSender, "send", lambda *args: False)
    logs.get_logger().info("agent.started", pid=1)
    assert stream.getvalue() == "<6>agent.started pid=1\n"
