"""The test suite's port rule (tests/ports.py): candidates outside the ephemeral range, retries on a clash."""

from __future__ import annotations

import errno
import socket

import pytest

from tests import ports


def test_candidates_are_never_inside_the_ephemeral_range():
    first, last = ports.ephemeral_range()
    for _ in range(500):
        port = ports.candidate_port()
        assert not first <= port <= last
        assert ports.LOWEST <= port <= ports.HIGHEST


def test_the_ranges_leave_out_the_ephemeral_range_and_the_well_known_ports():
    assert ports.candidate_ranges((32768, 60999)) == [(20000, 32767), (61000, 65535)]
    assert ports.candidate_ranges((10000, 65535)) == []
    assert ports.candidate_ranges((1024, 40000)) == [(40001, 65535)]


def test_an_unreadable_range_file_means_linuxs_default(tmp_path):
    assert ports.ephemeral_range(str(tmp_path / "missing")) == ports.DEFAULT_EPHEMERAL
    (tmp_path / "range").write_text("40000\t50000\n")
    assert ports.ephemeral_range(str(tmp_path / "range")) == (40000, 50000)


def test_a_candidate_is_not_handed_out_twice_in_one_run():
    seen = [ports.candidate_port() for _ in range(300)]
    assert len(set(seen)) == len(seen)


@pytest.mark.parametrize("said", [
    "[ALERT]    (1234) : Starting frontend fe: cannot bind socket (Address already in use) [127.0.0.1:24001]",
    'nginx: [emerg] bind() to 127.0.0.1:24001 failed (98: Address already in use)',
    "# Warning: Could not create server TCP listening socket 127.0.0.1:24001: bind: Address already in use",
    'LOG:  could not bind IPv4 address "127.0.0.1": Address already in use',
    "agent-check cannot listen on 127.0.0.1:24001: address in use: another process (or another agent) listens there",
    "OSError: [Errno 98] Address already in use",
])
def test_every_servers_words_for_a_taken_port_are_recognised(said):
    assert ports.address_in_use(said)


def test_other_failures_are_not_mistaken_for_a_taken_port():
    assert not ports.address_in_use("FATAL:  data directory has wrong ownership")
    assert not ports.address_in_use("nginx: [emerg] unknown directive \"lsiten\"")


def test_start_with_ports_retries_a_clash_with_fresh_ports_and_returns_the_result():
    calls: list[tuple[int, int]] = []

    def start(first: int, second: int) -> str:
        calls.append((first, second))
        if len(calls) == 1:
            raise ports.PortInUse("haproxy: cannot bind socket")
        if len(calls) == 2:
            raise OSError(errno.EADDRINUSE, "Address already in use")
        return "started"

    assert ports.start_with_ports(start, count=2) == "started"
    assert len(calls) == 3
    assert all(first != second for first, second in calls)
    assert len({port for pair in calls for port in pair}) == 6


def test_start_with_ports_gives_up_after_its_attempts_naming_each_clash():
    def start(port: int) -> None:
        raise ports.PortInUse(f"port {port} taken")

    with pytest.raises(ports.NoFreePort, match=r"in use at each of 3 attempts: .*port .* taken"):
        ports.start_with_ports(start, attempts=3, what="nginx")


def test_any_other_failure_ends_the_attempts_at_once():
    calls = []

    def start(port: int) -> None:
        calls.append(port)
        raise OSError(errno.EACCES, "Permission denied")

    with pytest.raises(PermissionError):
        ports.start_with_ports(start)
    assert len(calls) == 1


def test_a_listener_of_our_own_is_outside_the_ephemeral_range_and_can_be_reopened():
    first, last = ports.ephemeral_range()
    listener = ports.bind_listener()
    port = listener.getsockname()[1]
    assert not first <= port <= last
    with socket.create_connection(("127.0.0.1", port), timeout=2) as client:
        accepted, _ = listener.accept()
        accepted.close()
        client.recv(1)
    listener.close()
    again = ports.bind_listener(port=port)  # a revived backend: the same port, TIME_WAIT or not
    assert again.getsockname()[1] == port
    again.close()


def test_a_refused_port_refuses_and_cannot_be_taken_while_held():
    with ports.refused_port() as port:
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=2)
        with socket.socket() as other:
            other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            with pytest.raises(OSError) as taken:
                other.bind(("127.0.0.1", port))
            assert taken.value.errno == errno.EADDRINUSE
