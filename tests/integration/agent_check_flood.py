"""Counting haproxy's real agent-check polls, and flooding the agent-check port beside them.

`PollRelay`: haproxy's `agent-port` points here instead of at the responder; each poll haproxy makes
is relayed on a fresh connection to the responder and counted: `polls`, and `answered` (a whole
line came back before the responder closed). The relay is this process's own listener (a port
outside the ephemeral range, held for its life), so haproxy's view is exactly what it counts.

`Flood`: `python3 -m tests.integration.agent_check_flood --port P --clients 64 [--mode hold|churn]
[--source 127.0.0.1]` in a process of its own (its own GIL, like a real attacker): `clients`
connections to 127.0.0.1:P, each replaced at once when the responder closes it.
- `hold`: connect and never close (what a slow or hostile client does), even after the answer and
  the responder's end of the stream; a byte sent every 50 ms finds out when the responder has closed
  its side for good (the send fails), and the client connects again at once.
- `churn`: read the answer, close, connect again (as fast as one thread can).
It prints one JSON line with its counts when SIGTERMed.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from tests.ports import bind_listener

REPO = Path(__file__).resolve().parents[2]


class PollRelay:
    """Relays each connection (haproxy's polls) to `target_port` and counts the answers."""

    def __init__(self, target_port: int, timeout: float = 5.0):
        self.target = ("127.0.0.1", target_port)
        self.timeout = timeout
        self.polls = 0
        self.answered = 0
        self.unanswered: list[str] = []  # why, per unanswered poll
        self._lock = threading.Lock()
        self._listener = bind_listener()
        self.port = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._accept_loop, name="poll-relay", daemon=True)

    def __enter__(self) -> PollRelay:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        self._thread.join(5)

    def counts(self) -> tuple[int, int]:
        with self._lock:
            return self.polls, self.answered

    def _accept_loop(self) -> None:
        while True:
            try:
                poller, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._relay, args=(poller,), daemon=True).start()

    def _relay(self, poller: socket.socket) -> None:
        reply, why = b"", ""
        try:
            with socket.create_connection(self.target, timeout=self.timeout) as agent:
                while not reply.endswith(b"\n"):
                    chunk = agent.recv(256)
                    if not chunk:
                        why = f"closed after {reply!r}"
                        break
                    reply += chunk
        except OSError as error:
            why = f"{type(error).__name__}: {error}"
        answered = reply.endswith(b"\n")
        with self._lock:
            self.polls += 1
            if answered:
                self.answered += 1
            else:
                self.unanswered.append(why)
        with contextlib.suppress(OSError):
            if answered:
                poller.sendall(reply)
        poller.close()


class Flood:
    """The flood in a subprocess; `stop()` returns its counts."""

    def __init__(self, port: int, clients: int = 64, mode: str = "hold", source: str = "127.0.0.1"):
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.integration.agent_check_flood", "--port", str(port), "--clients",
             str(clients), "--mode", mode, "--source", source],
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def __enter__(self) -> Flood:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> dict[str, int]:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            out, err = self.process.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            out, err = self.process.communicate()
        if not out.strip():
            raise RuntimeError(f"the flood ended without its counts: {err[-2000:]}")
        return dict(json.loads(out.strip().splitlines()[-1]))


def flood(port: int, clients: int, mode: str, source: str) -> dict[str, int]:
    """Keep `clients` connections to 127.0.0.1:port open (hold) or cycling (churn) until SIGTERM."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    selector = selectors.DefaultSelector()
    counts = {"connects": 0, "answers": 0, "closed_by_agent": 0, "errors": 0, "clients": clients}

    def connect() -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            sock.bind((source, 0))
            code = sock.connect_ex(("127.0.0.1", port))
        except OSError as error:
            code = error.errno or errno.EIO
        counts["connects"] += 1
        if code not in (0, errno.EINPROGRESS):
            counts["errors"] += 1
            sock.close()
            time.sleep(0.001)  # a refused or exhausted connect: do not spin
            connect_later.append(None)
            return
        selector.register(sock, selectors.EVENT_READ)

    connect_later: list[None] = []
    half_closed: set[socket.socket] = set()  # hold: the agent ended its side; we keep ours open
    for _ in range(clients):
        connect()
    next_poke = time.monotonic()
    while not stop.is_set():
        for _ in range(len(connect_later)):
            connect_later.pop()
            connect()
        for key, _events in selector.select(0.05):
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            try:
                data = sock.recv(4096)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
                counts["errors"] += 1
            if data:
                counts["answers"] += 1
                if mode == "hold":
                    continue  # keep it open: the agent must close it
            selector.unregister(sock)
            if not data and mode == "hold":
                half_closed.add(sock)  # its end of the stream: still ours to hold
                continue
            counts["closed_by_agent"] += not data
            sock.close()
            connect()
        if half_closed and time.monotonic() >= next_poke:
            next_poke = time.monotonic() + 0.05
            for sock in list(half_closed):
                try:
                    sock.send(b"x")  # the agent reads and drops it while it holds the connection
                except OSError:  # reset: the agent closed it for good
                    half_closed.discard(sock)
                    counts["closed_by_agent"] += 1
                    sock.close()
                    connect()
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m tests.integration.agent_check_flood")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--mode", choices=("hold", "churn"), default="hold")
    parser.add_argument("--source", default="127.0.0.1", help="local address to connect from")
    args = parser.parse_args(argv)
    print(json.dumps(flood(args.port, args.clients, args.mode, args.source)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
