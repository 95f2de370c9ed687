"""Redis check: PING latency, a write probe, role and replication link, memory, celery queue depths.

Observe, then decide: `observe()` asks the server and returns a `RedisObservation` of plain values;
`classify()` turns it and the check's options into a ProbeResult, with no I/O (tested with plain
values in tests/unit/test_check_redis.py).

One probe is one connection and one attempt: redis-py before 5 has no socket timeouts unless given,
and redis-py 6 and later retry three times by default, so both are passed explicitly. The socket
timeouts bound every call by the time left when the probe starts; the runner's abort shuts the
socket down at the deadline on top of that. redis is imported only when a probe runs.

Celery queues (kombu's Redis transport) are one list per priority step, named as pretix configures
kombu by default ("mail", "mail:4", "mail:8"); a queue's depth is the sum of their lengths, and the
age of its oldest task is observed across probes (checks/celery.py, which holds that logic).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from . import celery
from .model import Deadline, ProbeResult, ProbeStopped, failed, passed, unknown
from .sockets import SocketBreaker
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


def probe(options: RedisCheck, deadline: Deadline, probe_key: str = PROBE_KEY_PREFIX + "probe",
          queue_memory: celery.QueueMemoryCell | None = None) -> ProbeResult:
    """One probe of the server at `options.url`; the write probe sets `probe_key` with a TTL.
    `queue_memory` carries the queues' oldest tasks from one probe of this check to the next
    (without it, every oldest task is seen for the first time: age 0)."""
    try:
        observation = observe(options, deadline, probe_key, queue_memory or celery.QueueMemoryCell())
    except ProbeStopped as stop:
        return stop.result
    return classify(observation, options)


def observe(options: RedisCheck, deadline: Deadline, probe_key: str,
            queue_memory: celery.QueueMemoryCell | None = None) -> RedisObservation:
    """Measure the server at `options.url`. Raise ProbeStopped with the result if that fails."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    breaker = SocketBreaker(deadline)
    target = describe_url(options.url)
    secrets = url_secrets(options.url)
    phase = "connecting"

    def watch_then_handshake(connection: Any) -> None:
        # Called by redis-py once the socket is connected, before AUTH/SELECT/HELLO: from here on an
        # abort can break whatever waits for the server.
        breaker.watch(lambda: getattr(connection, "_sock", None))
        connection.on_connect()

    timeout = deadline.remaining()
    timeouts = {"socket_timeout": timeout}
    if urlsplit(options.url).scheme != "unix":  # redis-py 4 has no connect timeout for Unix sockets
        timeouts["socket_connect_timeout"] = timeout
    try:
        pool = redis.ConnectionPool.from_url(
            options.url, retry=Retry(NoBackoff(), 0), redis_connect_func=watch_then_handshake, **timeouts)
    except ValueError as error:  # a URL redis-py cannot use (unknown scheme, bad port, ...)
        raise ProbeStopped(failed(f"invalid URL: {scrub(str(error), secrets)}")) from None
    client = None
    try:
        # single_connection_client: every command below goes over this one connection
        client = redis.Redis(connection_pool=pool, single_connection_client=True)
        if client.connection is not None:
            client.connection.connect()  # no-op where the constructor connected already
        phase = "PING"
        started = time.monotonic()
        client.ping()
        ping_seconds = time.monotonic() - started
        write, write_error = None, None
        if options.write_probe:
            phase = "write probe"
            write, write_error = _write_probe(client, probe_key, redis.exceptions)
        phase = "INFO"
        info = client.info()
        phase = "queue lengths"
        keys = {queue: celery.queue_keys(queue, options.queue_separator, options.priority_steps)
                for queue in options.queues}
        heads = celery.read_lists(client, [key for names in keys.values() for key in names],
                                  redis.exceptions.ResponseError)
        now = time.monotonic()
    except (redis.exceptions.RedisError, OSError) as error:  # OSError: not every version wraps all of them
        raise ProbeStopped(_failure(error, deadline, target, phase, secrets)) from None
    except (ValueError, TypeError, AttributeError, LookupError) as error:
        # Something that is not Redis answered in a shape redis-py's parsers trip over.
        detail = scrub(one_line(f"{type(error).__name__}: {error}"), secrets)
        raise ProbeStopped(failed(f"{phase}: unexpected answer from {target} ({detail})", target=target)) from None
    finally:
        breaker.release()
        if client is not None:
            client.close()
        pool.disconnect()
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
