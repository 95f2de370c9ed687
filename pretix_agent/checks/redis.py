"""Redis check: PING latency, a write probe, role and replication link, memory, celery queue depths.

Observe, then decide: `observe()` asks the server over a connected client and returns a
`RedisObservation` of plain values; `classify()` turns it and the check's options into a
ProbeResult, with no I/O (tested with plain values in tests/unit/test_check_redis.py). Connection
handling is apart from both: `RedisConnection` (deadlines, failures as results) and `RedisProbe`,
which keeps the connection between probes (checks/keeper.py). redis is imported only when a probe
is made.

Celery queues (kombu's Redis transport) are one list per priority step, named as pretix configures
kombu by default ("mail", "mail:4", "mail:8"); a queue's depth is the sum of their lengths, and the
age of its oldest task is observed across probes (checks/celery.py, which holds that logic).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import parse_qs, urlsplit

from . import celery
from .keeper import ConnectionKeeper, ConnectionLost
from .model import Deadline, ProbeResult, ProbeStopped, failed, passed, unknown
from .sockets import SocketBreaker, readable_now
from .text import one_line, scrub

if TYPE_CHECKING:
    from ..config import RedisCheck

PROBE_KEY_PREFIX = "pretix-agent:probe:"
PROBE_KEY_TTL_MS = 60_000

# Outcomes of the write probe, as `RedisObservation.write`.
WRITE_OK = "ok"
WRITE_READONLY = "read-only"  # READONLY: a replica
WRITE_OOM = "oom"  # OOM: used_memory reached maxmemory with a noeviction policy
WRITE_DENIED = "denied"  # NOPERM: the ACL user may not SET the probe key
WRITE_REFUSED = "refused"  # anything else, e.g. MISCONF (the last RDB save failed, writes stopped)

T = TypeVar("T")


# ---------------------------------------------------------------------------------------------
# What one probe sees.


@dataclass(frozen=True)
class RedisObservation:
    """What one probe measured; None means not measured (or not applicable)."""

    ping_seconds: float
    write: str | None = None  # None: write probe off; else one of the WRITE_* outcomes
    write_error: str | None = None  # the server's answer when write is not ok
    role: str | None = None  # INFO replication role: "master" or "slave"
    master_link_status: str | None = None
    master_last_io_seconds_ago: int | None = None
    master_link_down_since_seconds: int | None = None
    used_memory: int | None = None
    maxmemory: int | None = None  # 0: unlimited
    queue_depths: Mapping[str, int | None] = field(default_factory=dict)  # None: not a list
    queue_readings: Mapping[str, celery.QueueReading] = field(default_factory=dict)  # lists and oldest task


# ---------------------------------------------------------------------------------------------
# Deciding (pure).


def memory_ratio(used_memory: int | None, maxmemory: int | None) -> float | None:
    """used_memory / maxmemory, or None when maxmemory is 0 (unlimited) or unknown."""
    if used_memory is None or not maxmemory:
        return None
    return used_memory / maxmemory


def info_seconds(value: Any) -> int | None:
    """An INFO field counting seconds, or None for -1 ("never"/"not connected") and absent fields."""
    if value is None:
        return None
    seconds = int(value)
    return None if seconds < 0 else seconds


def classify(seen: RedisObservation, options: RedisCheck) -> ProbeResult:
    """Given what a probe saw and the check's options, return the check's outcome."""
    replica = seen.role == "slave"
    ratio = memory_ratio(seen.used_memory, seen.maxmemory)
    values: dict[str, Any] = {
        "latency_ms": round(seen.ping_seconds * 1000, 2),
        "role": "replica" if replica else seen.role,
        "writable": None if seen.write is None else seen.write == WRITE_OK,
        "used_memory": seen.used_memory,
        "maxmemory": seen.maxmemory or None,
        "memory_ratio": None if ratio is None else round(ratio, 4),
    }
    if replica:
        values.update(master_link_status=seen.master_link_status,
                      master_last_io_seconds_ago=seen.master_last_io_seconds_ago,
                      master_link_down_since_seconds=seen.master_link_down_since_seconds)
    if options.queues:
        values["queues"] = dict(seen.queue_depths)
        values["queue_ages"] = {name: _age(seen.queue_readings.get(name)) for name in seen.queue_depths}
        values["queue_lists"] = {key: length for reading in seen.queue_readings.values()
                                 for key, length in reading.lists.items()}

    problems: list[str] = []
    unmeasured: list[str] = []
    if seen.ping_seconds > options.max_latency:
        problems.append(f"PING took {seen.ping_seconds * 1000:.0f} ms (max {options.max_latency * 1000:g} ms)")
    if seen.write == WRITE_READONLY:
        problems.append(f"read-only: the write probe was refused ({seen.write_error})")
    elif seen.write == WRITE_OOM:
        problems.append(f"writes refused, out of memory ({seen.write_error})")
    elif seen.write == WRITE_REFUSED:
        problems.append(f"writes refused ({seen.write_error})")
    elif seen.write == WRITE_DENIED:
        unmeasured.append(f"write probe not permitted ({seen.write_error}); see docs/checks.md for the ACL")
    if replica:
        if seen.master_link_status != "up":
            down = seen.master_link_down_since_seconds
            problems.append("master link down" + (f" for {down} s" if down is not None else ""))
        elif (seen.master_last_io_seconds_ago is not None
              and seen.master_last_io_seconds_ago > options.max_master_io):
            problems.append(f"no data from the master for {seen.master_last_io_seconds_ago} s "
                            f"(max {options.max_master_io:g} s)")
    if ratio is not None and ratio > options.max_memory_ratio:
        problems.append(f"memory at {ratio:.0%} of maxmemory (max {options.max_memory_ratio:.0%})")
    long_queues = [f"{name} {depth}{_in_lists(seen.queue_readings.get(name))}"
                   for name, depth in seen.queue_depths.items()
                   if depth is not None and depth > options.max_queue_length]
    if long_queues:
        problems.append(f"queue over {options.max_queue_length} tasks: {', '.join(long_queues)}")
    old_queues = [f"{name} in {reading.oldest_list} for {reading.oldest_seconds:.0f} s"
                  for name, reading in seen.queue_readings.items()
                  if reading.oldest_seconds is not None and reading.oldest_seconds > options.max_queue_age]
    if old_queues:
        problems.append(f"oldest task waiting over {options.max_queue_age:g} s: {', '.join(old_queues)}")
    unmeasured.extend(f"queue {name} is not a list" for name, depth in seen.queue_depths.items() if depth is None)

    if problems:
        return failed("; ".join(problems), **values)
    if unmeasured:
        return unknown("cannot measure: " + "; ".join(unmeasured), **values)
    parts = [values["role"] or "role unknown", f"PING {seen.ping_seconds * 1000:.1f} ms"]
    if seen.write == WRITE_OK:
        parts.append("writable")
    if replica:
        parts.append(f"master link up, last I/O {seen.master_last_io_seconds_ago} s ago")
    parts.append("no maxmemory" if ratio is None else f"memory at {ratio:.0%} of maxmemory")
    if seen.queue_depths:
        parts.append("queues " + ", ".join(f"{name} {depth}{_oldest(seen.queue_readings.get(name))}"
                                           for name, depth in seen.queue_depths.items()))
    return passed(", ".join(parts), **values)


def _age(reading: celery.QueueReading | None) -> float | None:
    return None if reading is None or reading.oldest_seconds is None else round(reading.oldest_seconds, 1)


def _in_lists(reading: celery.QueueReading | None) -> str:
    """Where a long queue's tasks wait, " (default:4 8, default 2)"; nothing when not known."""
    if reading is None or not reading.lists:
        return ""
    return " (" + ", ".join(f"{key} {length}" for key, length in reading.lists.items()) + ")"


