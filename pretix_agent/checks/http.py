"""HTTP check: pretix's `GET /healthcheck/`, with the Host header pretix expects.

pretix answers 400 ("Unknown host") to a request for a bare IP address, so the check sends the
configured Host header; over https that name is also the one sent as SNI and verified in the
certificate, while the connection goes to the URL's address. 200 passes; anything else fails
with the status and the start of the body. Redirects are not followed: a redirect to a login page
is not a healthy pretix.

The socket is opened here (not by http.client) so that the runner's abort can shut it down from
the first byte on; every blocking call also has the time left as its timeout. The connection is
kept between probes where the server allows it (checks/keeper.py): gunicorn's default sync
workers, which serve pretix, close every connection; nginx in front of them keeps it open.
"""

from __future__ import annotations

import contextlib
import http.client
import re
import socket
import ssl
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from .keeper import ConnectionKeeper, ConnectionLost
from .model import Deadline, ProbeResult, ProbeStopped, failed, passed
from .sockets import SocketBreaker, readable_now
from .text import one_line

if TYPE_CHECKING:
    from ..config import HttpCheck

BODY_EXCERPT = 100  # characters of a failing answer's body shown in the reason
BODY_READ_LIMIT = 4096  # bytes read of any answer: enough for an excerpt, never a whole page
USER_AGENT = "pretix-agent"


@dataclass(frozen=True)
class HttpAnswer:
    status: int
    body: bytes  # at most BODY_READ_LIMIT bytes
    location: str | None  # the Location header, for redirects
    seconds: float  # from connecting to the end of the (limited) body


def body_excerpt(body: bytes, limit: int = BODY_EXCERPT) -> str:
    """Given the start of a response body, return at most `limit` characters of it on one line:
    tags dropped, whitespace collapsed, "…" where it was cut."""
    text = body.decode("utf-8", "replace")
    text = re.sub(r"<(script|style)\b.*?</\1>", " ", text, flags=re.DOTALL | re.IGNORECASE)
    text = re.sub(r"<[^>]*>", " ", text)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def classify(answer: HttpAnswer) -> ProbeResult:
    """Given a complete HTTP answer, return the check's outcome: 200 passes, nothing else does."""
    values: dict[str, Any] = {"status": answer.status, "latency_ms": round(answer.seconds * 1000, 1)}
    if answer.status == 200:
        return passed(f"HTTP 200 in {answer.seconds * 1000:.0f} ms", **values)
    if 300 <= answer.status < 400:
        values["location"] = answer.location
        return failed(f"HTTP {answer.status}: redirect to {answer.location or '(no Location)'} "
                      "(redirects are not followed)", **values)
    excerpt = body_excerpt(answer.body)
    return failed(f"HTTP {answer.status}" + (f": {excerpt}" if excerpt else " (empty body)"), **values)


@dataclass(frozen=True)
class Request:
    """Where and what a check asks, worked out once from its options."""

    address: str  # where the connection goes: the URL's host
    port: int
    tls: bool
    host_header: str  # also the SNI name and the name the certificate is checked against
    path: str
    verify_tls: bool

    @property
    def target(self) -> str:
        return f"{self.address}:{self.port}"


def request_for(options: HttpCheck) -> Request | ProbeResult:
    """The Request of a check, or the failure to report for a URL it cannot use."""
    parts = urlsplit(options.url)
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return failed(f"invalid URL: bad port in {_without_userinfo(options.url)}")
    return Request(address=parts.hostname or "localhost", port=port, tls=parts.scheme == "https",
                   host_header=options.host or parts.netloc.rpartition("@")[2],
                   path=(parts.path or "/") + (f"?{parts.query}" if parts.query else ""),
                   verify_tls=options.verify_tls)


class HttpProbe:
    """The probe of one http check: it keeps its connection alive between probes where the server
    allows it (HTTP/1.1 keep-alive, the whole answer read). A server that closed it meanwhile
    (its keep-alive timeout, a restart) costs a new connection, not a failure (checks/keeper.py).
    With `keep=False`, every probe connects anew and says `Connection: close` (the benchmark's
    baseline)."""

    def __init__(self, options: HttpCheck, keep: bool = True):
        self.options = options
        self.request = request_for(options)
        request = self.request
        self.keeper: ConnectionKeeper[HttpConnection] | None = None
        if isinstance(request, Request):
            self.keeper = ConnectionKeeper(lambda: HttpConnection(request, keep), keep)

    def __call__(self, deadline: Deadline) -> ProbeResult:
        if self.keeper is None:
            assert isinstance(self.request, ProbeResult)
            return self.request
        started = time.monotonic()
        try:
            answer = self.keeper.run(deadline, lambda connection, deadline: connection.get(deadline, started))
        except ProbeStopped as stop:
            return stop.result
        return classify(answer)

    def close(self) -> None:
        if self.keeper is not None:
            self.keeper.close()


def probe(options: HttpCheck, deadline: Deadline) -> ProbeResult:
    """One GET of `options.url` with the configured Host header over a new connection, closed after
    it: what every probe cost before connections were kept."""
    once = HttpProbe(options, keep=False)
    try:
        return once(deadline)
    finally:
        once.close()


