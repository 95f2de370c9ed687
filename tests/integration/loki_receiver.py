"""A Loki-compatible push receiver for tests and the demo (Loki itself is not installable here).

It implements `POST /loki/api/v1/push` with JSON bodies as Loki documents them, and behaves as a
Loki distributor + ingester does where our shipper can tell the difference:

- Body: `{"streams": [{"stream": {label: value}, "values": [["<ns as a string>", "<line>"(,
  {structured metadata})], ...]}]}`, `Content-Type: application/json`, optionally
  `Content-Encoding: gzip` (or deflate). Success is 204 with an empty body.
- A body that does not decode (bad JSON, bad gzip, a numeric timestamp, a value that is not a
  2- or 3-element array, another Content-Type) is refused whole: 400 with a text body.
- Validation is per stream and per entry, as Loki does it: a stream with no labels ("at least one
  label pair is required per stream") or an invalid label name (`[a-zA-Z_][a-zA-Z0-9_]*`) is skipped,
  so is an entry longer than `max_line_bytes` (off by default) or older than the stream's newest
  entry minus `out_of_order_window` (Loki's unordered writes: max_chunk_age / 2 = 1 h by default);
  the rest of the request is stored, and the answer is 400 naming what was refused.
- Structured metadata (Loki 3: the optional third element of a value, an object of strings) is
  stored with its line (`metadata` in `lines()`); a name that is not a valid label name, or any
  metadata at all with `allow_structured_metadata=False` (Loki 2.x, or a tenant without the
  feature), refuses that entry as Loki does.
- Exact duplicates (same tenant, stream labels, timestamp and line) are dropped silently and counted.
- The tenant comes from `X-Scope-OrgID`; without it the tenant is "fake" (Loki's single-tenant
  name), or 401 with `require_tenant=True`. Optional basic or bearer credentials give 401 when wrong
  (Loki itself has no auth; a proxy in front does this).
- A body larger than `max_body_bytes` (as sent, i.e. compressed, like nginx's client_max_body_size)
  gets 413.
Not modelled: Loki's rate limits (script a 429 instead), `reject_old_samples`, label value length.

Scripting, from Python: `script([500] * 20)` (each push takes the next action: a status to answer
without storing, "hang" to never answer, "store-then-hang" to store and never answer, "ok"),
`fail_for(seconds, status=503)`, `refuse()` (close the listening socket and every open connection,
so connections are refused) and `accept()`, `release()` (end the hangs). The same is reachable over
HTTP for other processes: `POST /test/script {"actions": [...]}`, `POST /test/fail_for {"seconds": S,
"status": N}`, `POST /test/reset`; `GET /test/lines?tenant=T` returns every stored line with its
labels and timestamp, in arrival order; `GET /test/count` how many were stored; `GET /test/pushes` the
pushes seen; `GET /ready`. With `count_only=True` (`--count-only`) lines are validated and counted but
not kept (nor deduplicated), for benchmarks of a million lines.

Port: without one, a candidate outside the kernel's ephemeral range (tests/ports.py), a fresh one
if it is in use; not port 0, since `refuse()` and `accept()` close and reopen it, and an ephemeral
port may be taken by an outbound connection meanwhile.

Run it alone: `python3 -m tests.integration.loki_receiver --port 3100 [--verbose]` (`--port 0`: a
candidate port; the first line on stderr names the URL).
"""

from __future__ import annotations

import argparse
import base64
import gzip
import json
import re
import signal
import socket
import sys
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.ports import start_with_ports

PUSH_PATH = "/loki/api/v1/push"
LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")  # Loki's (Prometheus's) rule, kept apart from the agent's
DEFAULT_TENANT = "fake"
# Loki's words when a tenant may not send structured metadata (pkg/validation).
METADATA_DISALLOWED = ("stream '{stream}' includes structured metadata, but this feature is disallowed. Please see "
                       "`limits_config.structured_metadata` or contact your Loki administrator to enable it.")


