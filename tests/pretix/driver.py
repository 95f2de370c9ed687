"""An order driver over pretix's REST API: open loop, bounded rate, then a reckoning with the database.

    driver = OrderDriver(endpoint, shop, rate=5.0, run_id="kill-1")
    driver.run(seconds=30)                 # or start() ... stop()
    reckoning = driver.reckon(orders_in_db)  # {email: count} read from PostgreSQL afterwards

Open loop: order n is sent at start + n / rate whether or not earlier ones were answered (each on
its own thread and its own connection), so a hung node shows up as late and failed orders instead
of as a driver that slows down with it. At most `max_in_flight` requests are open at once; an order
that would pass that bound is not sent and counted as `not_sent` (the bound keeps a dead cluster
from growing threads without end). Every request has a timeout. stdlib only.

Each order carries a unique e-mail address (`<run_id>-<n>@driver.invalid`), so the database says
afterwards which orders exist. The reckoning sorts every order into one of:
  ok                   201 answered, and in the database once
  failed               an error answered (or no answer), and not in the database: the client knows
  committed_with_error an error answered (or no answer), but in the database: the client thinks it
                       failed, the shop sold it (a retry would sell it twice)
  lost                 201 answered, but not in the database
  duplicated           in the database more than once
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

HOST_HEADER = "tickets.example.org"
EMAIL_DOMAIN = "driver.invalid"


class UnixHTTPConnection(http.client.HTTPConnection):
    """http.client over a Unix socket (haproxy's frontends listen on one)."""

    def __init__(self, path: str, timeout: float):
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.unix_path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


@dataclass(frozen=True)
class Endpoint:
    """Where requests go: a Unix socket path, or host and port."""

    unix_path: str | None = None
    host: str = "127.0.0.1"
    port: int = 0

    def connection(self, timeout: float) -> http.client.HTTPConnection:
        if self.unix_path:
            return UnixHTTPConnection(self.unix_path, timeout)
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout)


@dataclass
class Answer:
    status: int | None  # None: no HTTP answer (refused, reset, timeout)
    body: bytes = b""
    error: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0


def request(endpoint: Endpoint, method: str, path: str, *, body: bytes | None = None,
            headers: Mapping[str, str] | None = None, timeout: float = 10.0, host: str = HOST_HEADER) -> Answer:
    """One request on a fresh connection, with a Host header (pretix answers 400 to a bare IP)."""
    started = time.monotonic()
    connection = endpoint.connection(timeout)
    try:
        connection.request(method, path, body=body, headers={"Host": host, **(headers or {})})
        response = connection.getresponse()
        data = response.read()
        return Answer(response.status, data, headers={k.lower(): v for k, v in response.getheaders()},
                      seconds=time.monotonic() - started)
    except (OSError, http.client.HTTPException) as error:
        return Answer(None, error=type(error).__name__ + (f": {error}" if str(error) else ""),
                      seconds=time.monotonic() - started)
    finally:
        connection.close()


@dataclass(frozen=True)
class Shop:
    organizer: str
    organizer_id: int
    event: str
    item: int
    token: str
    limited_item: int = 0  # in a quota with a size: its orders take the quota's lock

    @property
    def orders_path(self) -> str:
        return f"/api/v1/organizers/{self.organizer}/events/{self.event}/orders/"


@dataclass
class Sent:
    number: int
    email: str
    scheduled: float  # monotonic
    answer: Answer | None = None  # None: still open (or not sent)
    sent: bool = True