def _oldest(reading: celery.QueueReading | None) -> str:
    if reading is None or reading.oldest_seconds is None:
        return ""
    return f" (oldest {reading.oldest_seconds:.0f} s in {reading.oldest_list})"


# ---------------------------------------------------------------------------------------------
# Observing.


def require() -> None:
    """Raise ImportError with an installation hint if redis-py is missing."""
    try:
        import redis  # noqa: F401
    except ImportError:
        raise ImportError("the redis check needs redis-py: apt install python3-redis") from None


class RedisProbe:
    """The probe of one redis check: it keeps its connection between probes (checks/keeper.py),
    named "pretix-agent:check:NAME" in CLIENT LIST. With `keep=False`, every probe connects anew
    (the benchmark's baseline). The write probe sets `probe_key` with a TTL."""

    def __init__(self, options: RedisCheck, probe_key: str = PROBE_KEY_PREFIX + "probe",
                 check_name: str | None = None, keep: bool = True):
        self.options = options
        self.probe_key = probe_key
        client_name = client_name_for(check_name)
        self.keeper: ConnectionKeeper[RedisConnection] = ConnectionKeeper(
            lambda: RedisConnection(options.url, client_name), keep)
        self.queue_memory = celery.QueueMemoryCell()  # the queues' oldest tasks, from probe to probe

    def __call__(self, deadline: Deadline) -> ProbeResult:
        try:
            observation = self.keeper.run(deadline, self._observe)
        except ProbeStopped as stop:
            return stop.result
        return classify(observation, self.options)

    def close(self) -> None:
        self.keeper.close()

    def _observe(self, connection: RedisConnection, deadline: Deadline) -> RedisObservation:
        return connection.measure(deadline, lambda client, step: observe(client, self.options, self.probe_key, step,
                                                                         self.queue_memory))


