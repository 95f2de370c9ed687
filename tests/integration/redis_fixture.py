"""A real Redis master with a replica, in temporary directories, plus fake celery queue messages.

For integration tests of the Redis / celery-queue health checks. Plain classes, no pytest:

    with RedisReplicationPair() as rp:
        r = redis.Redis.from_url(rp.url())                   # master
        redis.Redis.from_url(rp.replica_url()).set("k", 1)   # -> redis.exceptions.ReadOnlyError
        rp.push_celery_messages("mail", 3)
        rp.kill_master()                                     # replica: master_link_status:down

Each server is ``redis-server CONFIG`` spawned directly (``daemonize no``), so ``RedisServer.pid`` is the
server itself; it gets PR_SET_PDEATHSIG=SIGKILL so it dies with the test process. It listens on a free
port on 127.0.0.1 and on a Unix socket in its own directory; ``save ""`` and ``appendonly no``, so
nothing persists. The log goes to ``<dir>/redis.log``.

Replication timing (see ``COMMON_CONFIG``): a master that dies or closes the connection is noticed by
the replica at once (master_link_status:down); a master that hangs (SIGSTOP) only after
``repl-timeout`` (5 s here, Redis default 60 s), since the master pings only every
``repl-ping-replica-period`` (1 s here, default 10 s). ``repl-diskless-sync-delay 0`` (default 5 s)
makes the initial full sync immediate.

Read-only endpoint: Redis has no switch to make a master read-only; a replica with
``replica-read-only yes`` is read-only (writes fail with ``READONLY You can't write against a read
only replica.``, redis-py ``ReadOnlyError``). ``replica_url()`` is such an endpoint.

Celery queues (kombu's Redis transport, what celery uses with a redis:// broker):
  * each queue is a Redis LIST named after the queue (``default``, ``checkout``, ``mail``, ...) for
    priority step 0, and one list ``<queue><sep><step>`` per other step (``celery_queue_key``). pretix
    sets ``sep ":"`` and steps ``[0, 4, 8]`` and sends at priority 5 (``default:4``); kombu's defaults
    are ``"\\x06\\x16"`` and ``[0, 3, 6, 9]``. The helpers here use pretix's layout unless told.
  * publishing is ``LPUSH queue <json>``, workers take from the other end with ``BRPOP``, so the
    *oldest* waiting message is ``LINDEX queue -1`` and the depth is ``LLEN queue``.
  * a message a worker has taken but not yet acknowledged is no longer in the list: it sits in the hash
    ``unacked`` (delivery_tag -> message) and the sorted set ``unacked_index`` (score = time it was
    *delivered*, not enqueued) -- only with acks_late / visibility timeout handling.
  * what timestamp a waiting message carries: NONE about when it was enqueued. Celery's task protocol 2
    headers (celery/app/amqp.py ``as_task_v2``) have ``eta`` and ``expires`` (ISO 8601 strings, or null
    unless the task was sent with countdown/eta/expires) but no "sent at"; kombu's virtual transport adds
    ``delivery_tag`` (a uuid4), ``delivery_info`` and ``body_encoding`` to ``properties`` and no
    timestamp either; the task id is a uuid4. So "age of the oldest task" cannot be read from a message;
    a health check has to measure it itself (e.g. remember the delivery_tag at ``LINDEX queue -1`` and
    since when it has been seen there), or rely on ``eta`` only for countdown tasks.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import redis

from .processes import FixtureError as FixtureError
from .processes import (
    ServerGroup,
    address_in_use,
    candidate_port,
    children_of,
    die_with_parent,
    signal_pids,
    titled_log_tail,
)
from .processes import any_alive as any_alive
from .processes import log_tail as log_tail
from .processes import pid_alive as pid_alive
from .processes import process_state as process_state
from .processes import track as track
from .processes import wait_stopped as wait_stopped
from .processes import wait_until as wait_until

# Valkey's server is a drop-in: PRETIX_AGENT_TEST_REDIS_SERVER=/usr/bin/valkey-server (Debian 13).
REDIS_SERVER = os.environ.get("PRETIX_AGENT_TEST_REDIS_SERVER", "/usr/bin/redis-server")
DEFAULT_TIMEOUT = 20.0
FILL_PREFIX = "fixture:fill:"

# celery/kombu constants (kombu.transport.redis), and pretix's (pretix/settings.py)
KOMBU_PRIORITY_STEPS = (0, 3, 6, 9)
KOMBU_SEP = "\x06\x16"
PRETIX_PRIORITY_STEPS = (0, 4, 8)
PRETIX_SEP = ":"
PRETIX_QUEUES = ("default", "checkout", "mail", "background", "notifications")

COMMON_CONFIG: dict[str, str] = {
    "bind": "127.0.0.1",
    "protected-mode": "yes",
    "daemonize": "no",
    "save": '""',
    "appendonly": "no",
    "loglevel": "notice",
    "repl-diskless-sync": "yes",
    "repl-diskless-sync-delay": "0",
    "repl-ping-replica-period": "1",
    "repl-timeout": "5",
    "maxmemory-policy": "noeviction",
}


def redis_unavailable_reason() -> str | None:
    """Why Redis integration tests cannot run here, or None if they can (for pytest.skip)."""
    if not Path(REDIS_SERVER).is_file():
        return f"{REDIS_SERVER} not found (set PRETIX_AGENT_TEST_REDIS_SERVER)"
    return None


# ---------------------------------------------------------------------------------------------- server


class RedisServer:
    """One ``redis-server`` process. ``pid`` is the server (it forks only for RDB transfers)."""

    def __init__(self, name: str, directory: Path, extra_config: Mapping[str, str] | None = None):
        self.name = name
        self.dir = directory
        self.log_path = directory / "redis.log"
        self.unixsocket = directory / "redis.sock"
        self.port = 0
        self.extra_config = dict(extra_config or {})
        self._proc: subprocess.Popen[bytes] | None = None
        self.known_pids: set[int] = set()

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise FixtureError(f"{self.name}: not started")
        return self._proc.pid

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def pids(self) -> set[int]:
        """Live PIDs: the server and any fork of it (RDB child during a full sync)."""
        if not self.running:
            return set()
        assert self._proc is not None
        pids = {self._proc.pid} | children_of(self._proc.pid)
        self.known_pids |= pids
        return pids

    def url(self, db: int = 0) -> str:
        """redis://127.0.0.1:PORT/DB"""
        return f"redis://127.0.0.1:{self.port}/{db}"

    def unix_url(self, db: int = 0) -> str:
        return f"unix://{self.unixsocket}?db={db}"

    def client(self, *, timeout: float = 2.0, **kwargs: Any) -> redis.Redis:
        """A redis-py client over TCP with connect/socket timeouts (so a SIGSTOPped server times out)."""
        return redis.Redis(
            host="127.0.0.1",
            port=self.port,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            **kwargs,
        )

    def info(self, section: str = "replication") -> dict[str, Any]:
        with self.client() as c:
            return c.info(section)

    def log_tail(self, lines: int = 30) -> str:
        return titled_log_tail(self.log_path, lines)

    def __repr__(self) -> str:
        return f"<RedisServer {self.name} port={self.port} pid={self._proc.pid if self._proc else None}>"

    def _write_config(self) -> Path:
        config = dict(COMMON_CONFIG)
        config.update(
            port=str(self.port),
            unixsocket=str(self.unixsocket),
            unixsocketperm="700",
            dir=str(self.dir),
            logfile='""',  # stdout, which is redis.log
        )
        config.update(self.extra_config)
        path = self.dir / "redis.conf"
        path.write_text("".join(f"{k} {v}\n" for k, v in config.items()))
        return path

    def start(self, timeout: float = DEFAULT_TIMEOUT) -> None:
        """Spawn redis-server and wait until it answers PING.

        The first start picks a free port (retrying if it lost a race for it); a restart after
        ``stop()``/``kill()`` reuses the port, so a replica reconnects to a restarted master by itself
        (it comes back empty: nothing is persisted)."""
        if self.running:
            raise FixtureError(f"{self.name}: already running")
        reuse_port = self.port or None
        for attempt in range(5):
            self.port = reuse_port or candidate_port()
            conf = self._write_config()
            with open(self.log_path, "ab") as log:
                self._proc = subprocess.Popen(
                    [REDIS_SERVER, str(conf)],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=self.dir,
                    start_new_session=True,
                    preexec_fn=die_with_parent,
                )
            self.known_pids.add(self._proc.pid)

            def ready() -> bool:
                if not self.running:
                    raise FixtureError(f"{self.name}: redis-server exited during startup\n{self.log_tail()}")
                with self.client(timeout=1) as c:
                    # Ours, not a server that held the port already (we would exit with "in use").
                    return bool(c.ping()) and c.info("server").get("process_id") == self.pid

            try:
                wait_until(ready, timeout=timeout, what=f"{self.name} to answer PING", details=self.log_tail)
                return
            except FixtureError:
                if self.running or not address_in_use(log_tail(self.log_path, 10)) or reuse_port or attempt == 4:
                    raise

    def sigstop(self) -> None:
        """SIGSTOP the server (clients and the replication link then hang until ``sigcont``); returns
        once it is really stopped."""
        os.kill(self.pid, signal.SIGSTOP)
        wait_stopped([self.pid])

    def sigcont(self) -> None:
        if self.running:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGCONT)

    def kill(self, timeout: float = 10.0) -> None:
        """SIGKILL the server (and an RDB fork, if one exists) and reap it."""
        if not self.running:
            return
        assert self._proc is not None
        pids = self.pids()
        processes = track(pids)
        signal_pids(pids, signal.SIGKILL)
        self._proc.wait(timeout)
        wait_until(lambda: not any_alive(processes), timeout=timeout, what=f"{self.name} processes to die")

    def stop(self, timeout: float = 10.0) -> None:
        """SIGCONT, then SIGTERM (Redis exits without saving since ``save ""``); SIGKILL on timeout.
        Idempotent."""
        if not self.running:
            return
        assert self._proc is not None
        pids = self.pids()
        forks = track(pids - {self._proc.pid})
        self.sigcont()
        self._proc.terminate()
        try:
            self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
        # An RDB fork exits when its parent is gone.
        with contextlib.suppress(FixtureError):
            wait_until(lambda: not any_alive(forks), timeout=5, what="redis forks to exit")
        signal_pids({pid for pid, _ in any_alive(forks)}, signal.SIGKILL)  # type: ignore[misc]


