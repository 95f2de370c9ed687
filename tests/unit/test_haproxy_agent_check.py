"""The agent-check answer line, and the responder serving it on a loopback port."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from pretix_agent.errors import AgentError
from pretix_agent.haproxy.agent_check import (
    REASON_LIMIT,
    AgentCheckError,
    AgentCheckResponder,
    agent_answer,
    sanitize_reason,
)
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


def test_a_client_that_never_closes_is_dropped_after_the_client_timeout(responder):
    server = responder(lambda: "up 100%\n", client_timeout=0.2)
    with socket.create_connection(("127.0.0.1", server.address[1]), timeout=2) as sock:
        assert sock.recv(100) == b"up 100%\n"
        assert sock.recv(100) == b""  # the line, then the end of the stream at once
        started = time.monotonic()
        wait_until(lambda: server.open_connections == 1, timeout=2)  # waits for our end: no reset
        wait_until(lambda: server.open_connections == 0, timeout=2)
        assert 0.1 < time.monotonic() - started < 1.5


def test_a_slow_or_silent_client_never_delays_the_next_one(responder):
    server = responder(lambda: "up 100%\n", client_timeout=5.0)
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


def test_stop_ends_the_thread_and_frees_the_port(responder):
    server = responder(lambda: "up 100%\n")
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