class BadRequest(Exception):
    """The body does not decode: Loki refuses the whole request with 400."""


@dataclass
class Push:
    """One push request as the receiver saw it."""

    at: float
    status: int
    tenant: str | None
    content_type: str
    content_encoding: str
    body_bytes: int
    entries: int = 0
    stored: int = 0
    duplicates: int = 0
    authorization: bool = False
    message: str = ""


@dataclass
class _Stream:
    entries: set[tuple[int, str]] = field(default_factory=set)
    newest: int = 0


def labels_text(labels: dict[str, str]) -> str:
    return "{" + ", ".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"


def decode_push(body: bytes, content_type: str, content_encoding: str) -> list[dict[str, Any]]:
    """Return the streams of a push body, or raise BadRequest with Loki-like words."""
    if content_type.split(";", 1)[0].strip().lower() != "application/json":
        raise BadRequest(f"unsupported Content-Type {content_type!r}: this receiver speaks JSON only "
                         "(Loki would try protobuf and fail)")
    encoding = content_encoding.strip().lower()
    try:
        if encoding == "gzip":
            body = gzip.decompress(body)
        elif encoding == "deflate":
            body = zlib.decompress(body)
        elif encoding not in ("", "identity"):
            raise BadRequest(f"unsupported Content-Encoding {content_encoding!r}")
    except (OSError, EOFError, zlib.error) as error:
        raise BadRequest(f"cannot decompress the {encoding} body: {error}") from None
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError) as error:
        raise BadRequest(f"the body is not JSON: {error}") from None
    if not isinstance(document, dict) or not isinstance(document.get("streams"), list):
        raise BadRequest('the body must be an object with a "streams" array')
    streams = []
    for index, stream in enumerate(document["streams"]):
        where = f"streams[{index}]"
        if not isinstance(stream, dict):
            raise BadRequest(f"{where} must be an object")
        labels = stream.get("stream", {})
        if not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values()):
            raise BadRequest(f"{where}.stream must be an object of strings")
        values = stream.get("values", [])
        if not isinstance(values, list):
            raise BadRequest(f"{where}.values must be an array")
        entries = []
        for position, value in enumerate(values):
            here = f"{where}.values[{position}]"
            if not isinstance(value, list) or len(value) not in (2, 3):
                raise BadRequest(f"{here} must be [timestamp, line] or [timestamp, line, metadata]")
            stamp, line = value[0], value[1]
            if not isinstance(stamp, str):
                raise BadRequest(f"{here}[0]: the timestamp must be a string of Unix nanoseconds, got "
                                 f"{type(stamp).__name__} {stamp!r}")
            if not stamp.isdigit():
                raise BadRequest(f"{here}[0]: cannot parse timestamp {stamp!r} as Unix nanoseconds")
            if not isinstance(line, str):
                raise BadRequest(f"{here}[1]: the line must be a string")
            metadata = value[2] if len(value) == 3 else {}
            if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
                raise BadRequest(f"{here}[2]: structured metadata must be an object of strings")
            entries.append((int(stamp), line, metadata))
        streams.append({"labels": labels, "entries": entries})
    return streams


