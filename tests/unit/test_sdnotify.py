"""Tests for pretix_agent.adapters.sdnotify against real AF_UNIX datagram sockets."""

from __future__ import annotations

import os
import secrets
import socket
import tempfile

import pytest

from pretix_agent.adapters import sdnotify
from pretix_agent.adapters.sdnotify import Notifier


@pytest.fixture
def short_dir():
    # AF_UNIX paths are limited to 107 bytes; pytest's tmp_path for a long test name can exceed that.
    with tempfile.TemporaryDirectory(prefix="sdn") as directory:
        yield directory


@pytest.fixture
def listener(short_dir):
    """A bound datagram socket on a file path, as systemd's /run/systemd/notify; yields (socket, path)."""
    path = os.path.join(short_dir, "notify")
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(path)
    receiver.settimeout(2)  # a bounded wait for a datagram that was sent already, never a sleep
    yield receiver, path
    receiver.close()


@pytest.fixture
def abstract_listener():
    """A bound datagram socket in the abstract namespace; yields (socket, "@name")."""
    name = f"pretix-agent-test-{os.getpid()}-{secrets.token_hex(6)}"
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind("\0" + name)
    receiver.settimeout(2)
    yield receiver, "@" + name
    receiver.close()


def receive(receiver: socket.socket) -> bytes:
    return receiver.recv(65536)


def nothing_queued(receiver: socket.socket) -> bool:
    timeout = receiver.gettimeout()
    receiver.setblocking(False)
    try:
        receiver.recv(65536)
    except BlockingIOError:
        return True
    finally:
        receiver.settimeout(timeout)
    return False


def test_ready_arrives_as_one_datagram_on_a_path_socket(listener):
    receiver, path = listener
    notifier = Notifier({"NOTIFY_SOCKET": path})
    assert notifier.enabled is True
    assert notifier.send(READY="1") is True
    assert receive(receiver) == b"READY=1"
    assert notifier.last_error is None
    assert nothing_queued(receiver)
    notifier.close()


def test_ready_arrives_on_an_abstract_socket(abstract_listener):
    receiver, name = abstract_listener
    notifier = Notifier({"NOTIFY_SOCKET": name})
    assert notifier.address == "\0" + name[1:]
    assert notifier.send(READY="1") is True
    assert receive(receiver) == b"READY=1"
    notifier.close()


def test_several_fields_go_in_one_datagram_in_order_with_upper_case_keys(listener):
    receiver, path = listener
    notifier = Notifier({"NOTIFY_SOCKET": path})
    assert notifier.send(ready=1, status="started") is True
    assert receive(receiver) == b"READY=1\nSTATUS=started"
    notifier.close()


def test_status_is_squashed_to_one_line(listener):
    receiver, path = listener
    notifier = Notifier({"NOTIFY_SOCKET": path})
    notifier.send(STATUS="  maintenance on\n  because of the lock\r\n\tuntil unlock  ")
    assert receive(receiver) == b"STATUS=maintenance on because of the lock until unlock"
    notifier.close()


def test_non_latin1_status_arrives_intact_as_utf8(abstract_listener):
    receiver, name = abstract_listener
    notifier = Notifier({"NOTIFY_SOCKET": name})
    assert notifier.send(STATUS="Wartung \u2013 größer 🚧") is True
    assert receive(receiver).decode("utf-8") == "STATUS=Wartung \u2013 größer 🚧"
    notifier.close()


def test_the_socket_is_reused_across_sends_and_reopened_after_close(listener):
    receiver, path = listener
    notifier = Notifier({"NOTIFY_SOCKET": path})
    notifier.send(WATCHDOG="1")
    first = notifier._socket
    notifier.send(WATCHDOG="1")
    assert notifier._socket is first
    notifier.close()
    assert notifier._socket is None
    notifier.send(STOPPING="1")
    assert [receive(receiver) for _ in range(3)] == [b"WATCHDOG=1", b"WATCHDOG=1", b"STOPPING=1"]
    notifier.close()


