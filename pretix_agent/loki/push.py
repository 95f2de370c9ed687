"""Loki's push API over HTTP: the request, the credentials, and what each answer means.

`POST {url}/loki/api/v1/push` with a gzipped JSON body
`{"streams": [{"stream": {label: value}, "values": [["<ns>", "<line>", {metadata}], ...]}]}`: one
stream per label set, lines in the order they were logged. Timestamps are strings of nanoseconds,
as Loki requires. The third element, the line's structured metadata (`{"level": "error", "event":
"check.failing"}`), is Loki 3's; with `[loki] structured_metadata = false` (an older Loki, which
refuses it with 400) and for a line without any, values are the two-element `["<ns>", "<line>"]`.

What an answer means for the batch (`classify`):
- 2xx: accepted.
- 400: Loki refused the content (a line too long, too old, invalid labels). Loki has already stored
  the valid lines of the batch; sending it again would fail the same way. Drop it and count it.
- 413: the body is too big for Loki or a proxy in front. Split the batch in halves; a single line
  that is still too big is truncated.
- 401, 403, 404, 405, 3xx: a configuration error (credentials, tenant, URL). Hold the batch, retry
  slowly, say so in the status: nothing is dropped for a problem an operator can fix.
- 429, 5xx, 408, other statuses, network errors and timeouts: retry with jittered exponential
  backoff from `min_backoff` to `max_backoff`, with no cap on the number of retries. promtail and
  Alloy give up after 10 retries (~8.5 minutes with their defaults) and lose the batch; we do not.
"""

from __future__ import annotations

import base64
import enum
import gzip
import http.client
import json
import random
import socket
import ssl
import time
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import __version__
from ..config import LokiSection
from ..redact import redact_text
from .entries import Entry, Labels

PUSH_PATH = "/loki/api/v1/push"
# Level 1: measured on a 1.2 MB batch of access lines, 40% of level 6's CPU (4.4 against 11.2 ms) for a
# body a third larger (7.6:1 against 10:1). The agent shares its cores with pretix; bytes are cheap.
GZIP_LEVEL = 1
# A refusal's text is logged; a proxy's HTML error page need not be logged whole.
MESSAGE_LIMIT = 512
SECRET_FILE_LIMIT = 64 * 1024
# The slowest retry while holding for an operator (401/403): once a minute, or max_backoff if lower.
HOLD_RETRY_CAP = 60.0


# ---------------------------------------------------------------------------------------------
# The request body.


def group_streams(entries: Sequence[Entry], metadata: bool = True) -> dict[Labels, list[list[Any]]]:
    """Given entries in order, return their values per label set, streams in order of first line;
    with `metadata`, a line's structured metadata is its value's third element."""
    streams: dict[Labels, list[list[Any]]] = {}
    for entry in entries:
        values = streams.get(entry.labels)
        if values is None:
            values = streams[entry.labels] = []
        if metadata and entry.metadata:
            values.append([str(entry.ts_ns), entry.line, dict(entry.metadata)])
        else:
            values.append([str(entry.ts_ns), entry.line])
    return streams


def build_body(entries: Sequence[Entry], metadata: bool = True) -> bytes:
    """Given entries in order, return the JSON push body (UTF-8, not yet compressed)."""
    document = {"streams": [{"stream": dict(labels), "values": values}
                            for labels, values in group_streams(entries, metadata).items()]}
    # "replace": a lone surrogate in a logged string must not make the whole batch unencodable.
    return json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode("utf-8", "replace")


def compress(body: bytes) -> bytes:
    return gzip.compress(body, compresslevel=GZIP_LEVEL, mtime=0)


def truncate_line(line: str, keep_bytes: int, original_bytes: int | None = None) -> str:
    """Return the first `keep_bytes` bytes of `line` (cut at a character boundary) and a marker
    saying how many bytes were cut, counted from `original_bytes` (default: the line's own size)."""
    encoded = line.encode("utf-8", "replace")
    original = len(encoded) if original_bytes is None else original_bytes
    kept = encoded[:max(0, keep_bytes)].decode("utf-8", "ignore")
    cut = original - len(kept.encode("utf-8"))
    return f"{kept}…[truncated {cut} bytes]"


def split_halves(entries: Sequence[Entry]) -> tuple[Sequence[Entry], Sequence[Entry]]:
    middle = len(entries) // 2
    return entries[:middle], entries[middle:]


# ---------------------------------------------------------------------------------------------
# Answers.


class Outcome(enum.Enum):
    ACCEPTED = "accepted"
    REJECTED = "rejected"    # 400: drop and count
    TOO_LARGE = "too_large"  # 413: split, or truncate a single line
    HOLD = "hold"            # configuration error: keep the batch, retry slowly
    RETRY = "retry"          # transient: back off and retry, forever