class OrderDriver:
    def __init__(self, endpoints: Endpoint | list[Endpoint], shop: Shop, *, rate: float, run_id: str,
                 timeout: float = 30.0, max_in_flight: int = 64, clock: Callable[[], float] = time.monotonic,
                 item: int | None = None):
        self.endpoints = endpoints if isinstance(endpoints, list) else [endpoints]
        self.shop = shop
        self.item = shop.item if item is None else item
        self.rate = rate
        self.run_id = run_id
        self.timeout = timeout
        self.max_in_flight = max_in_flight
        self.clock = clock
        self.orders: list[Sent] = []
        self._lock = threading.Lock()
        self._in_flight = 0
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()
        self._scheduler: threading.Thread | None = None
        self.started_at: float | None = None

    def email(self, number: int) -> str:
        return f"{self.run_id}-{number}@{EMAIL_DOMAIN}"

    def endpoint_of(self, number: int) -> Endpoint:
        """Orders take turns over the endpoints (one per detector, when comparing them)."""
        return self.endpoints[number % len(self.endpoints)]

    def _body(self, email: str) -> bytes:
        return json.dumps({"email": email, "locale": "en", "sales_channel": "web",
                           "positions": [{"item": self.item, "price": "10.00"}]}).encode()

    def _send(self, sent: Sent) -> None:
        try:
            sent.answer = request(self.endpoint_of(sent.number), "POST", self.shop.orders_path,
                                  body=self._body(sent.email), timeout=self.timeout,
                                  headers={"Authorization": f"Token {self.shop.token}",
                                           "Content-Type": "application/json"})
        finally:
            with self._lock:
                self._in_flight -= 1

    def start(self) -> None:
        self.started_at = self.clock()
        self._scheduler = threading.Thread(target=self._schedule, name=f"driver-{self.run_id}", daemon=True)
        self._scheduler.start()

    def _schedule(self) -> None:
        assert self.started_at is not None
        number = 0
        while not self._stop.is_set():
            due = self.started_at + number / self.rate
            if self._stop.wait(max(0.0, due - self.clock())):
                return
            sent = Sent(number, self.email(number), due)
            with self._lock:
                self.orders.append(sent)
                if self._in_flight >= self.max_in_flight:
                    sent.sent = False
                    sent.answer = Answer(None, error="not sent: too many requests open")
                else:
                    self._in_flight += 1
            if sent.sent:
                thread = threading.Thread(target=self._send, args=(sent,), name=f"order-{number}", daemon=True)
                self._threads.append(thread)
                thread.start()
            number += 1

    def stop(self, drain_timeout: float | None = None) -> None:
        """Stop sending; wait (bounded by the request timeout) for the answers still open."""
        self._stop.set()
        if self._scheduler is not None:
            self._scheduler.join(5)
        deadline = time.monotonic() + (self.timeout + 5 if drain_timeout is None else drain_timeout)
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def run(self, seconds: float) -> None:
        self.start()
        self._stop.wait(seconds)
        self.stop()

    def answered_ok(self) -> int:
        with self._lock:
            return sum(1 for o in self.orders if o.answer is not None and o.answer.status == 201)

    def reckon(self, in_db: Mapping[str, int]) -> Reckoning:
        """Given {email: number of orders in the database} for this run, sort every order."""
        return reckon(self.orders, in_db, self.started_at or 0.0)


@dataclass
class Reckoning:
    sent: int = 0
    ok: int = 0
    failed: int = 0
    committed_with_error: int = 0
    lost: int = 0
    duplicated: int = 0
    not_sent: int = 0
    unanswered: int = 0  # still open when the driver stopped waiting (counted in failed/committed too)
    errors: dict[str, int] = field(default_factory=dict)  # what the failures were: "502", "timeout", ...
    error_samples: dict[str, str] = field(default_factory=dict)  # the first answer of each kind, shortened
    failed_at_s: list[float] = field(default_factory=list)  # scheduled times of the failures, from the start
    latency_p50_s: float | None = None
    latency_p95_s: float | None = None
    latency_max_s: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items()}


def _error_kind(answer: Answer | None) -> str:
    if answer is None:
        return "unanswered"
    if answer.status is not None:
        return str(answer.status)
    return answer.error.split(":", 1)[0] or "error"


def reckon(orders: list[Sent], in_db: Mapping[str, int], started_at: float) -> Reckoning:
    result = Reckoning()
    errors: Counter[str] = Counter()
    latencies = []
    for order in orders:
        count = in_db.get(order.email, 0)
        if count > 1:
            result.duplicated += 1
        if not order.sent:
            result.not_sent += 1
            continue
        result.sent += 1
        answer = order.answer
        if answer is None:
            result.unanswered += 1
        else:
            latencies.append(answer.seconds)
        if answer is not None and answer.status == 201:
            if count:
                result.ok += 1
            else:
                result.lost += 1
            continue
        kind = _error_kind(answer)
        errors[kind] += 1
        if kind not in result.error_samples and answer is not None:
            text = answer.body.decode("utf-8", "replace") if answer.body else answer.error
            result.error_samples[kind] = " ".join(text.split())[:160]
        result.failed_at_s.append(round(order.scheduled - started_at, 2))
        if count:
            result.committed_with_error += 1
        else:
            result.failed += 1
    result.errors = dict(errors)
    if latencies:
        ordered = sorted(latencies)
        pick = lambda q: round(ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))], 3)  # noqa: E731
        result.latency_p50_s, result.latency_p95_s, result.latency_max_s = pick(0.5), pick(0.95), pick(1.0)
    return result