class HttpConnection:
    """One HTTP/1.1 connection, opened here (not by http.client) so that the runner's abort can shut
    it down from the first byte on; every blocking call has the time left as its timeout."""

    def __init__(self, request: Request, keep_alive: bool = True):
        self.request = request
        self.keep_alive = keep_alive
        self._sock: socket.socket | None = None
        self._descriptor: int | None = None
        self._http: http.client.HTTPConnection | None = None
        self._sound = False

    # -- the keeper's protocol

    def establish(self, deadline: Deadline, breaker: SocketBreaker) -> None:
        request = self.request
        phase = "connecting"
        try:
            sock = socket.create_connection((request.address, request.port), timeout=deadline.remaining())
            self._sock = sock
            # By descriptor: wrapping for TLS detaches the plain socket object from it.
            self._descriptor = sock.fileno()
            breaker.watch(self.socket)
            if request.tls:
                phase = "TLS handshake"
                sock.settimeout(deadline.remaining())
                # The TLS socket takes the descriptor over at once and keeps it, so a failed handshake
                # leaves it open until close() (after the keeper has released the breaker).
                self._sock = _tls_context(request.verify_tls).wrap_socket(
                    sock, server_hostname=_host_name(request.host_header) or request.address,
                    do_handshake_on_connect=False)
                self._sock.do_handshake()
        except OSError as error:
            raise ProbeStopped(_failure(error, deadline, request.target, phase)) from None
        self._http = http.client.HTTPConnection(request.address, request.port, timeout=deadline.remaining())
        self._http.sock = self._sock  # http.client uses a socket that is already there as is
        self._sound = True

    def socket(self) -> int | None:
        return self._descriptor

    def stale(self) -> bool:
        return not self._sound or readable_now(self._sock)

    def sound(self) -> bool:
        return self._sound

    def close(self) -> None:
        self._sound = False
        if self._http is not None:
            self._http.close()
        if self._sock is not None:
            self._sock.close()

    # -- the request

    def get(self, deadline: Deadline, started: float) -> HttpAnswer:
        """GET the check's path; return the answer (at most BODY_READ_LIMIT bytes of its body).
        `started` is when the probe began, so a new connection counts in the latency."""
        assert self._http is not None and self._sock is not None
        request = self.request
        self._sound = False  # until the whole answer has been read on a connection left open
        phase = "waiting for the answer"
        headers = {"Host": request.host_header, "User-Agent": USER_AGENT, "Accept": "*/*"}
        if not self.keep_alive:
            headers["Connection"] = "close"
        response: http.client.HTTPResponse | None = None
        try:
            self._sock.settimeout(deadline.remaining())
            self._http.request("GET", request.path, headers=headers)
            response = self._http.getresponse()
            phase = "reading the answer"
            _ack_now(self._sock)
            self._sock.settimeout(deadline.remaining())
            body = response.read(BODY_READ_LIMIT)
            # Reusable only if the answer was read to its end and the server keeps the connection:
            # the rest of a longer body would otherwise be read as the next answer.
            self._sound = self.keep_alive and response.isclosed() and not response.will_close
            return HttpAnswer(response.status, body, response.getheader("Location"), time.monotonic() - started)
        except (OSError, http.client.HTTPException) as error:
            result = _failure(error, deadline, request.target, phase)
            if _lost(error) and response is None and not (deadline.aborted or deadline.expired()):
                raise ConnectionLost(result) from None
            raise ProbeStopped(result) from None
        finally:
            if response is not None and not self._sound:
                response.close()


def _ack_now(sock: socket.socket) -> None:
    """Acknowledge what has arrived at once (Linux). A server that writes the head and the body of
    an answer separately, without TCP_NODELAY, holds the body back until the head is acknowledged
    (Nagle), and on a connection kept alive this side delays that acknowledgement by up to 40 ms:
    every latency measured would be 40 ms too long. New connections do not meet this (they start
    in quick-ack mode), nor servers that write in one go (nginx)."""
    quickack = getattr(socket, "TCP_QUICKACK", None)
    if quickack is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, quickack, 1)


def _lost(error: BaseException) -> bool:
    """True if the connection broke before an answer began: the server closed or reset it (on a
    kept connection: its keep-alive ended just as the request went out)."""
    return isinstance(error, ConnectionResetError | BrokenPipeError | ConnectionAbortedError
                      | http.client.RemoteDisconnected)


def _failure(error: BaseException, deadline: Deadline, target: str, phase: str) -> ProbeResult:
    if deadline.aborted or deadline.expired() or isinstance(error, TimeoutError | socket.timeout):
        return failed(f"timeout: no answer from {target} within {deadline.timeout:.3g} s ({phase})", target=target)
    if isinstance(error, ConnectionRefusedError):
        return failed(f"connection refused by {target}", hard=True, target=target)
    if isinstance(error, ssl.SSLCertVerificationError):
        return failed(f"TLS certificate not accepted: {error.verify_message}", target=target)
    if isinstance(error, socket.gaierror):
        return failed(f"cannot resolve {target}: {error.strerror}", target=target)
    if isinstance(error, http.client.HTTPException):  # something answered, but not in HTTP
        detail = one_line(f"{type(error).__name__}: {error}").rstrip(": ")
        return failed(f"{phase}: not a valid HTTP answer ({detail})", target=target)
    if isinstance(error, OSError) and error.strerror:
        return failed(f"{phase}: {error.strerror}", target=target)
    return failed(one_line(f"{phase}: {type(error).__name__}: {error}").rstrip(": "), target=target)


def _tls_context(verify: bool) -> ssl.SSLContext:
    context = ssl.create_default_context()
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def _host_name(host_header: str) -> str:
    """The name in a Host header, without a port ("shop.example.org:8443" -> "shop.example.org")."""
    if host_header.startswith("["):
        return host_header[1:].partition("]")[0]
    return host_header.rpartition(":")[0] if host_header.count(":") == 1 else host_header


def _without_userinfo(url: str) -> str:
    return re.sub(r"(://)[^/@]*@", r"\1", url)
