"""The agent-check answer line, and the responder serving it on a loopback port."""

from __future__ import annotations

import socket
import threading
import time
from ipaddress import ip_network

import pytest

from pretix_agent import config
from pretix_agent.errors import AgentError
from pretix_agent.haproxy.agent_check import (
    REASON_LIMIT,
    AgentCheckError,
    AgentCheckResponder,
    agent_answer,
    sanitize_reason,
)
from tests.ports import PortInUse, start_with_ports
from tests.waiting import wait_until

# --------------------------------------------------------------------------------------------- the line


def test_a_ready_node_answers_up_at_full_weight():
    assert agent_answer(True, False) == "up 100%\n"


def test_a_ready_node_with_a_configured_weight_announces_it():
    assert agent_answer(True, False, None, 75) == "up 75%\n"


def test_a_draining_node_answers_weight_zero_with_its_reason():
    assert agent_answer(True, True, "pretix-agentctl drain by alice") == "up 0% #pretix-agentctl drain by alice\n"
    assert agent_answer(True, True) == "up 0% #draining\n"


def test_a_failing_node_answers_down_with_the_reason():
    assert agent_answer(False, False, "web: connection refused") == "down 100% #web: connection refused\n"
    assert agent_answer(False, False) == "down 100% #checks failing\n"
    assert agent_answer(False, True, "web: timeout") == "down 0% #web: timeout\n"


def test_no_answer_ever_carries_an_admin_word_that_would_undo_a_runtime_maint():
    for ready in (True, False):
        for draining in (True, False):
            words = agent_answer(ready, draining, "ready drain maint", 50).split("#")[0].split()
            assert not {"ready", "drain", "maint"} & set(words)


def test_the_reason_is_one_printable_ascii_line_of_bounded_length():
    line = agent_answer(False, False, "line one\nline two\r\n\tüber\x00 " + "x" * 500)
    assert line.endswith("\n") and line.count("\n") == 1 and "\r" not in line
    assert line.isascii() and all(" " <= ch <= "~" for ch in line[:-1])
    assert line.startswith("down 100% #line one line two ber ")
    assert len(line) < REASON_LIMIT + 20
    assert sanitize_reason("  a \n b  ") == "a b"
    assert sanitize_reason("x" * 200, limit=10) == "xxxxxxx..."


def test_a_weight_outside_haproxys_range_is_refused():
    with pytest.raises(ValueError, match="from 0 to 256"):
        agent_answer(True, False, None, 257)


# --------------------------------------------------------------------------------------------- the responder