def probe(options: RedisCheck, deadline: Deadline, probe_key: str = PROBE_KEY_PREFIX + "probe",
          queue_memory: celery.QueueMemoryCell | None = None) -> ProbeResult:
    """One probe of the server at `options.url` over a new connection, closed after it: what every
    probe cost before connections were kept. `queue_memory` carries the queues' oldest tasks from
    one such probe to the next (without it, every oldest task is seen for the first time: age 0)."""
    once = RedisProbe(options, probe_key, keep=False)
    if queue_memory is not None:
        once.queue_memory = queue_memory
    try:
        return once(deadline)
    finally:
        once.close()


class Step:
    """Which step of a probe runs, named in the reason when it fails ("timeout ... (INFO)")."""

    def __init__(self, name: str = "connecting"):
        self.name = name


def observe(client: Any, options: RedisCheck, probe_key: str, step: Step,
            queue_memory: celery.QueueMemoryCell | None = None) -> RedisObservation:
    """Measure the server over `client`, a connected redis-py client, naming each step in `step`.
    redis-py's exceptions pass through (RedisConnection.measure turns them into results).
    `queue_memory` carries the queues' oldest tasks from one probe of the check to the next
    (without it, every oldest task is seen for the first time: age 0)."""
    import redis

    step.name = "PING"
    started = time.monotonic()
    client.ping()
    ping_seconds = time.monotonic() - started
    write, write_error = None, None
    if options.write_probe:
        step.name = "write probe"
        write, write_error = _write_probe(client, probe_key, redis.exceptions)
    step.name = "INFO"
    # redis-py's INFO parser turns every one of some 200 fields into a number or a dict, which costs
    # more CPU than the rest of a probe; the six fields read below need none of that.
    client.set_response_callback("INFO", info_fields)
    info = client.info()
    step.name = "queue lengths"
    keys = {queue: celery.queue_keys(queue, options.queue_separator, options.priority_steps)
            for queue in options.queues}
    heads = celery.read_lists(client, [key for names in keys.values() for key in names],
                              redis.exceptions.ResponseError)
    now = time.monotonic()
    memory = queue_memory if queue_memory is not None else celery.QueueMemoryCell()
    memory.value = celery.remember(memory.value, heads, now)
    readings = celery.summarize(keys, heads, memory.value, now)
    return RedisObservation(
        ping_seconds=ping_seconds, write=write, write_error=write_error,
        role=info.get("role"), master_link_status=info.get("master_link_status"),
        master_last_io_seconds_ago=info_seconds(info.get("master_last_io_seconds_ago")),
        master_link_down_since_seconds=info_seconds(info.get("master_link_down_since_seconds")),
        used_memory=_int_or_none(info.get("used_memory")), maxmemory=_int_or_none(info.get("maxmemory")),
        queue_depths={queue: reading.depth for queue, reading in readings.items()}, queue_readings=readings)


def info_fields(response: Any, **_options: Any) -> dict[str, str]:
    """INFO's answer as {field: value}, values as the text the server sent (section lines dropped)."""
    text = response.decode("utf-8", "replace") if isinstance(response, bytes) else str(response)
    return dict(line.split(":", 1) for line in text.splitlines() if ":" in line and not line.startswith("#"))


