"""haproxy's agent-check, answered for this node: a small TCP server on `[agent_check] listen`.

haproxy (on any load balancer, without access to this node's sockets) connects to the port every
`agent-inter`, reads one ASCII line up to the first CR or LF, and closes. The line is words
separated by spaces (configuration manual, `agent-check`; parser: src/tcpcheck.c
`tcpcheck_agent_expect_reply`):

- `up` / `down`: the server's operational state. `down` takes it out at once; `up` brings it back
  if haproxy's own health check (if any) agrees. Text after `#` is the reason: haproxy logs it and
  shows it in `show stat` as `last_agt` ("via agent : down (reason)").
- `75%`: the weight, relative to the weight in haproxy.cfg (integer arithmetic: with the default
  `weight 1`, anything below 100% is 0, so give servers `weight 100`). `0%` takes no new sessions:
  the same effect as the drain state, current sessions and persistence kept.
- `ready` / `drain` / `maint`: the admin state. This responder never sends them, on purpose:
  they set and clear the same forced flags as `set server B/S state ...` on the Runtime API, and
  haproxy keeps polling the agent in maint, so an agent answering `ready` undoes within one
  `agent-inter` every maint or drain an operator (or pretix-agent's [haproxy] section on the load
  balancer) set by hand. Measured on haproxy 2.6: gone after 0.5 s with `agent-inter 500ms`.
  A planned drain is therefore announced as weight 0%, which clears itself with the next 100%.

Anything a line leaves out stays as it is, so every answer states both health and weight; an
answer is stateless, so any number of load balancers can poll at any time.

The server runs in its own thread with a selector: every socket is non-blocking, the answer is one
short line written at once, and each connection is closed after `client_timeout` at the latest.
haproxy may send `agent-send` data first: the answer does not wait for it; whatever arrives is
read and dropped before closing, since closing with unread data would send a reset instead of
the end of the stream.
"""

from __future__ import annotations

import errno
import selectors
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import AgentError

REASON_LIMIT = 120  # haproxy logs the reason; a bounded one keeps the line short and one packet
MAX_CLIENTS = 64  # more simultaneous pollers than any cluster has; beyond it, close at once


class AgentCheckError(AgentError):
    """The agent-check responder cannot listen on its address."""


def sanitize_reason(reason: str, limit: int = REASON_LIMIT) -> str:
    """Given a free-text reason, return it as printable ASCII on one line, at most `limit` chars."""
    text = "".join(ch if " " <= ch <= "~" else " " for ch in reason)
    text = " ".join(text.split())
    if len(text) > limit:
        text = text[: limit - 3].rstrip() + "..."
    return text


def agent_answer(ready: bool, draining: bool, reason: str | None = None, weight: int | None = None) -> str:
    """Given this node's state, return the agent-check line haproxy should read (with its newline).

    - ready: "up 100%\n", or "up 75%\n" with `weight` 75 (percent of haproxy.cfg's weight).
    - ready and draining (planned drain): "up 0% #reason\n": no new sessions, current ones finish.
    - not ready: "down 100% #reason\n" (0% while draining): out at once, the reason in haproxy's log.

    Every answer restates the weight, so the end of a drain needs no memory of it. The reason is
    made printable ASCII on one line and shortened. Raise ValueError for a weight outside 0..256.
    """
    if weight is not None and not 0 <= weight <= 256:
        raise ValueError(f"weight must be a percentage from 0 to 256, not {weight}")
    percent = 0 if draining else 100 if weight is None else weight
    words = ["up" if ready else "down", f"{percent}%"]
    text = sanitize_reason(reason or "")
    if not ready:
        words.append(f"#{text or 'checks failing'}")
    elif draining:
        words.append(f"#{text or 'draining'}")
    return " ".join(words) + "\n"


@dataclass
class _Client:
    sock: socket.socket
    deadline: float
    reply: bytes  # what is left to send


