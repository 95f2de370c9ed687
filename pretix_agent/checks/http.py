"""HTTP check: pretix's `GET /healthcheck/`, with the Host header pretix expects.

pretix answers 400 ("Unknown host") to a request for a bare IP address, so the check sends the
configured Host header; over https that name is also the one sent as SNI and verified in the
certificate, while the connection goes to the URL's address. 200 passes; anything else fails
with the status and the start of the body. Redirects are not followed: a redirect to a login page
is not a healthy pretix.

The socket is opened here (not by http.client) so that the runner's abort can shut it down from
the first byte on; every blocking call also has the time left as its timeout.
"""

from __future__ import annotations

import http.client
import re
import socket
import ssl
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from .model import Deadline, ProbeResult, failed, passed
from .sockets import SocketBreaker
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


def probe(options: HttpCheck, deadline: Deadline) -> ProbeResult:
    """One GET of `options.url` with the configured Host header."""
    parts = urlsplit(options.url)
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return failed(f"invalid URL: bad port in {_without_userinfo(options.url)}")
    address = parts.hostname or "localhost"
    host_header = options.host or parts.netloc.rpartition("@")[2]
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    target = f"{address}:{port}"
    breaker = SocketBreaker(deadline)
    phase = "connecting"
    sock: socket.socket | None = None
    response: http.client.HTTPResponse | None = None
    started = time.monotonic()
    try:
        sock = socket.create_connection((address, port), timeout=deadline.remaining())
        # By descriptor: wrapping for TLS detaches the plain socket object from it.
        descriptor = sock.fileno()
        breaker.watch(lambda: descriptor)
        if parts.scheme == "https":
            phase = "TLS handshake"
            sock.settimeout(deadline.remaining())
            # The TLS socket takes the descriptor over at once and keeps it, so a failed handshake
            # leaves it open until our finally (after the breaker's release).
            sock = _tls_context(options.verify_tls).wrap_socket(
                sock, server_hostname=_host_name(host_header) or address, do_handshake_on_connect=False)
            sock.do_handshake()
        phase = "waiting for the answer"
        connection = http.client.HTTPConnection(address, port, timeout=deadline.remaining())
        connection.sock = sock  # http.client uses a socket that is already there as is
        sock.settimeout(deadline.remaining())
        connection.request("GET", path, headers={"Host": host_header, "User-Agent": USER_AGENT,
                                                 "Accept": "*/*", "Connection": "close"})
        response = connection.getresponse()
        phase = "reading the answer"
        sock.settimeout(deadline.remaining())
        body = response.read(BODY_READ_LIMIT)
        answer = HttpAnswer(response.status, body, response.getheader("Location"), time.monotonic() - started)
    except (OSError, http.client.HTTPException) as error:
        return _failure(error, deadline, target, phase)
    finally:
        breaker.release()
        if response is not None:
            response.close()
        if sock is not None:
            sock.close()
    return classify(answer)


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
