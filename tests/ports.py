"""TCP ports for the servers tests start, chosen so that no outbound connection can ever take them.

Binding port 0, closing the socket and handing its number to another process races every process on
the machine: the kernel gives outbound connections (connect() without bind()) ports from the same
ephemeral range, so between our close and the server's bind an outbound connection may take the port
(defect 14: on a fresh machine haproxy failed with "cannot bind socket (Address already in use)").
Outbound connections only ever get ports inside /proc/sys/net/ipv4/ip_local_port_range, so a port
chosen outside it can only be taken by a process that chose it on purpose, as we do: another test's
server that picked the same number at random. That rare clash shows as EADDRINUSE, and the caller
starts again with a fresh port (`start_with_ports`). Use a Unix socket where the component has one.

    port = candidate_port()                             # for another process: retry on PortInUse
    server = start_with_ports(lambda port: start_nginx(port), what="nginx")
    listener = bind_listener()                          # this process's own listener, outside the range
    with refused_port() as port: ...                    # every connect to it is refused while the block runs
    holder = refusing_socket(); holder.close()          # the same, held for longer

Plain functions, standard library only: fixtures, benchmarks, the demo and tools use them alike.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import random
import re
import socket
from collections.abc import Callable, Iterator
from typing import TypeVar

T = TypeVar("T")

RANGE_FILE = "/proc/sys/net/ipv4/ip_local_port_range"
DEFAULT_EPHEMERAL = (32768, 60999)  # Linux's default, if the file cannot be read
LOWEST = 20000  # below it live the well-known ports of services a developer may run (5432, 6379, 8080...)
HIGHEST = 65535
ATTEMPTS = 8

# What a server says when its port is taken: haproxy, nginx, Redis, PostgreSQL, the agent, our Python servers.
_IN_USE = re.compile(r"address (already )?in use|cannot bind socket|could not bind|eaddrinuse|errno 98", re.IGNORECASE)

_random = random.SystemRandom()
_handed_out: collections.deque[int] = collections.deque(maxlen=2000)  # not twice in one test run


class PortInUse(Exception):
    """The server could not bind the port it was given; start again with a fresh one."""


class NoFreePort(RuntimeError):
    """Every attempt found its port in use, or the ephemeral range leaves no port outside it."""


def ephemeral_range(path: str = RANGE_FILE) -> tuple[int, int]:
    """The kernel's range for outbound connections' local ports (first, last), from /proc."""
    try:
        with open(path) as f:
            first, last = (int(word) for word in f.read().split())
    except (OSError, ValueError):
        return DEFAULT_EPHEMERAL
    return first, last


def candidate_ranges(ephemeral: tuple[int, int] | None = None) -> list[tuple[int, int]]:
    """Given the ephemeral range, return the ranges (first, last) to pick from: LOWEST..65535 without it."""
    first, last = ephemeral or ephemeral_range()
    ranges = [(LOWEST, min(first - 1, HIGHEST)), (max(last + 1, LOWEST), HIGHEST)]
    return [(low, high) for low, high in ranges if low <= high]


def candidate_port(exclude: frozenset[int] | set[int] = frozenset()) -> int:
    """A random port outside the ephemeral range, not handed out before in this process.

    It is only a candidate: the server given it must report EADDRINUSE and be started again with
    another one (`start_with_ports`) if a process that picks ports the same way holds it.
    """
    ranges = candidate_ranges()
    if not ranges:
        raise NoFreePort(f"the ephemeral range {ephemeral_range()} leaves no port from {LOWEST} to {HIGHEST} "
                         f"outside it: narrow it in {RANGE_FILE}")
    sizes = [high - low + 1 for low, high in ranges]
    for _ in range(1000):
        low, high = _random.choices(ranges, weights=sizes)[0]
        port = _random.randint(low, high)
        if port not in exclude and port not in _handed_out:
            _handed_out.append(port)
            return port
    raise NoFreePort("no candidate port left that was not handed out already")


def address_in_use(text: str) -> bool:
    """True if a server's log or error text says its address was in use (any server we start)."""
    return bool(_IN_USE.search(text))


def start_with_ports(start: Callable[..., T], count: int = 1, *, what: str = "the server",
                     attempts: int = ATTEMPTS) -> T:
    """Call `start(port, ...)` with `count` fresh candidate ports until it does not report a clash.

    `start` raises PortInUse (or lets an OSError with EADDRINUSE through) when a port was taken;
    it must have cleaned up what it started. Anything else it raises ends the attempts at once.
    Raise NoFreePort after `attempts` clashes.
    """
    clashes: list[str] = []
    for _ in range(attempts):
        ports: list[int] = []
        while len(ports) < count:
            ports.append(candidate_port(exclude=set(ports)))
        try:
            return start(*ports)
        except PortInUse as clash:
            clashes.append(f"{ports}: {clash}")
        except OSError as error:
            if error.errno != errno.EADDRINUSE:
                raise
            clashes.append(f"{ports}: {error}")
    raise NoFreePort(f"{what}: the port was in use at each of {attempts} attempts: " + "; ".join(clashes))


def bind_listener(host: str = "127.0.0.1", port: int | None = None, backlog: int = 64) -> socket.socket:
    """A listening TCP socket of this process on `port`, or on a candidate port (with retries).

    Use it instead of port 0 for a listener that is closed and opened again on the same port (a
    backend killed and revived): a port 0 listener gets an ephemeral port, which an outbound
    connection may take while the listener is closed. SO_REUSEADDR, so reopening is not refused
    for connections left in TIME_WAIT.
    """

    def listen(number: int) -> socket.socket:
        listener = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((host, number))
            listener.listen(backlog)
        except BaseException:
            listener.close()
            raise
        return listener

    if port is not None:
        return listen(port)
    return start_with_ports(listen, what=f"a listener on {host}")


def refusing_socket(host: str = "127.0.0.1") -> socket.socket:
    """A socket bound to a candidate port that never listens: every connection to that port is
    refused (the kernel answers a SYN with a reset), and nobody else can bind the port while the
    socket stays open (no SO_REUSEADDR). A port that was merely free a moment ago could be listening
    by the time the test connects. Close it when done; `refused_port` does that for a block."""

    def hold(number: int) -> socket.socket:
        holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            holder.bind((host, number))
        except BaseException:
            holder.close()
            raise
        return holder

    return start_with_ports(hold, what=f"a refused port on {host}")


@contextlib.contextmanager
def refused_port(host: str = "127.0.0.1") -> Iterator[int]:
    """Yield a port on which every connection is refused for as long as the block runs."""
    with refusing_socket(host) as holder:
        yield holder.getsockname()[1]