_HOLD_STATUSES = {401, 403, 404, 405}


def classify(status: int | None) -> Outcome:
    """Given an HTTP status (None for a network error or timeout), return what to do with the batch."""
    if status is None:
        return Outcome.RETRY
    if 200 <= status < 300:
        return Outcome.ACCEPTED
    if status == 400:
        return Outcome.REJECTED
    if status == 413:
        return Outcome.TOO_LARGE
    if status in _HOLD_STATUSES or 300 <= status < 400:
        return Outcome.HOLD
    return Outcome.RETRY


@dataclass(frozen=True)
class PushResult:
    outcome: Outcome
    status: int | None
    message: str
    retry_after: float | None = None
    seconds: float = 0.0
    body_bytes: int = 0


def describe(result: PushResult) -> str:
    """One line for logs and the status: "HTTP 503: <message>" or the network error."""
    if result.status is None:
        return result.message
    return f"HTTP {result.status}" + (f": {result.message}" if result.message else "")


# ---------------------------------------------------------------------------------------------
# Backoff.


class Backoff:
    """Jittered exponential delays: the n-th (from 0) is uniform in [d/2, d] with
    d = min(max_backoff, 2**(n+1) * min_backoff), so every delay lies in [min_backoff, max_backoff]
    and nodes that lost Loki together do not come back in lockstep. It never runs out."""

    def __init__(self, minimum: float, maximum: float, rand: Callable[[], float] = random.random):
        self.minimum = minimum
        self.maximum = max(minimum, maximum)
        self.rand = rand
        self.attempt = 0
        self.current = 0.0

    def next(self) -> float:
        # Cap the exponent: 2**attempt overflows a float after ~1000 retries, and we never stop.
        ceiling = min(self.maximum, self.minimum * 2 ** min(self.attempt + 1, 60))
        self.current = max(self.minimum, min(self.maximum, ceiling / 2 + self.rand() * ceiling / 2))
        self.attempt += 1
        return self.current

    def reset(self) -> None:
        self.attempt = 0
        self.current = 0.0


def hold_delay(section: LokiSection, rand: Callable[[], float] = random.random) -> float:
    """The wait between retries while a configuration error holds the batch."""
    slowest = max(section.min_backoff, min(section.max_backoff, HOLD_RETRY_CAP))
    return slowest * (0.75 + 0.25 * rand())


def parse_retry_after(value: str | None) -> float | None:
    """Given a Retry-After header in seconds, return them (HTTP dates are ignored); None if absent."""
    if not value:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    return seconds if 0 <= seconds < 86400 else None


# ---------------------------------------------------------------------------------------------
# Credentials.


@dataclass(frozen=True)
class Credentials:
    """The Authorization header value (or None), or the problem that kept us from building it."""

    authorization: str | None = None
    problem: str | None = None

    def __repr__(self) -> str:  # never show the secret, not even in a traceback
        return f"Credentials(authorization={'***' if self.authorization else None}, problem={self.problem!r})"


def _read_secret(path: Path) -> str:
    with open(path, "rb") as handle:
        data = handle.read(SECRET_FILE_LIMIT + 1)
    if len(data) > SECRET_FILE_LIMIT:
        raise ValueError(f"larger than {SECRET_FILE_LIMIT} bytes")
    text = data.decode("utf-8").strip()
    if not text:
        raise ValueError("empty")
    return text


def load_credentials(section: LokiSection) -> Credentials:
    """Read the password or token file named in `section`; return the header or the problem.

    The problem names the file and the reason, never the content.
    """
    key, path = (("password_file", section.password_file) if section.password_file is not None
                 else ("bearer_token_file", section.bearer_token_file))
    if path is None:
        return Credentials()
    try:
        secret = _read_secret(path)
    except (OSError, ValueError) as error:
        reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
        if isinstance(error, UnicodeDecodeError):
            reason = "not UTF-8 text"
        return Credentials(problem=f"cannot use [loki] {key} {path}: {reason}")
    if key == "password_file":
        pair = f"{section.username}:{secret}".encode()
        return Credentials(authorization="Basic " + base64.b64encode(pair).decode("ascii"))
    return Credentials(authorization="Bearer " + secret)


# ---------------------------------------------------------------------------------------------
# The client.


def push_url(base: str) -> str:
    """Given `[loki] url` (a base URL, or already the push endpoint), return the push endpoint."""
    stripped = base.rstrip("/")
    return stripped if stripped.endswith(PUSH_PATH) else stripped + PUSH_PATH


