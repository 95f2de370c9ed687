"""Open and close hundreds of outbound loopback TCP connections a second, until stopped.

    python3 tools/connection_churn.py [--rate 300] [--hold 0.2] [--bind-first 0.5] [--duration SECONDS]

What it is for: `make test-churn` runs the test tiers while this runs beside them. Every outbound
connection takes a local port from the kernel's ephemeral range (ip_local_port_range), so a fixture
that picks a port for a server by binding port 0 and closing it loses it to one of these now and
then ("cannot bind socket (Address already in use)"); a fixture that follows the port rule
(tests/ports.py: candidates outside the ephemeral range, retry on EADDRINUSE) does not notice.

How: one listener of its own on 127.0.0.1 (port 0: the kernel picks the number and this process
holds the socket for its whole life, so nobody is ever handed a port to bind later), and a
single-threaded loop that opens `rate` connections a second to it. The accepting side closes each
connection after `hold` seconds (so about rate x hold are established at any moment, each holding
an ephemeral port) and the client closes on the end of the stream: the TIME_WAIT stays on the
listener's side and the ephemeral ports come free for new connections at once, as they would on a
busy host. At most `--max-open` connections are open; beyond that an opening is skipped and
counted. No Unix sockets, no traffic beyond 127.0.0.1, standard library only.

Linux gives a port to a bare connect() and to a bind() to port 0 by two searches (connect() prefers
even ports, bind() odd ones), so by default half the connections bind to 127.0.0.1 port 0 before
connecting, as a client that chooses its source address does: both searches are exercised, the
second being exactly the one a bind-then-close fixture relies on.

It reports on stdout, as one JSON document, when it stops (SIGTERM, SIGINT or `--duration`):
what it opened, the achieved rate, errors, skipped openings; with `--every N` also a line on stderr
every N seconds. Exit status 0, or 1 if it could not reach half the target rate (the proof it was
meant to give would be weaker than claimed).
"""

from __future__ import annotations

import argparse
import collections
import errno
import json
import selectors
import signal
import socket
import sys
import time
from dataclasses import asdict, dataclass


@dataclass
class Counts:
    opened: int = 0  # connect() issued
    established: int = 0  # accepted by our listener
    closed: int = 0  # client side closed after the end of the stream
    errors: int = 0  # a connect or socket error (EADDRNOTAVAIL: the ephemeral range ran out)
    skipped: int = 0  # not opened: max_open connections were already open
    bound_first: int = 0  # bound to 127.0.0.1 port 0 before connect()
    max_open_seen: int = 0


def churn(rate: float, hold: float, duration: float | None, max_open: int, every: float | None,
          bind_first: float = 0.5) -> dict:
    """Run until `duration` passes or SIGTERM/SIGINT; return the report."""
    stop = {"now": False}

    def request_stop(_signum: int, _frame: object) -> None:
        stop["now"] = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)

    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))  # held until we exit: see the module docstring
    listener.listen(1024)
    listener.setblocking(False)
    target = listener.getsockname()
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ, "accept")
    counts = Counts()
    clients: set[socket.socket] = set()
    accepted: collections.deque[tuple[float, socket.socket]] = collections.deque()  # (close at, socket)
    errors: collections.Counter[str] = collections.Counter()
    started = time.monotonic()
    last_report = started

    def close_client(sock: socket.socket) -> None:
        clients.discard(sock)
        selector.unregister(sock)
        sock.close()

    try:
        while not stop["now"]:
            now = time.monotonic()
            if duration is not None and now - started >= duration:
                break
            due = int((now - started) * rate) - counts.opened - counts.skipped
            for _ in range(min(due, 200)):  # a stalled loop catches up in bounded batches
                if len(clients) >= max_open:
                    counts.skipped += 1
                    continue
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sock.setblocking(False)
                counts.opened += 1
                try:
                    if counts.opened * bind_first % 1 < bind_first:  # this share of them, evenly spread
                        sock.bind(("127.0.0.1", 0))
                        counts.bound_first += 1
                    code = sock.connect_ex(target)
                except OSError as error:  # EADDRINUSE from bind: the range is exhausted
                    code = error.errno or errno.EIO
                if code not in (0, errno.EINPROGRESS):
                    counts.errors += 1
                    errors[errno.errorcode.get(code, str(code))] += 1
                    sock.close()
                    continue
                clients.add(sock)
                selector.register(sock, selectors.EVENT_READ, "client")
            counts.max_open_seen = max(counts.max_open_seen, len(clients))
            while accepted and accepted[0][0] <= now:
                accepted.popleft()[1].close()  # the server closes first: TIME_WAIT stays on its side
            next_open = started + (counts.opened + counts.skipped + 1) / rate
            wake = min(next_open, accepted[0][0] if accepted else next_open)
            for key, _events in selector.select(max(0.0, min(wake - time.monotonic(), 0.05))):
                if key.data == "accept":
                    while True:
                        try:
                            peer, _ = listener.accept()
                        except (BlockingIOError, InterruptedError):
                            break
                        except OSError as error:  # EMFILE: count it, keep going
                            counts.errors += 1
                            errors[errno.errorcode.get(error.errno or 0, str(error))] += 1
                            break
                        counts.established += 1
                        accepted.append((time.monotonic() + hold, peer))
                    continue
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                try:
                    data = sock.recv(64)
                except BlockingIOError:
                    continue
                except OSError as error:
                    counts.errors += 1
                    errors[errno.errorcode.get(error.errno or 0, str(error))] += 1
                    data = b""
                if not data:
                    close_client(sock)
                    counts.closed += 1
            if every is not None and time.monotonic() - last_report >= every:
                last_report = time.monotonic()
                elapsed = last_report - started
                print(f"connection_churn: {counts.opened / elapsed:.0f}/s opened, {len(clients)} open, "
                      f"{counts.errors} errors", file=sys.stderr, flush=True)
    finally:
        for sock in list(clients):
            close_client(sock)
        for _, peer in accepted:
            peer.close()
        selector.close()
        listener.close()
    elapsed = time.monotonic() - started
    return {
        "target_rate_per_s": rate,
        "achieved_rate_per_s": round(counts.opened / elapsed, 1) if elapsed else 0.0,
        "seconds": round(elapsed, 1),
        "hold_s": hold,
        "bind_first_share": bind_first,
        "listener": f"{target[0]}:{target[1]}",
        **asdict(counts),
        "error_kinds": dict(errors),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="connection_churn.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=300.0, help="connections opened per second (default 300)")
    parser.add_argument("--hold", type=float, default=0.2, help="seconds the listener keeps each one open (0.2)")
    parser.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    parser.add_argument("--max-open", type=int, default=400, help="most connections open at once (400)")
    parser.add_argument("--every", type=float, default=None, help="a progress line on stderr every N seconds")
    parser.add_argument("--bind-first", type=float, default=0.5,
                        help="share of connections bound to 127.0.0.1:0 before connect() (0.5)")
    args = parser.parse_args(argv)
    if not args.rate > 0 or args.hold < 0 or args.max_open < 1 or not 0 <= args.bind_first <= 1:
        parser.error("--rate must be positive, --hold not negative, --max-open at least 1, --bind-first 0..1")
    report = churn(args.rate, args.hold, args.duration, args.max_open, args.every, args.bind_first)
    print(json.dumps(report), flush=True)
    return 0 if report["achieved_rate_per_s"] >= args.rate / 2 else 1


if __name__ == "__main__":
    sys.exit(main())