# ------------------------------------------------------------------------------------------------ pair


class RedisReplicationPair(ServerGroup[RedisServer]):
    """A Redis master and (optionally) a read-only replica of it, replicating.

    ``start()`` / the context manager start both and wait for ``master_link_status:up``; ``close()``
    stops everything and removes the temp dir (idempotent; also runs at interpreter exit / GC)."""

    def __init__(
        self,
        *,
        with_replica: bool = True,
        base_dir: str | Path | None = None,
        keep_dir: bool | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self.with_replica = with_replica
        self.timeout = timeout
        self.timings: dict[str, float] = {}
        super().__init__(base_dir, keep_dir)  # servers: master first, then replica
        self.master: RedisServer
        self.replica: RedisServer | None = None

    def __enter__(self) -> RedisReplicationPair:
        return self.start()

    def start(self) -> RedisReplicationPair:
        self._begin("pair", redis_unavailable_reason())
        t0 = time.monotonic()
        try:
            parent = self._requested_base or os.environ.get("PRETIX_AGENT_TEST_TMPDIR") or "/tmp"
            self._res.base_dir = Path(tempfile.mkdtemp(prefix="pa-redis-", dir=parent))
            (self.base_dir / "master").mkdir()
            self.master = RedisServer("master", self.base_dir / "master")
            self._res.servers.append(self.master)
            self.master.start(self.timeout)
            self.timings["master_start"] = time.monotonic() - t0
            if self.with_replica:
                t = time.monotonic()
                (self.base_dir / "replica").mkdir()
                self.replica = RedisServer(
                    "replica",
                    self.base_dir / "replica",
                    {"replicaof": f"127.0.0.1 {self.master.port}", "replica-read-only": "yes"},
                )
                self._res.servers.append(self.replica)
                self.replica.start(self.timeout)
                self.wait_link("up")
                self.timings["replica_start_and_sync"] = time.monotonic() - t
        except BaseException:
            self.close()
            raise
        self.timings["total"] = time.monotonic() - t0
        return self

    # -- access
    def server(self, which: str | RedisServer = "master") -> RedisServer:
        if isinstance(which, RedisServer):
            return which
        if which == "master":
            return self.master
        if which == "replica":
            if self.replica is None:
                raise FixtureError("this pair has no replica")
            return self.replica
        raise ValueError(f"server must be 'master' or 'replica', not {which!r}")

    def url(self, server: str = "master", db: int = 0) -> str:
        """redis://127.0.0.1:PORT/DB of ``server``."""
        return self.server(server).url(db)

    def replica_url(self, db: int = 0) -> str:
        """URL of the replica: a read-only endpoint (writes fail with READONLY)."""
        return self.url("replica", db)

    readonly_url = replica_url

    def client(self, server: str = "master", **kwargs: Any) -> redis.Redis:
        return self.server(server).client(**kwargs)

    def pids(self) -> set[int]:
        """Every PID of both servers seen so far (to check that nothing survives ``close()``)."""
        pids: set[int] = set()
        for s in self._res.servers:
            s.pids()
            pids |= s.known_pids
        return pids

    # -- replication state and faults
    def master_link_status(self) -> str | None:
        """The replica's ``master_link_status`` ('up' / 'down')."""
        return self.server("replica").info("replication").get("master_link_status")

    def wait_link(self, status: str = "up", timeout: float | None = None) -> float:
        """Wait until the replica reports ``master_link_status:<status>``; return seconds waited."""
        t = time.monotonic()
        replica = self.server("replica")
        wait_until(
            lambda: self.master_link_status() == status,
            timeout=self.timeout if timeout is None else timeout,
            what=f"replica master_link_status:{status}",
            details=lambda: f"{replica.log_tail()}\n{self.master.log_tail(10)}",
        )
        return time.monotonic() - t

    def wait_replicated(self, key: str, value: bytes | str, timeout: float | None = None) -> None:
        """Wait until ``GET key`` on the replica returns ``value``."""
        want = value.encode() if isinstance(value, str) else value
        replica = self.server("replica")

        def check() -> bool:
            with replica.client() as c:
                return c.get(key) == want

        wait_until(
            check,
            timeout=self.timeout if timeout is None else timeout,
            what=f"{key!r} on the replica",
            details=replica.log_tail,
        )

    def kill_master(self) -> None:
        """SIGKILL the master; the replica's link goes down at once (connection reset)."""
        self.master.kill()

    def sigstop(self, server: str = "master") -> None:
        self.server(server).sigstop()

    def sigcont(self, server: str = "master") -> None:
        self.server(server).sigcont()

    # -- memory
    def set_maxmemory(self, n_bytes: int, policy: str = "noeviction", server: str = "master") -> None:
        """CONFIG SET maxmemory (0 = unlimited) and maxmemory-policy. With ``noeviction`` writes fail
        with ``OOM command not allowed when used memory > 'maxmemory'`` once used_memory exceeds it.
        (A replica ignores maxmemory by default: replica-ignore-maxmemory yes.)"""
        with self.client(server) as c:
            c.config_set("maxmemory-policy", policy)
            c.config_set("maxmemory", str(n_bytes))

    def used_memory(self, server: str = "master") -> int:
        return int(self.server(server).info("memory")["used_memory"])

    def fill(self, n_bytes: int, *, server: str = "master", chunk: int = 64 * 1024, stop_on_oom: bool = False) -> int:
        """Write about ``n_bytes`` of values under keys ``fixture:fill:...``; return bytes written.

        An OOM error (maxmemory reached) is raised, or ends the filling if ``stop_on_oom``."""
        written = 0
        batch = uuid.uuid4().hex[:8]
        with self.client(server) as c:
            while written < n_bytes:
                size = min(chunk, n_bytes - written)
                try:
                    c.set(f"{FILL_PREFIX}{batch}:{written}", b"\0" * size)
                except redis.exceptions.ResponseError as exc:
                    if stop_on_oom and str(exc).startswith("OOM"):
                        break
                    raise
                written += size
        return written

    def clear_fill(self, server: str = "master") -> int:
        """Delete the keys written by ``fill``; return how many."""
        with self.client(server) as c:
            keys = list(c.scan_iter(match=FILL_PREFIX + "*", count=1000))
            return int(c.unlink(*keys)) if keys else 0

    # -- celery
    def push_celery_messages(
        self,
        queue: str = "default",
        n: int = 1,
        *,
        task: str | None = None,
        server: str = "master",
        sep: str = PRETIX_SEP,
        steps: Sequence[int] = PRETIX_PRIORITY_STEPS,
        **message_kwargs: Any,
    ) -> list[dict[str, Any]]:
        """LPUSH ``n`` realistic celery task messages onto ``queue`` (as kombu does); return them,
        oldest first. ``message_kwargs`` go to ``celery_message``."""
        messages = [
            celery_message(task or f"pretix.fixture.{queue}_task", queue=queue, **message_kwargs) for _ in range(n)
        ]
        if not messages:
            return []
        with self.client(server) as c:
            key = celery_queue_key(queue, messages[0]["properties"]["priority"], sep, steps)
            c.lpush(key, *(json.dumps(m) for m in messages))  # LPUSH a b c -> list c b a: a is oldest
        return messages


# ---------------------------------------------------------------------------------------------- celery


def celery_queue_key(queue: str, priority: int = 0, sep: str = PRETIX_SEP,
                     steps: Sequence[int] = PRETIX_PRIORITY_STEPS) -> str:
    """The Redis list kombu uses for ``queue`` at ``priority`` (kombu ``Channel._q_for_pri``)."""
    step = max(s for s in steps if s <= max(0, priority))
    return f"{queue}{sep}{step}" if step else queue


def celery_message(
    task: str = "pretix.base.services.mail.mail_send_task",
    *,
    queue: str = "default",
    args: Sequence[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
    task_id: str | None = None,
    eta: str | None = None,
    expires: str | None = None,
    priority: int = 0,
    retries: int = 0,
    origin: str = "gen4242@web1",
) -> dict[str, Any]:
    """A celery task message as stored in Redis by ``task.apply_async()`` with the JSON serializer.

    Shape: celery task protocol 2 (celery/app/amqp.py ``as_task_v2``, celery 5.3+ header set) wrapped
    by kombu's virtual channel (``prepare_message`` + ``_inplace_augment_message``): the body is the
    base64 of the JSON ``[args, kwargs, embed]``. ``eta``/``expires`` are ISO 8601 strings or None;
    there is no enqueue timestamp anywhere (see the module docstring)."""
    task_id = task_id or str(uuid.uuid4())
    kwargs = dict(kwargs or {})
    body = [list(args), kwargs, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}]
    return {
        "body": base64.b64encode(json.dumps(body).encode()).decode("ascii"),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {
            "lang": "py",
            "task": task,
            "id": task_id,
            "shadow": None,
            "eta": eta,
            "expires": expires,
            "group": None,
            "group_index": None,
            "retries": retries,
            "timelimit": [None, None],
            "root_id": task_id,
            "parent_id": None,
            "argsrepr": repr(tuple(args)),
            "kwargsrepr": repr(kwargs),
            "origin": origin,
            "ignore_result": False,
            "replaced_task_nesting": 0,
            "stamped_headers": None,
            "stamps": {},
        },
        "properties": {
            "correlation_id": task_id,
            "reply_to": str(uuid.uuid4()),
            "delivery_mode": 2,
            "delivery_info": {"exchange": "", "routing_key": queue},
            "priority": priority,
            "body_encoding": "base64",
            "delivery_tag": str(uuid.uuid4()),
        },
    }


def decode_celery_body(message: Mapping[str, Any]) -> list[Any]:
    """``[args, kwargs, embed]`` from a message as produced by ``celery_message`` / kombu."""
    return json.loads(base64.b64decode(message["body"]))