def client_name_for(check_name: str | None) -> str:
    """The CLIENT SETNAME name of a check's connection: no spaces or control characters allowed."""
    name = f"pretix-agent:check:{check_name}" if check_name else "pretix-agent"
    return "".join(char if "!" <= char <= "~" else "_" for char in name)


class RedisConnection:
    """One redis-py connection (one attempt, no retries) whose every call is bounded by a deadline.

    One probe is one attempt: redis-py before 5 has no socket timeouts unless given, and redis-py 6
    and later retry three times by default, so both are passed explicitly; the socket's timeout is
    set to the time left at the start of every probe, and the runner's abort shuts the socket down
    at the deadline on top of that. Raises ProbeStopped for anything the server does wrong and
    ConnectionLost (checks/keeper.py) when the connection broke under a command."""

    def __init__(self, url: str, client_name: str):
        import redis

        self._redis = redis
        self.url = url
        self.client_name = client_name
        self.target = describe_url(url)
        self._secrets = url_secrets(url)
        self._pool: Any = None
        self._client: Any = None
        self._live: Any = None  # redis-py's Connection, once its socket is connected
        self._broken = False

    # -- the keeper's protocol

    def establish(self, deadline: Deadline, breaker: SocketBreaker) -> None:
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        def watch_then_handshake(connection: Any) -> None:
            # Called by redis-py once the socket is connected, before AUTH/SELECT/HELLO: from here on
            # an abort can break whatever waits for the server.
            self._live = connection
            breaker.watch(self.socket)
            connection.on_connect()
            self._set_name(connection)

        timeout = deadline.remaining()
        timeouts = {"socket_timeout": timeout}
        if urlsplit(self.url).scheme != "unix":  # redis-py 4 has no connect timeout for Unix sockets
            timeouts["socket_connect_timeout"] = timeout
        try:
            self._pool = self._redis.ConnectionPool.from_url(
                self.url, retry=Retry(NoBackoff(), 0), redis_connect_func=watch_then_handshake, **timeouts)
        except ValueError as error:  # a URL redis-py cannot use (unknown scheme, bad port, ...)
            raise ProbeStopped(failed(f"invalid URL: {scrub(str(error), self._secrets)}")) from None
        step = Step("connecting")

        def connect() -> None:
            # single_connection_client: every command goes over this one connection
            self._client = self._redis.Redis(connection_pool=self._pool, single_connection_client=True)
            if self._client.connection is not None:
                self._client.connection.connect()  # no-op where the constructor connected already

        self._call(deadline, step, connect)

    def socket(self) -> Any:
        return getattr(self._live, "_sock", None)

    def stale(self) -> bool:
        return not self.sound() or readable_now(self.socket())

    def sound(self) -> bool:
        return not self._broken and self._client is not None and self.socket() is not None

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
        if self._pool is not None:
            self._pool.disconnect()

    # -- commands

    def measure(self, deadline: Deadline, work: Callable[[Any, Step], T]) -> T:
        """Return `work(client, step)`, every command bounded by the time left in `deadline`."""
        timeout = deadline.remaining()
        self._live.socket_timeout = timeout  # what redis-py restores after a read with its own timeout
        sock = self.socket()
        if sock is not None:
            sock.settimeout(timeout)
        step = Step("PING")
        return self._call(deadline, step, lambda: work(self._client, step))

    def _call(self, deadline: Deadline, step: Step, action: Callable[[], T]) -> T:
        """Return `action()`; raise what it failed with as the probe's result."""
        exceptions = self._redis.exceptions
        try:
            return action()
        except (exceptions.RedisError, OSError) as error:  # OSError: not every version wraps all of them
            if not isinstance(error, exceptions.ResponseError):
                self._broken = True  # the exchange did not complete
            result = _failure(error, deadline, self.target, step.name, self._secrets)
            if step.name != "connecting" and _lost(error) and not (deadline.aborted or deadline.expired()):
                raise ConnectionLost(result) from None
            raise ProbeStopped(result) from None
        except (ValueError, TypeError, AttributeError, LookupError) as error:
            # Something that is not Redis answered in a shape redis-py's parsers trip over.
            self._broken = True
            detail = scrub(one_line(f"{type(error).__name__}: {error}"), self._secrets)
            raise ProbeStopped(failed(f"{step.name}: unexpected answer from {self.target} ({detail})",
                                      target=self.target)) from None

    def _set_name(self, connection: Any) -> None:
        """CLIENT SETNAME, so that operators see whose connection this is; an ACL that does not allow
        it (+client|setname) leaves the connection unnamed, nothing more."""
        connection.send_command("CLIENT", "SETNAME", self.client_name)
        try:
            connection.read_response()
        except self._redis.exceptions.ResponseError:
            pass