def read_answer(port: int, send: bytes = b"", timeout: float = 2.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        if send:
            sock.sendall(send)
        chunks = []
        while chunk := sock.recv(1024):
            chunks.append(chunk)
        return b"".join(chunks)


@pytest.fixture
def responder():
    started = []

    def start(answer, listen="127.0.0.1:0", **kwargs):
        server = AgentCheckResponder(listen, answer, **kwargs)
        server.start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def test_each_connection_gets_the_current_answer_and_is_closed(responder):
    state = {"line": "up 100%\n"}
    server = responder(lambda: state["line"])
    assert server.alive()
    port = server.address[1]
    assert read_answer(port) == b"up 100%\n"
    state["line"] = "down 100% #web: refused\n"
    assert read_answer(port) == b"down 100% #web: refused\n"
    assert server.answered == 2


def test_the_answer_does_not_wait_for_agent_send_data_and_tolerates_it(responder):
    server = responder(lambda: "up 100%\n")
    port = server.address[1]
    assert read_answer(port, send=b"pretix/app1\n") == b"up 100%\n"
    # A client that connects and says nothing still gets its line at once.
    with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
        assert sock.recv(100) == b"up 100%\n"


def test_a_client_that_never_closes_is_dropped_after_the_idle_timeout(responder):
    server = responder(lambda: "up 100%\n", idle_timeout=0.2)
    with socket.create_connection(("127.0.0.1", server.address[1]), timeout=2) as sock:
        assert sock.recv(100) == b"up 100%\n"
        assert sock.recv(100) == b""  # the line, then the end of the stream at once
        started = time.monotonic()
        wait_until(lambda: server.open_connections == 1, timeout=2)  # waits for our end: no reset
        wait_until(lambda: server.open_connections == 0, timeout=2)
        assert 0.1 < time.monotonic() - started < 1.5
        assert server.timed_out == 1 and server.evicted == 0


def test_a_slow_or_silent_client_never_delays_the_next_one(responder):
    server = responder(lambda: "up 100%\n", idle_timeout=5.0)
    port = server.address[1]
    silent = [socket.create_connection(("127.0.0.1", port)) for _ in range(10)]
    try:
        started = time.monotonic()
        assert read_answer(port, timeout=1.0) == b"up 100%\n"
        assert time.monotonic() - started < 0.5
    finally:
        for sock in silent:
            sock.close()


def test_an_answer_that_raises_closes_the_connection_without_a_line_and_keeps_serving(responder):
    calls = {"n": 0}

    def answer() -> str:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("boom")
        return "up 100%\n"

    server = responder(answer)
    assert read_answer(server.address[1]) == b""
    assert read_answer(server.address[1]) == b"up 100%\n"
    assert server.errors == 1 and server.last_error == "RuntimeError: boom"
    assert server.alive()


def test_an_answer_that_is_not_one_ascii_line_is_not_sent(responder):
    server = responder(lambda: "up\ndown\n")
    assert read_answer(server.address[1]) == b""
    assert server.errors == 1 and "not one line" in (server.last_error or "")


def test_an_address_in_use_is_one_clear_error():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = AgentCheckResponder(f"127.0.0.1:{port}", lambda: "up 100%\n")
        with pytest.raises(AgentCheckError) as error:
            server.start()
    assert str(error.value) == (f"agent-check cannot listen on 127.0.0.1:{port}: address in use: another "
                                "process (or another agent) listens there")
    assert isinstance(error.value, AgentError)
    assert not server.alive()


def test_an_address_this_host_does_not_have_is_one_clear_error():
    with pytest.raises(AgentCheckError, match="address not available"):
        AgentCheckResponder("192.0.2.1:8999", lambda: "up 100%\n").start()


def test_a_malformed_listen_address_is_one_clear_error():
    with pytest.raises(AgentCheckError, match="is not HOST:PORT"):
        AgentCheckResponder("8999", lambda: "up 100%\n").start()


def start_on_a_candidate_port(answer) -> AgentCheckResponder:
    """A responder on a port outside the ephemeral range (a fresh one if it is in use): one that is
    stopped and started again on its port must not have lost it to an outbound connection."""

    def attempt(port: int) -> AgentCheckResponder:
        server = AgentCheckResponder(f"127.0.0.1:{port}", answer)
        try:
            server.start()
        except AgentCheckError as error:
            if "address in use" in str(error):
                raise PortInUse(str(error)) from None
            raise
        return server

    return start_with_ports(attempt, what="the agent-check responder")


def test_stop_ends_the_thread_and_frees_the_port(responder):
    server = start_on_a_candidate_port(lambda: "up 100%\n")
    port = server.address[1]
    server.stop()
    assert not server.alive()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=1)
    again = responder(lambda: "up 100%\n", listen=f"127.0.0.1:{port}")  # SO_REUSEADDR: a restart gets it back
    assert read_answer(port) == b"up 100%\n"
    again.stop()


