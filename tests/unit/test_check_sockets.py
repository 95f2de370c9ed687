"""The socket breaker that lets a deadline's abort free a probe blocked on a socket."""

from __future__ import annotations

import socket
import threading

from pretix_agent.checks.model import Deadline
from pretix_agent.checks.sockets import SocketBreaker


def blocked_recv(sock: socket.socket) -> tuple[threading.Thread, list[bytes]]:
    received: list[bytes] = []
    thread = threading.Thread(target=lambda: received.append(sock.recv(10)), daemon=True)
    thread.start()
    return thread, received


def test_abort_frees_a_recv_that_waits_for_a_peer_that_never_answers():
    ours, peer = socket.socketpair()
    with ours, peer:
        deadline = Deadline(10.0)
        breaker = SocketBreaker(deadline)
        breaker.watch(lambda: ours)
        thread, received = blocked_recv(ours)
        deadline.abort()
        thread.join(2.0)
        assert not thread.is_alive()
        assert received == [b""]  # end of stream: the blocked call returned


def test_abort_works_on_a_raw_descriptor_and_leaves_it_open_for_its_owner():
    ours, peer = socket.socketpair()
    with ours, peer:
        deadline = Deadline(10.0)
        SocketBreaker(deadline).watch(ours.fileno)
        thread, received = blocked_recv(ours)
        deadline.abort()
        thread.join(2.0)
        assert received == [b""]
        assert ours.fileno() >= 0  # shut down, not closed: the owner closes it


def test_abort_before_watch_shuts_the_socket_down_as_soon_as_it_is_watched():
    ours, peer = socket.socketpair()
    with ours, peer:
        deadline = Deadline(10.0)
        breaker = SocketBreaker(deadline)
        deadline.abort()
        breaker.watch(lambda: ours)
        assert ours.recv(10) == b""


def test_abort_after_release_touches_nothing():
    ours, peer = socket.socketpair()
    with ours, peer:
        deadline = Deadline(10.0)
        breaker = SocketBreaker(deadline)
        breaker.watch(lambda: ours)
        breaker.release()
        deadline.abort()
        peer.sendall(b"still here")
        assert ours.recv(10) == b"still here"


def test_abort_of_a_socket_not_open_yet_or_already_gone_is_harmless():
    deadline = Deadline(10.0)
    SocketBreaker(deadline).watch(lambda: None)
    closed = socket.socket()
    closed.close()
    SocketBreaker(deadline).watch(lambda: closed)
    SocketBreaker(deadline).watch(lambda: -1)
    deadline.abort()  # no exception