def redacted_url(url: str) -> str:
    return redact_text(url)


class PushClient:
    """Sends one body at a time over a kept-alive connection; every failure is a PushResult."""

    def __init__(self, url: str, tenant: str = "", credentials: Credentials | None = None,
                 timeout: float = 10.0, ssl_context: ssl.SSLContext | None = None, structured_metadata: bool = True):
        self.url = push_url(url)
        parts = urllib.parse.urlsplit(self.url)
        self.scheme = parts.scheme
        self.host = parts.hostname or ""
        self.port = parts.port
        self.path = parts.path + (f"?{parts.query}" if parts.query else "")
        self.tenant = tenant
        # user:password@ in the URL: basic auth, as curl does (the config allows it; files are better).
        self._url_credentials = Credentials()
        if parts.username is not None:
            pair = f"{urllib.parse.unquote(parts.username)}:{urllib.parse.unquote(parts.password or '')}"
            self._url_credentials = Credentials(authorization="Basic " + base64.b64encode(pair.encode()).decode())
        self.credentials = self._url_credentials
        self.update_credentials(credentials or Credentials())
        self.timeout = timeout
        self.ssl_context = ssl_context
        self.structured_metadata = structured_metadata
        self._connection: http.client.HTTPConnection | None = None

    def update_credentials(self, credentials: Credentials) -> None:
        """Use credentials read from a file (or their problem); without any, those in the URL."""
        self.credentials = credentials if credentials.authorization or credentials.problem else self._url_credentials

    def headers(self, body_bytes: int) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Content-Encoding": "gzip",
                   "Content-Length": str(body_bytes), "User-Agent": f"pretix-agent/{__version__}"}
        if self.tenant:
            headers["X-Scope-OrgID"] = self.tenant
        if self.credentials.authorization:
            headers["Authorization"] = self.credentials.authorization
        return headers

    def _connect(self, timeout: float) -> http.client.HTTPConnection:
        if self._connection is None:
            if self.scheme == "https":
                context = self.ssl_context or ssl.create_default_context()
                self._connection = http.client.HTTPSConnection(self.host, self.port, timeout=timeout,
                                                               context=context)
            else:
                self._connection = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        self._connection.timeout = timeout
        return self._connection

    def push(self, entries: Sequence[Entry], timeout: float | None = None) -> PushResult:
        """Send `entries` as one request; return what happened (never raises for network trouble)."""
        if self.credentials.problem:
            return PushResult(Outcome.HOLD, None, self.credentials.problem)
        body = compress(build_body(entries, self.structured_metadata))
        return self.push_body(body, timeout)

    def push_body(self, body: bytes, timeout: float | None = None) -> PushResult:
        budget = self.timeout if timeout is None else min(self.timeout, timeout)
        started = time.monotonic()
        deadline = started + budget
        try:
            connection = self._connect(budget)
            connection.request("POST", self.path, body=body, headers=self.headers(len(body)))
            if connection.sock is not None:  # the answer gets what is left of the budget, not a fresh one
                connection.sock.settimeout(max(0.001, deadline - time.monotonic()))
            response = connection.getresponse()
            text = response.read(MESSAGE_LIMIT * 4)
            if not response.isclosed():
                response.read()  # drain a long error page so the connection can be reused
            status = response.status
            retry_after = parse_retry_after(response.getheader("Retry-After"))
            if response.getheader("Connection", "").lower() == "close":
                self.close()
        except (OSError, http.client.HTTPException) as error:
            self.close()
            return PushResult(Outcome.RETRY, None, _network_error(error, budget), None,
                              time.monotonic() - started, len(body))
        message = " ".join(text.decode("utf-8", "replace").split())[:MESSAGE_LIMIT]
        return PushResult(classify(status), status, message, retry_after, time.monotonic() - started, len(body))

    def abort(self) -> None:
        """From another thread: make a push in progress fail at once (its socket is shut down)."""
        connection = self._connection
        sock = connection.sock if connection is not None else None
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        if self._connection is not None:
            try:
                self._connection.close()
            except OSError:
                pass
            self._connection = None


def _network_error(error: BaseException, budget: float) -> str:
    if isinstance(error, socket.timeout | TimeoutError):
        return f"no answer within {budget:g} s"
    if isinstance(error, ConnectionRefusedError):
        return "connection refused"
    if isinstance(error, ssl.SSLCertVerificationError):
        return f"TLS certificate not trusted: {error.verify_message}"
    if isinstance(error, socket.gaierror):
        return f"cannot resolve the host: {error.strerror}"
    if isinstance(error, OSError) and error.strerror:
        return error.strerror.lower() if error.strerror[:1].isupper() else error.strerror
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