def test_many_parallel_pollers_all_get_an_answer(responder):
    server = responder(lambda: "up 100%\n")
    answers: list[bytes] = []
    lock = threading.Lock()

    def poll() -> None:
        answer = read_answer(server.address[1])
        with lock:
            answers.append(answer)

    threads = [threading.Thread(target=poll) for _ in range(30)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(5)
    wait_until(lambda: server.answered == 30, timeout=5)
    assert answers == [b"up 100%\n"] * 30


# --------------------------------------------------------------------------------------------- who may ask


def read_from(source: str, port: int, host: str = "127.0.0.1", timeout: float = 2.0) -> bytes:
    """Connect from the local address `source`; return what the responder sent (b"" if nothing)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.bind((source, 0))
        sock.connect((host, port))
        chunks = []
        try:
            while chunk := sock.recv(1024):
                chunks.append(chunk)
        except ConnectionResetError:  # closed at once, maybe before our end of the handshake settled
            pass
        return b"".join(chunks)


def test_a_connection_from_outside_allow_is_closed_unanswered_counted_and_reported_once(responder):
    refused: list[str] = []
    server = responder(lambda: "up 100%\n", allow=[ip_network("127.0.0.1/32")], on_refused=refused.append)
    port = server.address[1]
    for _ in range(3):
        assert read_from("127.0.0.2", port) == b""
    assert read_from("127.0.0.1", port) == b"up 100%\n"
    wait_until(lambda: server.refused == 3, timeout=2)
    assert server.answered == 1
    assert server.last_refused == "127.0.0.2"
    assert refused == ["127.0.0.2"]  # once per source: a flood from one address is one log line
    assert server.counters()["refused"] == 3


def test_ipv6_clients_are_matched_against_ipv6_networks(responder):
    allowed = responder(lambda: "up 100%\n", listen="[::1]:0", allow=[ip_network("::1/128")])
    assert read_from("::1", allowed.address[1], host="::1") == b"up 100%\n"
    ipv4_only = responder(lambda: "up 100%\n", listen="[::1]:0", allow=[ip_network("127.0.0.0/8")])
    assert read_from("::1", ipv4_only.address[1], host="::1") == b""
    wait_until(lambda: ipv4_only.refused == 1, timeout=2)


def test_a_dual_stack_listener_matches_ipv4_clients_against_ipv4_networks(responder):
    # "[::]:PORT" accepts IPv4 clients as ::ffff:127.0.0.1, which must count as 127.0.0.1
    server = responder(lambda: "up 100%\n", listen="[::]:0", allow=[ip_network("127.0.0.0/8")])
    assert read_from("127.0.0.1", server.address[1]) == b"up 100%\n"
    assert server.refused == 0


def test_configured_allow_and_limits_reach_the_responder():
    section = config.parse('[agent_check]\nlisten = "127.0.0.1:8999"\nallow = ["10.0.0.0/8"]\nidle_timeout = "3s"\n'
                           "max_connections = 9\nmax_per_source = 2\n").agent_check
    assert section is not None
    server = AgentCheckResponder.for_section(section, lambda: "up 100%\n")
    assert (server.allow, server.idle_timeout, server.max_connections, server.max_per_source) == (
        (ip_network("10.0.0.0/8"),), 3.0, 9, 2)
    assert AgentCheckResponder("127.0.0.1:0", lambda: "").allow == config.AGENT_CHECK_ALLOW


def test_limits_below_one_are_refused_when_the_responder_is_made():
    with pytest.raises(ValueError, match="at least 1"):
        AgentCheckResponder("127.0.0.1:0", lambda: "up 100%\n", max_per_source=0)


# --------------------------------------------------------------------------------------------- how many may stay


def hold(port: int, count: int) -> list[socket.socket]:
    """`count` clients that read their answer and keep the connection open."""
    held = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=2)
        assert sock.recv(100) == b"up 100%\n"
        held.append(sock)
    return held


def test_beyond_max_per_source_that_sources_oldest_answered_connection_is_closed(responder):
    server = responder(lambda: "up 100%\n", idle_timeout=30.0, max_per_source=2)
    held = hold(server.address[1], 3)  # every one answered, the third one included
    try:
        wait_until(lambda: server.evicted == 1 and server.open_connections == 2, timeout=2,
                   message=lambda: str(server.counters()))
        assert server.answered == 3
    finally:
        for sock in held:
            sock.close()


def test_a_full_responder_answers_each_new_connection_by_closing_an_answered_one(responder):
    server = responder(lambda: "up 100%\n", idle_timeout=30.0, max_connections=1, max_per_source=5)
    held = hold(server.address[1], 1)
    try:
        assert read_answer(server.address[1]) == b"up 100%\n"
        wait_until(lambda: server.evicted >= 1, timeout=2)
    finally:
        held[0].close()


def test_sixty_four_clients_holding_their_connections_cannot_crowd_out_a_poller(responder):
    # The default limits. The former responder refused connections beyond 64 open ones: a poll
    # then got no answer at all.
    server = responder(lambda: "up 100%\n", idle_timeout=30.0)
    held = hold(server.address[1], 64)
    try:
        assert [read_answer(server.address[1]) for _ in range(20)] == [b"up 100%\n"] * 20
        assert server.open_connections <= server.max_per_source
    finally:
        for sock in held:
            sock.close()
