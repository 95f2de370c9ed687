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

The server runs in its own thread with a selector: every socket is non-blocking, and the answer is
one short line written the moment a connection is accepted, followed by the end of our side of
the stream. haproxy may send `agent-send` data first: the answer does not wait for it; whatever
arrives is read and dropped, since closing with unread data would send a reset instead of the end
of the stream. The connection then stays open until the client closes it (haproxy does at once),
`idle_timeout` at the latest.

Who may ask, and how much room a flood gets (admission.py): a connection from outside `allow` is
closed at once without an answer. Since every allowed connection is answered on accept, the limits
only ration how long *answered* connections may stay open: beyond `max_per_source` for one source,
or `max_connections` in all, the oldest answered connection of the busiest source is closed (after
reading what it sent, so the close is a clean end of stream). A new connection is never refused for
want of room; a flood of reconnecting clients (64 of them left 10 of 13 of haproxy's polls
unanswered when the limit refused new connections) only closes its own, already answered,
connections. Accepting is done in batches from a deep backlog, and running out of file descriptors
closes the oldest answered connection instead of spinning. What this cannot stop is a flood of
connection attempts large enough to overflow the kernel's accept queue: that is a firewall's job.
"""

from __future__ import annotations

import collections
import errno
import selectors
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from ..config import AGENT_CHECK_ALLOW, AgentCheckSection
from ..errors import AgentError
from .admission import Lingering, Network, allowed, peer_address, source_key

REASON_LIMIT = 120  # haproxy logs the reason; a bounded one keeps the line short and one packet
BACKLOG = 1024  # the kernel's accept queue: room for a burst while the thread is busy elsewhere
ACCEPT_BATCH = 64  # connections accepted per wake-up before the others' reads and timeouts get a turn
DRAIN_LIMIT = 65536  # bytes read (and dropped) from a connection before closing it early
REFUSED_SOURCES_REMEMBERED = 256  # on_refused is called once per source, for this many sources


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
    key: int
    deadline: float
    reply: bytes  # what is left to send


def _parse_listen(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise AgentCheckError(f"agent-check listen address {listen!r} is not HOST:PORT")
    return host, int(port)


class AgentCheckResponder:
    """Answers every allowed connection on `listen` with `answer()` at once, and closes it.

    `answer` runs in the responder's thread: it must be quick and thread-safe (return a string
    the daemon prepared, not compute one). If it raises, the connection is closed without an
    answer: haproxy then keeps the state the last answer set (a failed agent connection is not
    an error to haproxy) and `errors` counts it.

    `allow`: the source networks answered; others are closed unanswered, counted in `refused`, and
    `on_refused(address)` is called (in the responder's thread) the first time each source is
    refused. `idle_timeout`, `max_connections`, `max_per_source`: see the module docstring. The
    counters (`answered`, `refused`, `evicted`, `timed_out`, `errors`, `open_connections`) are
    for status; `counters()` returns them together.
    """

    def __init__(self, listen: str, answer: Callable[[], str], *, allow: Iterable[Network] = AGENT_CHECK_ALLOW,
                 idle_timeout: float = 1.0, max_connections: int = 256, max_per_source: int = 8,
                 on_refused: Callable[[str], None] | None = None):
        self.listen = listen
        self.answer = answer
        self.allow = tuple(allow)
        self.idle_timeout = idle_timeout
        self.max_connections = max_connections
        self.max_per_source = max_per_source
        self.on_refused = on_refused
        self.address: tuple[str, int] | None = None  # the bound address (port 0 picks a free one)
        self.answered = 0
        self.refused = 0  # from a source outside `allow`: closed unanswered
        self.evicted = 0  # answered, then closed early to make room for newer connections
        self.timed_out = 0  # answered, then closed at `idle_timeout` because the client kept it open
        self.open_connections = 0  # answered connections waiting for their client to close
        self.errors = 0
        self.last_error: str | None = None
        self.last_refused: str | None = None  # the address of the last refused connection
        self._refused_sources: set[str] = set()
        self._listener: socket.socket | None = None
        self._serving: _Serving | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._wake_read, self._wake_write = socket.socketpair()
        self._wake_read.setblocking(False)
        self._wake_write.setblocking(False)
        Lingering(max_connections, max_per_source)  # refuse impossible limits here, not in the thread

    @classmethod
    def for_section(cls, section: AgentCheckSection, answer: Callable[[], str],
                    on_refused: Callable[[str], None] | None = None) -> AgentCheckResponder:
        """A responder configured by `[agent_check]`."""
        return cls(section.listen, answer, allow=section.allow, idle_timeout=section.idle_timeout,
                   max_connections=section.max_connections, max_per_source=section.max_per_source,
                   on_refused=on_refused)

    def configure(self, section: AgentCheckSection) -> None:
        """Take a reloaded `[agent_check]` on the same address: the rules change at the next
        connection (the serving thread reads them then), the listening socket stays."""
        Lingering(section.max_connections, section.max_per_source)  # refuses impossible limits
        self.allow, self.idle_timeout = tuple(section.allow), section.idle_timeout
        self.max_connections, self.max_per_source = section.max_connections, section.max_per_source
        serving = self._serving
        if serving is not None:
            serving.lingering.max_total, serving.lingering.max_per_source = self.max_connections, self.max_per_source

    def counters(self) -> dict[str, int | str | None]:
        return {"answered": self.answered, "refused": self.refused, "evicted": self.evicted,
                "timed_out": self.timed_out, "open_connections": self.open_connections, "errors": self.errors,
                "last_error": self.last_error, "last_refused": self.last_refused}

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
            listener.listen(BACKLOG)
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
        self._serving = _Serving(self, self._listener, self._wake_read)
        self._serving.run()


class _Serving:
    """The serving thread's state: the selector, the open connections, the limits' bookkeeping."""

    def __init__(self, responder: AgentCheckResponder, listener: socket.socket, wake: socket.socket):
        self.responder = responder
        self.listener = listener
        self.wake = wake
        self.selector = selectors.DefaultSelector()
        self.clients: dict[int, _Client] = {}
        self.lingering = Lingering(responder.max_connections, responder.max_per_source)
        self.deadlines: collections.deque[tuple[float, int]] = collections.deque()  # in order: one timeout
        self.next_key = 0
        self.accept_paused_until: float | None = None

    def run(self) -> None:
        responder = self.responder
        self.selector.register(self.listener, selectors.EVENT_READ, "listen")
        self.selector.register(self.wake, selectors.EVENT_READ, "wake")
        try:
            while not responder._stopping.is_set():
                now = time.monotonic()
                wake_at = min(self.deadlines[0][0] if self.deadlines else now + 60.0,
                              self.accept_paused_until or now + 60.0)
                for key, events in self.selector.select(max(0.0, wake_at - now)):
                    if key.data == "wake":
                        self._drain(self.wake)
                    elif key.data == "listen":
                        self._accept()
                    else:
                        self._service(key.data, events)
                self._expire(time.monotonic())
        finally:
            for client in list(self.clients.values()):
                self._close(client)
            responder.open_connections = 0
            self.selector.close()

    def _accept(self) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                sock, sockaddr = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:
                if error.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    oldest = self.lingering.oldest()
                    if oldest is not None:  # free a descriptor: that one has its answer already
                        self.lingering.release(oldest)
                        self._close(self.clients[oldest], evicted=True)
                        continue
                    self._pause_accepting()  # nothing of ours to close: do not spin on the listener
                self.responder.errors += 1
                self.responder.last_error = f"accept: {error.strerror or error}"
                return
            self._admit(sock, sockaddr)

    def _admit(self, sock: socket.socket, sockaddr: tuple) -> None:
        responder = self.responder
        try:
            address = peer_address(sockaddr)
        except ValueError:  # not an IP peer: cannot be in `allow`
            sock.close()
            responder.refused += 1
            return
        if not allowed(address, responder.allow):
            sock.close()  # at once, unanswered; a reset if it sent something, which is fine here
            responder.refused += 1
            responder.last_refused = str(address)
            source = source_key(address)
            if responder.on_refused is not None and source not in responder._refused_sources \
                    and len(responder._refused_sources) < REFUSED_SOURCES_REMEMBERED:
                responder._refused_sources.add(source)
                try:
                    responder.on_refused(str(address))
                except Exception as error:  # the daemon's logging must not end the responder
                    responder.errors += 1
                    responder.last_error = f"on_refused: {type(error).__name__}: {error}"
            return
        sock.setblocking(False)
        reply = responder._reply()
        if reply is None:
            self._drain(sock)
            sock.close()
            return
        key, self.next_key = self.next_key, self.next_key + 1
        client = _Client(sock, key, time.monotonic() + responder.idle_timeout, reply)
        self.clients[key] = client
        self.deadlines.append((client.deadline, key))
        self._send(client)
        if client.reply:  # the socket buffer was full (it never is for a fresh connection): finish later
            self.selector.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE, key)
        else:
            self.selector.register(sock, selectors.EVENT_READ, key)
        for evicted in self.lingering.admit(key, source_key(address)):
            self._close(self.clients[evicted], evicted=True)
        responder.open_connections = len(self.clients)

    def _service(self, key: int, events: int) -> None:
        client = self.clients.get(key)
        if client is None:
            return
        if events & selectors.EVENT_WRITE and client.reply:
            self._send(client)
            if not client.reply:
                self.selector.modify(client.sock, selectors.EVENT_READ, key)
        if events & selectors.EVENT_READ:
            try:
                data = client.sock.recv(4096)  # agent-send data, or the end of the stream
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                self.lingering.release(key)
                self._close(client)

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
            self.responder.answered += 1
            try:
                client.sock.shutdown(socket.SHUT_WR)  # the line is out: end our side
            except OSError:
                pass

    def _expire(self, now: float) -> None:
        while self.deadlines and self.deadlines[0][0] <= now:
            _, key = self.deadlines.popleft()
            client = self.clients.get(key)
            if client is not None:
                self.lingering.release(key)
                self.responder.timed_out += 1
                self._close(client)
        if self.accept_paused_until is not None and now >= self.accept_paused_until:
            self.accept_paused_until = None
            self.selector.register(self.listener, selectors.EVENT_READ, "listen")

    def _pause_accepting(self) -> None:
        if self.accept_paused_until is None:
            self.accept_paused_until = time.monotonic() + 0.1
            self.selector.unregister(self.listener)

    def _close(self, client: _Client, evicted: bool = False) -> None:
        """Close `client` (already released from the limits' bookkeeping): read what it sent first,
        so that the close ends the stream instead of resetting it."""
        self.clients.pop(client.key, None)
        try:
            self.selector.unregister(client.sock)
        except (KeyError, ValueError):
            pass
        if evicted:
            self.responder.evicted += 1
            self._drain(client.sock)
        client.sock.close()
        self.responder.open_connections = len(self.clients)

    @staticmethod
    def _drain(sock: socket.socket) -> None:
        left = DRAIN_LIMIT
        while left > 0:
            try:
                data = sock.recv(min(left, 4096))
            except OSError:  # BlockingIOError included: nothing more to read now
                return
            if not data:
                return
            left -= len(data)