def _lost(error: BaseException) -> bool:
    """True if `error` says the connection broke (closed by the server, reset), not that it timed
    out or that the server refused something over a connection that still works."""
    import redis

    exceptions = redis.exceptions
    if isinstance(error, exceptions.AuthenticationError | exceptions.AuthorizationError | exceptions.BusyLoadingError):
        return False
    return isinstance(error, exceptions.ConnectionError | ConnectionResetError | BrokenPipeError
                      | ConnectionAbortedError)


def _write_probe(client: Any, key: str, exceptions: Any) -> tuple[str, str | None]:
    """SET key <unix time> PX <ttl>; return (WRITE_* outcome, the server's refusal or None)."""
    try:
        client.set(key, f"{time.time():.3f}", px=PROBE_KEY_TTL_MS)
    except exceptions.ResponseError as error:
        # redis-py strips the error code of the errors it has a class for ("READONLY ...",
        # "NOPERM ..." and, since 6, "OOM ..."), so look at both the class and the text.
        text = one_line(str(error))
        name = type(error).__name__
        if isinstance(error, exceptions.ReadOnlyError) or text.startswith("READONLY"):
            return WRITE_READONLY, text
        if name == "OutOfMemoryError" or text.startswith("OOM"):
            return WRITE_OOM, text
        if name == "NoPermissionError" or text.startswith("NOPERM"):
            return WRITE_DENIED, text
        return WRITE_REFUSED, text
    return WRITE_OK, None


def _failure(error: BaseException, deadline: Deadline, target: str, phase: str, secrets: list[str]) -> ProbeResult:
    """The result for an exception that ended a probe."""
    import redis

    if deadline.aborted or deadline.expired() or isinstance(error, redis.exceptions.TimeoutError | TimeoutError):
        return failed(f"timeout: no answer from {target} within {deadline.timeout:.3g} s ({phase})", target=target)
    text = scrub(one_line(str(error)) or type(error).__name__, secrets)
    # redis-py 4 raises WRONGPASS as a plain ResponseError
    if isinstance(error, redis.exceptions.AuthenticationError | redis.exceptions.AuthorizationError) or \
            text.startswith(("WRONGPASS", "NOAUTH")):
        return failed(f"authentication failed: {text}", target=target)
    if isinstance(error, redis.exceptions.BusyLoadingError):
        return failed(f"loading its dataset into memory: {text}", target=target)
    if isinstance(error, redis.exceptions.ResponseError) and phase != "connecting":
        # e.g. NOPERM for INFO: the server is there, but this probe cannot measure it
        return unknown(f"cannot measure ({phase}): {text}", target=target)
    # Nothing listening (TCP) or no socket file (Unix socket): the server is gone.
    gone = any(isinstance(e, ConnectionRefusedError | FileNotFoundError) for e in _chain(error)) or \
        text.rstrip(".").endswith(("Connection refused", "No such file or directory"))
    return failed(text if phase == "connecting" else f"{phase}: {text}", hard=gone, target=target)


def _chain(error: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def describe_url(url: str) -> str:
    """Where a Redis URL points, without user or password: "127.0.0.1:6379/0", "/run/redis.sock"."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return parts.path
    host = parts.hostname or "localhost"
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port or 6379
    except ValueError:
        port = "?"  # type: ignore[assignment]
    return f"{host}:{port}{parts.path or ''}"


def url_secrets(url: str) -> list[str]:
    """Passwords a Redis URL carries (in the user part or as ?password=), to keep out of reasons."""
    parts = urlsplit(url)
    secrets = [parts.password] if parts.password else []
    secrets += parse_qs(parts.query).get("password", [])
    return [secret for secret in secrets if secret]


def _int_or_none(value: Any) -> int | None:
    return None if value is None else int(value)