def test_without_notify_socket_send_returns_false_and_opens_no_socket(monkeypatch):
    def no_socket(*args, **kwargs):
        raise AssertionError("a socket was opened without NOTIFY_SOCKET")

    monkeypatch.setattr(sdnotify.socket, "socket", no_socket)
    for environ in ({}, {"NOTIFY_SOCKET": ""}):
        notifier = Notifier(environ)
        assert notifier.enabled is False
        assert notifier.send(READY="1") is False
        assert notifier.last_error is None


def test_notifier_reads_the_process_environment_by_default(monkeypatch, listener):
    receiver, path = listener
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    monkeypatch.setenv("WATCHDOG_USEC", "4000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    notifier = Notifier()
    assert notifier.send(READY="1") is True
    assert receive(receiver) == b"READY=1"
    assert notifier.watchdog_interval == 4.0
    notifier.close()


def test_a_socket_path_that_does_not_exist_fails_with_a_one_line_error(short_dir):
    path = os.path.join(short_dir, "missing")
    notifier = Notifier({"NOTIFY_SOCKET": path})
    assert notifier.send(READY="1") is False
    assert notifier.last_error == f"cannot notify {path}: No such file or directory"
    assert "\n" not in notifier.last_error
    notifier.close()


def test_a_socket_nobody_listens_on_fails_with_connection_refused(short_dir):
    path = os.path.join(short_dir, "stale")
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    stale.bind(path)
    stale.close()  # the file stays, nobody reads from it
    notifier = Notifier({"NOTIFY_SOCKET": path})
    assert notifier.send(READY="1") is False
    assert notifier.last_error == f"cannot notify {path}: Connection refused"
    notifier.close()


def test_an_abstract_socket_nobody_listens_on_names_it_without_the_nul_byte():
    notifier = Notifier({"NOTIFY_SOCKET": f"@pretix-agent-test-absent-{secrets.token_hex(6)}"})
    assert notifier.send(READY="1") is False
    assert notifier.last_error.startswith("cannot notify pretix-agent-test-absent-")
    assert "\0" not in notifier.last_error
    notifier.close()


def test_a_success_after_a_failure_clears_last_error(short_dir):
    path = os.path.join(short_dir, "late")
    notifier = Notifier({"NOTIFY_SOCKET": path})
    assert notifier.send(READY="1") is False
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(path)
    receiver.settimeout(2)
    try:
        assert notifier.send(READY="1") is True
        assert notifier.last_error is None
        assert receive(receiver) == b"READY=1"
    finally:
        receiver.close()
        notifier.close()


# ---------------------------------------------------------------------------------------------
# WATCHDOG_USEC / WATCHDOG_PID


@pytest.mark.parametrize(("environ", "interval"), [
    pytest.param({"WATCHDOG_USEC": "30000000"}, 30.0, id="no-pid-means-this-process"),
    pytest.param({"WATCHDOG_USEC": "500000", "WATCHDOG_PID": str(os.getpid())}, 0.5, id="pid-is-this-process"),
    pytest.param({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid() + 1)}, None,
                 id="pid-of-another-process"),
    pytest.param({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "garbage"}, None, id="garbage-pid"),
    pytest.param({}, None, id="unset"),
    pytest.param({"WATCHDOG_USEC": ""}, None, id="empty"),
    pytest.param({"WATCHDOG_USEC": "garbage"}, None, id="garbage"),
    pytest.param({"WATCHDOG_USEC": "0"}, None, id="zero"),
    pytest.param({"WATCHDOG_USEC": "-5000000"}, None, id="negative"),
    pytest.param({"WATCHDOG_USEC": "3.5"}, None, id="fraction"),
    pytest.param({"WATCHDOG_USEC": "3_000_000"}, None, id="underscores"),
    pytest.param({"WATCHDOG_USEC": " 3000000"}, None, id="leading-blank"),
    pytest.param({"WATCHDOG_USEC": "٣٠٠٠"}, None, id="non-ascii-digits"),
])
def test_watchdog_interval_comes_from_watchdog_usec_for_this_process_only(environ, interval):
    assert Notifier(environ).watchdog_interval == interval