def label_problem(labels: dict[str, str]) -> str | None:
    """Return why Loki would refuse this label set, or None."""
    present = {k: v for k, v in labels.items() if v != ""}  # an empty value is no label at all
    if not present:
        return "error at least one label pair is required per stream"
    for name in present:
        if not LABEL_NAME.fullmatch(name):
            return (f"error parsing labels {labels_text(labels)}: invalid label name {name!r}, "
                    "must match [a-zA-Z_][a-zA-Z0-9_]*")
    return None


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    receiver: LokiReceiver

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that gave up (a timeout, an aborted push) or a refuse() cutting connections is
        # part of the tests, not an error worth a traceback.
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as Loki's Go server
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.server.receiver._connections.add(self.connection)

    def finish(self) -> None:
        self.server.receiver._connections.discard(self.connection)
        try:
            super().finish()
        except OSError:
            pass

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.receiver.verbose:
            sys.stderr.write("loki-receiver: " + (format % args) + "\n")

    def _reply(self, status: int, text: str = "", content_type: str = "text/plain; charset=utf-8") -> None:
        body = text.encode("utf-8") if status != 204 else b""
        self.send_response(status)
        if status != 204:
            self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body:
            self.wfile.write(body)

    def _read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        chunks = []
        while length > 0:
            chunk = self.rfile.read(min(length, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            length -= len(chunk)
        return b"".join(chunks)

    def do_GET(self) -> None:
        receiver = self.server.receiver
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        if url.path == "/ready":
            self._reply(200, "ready\n")
        elif url.path == "/test/lines":
            tenant = query.get("tenant", [None])[0]
            self._reply(200, json.dumps(receiver.lines(tenant)), "application/json")
        elif url.path == "/test/count":
            self._reply(200, json.dumps({"lines": receiver.counted, "duplicates": receiver.duplicates}),
                        "application/json")
        elif url.path == "/test/pushes":
            self._reply(200, json.dumps([vars(push) for push in receiver.pushes()]), "application/json")
        else:
            self._reply(404, "404 page not found\n")

    def do_POST(self) -> None:
        receiver = self.server.receiver
        path = urlsplit(self.path).path
        if path == PUSH_PATH:
            receiver._push(self)
            return
        body = self._read_body()
        try:
            document = json.loads(body or b"{}")
        except ValueError:
            self._reply(400, "not JSON\n")
            return
        if path == "/test/script":
            receiver.script(document.get("actions", []))
        elif path == "/test/fail_for":
            receiver.fail_for(float(document.get("seconds", 1.0)), int(document.get("status", 503)))
        elif path == "/test/reset":
            receiver.reset()
        else:
            self._reply(404, "404 page not found\n")
            return
        self._reply(204)


class LokiReceiver:
    """A Loki push endpoint on 127.0.0.1 (a candidate port unless `port` is given), for one test."""

    def __init__(self, port: int = 0, *, max_body_bytes: int | None = None, max_line_bytes: int | None = None,
                 out_of_order_window: float = 3600.0, require_tenant: bool = False,
                 basic_auth: tuple[str, str] | None = None, bearer_token: str | None = None,
                 verbose: bool = False, on_line: Callable[[dict[str, Any]], None] | None = None,
                 count_only: bool = False, allow_structured_metadata: bool = True):
        self.port = port
        self.max_body_bytes = max_body_bytes
        self.max_line_bytes = max_line_bytes
        self.out_of_order_window_ns = int(out_of_order_window * 1e9)
        self.require_tenant = require_tenant
        self.basic_auth = basic_auth
        self.bearer_token = bearer_token
        self.verbose = verbose
        self.on_line = on_line
        self.count_only = count_only  # validate and count, keep nothing (benchmarks of a million lines)
        self.allow_structured_metadata = allow_structured_metadata
        self.counted = 0
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._records: list[dict[str, Any]] = []
        self._streams: dict[tuple[str, tuple[tuple[str, str], ...]], _Stream] = {}
        self._pushes: list[Push] = []
        self._actions: list[int | str] = []
        self._fail_until = 0.0
        self._fail_status = 503
        self._release = threading.Event()
        self._connections: set[socket.socket] = set()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.duplicates = 0

    # -- lifecycle -------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> LokiReceiver:
        if self.port:
            server = _Server(("127.0.0.1", self.port), _Handler)
        else:
            server = start_with_ports(lambda port: _Server(("127.0.0.1", port), _Handler), what="the Loki receiver")
        server.receiver = self
        self.port = server.server_address[1]
        self._server = server
        self._release.clear()
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"loki-receiver-{self.port}", daemon=True)
        self._thread.start()
        return self

    def refuse(self) -> None:
        """Close the listening socket and every open connection: new connections are refused."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        for connection in list(self._connections):
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._release.set()

    def accept(self) -> None:
        """Listen again on the same port."""
        if self._server is None:
            self.start()

    def stop(self) -> None:
        self.refuse()

    def __enter__(self) -> LokiReceiver:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    # -- scripting -------------------------------------------------------------------------------

    def script(self, actions: list[int | str]) -> None:
        """Answer the next pushes with these actions, in order: a status code, "hang", "store-then-hang", "ok"."""
        with self._lock:
            self._actions.extend(actions)

    def fail_for(self, seconds: float, status: int = 503) -> None:
        with self._lock:
            self._fail_until = time.monotonic() + seconds
            self._fail_status = status

    def release(self) -> None:
        """Let every hung request end (their connections are closed without an answer)."""
        self._release.set()

    def reset(self) -> None:
        with self._lock:
            self._records.clear()
            self._streams.clear()
            self._pushes.clear()
            self._actions.clear()
            self._fail_until = 0.0
            self.duplicates = 0
            self.counted = 0

    # -- queries ---------------------------------------------------------------------------------

    def lines(self, tenant: str | None = None) -> list[dict[str, Any]]:
        """Every stored line, in arrival order: {"tenant", "labels", "ts" (ns string), "line", "metadata"}."""
        with self._lock:
            return [dict(r) for r in self._records if tenant is None or r["tenant"] == tenant]

    def texts(self, tenant: str | None = None) -> list[str]:
        return [record["line"] for record in self.lines(tenant)]

    def pushes(self) -> list[Push]:
        with self._lock:
            return list(self._pushes)

    def wait_for_lines(self, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        """Wait until at least `count` lines are stored; return them. Raise AssertionError on timeout."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while len(self._records) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"timed out after {timeout} s waiting for {count} lines in the "
                                         f"receiver; it has {len(self._records)}")
                self._changed.wait(left)
            return [dict(r) for r in self._records]

    # -- the push endpoint -----------------------------------------------------------------------

    def _next_action(self) -> int | str | None:
        with self._lock:
            if self._actions:
                return self._actions.pop(0)
            if time.monotonic() < self._fail_until:
                return self._fail_status
        return None

    def _hang(self) -> None:
        self._release.wait()

    def _authorized(self, header: str | None) -> bool:
        if self.basic_auth is not None:
            expected = "Basic " + base64.b64encode(":".join(self.basic_auth).encode()).decode()
            return header == expected
        if self.bearer_token is not None:
            return header == f"Bearer {self.bearer_token}"
        return True

    def _push(self, handler: _Handler) -> None:
        headers = handler.headers
        body = handler._read_body()
        push = Push(at=time.time(), status=0, tenant=headers.get("X-Scope-OrgID"),
                    content_type=headers.get("Content-Type", ""), content_encoding=headers.get("Content-Encoding", ""),
                    body_bytes=len(body), authorization="Authorization" in headers)
        status, message = self._handle(push, body, headers.get("Authorization"))
        push.status, push.message = status, message
        with self._lock:
            self._pushes.append(push)
            self._changed.notify_all()
        if status == 0:  # hang: never answer; the connection is closed when released
            self._hang()
            handler.close_connection = True
            return
        handler._reply(status, message + ("\n" if message else ""))

    def _handle(self, push: Push, body: bytes, authorization: str | None) -> tuple[int, str]:
        action = self._next_action()
        if isinstance(action, int):
            return action, f"scripted answer {action}"
        if action == "hang":
            return 0, ""
        if not self._authorized(authorization):
            return 401, "unauthorized"
        tenant = push.tenant or (None if self.require_tenant else DEFAULT_TENANT)
        if tenant is None:
            return 401, "no org id"
        if self.max_body_bytes is not None and len(body) > self.max_body_bytes:
            return 413, f"request body too large: {len(body)} bytes, the limit is {self.max_body_bytes}"
        try:
            streams = decode_push(body, push.content_type, push.content_encoding)
        except BadRequest as error:
            return 400, str(error)
        problems = self._store(push, tenant, streams)
        if action == "store-then-hang":
            return 0, ""
        if problems:
            return 400, "\n".join(problems[:20])
        return 204, ""

    def _store(self, push: Push, tenant: str, streams: list[dict[str, Any]]) -> list[str]:
        problems: list[str] = []
        stored: list[dict[str, Any]] = []
        if self.count_only:
            with self._lock:
                for stream in streams:
                    problem = label_problem(stream["labels"])
                    if problem:
                        problems.append(problem)
                        continue
                    push.entries += len(stream["entries"])
                    push.stored += len(stream["entries"])
                    self.counted += len(stream["entries"])
                self._changed.notify_all()
            return problems
        with self._lock:
            for stream in streams:
                labels = stream["labels"]
                push.entries += len(stream["entries"])
                problem = label_problem(labels)
                if problem:
                    problems.append(problem)
                    continue
                key = (tenant, tuple(sorted((k, v) for k, v in labels.items() if v != "")))
                state = self._streams.setdefault(key, _Stream())
                for stamp, line, metadata in stream["entries"]:
                    refused = self._metadata_problem(labels, metadata)
                    if refused:
                        problems.append(refused)
                        continue
                    if self.max_line_bytes is not None and len(line.encode()) > self.max_line_bytes:
                        problems.append(f"Max entry size '{self.max_line_bytes}' bytes exceeded for stream "
                                        f"'{labels_text(labels)}' while adding an entry with length "
                                        f"'{len(line.encode())}' bytes")
                        continue
                    if stamp < state.newest - self.out_of_order_window_ns:
                        problems.append(f"entry with timestamp {stamp} ignored, reason: 'entry too far behind, "
                                        f"oldest acceptable timestamp is: {state.newest - self.out_of_order_window_ns}'"
                                        f" for stream: {labels_text(labels)}")
                        continue
                    if (stamp, line) in state.entries:
                        self.duplicates += 1
                        push.duplicates += 1
                        continue
                    state.entries.add((stamp, line))
                    state.newest = max(state.newest, stamp)
                    record = {"tenant": tenant, "labels": dict(key[1]), "ts": str(stamp), "line": line,
                              "metadata": metadata}
                    self._records.append(record)
                    stored.append(record)
                    push.stored += 1
                    self.counted += 1
            self._changed.notify_all()
        if self.on_line is not None:
            for record in stored:
                self.on_line(record)
        return problems


    def _metadata_problem(self, labels: dict[str, str], metadata: dict[str, str]) -> str | None:
        if not metadata:
            return None
        if not self.allow_structured_metadata:
            return METADATA_DISALLOWED.format(stream=labels_text(labels))
        for name in metadata:
            if not LABEL_NAME.fullmatch(name):
                return f"invalid structured metadata name {name!r} for stream {labels_text(labels)}"
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m tests.integration.loki_receiver",
                                     description="A Loki-compatible push receiver on 127.0.0.1.")
    parser.add_argument("--port", type=int, default=3100, help="0: a port outside the ephemeral range")
    parser.add_argument("--max-body-bytes", type=int, default=None)
    parser.add_argument("--verbose", action="store_true", help="print every stored line on stdout")
    parser.add_argument("--count-only", action="store_true", help="validate and count lines, keep none")
    args = parser.parse_args(argv)

    def show(record: dict[str, Any]) -> None:
        print(f"{record['tenant']} {labels_text(record['labels'])} {record['line']}", flush=True)

    receiver = LokiReceiver(args.port, max_body_bytes=args.max_body_bytes, verbose=args.verbose,
                            on_line=show if args.verbose else None, count_only=args.count_only)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    receiver.start()
    print(f"loki-receiver: listening on {receiver.url}{PUSH_PATH}", file=sys.stderr, flush=True)
    stop.wait()
    receiver.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
