"""The HTTP side of the metrics: `GET /metrics` on `[metrics] listen`, served from its own threads.

Bound at prepare (a reload to an address in use is refused before anything changes) and served at
commit, like the agent-check responder. Each connection gets a thread of its own, at most
MAX_CLIENTS at once (more are closed unanswered), and every socket operation times out after
CLIENT_TIMEOUT, so a client that connects and says nothing holds one thread for a while, never the
loop. The body comes from `render()`, which reads the snapshot the loop left (metrics/controller.py):
a scrape never waits for the loop.
"""

from __future__ import annotations

import errno
import os
import selectors
import socket
import socketserver
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from typing import Any

from ..errors import AgentError
from .exposition import CONTENT_TYPE

MAX_CLIENTS = 16  # Prometheus scrapes one connection at a time; a few servers, a curl, a browser
CLIENT_TIMEOUT = 10.0
PATH = "/metrics"


class MetricsError(AgentError):
    """The metrics listener cannot listen on its address."""


class NotReady(Exception):
    """No snapshot yet: the first cycle has not run (a scrape gets 503)."""


_HINTS = {
    errno.EADDRINUSE: "address in use: another process (or another agent) listens there",
    errno.EACCES: "permission denied: ports below 1024 need privileges; use a higher port",
    errno.EADDRNOTAVAIL: "address not available: no interface of this host has that address",
}


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    timeout = CLIENT_TIMEOUT
    server_version = "pretix-agent"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:
        """Nothing: a scrape every 15 s is not an event worth a log line."""

    def _send(self, status: int, body: bytes, content_type: str = "text/plain; charset=utf-8",
              head: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        if status == 503:
            self.send_header("Retry-After", "1")
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _answer(self, head: bool) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/":
            self._send(200, b"pretix-agent: metrics at /metrics\n", head=head)
            return
        if path != PATH:
            self._send(404, b"not found: metrics are at /metrics\n", head=head)
            return
        try:
            body = self.server.render()
        except NotReady:
            self._send(503, b"no metrics yet: the agent has not finished its first cycle\n", head=head)
            return
        except Exception as error:  # a bug in rendering must not end the listener
            self.server.owner.failed(f"{type(error).__name__}: {error}")
            self._send(500, f"cannot render the metrics: {type(error).__name__}\n".encode(), head=head)
            return
        self.server.owner.scraped()
        self._send(200, body, CONTENT_TYPE, head=head)

    def do_GET(self) -> None:
        self._answer(head=False)

    def do_HEAD(self) -> None:
        self._answer(head=True)


class _Server(socketserver.ThreadingTCPServer):
    """Not http.server's HTTPServer: its bind looks the address up in DNS (getfqdn), which can hang."""

    daemon_threads = True
    timeout = 0.5  # handle_request's wait, should the connection seen ready be gone by then
    allow_reuse_address = True  # a restarted daemon gets its port back while old connections are in TIME_WAIT
    render: Callable[[], bytes]
    owner: MetricsServer

    def __init__(self, family: int, render: Callable[[], bytes], owner: MetricsServer):
        self.address_family = family
        super().__init__(("", 0), _Handler, bind_and_activate=False)
        self.render = render
        self.owner = owner
        self.slots = threading.BoundedSemaphore(MAX_CLIENTS)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.slots.acquire(blocking=False):
            self.owner.refused += 1
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that went away mid-answer is not worth a traceback on stderr."""


class MetricsServer:
    """Serves `render()` on `listen` at /metrics. `bind()` then `start()`; `stop()` ends it."""

    def __init__(self, listen: str, render: Callable[[], bytes]):
        self.listen = listen
        self.render = render
        self.scrapes = 0
        self.refused = 0  # connections closed unanswered, over MAX_CLIENTS
        self.errors = 0
        self.last_error: str | None = None
        self._lock = threading.Lock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._wake: tuple[int, int] | None = None  # stop() writes to it: the loop needs no timeout to notice
        self.address: tuple[str, int] | None = None

    def bind(self) -> None:
        """Bind and listen without serving yet. Raise MetricsError (one line) if it cannot. Port 0
        (refused by the configuration) takes a free port: for tests in this process, see `address`."""
        host, _, port_text = self.listen.rpartition(":")
        host = host.strip("[]")
        if not host or not port_text.isdigit() or int(port_text) > 65535:
            raise MetricsError(f"metrics listen address {self.listen!r} is not HOST:PORT")
        port = int(port_text)
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        except (OSError, UnicodeError) as error:
            raise MetricsError(f"metrics listen {self.listen}: cannot resolve {host}: {error}") from None
        family, _, _, _, sockaddr = infos[0]
        server = _Server(family, self.render, self)
        try:
            server.server_address = sockaddr  # type: ignore[assignment]  # an IPv6 one has four parts
            server.server_bind()
            server.server_activate()
        except OSError as error:
            server.server_close()
            hint = _HINTS.get(error.errno or 0, error.strerror or str(error))
            raise MetricsError(f"metrics cannot listen on {self.listen}: {hint}") from None
        self._server = server
        self.address = server.socket.getsockname()[:2]

    def start(self) -> None:
        if self._server is None:
            self.bind()
        assert self._server is not None
        self._wake = os.pipe2(os.O_CLOEXEC)
        self._thread = threading.Thread(target=self._serve, args=(self._server, self._wake[0]), name="metrics",
                                        daemon=True)
        self._thread.start()

    def _serve(self, server: _Server, wake: int) -> None:
        """Accept until stop() writes to `wake`. Unlike socketserver's serve_forever, which polls for its
        shutdown flag (twice a second by default), this sleeps until a connection or the stop arrives."""
        with selectors.DefaultSelector() as selector:
            selector.register(server.socket, selectors.EVENT_READ)
            selector.register(wake, selectors.EVENT_READ)
            while True:
                for key, _ in selector.select():
                    if key.fileobj == wake:
                        return
                    server.handle_request()  # accept (ready now), then a thread per connection

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def scraped(self) -> None:
        with self._lock:
            self.scrapes += 1

    def failed(self, error: str) -> None:
        with self._lock:
            self.errors += 1
            self.last_error = error

    def stop(self) -> None:
        """Stop serving and close the listening socket (at most one poll interval). Idempotent."""
        server, self._server = self._server, None
        if server is None:
            return
        if self._wake is not None:
            os.write(self._wake[1], b"x")
            if self._thread is not None:
                self._thread.join(timeout=2.0)
            for fd in self._wake:
                os.close(fd)
            self._wake = None
        server.server_close()