def _parse_listen(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise AgentCheckError(f"agent-check listen address {listen!r} is not HOST:PORT")
    return host, int(port)


class AgentCheckResponder:
    """Answers every connection on `listen` with `answer()` and closes it.

    `answer` runs in the responder's thread: it must be quick and thread-safe (return a string
    the daemon prepared, not compute one). If it raises, the connection is closed without an
    answer: haproxy then keeps the state the last answer set (a failed agent connection is not
    an error to haproxy) and `errors` counts it.
    """

    def __init__(self, listen: str, answer: Callable[[], str], client_timeout: float = 2.0):
        self.listen = listen
        self.answer = answer
        self.client_timeout = client_timeout
        self.address: tuple[str, int] | None = None  # the bound address (port 0 picks a free one)
        self.answered = 0
        self.open_connections = 0  # connections being answered or waiting for haproxy to close
        self.errors = 0
        self.last_error: str | None = None
        self._listener: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._wake_read, self._wake_write = socket.socketpair()
        self._wake_read.setblocking(False)
        self._wake_write.setblocking(False)

    def start(self) -> None:
        """Bind and listen (unless `bind()` did), then serve in a daemon thread. Raise AgentCheckError
        if it cannot bind."""
        if self._listener is None:
            self.bind()
        self._thread = threading.Thread(target=self._serve, name="agent-check", daemon=True)
        self._thread.start()

    def bind(self) -> None:
        """Bind and listen without serving yet (a reload prepares the new address this way, and
        switches to it only if the whole configuration is good). Raise AgentCheckError."""
        host, port = _parse_listen(self.listen)
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        except (OSError, UnicodeError) as error:
            raise AgentCheckError(f"agent-check listen {self.listen}: cannot resolve {host}: {error}") from None
        family, kind, proto, _, sockaddr = infos[0]
        listener = socket.socket(family, kind, proto)
        try:
            # A restarted daemon must get its port back while old connections sit in TIME_WAIT.
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(sockaddr)
            listener.listen(64)
            listener.setblocking(False)
        except OSError as error:
            listener.close()
            hint = {
                errno.EADDRINUSE: "address in use: another process (or another agent) listens there",
                errno.EACCES: "permission denied: ports below 1024 need privileges; use a higher port",
                errno.EADDRNOTAVAIL: "address not available: no interface of this host has that address",
            }.get(error.errno or 0, error.strerror or str(error))
            raise AgentCheckError(f"agent-check cannot listen on {self.listen}: {hint}") from None
        self._listener = listener
        self.address = listener.getsockname()[:2]

    def alive(self) -> bool:
        """True while the serving thread runs (for the daemon's liveness report)."""
        return self._thread is not None and self._thread.is_alive() and not self._stopping.is_set()

    def stop(self, timeout: float = 2.0) -> None:
        """Stop serving and close every socket. Idempotent."""
        self._stopping.set()
        try:
            self._wake_write.send(b"x")
        except OSError:
            pass
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        if self._thread is None or not self._thread.is_alive():
            for sock in (self._listener, self._wake_read, self._wake_write):
                if sock is not None:
                    sock.close()

    # -- the serving thread ---------------------------------------------------------------------

    def _reply(self) -> bytes | None:
        try:
            line = self.answer()
            data = line.encode("ascii")
            if not data.endswith(b"\n") or b"\n" in data[:-1] or b"\r" in data:
                raise ValueError(f"not one line: {line!r}")
            return data
        except Exception as error:  # a bug in the answer must not end the responder
            self.errors += 1
            self.last_error = f"{type(error).__name__}: {error}"
            return None

    def _serve(self) -> None:
        assert self._listener is not None
        selector = selectors.DefaultSelector()
        clients: dict[socket.socket, _Client] = {}
        selector.register(self._listener, selectors.EVENT_READ, "listen")
        selector.register(self._wake_read, selectors.EVENT_READ, "wake")

        def close(client: _Client) -> None:
            clients.pop(client.sock, None)
            try:
                selector.unregister(client.sock)
            except (KeyError, ValueError):
                pass
            client.sock.close()

        try:
            while not self._stopping.is_set():
                now = time.monotonic()
                timeout = min((c.deadline for c in clients.values()), default=now + 60.0) - now
                for key, events in selector.select(max(0.0, timeout)):
                    if key.data == "wake":
                        continue
                    if key.data == "listen":
                        self._accept(selector, clients)
                        continue
                    client = clients.get(key.fileobj)  # type: ignore[call-overload]
                    if client is None:
                        continue
                    if events & selectors.EVENT_WRITE and client.reply:
                        self._send(client)
                        if not client.reply:
                            self._finish_sending(selector, client)
                    if events & selectors.EVENT_READ:
                        try:
                            data = client.sock.recv(4096)  # agent-send data, or the end of the stream
                        except BlockingIOError:
                            continue
                        except OSError:
                            data = b""
                        if not data:
                            close(client)
                now = time.monotonic()
                for client in [c for c in clients.values() if c.deadline <= now]:
                    close(client)
                self.open_connections = len(clients)
        finally:
            for client in list(clients.values()):
                close(client)
            self.open_connections = 0
            selector.close()

    def _accept(self, selector: selectors.BaseSelector, clients: dict[socket.socket, _Client]) -> None:
        assert self._listener is not None
        while True:
            try:
                sock, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:  # EMFILE and friends: drop this one, keep serving
                self.errors += 1
                self.last_error = f"accept: {error.strerror or error}"
                return
            sock.setblocking(False)
            if len(clients) >= MAX_CLIENTS:
                sock.close()
                continue
            reply = self._reply()
            client = _Client(sock, time.monotonic() + self.client_timeout, reply or b"")
            clients[sock] = client
            if reply is None:
                self._finish_sending(selector, client, register=True)
                continue
            self._send(client)
            if client.reply:
                selector.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE)
            else:
                self._finish_sending(selector, client, register=True)

    def _send(self, client: _Client) -> None:
        try:
            sent = client.sock.send(client.reply)
        except BlockingIOError:
            return
        except OSError:
            client.reply = b""
            return
        client.reply = client.reply[sent:]
        if not client.reply:
            self.answered += 1

    def _finish_sending(self, selector: selectors.BaseSelector, client: _Client, register: bool = False) -> None:
        """The line is out: end our side, then read (and drop) until haproxy closes its side."""
        try:
            client.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        if register:
            selector.register(client.sock, selectors.EVENT_READ)
        else:
            selector.modify(client.sock, selectors.EVENT_READ)
