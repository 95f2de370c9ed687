"""A real pretix cluster on one machine, for the pretix tier and the pretix benchmark. Plain classes:

    with PretixCluster() as cluster:            # about a minute with warm caches
        cluster.orders(rate=5)                  # an OrderDriver through haproxy's "pretix" frontend
        cluster.nodes["app1"].kill()            # SIGKILL gunicorn (master and workers)
        cluster.nodes["app1"].start()

What runs (every process started here, stopped by its PID at close(), also by a finalizer):
  PostgreSQL 15 primary + streaming replica   Unix sockets only; pretix's [database] is the primary,
                                              as role `pretix` (not a superuser, as in production:
                                              lock fencing can end its sessions)
  Redis                                       Unix socket (cache, sessions) and a TCP port (the celery
                                              broker: pretix sets its kombu layout only for redis://)
  one celery worker                           all five pretix queues
  app1, app2: gunicorn behind its own nginx   gunicorn on a Unix socket; nginx on a TCP port (the
                                              agents' http checks and haproxy reach it there) with the
                                              shipped maintenance snippet and its own marker; each
                                              worker names its database sessions pretix-<node>-<pid>;
                                              each node has its own pretix log (Node.errors_since)
  haproxy                                     conf/haproxy/haproxy.cfg adapted to loopback (see
                                              load_balancer_config), frontends on Unix sockets, and
                                              pretix's read path (`listen pretix_replica`) on a Unix
                                              socket that pretix's [replica] names
  pretix-agent on the load balancer           http checks of each node's /healthcheck/ gating
                                              pretix/app1 and pretix/app2, its Redis check as their
                                              shared cause; the replica's postgres check gating
                                              pretix_replica/replica (shutdown_sessions); the broker
  pretix-agent per node                       maintenance marker of its nginx, agent-check responder
                                              (reconfigure_nodes: gated on its own /healthcheck/)
  pretix-agent with [lock_fencing]            only inside `fencing_agent()`, as on a database node

Caches (shared by every run, built once under an fcntl lock, in /var/cache/pretix-agent-pretix/):
  <version>/venv                the pretix venv (pretix_venv.py)
  <version>/pgdata-15           a PostgreSQL data directory with pretix's database migrated (about
                                3 minutes of `python -m pretix migrate` on two cores); each cluster
                                copies it instead of running initdb

TCP ports (nginx, the agent-check responders, Redis) are picked at random in 20000-32767, below the
kernel's ephemeral range, and a server that reports the port in use is started again on another.
Everything else (PostgreSQL, gunicorn, haproxy's frontends and read paths) is on Unix sockets.

Fault injection for scenarios: Node.kill/sigstop/sigcont/start/stop/slow, Node.set_read_path,
Celery.stop/start, redis.kill()/start(), cluster.pg.replica.stop()/start(),
pg.pause_replay()/resume_replay(); agents: reconfigure_nodes(), reconfigure_lb(), fencing_agent().
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import random
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from pretix_agent.haproxy.runtime import RuntimeApi, ServerState
from tests.integration import nginx_fixture, pg_fixture, redis_fixture
from tests.integration.agent_fixture import Agent, ctl, write_config
from tests.integration.processes import (
    FixtureError,
    any_alive,
    children_of,
    pdeathsig,
    process_state,
    signal_pids,
    titled_log_tail,
    wait_stopped,
    wait_until,
)

from . import pretix_venv
from .driver import HOST_HEADER, Endpoint, OrderDriver, Shop, request

REPO = Path(__file__).resolve().parents[2]
SHIPPED_HAPROXY_CFG = REPO / "conf" / "haproxy" / "haproxy.cfg"
SHOP_SCRIPT = Path(__file__).with_name("shop.py")
HAPROXY = os.environ.get("PRETIX_AGENT_TEST_HAPROXY", "/usr/sbin/haproxy")
PG_MAJOR = "15"
NODES = ("app1", "app2")
PRETIX_QUEUES = ("default", "checkout", "mail", "background", "notifications")
PORT_RANGE = (20000, 32767)  # below the ephemeral range (32768-60999): nobody's outbound connection takes it

# The agent's checks in this tier, and haproxy's checks at the same interval and fall ("equal").
# One second with 0.8 s to answer: /healthcheck/ waits for a free gunicorn worker behind orders, and
# on two shared cores an order takes up to a second under this tier's load.
AGENT_INTERVAL, AGENT_TIMEOUT, AGENT_FALL, AGENT_RISE = 1.0, 0.8, 2, 2
# haproxy's defaults, as the shipped configuration writes them out ("default").
HX_DEFAULT_INTER, HX_DEFAULT_FALL, HX_DEFAULT_RISE = 2.0, 3, 2
# The frontends/backends of the load balancer: the shipped one (gated by the agent, plus the
# shipped checks and agent-check), and two with haproxy's own checks only, for comparison.
BACKENDS = {"pretix": "agent", "pretix_equal": "haproxy at the agent's interval and fall",
            "pretix_default": "haproxy's defaults"}
CACHE_LOCK_TIMEOUT = 3600

# pretix's own database role: not a superuser (as in production), so that lock fencing, whose role
# may only signal non-superuser sessions, can end a hung worker's session.
PRETIX_ROLE = "pretix"
# The least-privilege role docs/lock_fencing.md documents, its password in a libpq passfile.
FENCING_ROLE = "pretix_agent_fencing"
# pretix's read path: pretix's [replica] reaches the replica through haproxy (conf/haproxy's
# `listen pretix_replica`), on a Unix socket in the load balancer's directory; the port only names
# the socket file (.s.PGSQL.<port>), as PostgreSQL's own do. Two more sections of the same shape
# are gated by haproxy's own TCP check alone (at the agent's interval and fall, and as shipped),
# and "direct" is the replica itself: a node can be switched to any of them (Node.read_path).
READ_PATHS = {"pretix_replica": 5433, "pretix_replica_equal": 5434, "pretix_replica_default": 5435, "direct": 0}
# The agent's replica check: lag over this many seconds takes the replica out of the read path
# (shipped default 30 s: shorter here so the lag scenario stays short).
REPLICA_MAX_LAG = 5.0
# The load balancer agent's flap window: one scenario's take-out of a node must not count as a flap
# of the next scenario's (scenarios that need a server's damping at level 0 wait for it).
FLAP_WINDOW = 20.0


def pick_port() -> int:
    """A random TCP port in PORT_RANGE nothing listens on right now (the caller still retries when
    the server it starts reports the port in use: this only avoids the obvious clashes)."""
    listening = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if fields[3] == "0A":  # LISTEN
                    listening.add(int(fields[1].rsplit(":", 1)[1], 16))
    while True:
        port = random.randint(*PORT_RANGE)
        if port not in listening:
            return port


def in_use(text: str) -> bool:
    return bool(re.search(r"in use|EADDRINUSE|cannot bind|could not bind", text, re.IGNORECASE))


# ------------------------------------------------------------------------------------------ database


def ensure_db_template(venv: pretix_venv.PretixVenv) -> Path:
    """The cached data directory with pretix's schema migrated, built once per pretix version."""
    target = venv.root / f"pgdata-{PG_MAJOR}"
    if (target / "READY").is_file():
        return target / "data"
    with pretix_venv.cache_lock(f"pgdata-{venv.version}"):
        if (target / "READY").is_file():
            return target / "data"
        shutil.rmtree(target, ignore_errors=True)
        started = time.monotonic()
        with pg_fixture.PgReplicationCluster(with_replica=False, tcp=False, timeout=60) as pg:
            pg.primary.execute("CREATE DATABASE pretix")
            workdir = pg.base_dir / "pretix"
            workdir.mkdir()
            config = write_pretix_cfg(workdir, pg, redis=None)
            log = venv.root / "migrate.log"
            with open(log, "wb") as out:
                result = subprocess.run([str(venv.python), "-m", "pretix", "migrate", "--noinput"],
                                        env=pretix_env(config), stdout=out, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, timeout=1800, cwd=workdir,
                                        preexec_fn=pdeathsig(signal.SIGKILL))
            if result.returncode != 0:
                raise FixtureError(f"pretix migrate failed (exit {result.returncode})\n{titled_log_tail(log, 40)}")
            pg.primary.stop("fast")  # a clean shutdown: the copies start without crash recovery
            building = Path(tempfile.mkdtemp(prefix=".pgdata-build-", dir=venv.root))
            subprocess.run(["cp", "-a", str(pg.primary.datadir), str(building / "data")], check=True, timeout=300)
            # Nothing of this one cluster may stay in the template: its server's settings come with -c.
            (building / "data" / "postmaster.opts").unlink(missing_ok=True)
        os.rename(building, target)
        (target / "READY").write_text(f"migrated in {time.monotonic() - started:.0f} s\n")
    return target / "data"


def write_pretix_cfg(directory: Path, pg: pg_fixture.PgReplicationCluster, redis: RedisBroker | None, *,
                     user: str = pg_fixture.SUPERUSER, replica: tuple[str, int] | None = None) -> Path:
    """pretix.cfg for this cluster (pretix/settings.py reads these sections). `replica`: where
    pretix's [replica] connects (a socket directory and port), by default the replica itself."""
    data = directory / "data"
    data.mkdir(exist_ok=True)
    sections = [
        "[pretix]\ninstance_name=pretix-agent tier\nurl=http://" + HOST_HEADER + "\ncurrency=EUR\n"
        f"datadir={data}\ntrust_x_forwarded_for=on\ntrust_x_forwarded_proto=on\nloglevel=WARNING\n",
        "[locale]\ntimezone=UTC\n",
        "[mail]\nfrom=tier@example.org\nhost=127.0.0.1\nport=9\n",  # port 9 (discard): never reached, no mail sent
        f"[database]\nbackend=postgresql\nname=pretix\nuser={user}\n"
        f"host={pg.primary.socket_dir}\nport={pg.primary.port}\n",
    ]
    if pg.replica is not None:
        host, port = replica or (str(pg.replica.socket_dir), pg.replica.port)
        sections.append(f"[replica]\nhost={host}\nport={port}\n")
    if redis is not None:
        sections.append(f"[redis]\nlocation=unix://{redis.server.unixsocket}?db=0\nsessions=true\n")
        sections.append(f"[celery]\nbroker={redis.url(1)}\nbackend={redis.url(2)}\n")
    path = directory / "pretix.cfg"
    path.write_text("\n".join(sections))
    return path


def pretix_env(config: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "DJANGO_SETTINGS_MODULE")}
    env.update(PRETIX_CONFIG_FILE=str(config), PATH="/usr/sbin:/usr/bin:/sbin:/bin", LC_ALL="C.UTF-8",
               PYTHONDONTWRITEBYTECODE="1")
    return env


# --------------------------------------------------------------------------------------------- Redis


class RedisBroker:
    """redis_fixture's RedisServer on its Unix socket and a TCP port from PORT_RANGE."""

    def __init__(self, directory: Path):
        directory.mkdir()
        self.server = redis_fixture.RedisServer("redis", directory)

    def start(self) -> None:
        if self.server.port:  # a restart: the same port, which pretix's broker URL names
            self.server.start()
            return
        for _ in range(8):
            self.server.port = pick_port()
            try:
                self.server.start()
                return
            except FixtureError:
                if self.server.running or not in_use(redis_fixture.log_tail(self.server.log_path, 10)):
                    raise
        raise FixtureError("no free port for Redis after 8 tries")

    def url(self, db: int) -> str:
        return f"redis://127.0.0.1:{self.server.port}/{db}"

    def kill(self) -> None:
        self.server.kill()

    def stop(self) -> None:
        self.server.stop()

    @property
    def running(self) -> bool:
        return self.server.running

    def client(self) -> Any:
        return self.server.client()


# -------------------------------------------------------------------------------------- app processes


class ManagedProcess:
    """A process started from the pretix venv, with its children, stopped by PID."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log: Path, cwd: Path):
        self.name = name
        self.argv = argv
        self.env = env
        self.log_path = log
        self.cwd = cwd
        self.proc: subprocess.Popen[bytes] | None = None
        self.known_pids: set[int] = set()
        self._slow: threading.Thread | None = None
        self._slow_stop = threading.Event()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def pids(self) -> set[int]:
        """The main process and its live children (gunicorn's or celery's workers)."""
        if not self.running:
            return set()
        assert self.proc is not None
        pids = {self.proc.pid} | children_of(self.proc.pid)
        self.known_pids |= pids
        return pids

    def start(self) -> None:
        if self.running:
            raise FixtureError(f"{self.name} already running")
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.argv, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, cwd=self.cwd, start_new_session=True,
                                         preexec_fn=pdeathsig(signal.SIGKILL))
        self.known_pids.add(self.proc.pid)

    def kill(self) -> None:
        """SIGKILL the main process and its workers at once (a crash), and reap it."""
        self.unslow()
        if not self.running:
            return
        assert self.proc is not None
        pids = self.pids()
        signal_pids(pids, signal.SIGKILL)
        self.proc.wait(10)
        wait_until(lambda: not any_alive(pids), timeout=10, what=f"{self.name}'s processes to die")

    def sigstop(self) -> None:
        """SIGSTOP the main process first (no new workers), then every worker; return once stopped."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)
        stopped = {self.proc.pid}
        while todo := self.pids() - stopped:
            signal_pids(todo, signal.SIGSTOP)
            stopped |= todo
        wait_stopped(stopped)

    def sigcont(self) -> None:
        signal_pids(self.pids(), signal.SIGCONT)

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM (gunicorn and celery: a graceful shutdown), SIGKILL what is left after `timeout`."""
        self.unslow()
        if not self.running:
            return
        assert self.proc is not None
        pids = self.pids()
        self.sigcont()
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            signal_pids(self.pids(), signal.SIGKILL)
            self.proc.wait(10)
        with contextlib.suppress(FixtureError):
            wait_until(lambda: not any_alive(pids), timeout=10, what=f"{self.name}'s workers to exit")
        signal_pids(any_alive(pids), signal.SIGKILL)

    def slow(self, running: float = 0.02, stopped: float = 0.08) -> None:
        """Make it slow: a thread stops and continues its processes in turn (here 20 ms of every
        100 ms running), so it answers, five times slower, as an overloaded node would."""
        self.unslow()
        self._slow_stop.clear()

        def cycle() -> None:
            while not self._slow_stop.is_set():
                signal_pids(self.pids(), signal.SIGSTOP)
                if self._slow_stop.wait(stopped):
                    break
                signal_pids(self.pids(), signal.SIGCONT)
                self._slow_stop.wait(running)
            signal_pids(self.pids(), signal.SIGCONT)

        self._slow = threading.Thread(target=cycle, name=f"slow-{self.name}", daemon=True)
        self._slow.start()

    def unslow(self) -> None:
        if self._slow is not None:
            self._slow_stop.set()
            self._slow.join(5)
            self._slow = None

    def log_tail(self, lines: int = 30) -> str:
        return titled_log_tail(self.log_path, lines)


GUNICORN_HOOKS = """\
# Each worker names its database sessions after itself (libpq reads PGAPPNAME when it connects, and
# Django connects after the fork): pg_stat_activity.application_name = pretix-<node>-<worker pid>,
# so a scenario can tell which worker holds a lock, or still reads from the replica.
import os


def post_fork(server, worker):
    os.environ["PGAPPNAME"] = "pretix-{node}-%d" % os.getpid()
"""


def worker_of(application_name: str | None) -> tuple[str, int] | None:
    """("app1", 4242) for a session a gunicorn worker of this tier opened, else None."""
    match = re.fullmatch(r"pretix-(app\d+)-(\d+)", application_name or "")
    return (match[1], int(match[2])) if match else None


class Node:
    """One app node: gunicorn (pretix.wsgi on a Unix socket) behind its own nginx. `read_path`: which
    of READ_PATHS its pretix reads public pages through (set_read_path restarts gunicorn)."""

    def __init__(self, name: str, directory: Path, venv: pretix_venv.PretixVenv, config: Path, workers: int,
                 read_endpoint: Callable[[str], tuple[str, int]], read_path: str = "pretix_replica"):
        self.name = name
        self.read_endpoint = read_endpoint
        self.read_path = read_path
        self.dir = directory
        directory.mkdir(mode=0o755)
        directory.chmod(0o755)  # nginx's workers (nobody) reach the socket and the marker through it
        self.socket = directory / "gunicorn.sock"
        self.logdir = directory / "logs"  # pretix's log of this node alone (its [pretix] logdir)
        self.agent_dir = directory / "agent"
        self.agent_dir.mkdir(mode=0o755)
        self.agent_dir.chmod(0o755)
        (self.agent_dir / "state").mkdir(mode=0o755)
        (self.agent_dir / "state").chmod(0o755)
        self.marker = self.agent_dir / "state" / "maintenance"
        hooks = directory / "gunicorn_hooks.py"
        hooks.write_text(GUNICORN_HOOKS.replace("{node}", name))
        self.gunicorn = ManagedProcess(
            f"gunicorn-{name}",
            [str(venv.python), "-m", "gunicorn", "pretix.wsgi", "--name", f"pretix-{name}", "--workers", str(workers),
             "--config", str(hooks),
             "--bind", f"unix:{self.socket}", "--timeout", "60", "--graceful-timeout", "20",
             "--max-requests", "1200", "--max-requests-jitter", "50", "--log-level", "info",
             # gunicorn 23+ opens a control socket at one path per user (~/.gunicorn/gunicorn.ctl):
             # two nodes on one machine would share it, and the first to stop would remove it.
             "--no-control-socket"],
            pretix_env(config), directory / "gunicorn.log", directory)
        self.nginx: nginx_fixture.NginxProcess | None = None
        self.port = 0
        self.agent: Agent | None = None
        self.agent_check_port = 0

    # -- gunicorn
    def start(self, timeout: float = 120.0) -> None:
        """Start gunicorn and wait until /healthcheck/ answers 200 through nginx."""
        self.socket.unlink(missing_ok=True)
        host, port = self.read_endpoint(self.read_path)  # pretix reads these over pretix.cfg's [replica]
        self.gunicorn.env.update(PRETIX_REPLICA_HOST=host, PRETIX_REPLICA_PORT=str(port),
                                 PRETIX_PRETIX_LOGDIR=str(self.logdir))
        self.gunicorn.start()
        wait_until(lambda: self._socket_ready(), timeout=timeout, what=f"{self.name}'s gunicorn socket",
                   details=self.gunicorn.log_tail)
        if self.nginx is not None:
            wait_until(lambda: self.healthcheck() == 200, timeout=timeout, what=f"{self.name}'s /healthcheck/",
                       details=self.gunicorn.log_tail)

    def _socket_ready(self) -> bool:
        if not self.gunicorn.running:
            raise FixtureError(f"{self.gunicorn.name} exited\n{self.gunicorn.log_tail()}")
        if not self.socket.exists():
            return False
        self.socket.chmod(0o666)  # nginx's workers run as nobody
        return True

    def kill(self) -> None:
        self.gunicorn.kill()

    def set_read_path(self, read_path: str) -> None:
        """Read public pages through `read_path` (one of READ_PATHS) from now on: restart gunicorn
        (gracefully) if it reads through another."""
        if read_path not in READ_PATHS:
            raise FixtureError(f"unknown read path {read_path!r}")
        if read_path == self.read_path and self.gunicorn.running:
            return
        self.read_path = read_path
        self.gunicorn.stop()
        self.start()

    @property
    def pretix_log(self) -> Path:
        return self.logdir / "pretix.log"

    def log_offset(self) -> int:
        """Where pretix's log of this node ends now (see errors_since)."""
        with contextlib.suppress(FileNotFoundError):
            return self.pretix_log.stat().st_size
        return 0

    def errors_since(self, offset: int, end: int | None = None, path: str | None = None) -> dict[str, int]:
        """The internal server errors pretix logged on this node between offsets `offset` and `end`
        (of its log; None: to the end), for requests of `path` (None: any), by what the database
        said: "stale" (a query on a connection the server side had closed: "server closed the
        connection unexpectedly" from cursor.execute), "connect" (opening a new connection failed),
        "other". pretix writes each error twice into pretix.log (its django.request logger and the
        root logger share the file handler): counted once."""
        try:
            with open(self.pretix_log, "rb") as log:
                log.seek(offset)
                text = log.read(-1 if end is None else max(0, end - offset)).decode("utf-8", "replace")
        except FileNotFoundError:
            return {}
        records = re.split(r"^(?=[A-Z]+ \d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ )", text, flags=re.MULTILINE)
        kinds: dict[str, int] = {}
        for record in records:
            header = record.split("\n", 1)[0]
            if " django.request " not in header or "Internal Server Error: " not in header:
                continue
            if path is not None and header.rsplit("Internal Server Error: ", 1)[1].strip() != path:
                continue
            if "get_new_connection" in record:
                kind = "connect"
            elif "server closed the connection unexpectedly" in record or "terminating connection" in record:
                kind = "stale"
            else:
                kind = "other"
            kinds[kind] = kinds.get(kind, 0) + 1
        if any(count % 2 for count in kinds.values()):
            raise FixtureError(f"{self.name}: pretix's log no longer holds each error twice: {kinds}\n{text[-3000:]}")
        return {kind: count // 2 for kind, count in kinds.items()}

    def worker_pids(self) -> set[int]:
        """gunicorn's workers (the master's children)."""
        if not self.gunicorn.running:
            return set()
        assert self.gunicorn.proc is not None
        return children_of(self.gunicorn.proc.pid)

    def sigstop(self) -> None:
        self.gunicorn.sigstop()

    def sigcont(self) -> None:
        self.gunicorn.sigcont()

    def stop(self) -> None:
        self.gunicorn.stop()

    def slow(self, running: float = 0.02, stopped: float = 0.08) -> None:
        self.gunicorn.slow(running, stopped)

    def unslow(self) -> None:
        self.gunicorn.unslow()

    # -- nginx
    def nginx_config(self) -> str:
        q = nginx_fixture._q
        socket_path = q(self.socket)[1:-1]  # unquoted: nginx would take quotes for part of the path
        site = (
            "    upstream pretix {\n"
            f"        server unix:{socket_path};\n"
            "    }\n"
            "    server {\n"
            f"        listen 127.0.0.1:{self.port};\n"
            "        server_name _;\n"
            f"        set $pretix_maintenance_marker {q(self.marker)};\n"
            f"        set $pretix_maintenance_root {q(self.dir / 'page')};\n"
            f"        include {q(nginx_fixture.SNIPPET)};\n"
            "        location / {\n"
            "            proxy_pass http://pretix;\n"
            "            proxy_set_header Host $http_host;\n"
            "            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n"
            "            proxy_set_header X-Forwarded-Proto $scheme;\n"
            "        }\n"
            "    }\n"
        )
        return nginx_fixture.main_config(self.dir, f"    include {q(nginx_fixture.MAP_FILE)};\n" + site, "warn")

    def start_nginx(self) -> None:
        page = self.dir / "page"
        page.mkdir(mode=0o755, exist_ok=True)
        shutil.copyfile(nginx_fixture.MAINTENANCE_PAGE, page / "maintenance.html")
        (page / "maintenance.html").chmod(0o644)
        (self.dir / nginx_fixture.EXEMPT_DIR_NAME).mkdir(mode=0o755, exist_ok=True)
        conf = self.dir / "nginx.conf"
        for _ in range(8):
            self.port = pick_port()
            conf.write_text(self.nginx_config())
            process = nginx_fixture.NginxProcess(self.dir, conf, self.port)
            try:
                process.start()
                self.nginx = process
                return
            except RuntimeError as error:
                if not in_use(str(error)):
                    raise FixtureError(f"{self.name}: nginx did not start: {error}") from None
        raise FixtureError(f"{self.name}: no free port for nginx after 8 tries")

    def get(self, path: str, **kwargs: Any) -> Any:
        return request(Endpoint(port=self.port), "GET", path, **kwargs)

    def healthcheck(self) -> int | None:
        return self.get("/healthcheck/", timeout=5.0).status


# ------------------------------------------------------------------------------------------ haproxy


def load_balancer_config(directory: Path, nodes: dict[str, Node], pg: pg_fixture.PgReplicationCluster, *,
                         equal_inter: float = AGENT_INTERVAL, equal_fall: int = AGENT_FALL,
                         equal_rise: int = AGENT_RISE, equal_timeout: float = AGENT_TIMEOUT) -> str:
    """conf/haproxy/haproxy.cfg adapted to loopback, plus comparison backends and read paths.

    Changed from the shipped file, and only that: no syslog, chroot or user switch (haproxy runs in
    the foreground here, logging to stderr); the admin socket, the server-state file and the
    frontend on Unix sockets in `directory`; no TLS bind and no https redirect (no certificate);
    the servers are the nodes' nginx ports with each node agent's agent-check port; `listen
    pretix_replica` binds a Unix socket in `directory` (.s.PGSQL.5433, which pretix's [replica]
    names as host `directory`, port 5433) and its servers are the replica's and the primary's Unix
    sockets. Added: backends `pretix_equal` (haproxy's own checks at the agent's interval, fall,
    rise and timeout) and `pretix_default` (haproxy's own checks at haproxy's defaults), each behind
    its own frontend: same servers, no agent; read paths `pretix_replica_equal` and
    `pretix_replica_default` of the same shape as `pretix_replica`, gated by haproxy's own TCP check
    alone (at the agent's interval and fall; as shipped); and a response header naming the server
    that answered (X-Tier-Server), so a scenario can tell which node served an order.
    """
    text = SHIPPED_HAPROXY_CFG.read_text()

    def replace(old: str, new: str) -> None:
        nonlocal text
        if text.count(old) != 1:
            raise FixtureError(f"conf/haproxy/haproxy.cfg changed: expected {old!r} once")
        text = text.replace(old, new)

    replace("    log /dev/log local0\n    log /dev/log local1 notice\n", "    log stderr format short local0 info\n")
    replace("    chroot /var/lib/haproxy\n    user haproxy\n    group haproxy\n", "")
    replace("    stats socket /run/haproxy/admin.sock mode 660 level admin group pretix-agent expose-fd listeners\n",
            f"    stats socket {directory}/admin.sock mode 600 level admin expose-fd listeners\n")
    replace("    server-state-file /var/lib/pretix-agent/haproxy-server-state\n",
            f"    server-state-file {directory}/server-state\n")
    replace("    bind :80\n    bind :443 ssl crt /etc/haproxy/certs/tickets.example.org.pem alpn h2,http/1.1\n"
            "    http-request redirect scheme https code 301 unless { ssl_fc }\n",
            f"    bind unix@{directory}/fe-pretix.sock mode 666\n")
    servers = {name: f"    server {name} 127.0.0.1:{node.port} agent-port {node.agent_check_port}\n"
               for name, node in nodes.items()}
    replace("    server app1 10.0.0.11:80\n    server app2 10.0.0.12:80\n", "".join(servers.values()))
    replace("    http-check expect status 200\n", "    http-check expect status 200\n"
            "    http-response set-header X-Tier-Server %s\n")
    assert pg.replica is not None
    read_servers = (f"    server replica {pg.replica.socket_dir}/.s.PGSQL.{pg.replica.port}\n"
                    f"    server primary {pg.primary.socket_dir}/.s.PGSQL.{pg.primary.port} backup\n")
    shipped_listen = text[text.index("listen pretix_replica\n"):]
    replace("listen pretix_replica\n    bind :5433\n",
            f"listen pretix_replica\n    bind unix@{directory}/.s.PGSQL.{READ_PATHS['pretix_replica']} mode 666\n")
    replace("    server replica 10.0.0.22:5432\n    server primary 10.0.0.21:5432 backup\n", read_servers)
    shipped_check = "    default-server check inter 2s fall 3 rise 2 on-marked-down shutdown-sessions\n"
    if shipped_listen.count(shipped_check) != 1:
        raise FixtureError(f"conf/haproxy/haproxy.cfg changed: expected {shipped_check!r} in listen pretix_replica")
    for section, check in (
            ("pretix_replica_equal", f"    timeout check {int(equal_timeout * 1000)}ms\n"
             f"    default-server check inter {int(equal_inter * 1000)}ms fall {equal_fall} rise {equal_rise} "
             "on-marked-down shutdown-sessions\n"),
            ("pretix_replica_default", shipped_check)):
        listen = (shipped_listen.replace("listen pretix_replica\n", f"listen {section}\n")
                  .replace("    bind :5433\n", f"    bind unix@{directory}/.s.PGSQL.{READ_PATHS[section]} mode 666\n")
                  .replace("    server replica 10.0.0.22:5432\n    server primary 10.0.0.21:5432 backup\n",
                           read_servers)
                  .replace(shipped_check, check))
        text += f"\n# tier: pretix's read path gated by haproxy's own TCP check alone, for comparison\n{listen}"
    plain = "".join(f"    server {name} 127.0.0.1:{node.port}\n" for name, node in nodes.items())
    comparisons = ""
    for backend, inter, fall, rise, timeout in (
            ("pretix_equal", equal_inter, equal_fall, equal_rise, equal_timeout),
            ("pretix_default", HX_DEFAULT_INTER, HX_DEFAULT_FALL, HX_DEFAULT_RISE, None)):
        comparisons += (
            f"# tier: haproxy's own checks only ({BACKENDS[backend]}), for comparison\n"
            f"frontend {backend}\n"
            f"    bind unix@{directory}/fe-{backend}.sock mode 666\n"
            f"    default_backend {backend}\n"
            f"\nbackend {backend}\n"
            "    balance leastconn\n    retries 2\n    retry-on conn-failure\n    option redispatch 1\n"
            "    option httpchk\n"
            f"    http-check send meth GET uri /healthcheck/ ver HTTP/1.1 hdr Host {HOST_HEADER}\n"
            "    http-check expect status 200\n"
            "    http-response set-header X-Tier-Server %s\n"
            + (f"    timeout check {int(timeout * 1000)}ms\n" if timeout else "")
            + f"    default-server check inter {int(inter * 1000)}ms fall {fall} rise {rise} weight 100 maxconn 32\n"
            + plain + "\n"
        )
    # In the HTTP part of the file: after the read path's comment comes its own `defaults mode tcp`.
    replace("# pretix's read path.", comparisons + "# pretix's read path.")
    return text


class LoadBalancer:
    """haproxy (master-worker, foreground) with load_balancer_config(); stopped by its master's PID."""

    def __init__(self, directory: Path):
        self.dir = directory
        directory.mkdir()
        self.config = directory / "haproxy.cfg"
        self.admin_socket = directory / "admin.sock"
        self.state_file = directory / "server-state"
        self.log_path = directory / "haproxy.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.known_pids: set[int] = set()

    def frontend(self, backend: str = "pretix") -> Endpoint:
        return Endpoint(unix_path=str(self.dir / f"fe-{backend}.sock"))

    def start(self, config_text: str, timeout: float = 30.0) -> None:
        self.config.write_text(config_text)
        checked = subprocess.run([HAPROXY, "-c", "-q", "-f", str(self.config)], capture_output=True, text=True,
                                 timeout=30)
        if checked.returncode != 0:
            raise FixtureError(f"haproxy -c failed:\n{checked.stdout}{checked.stderr}")
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([HAPROXY, "-W", "-db", "-f", str(self.config)], stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=subprocess.STDOUT, cwd=self.dir, start_new_session=True,
                                         preexec_fn=pdeathsig(signal.SIGTERM))
        self.known_pids.add(self.proc.pid)
        wait_until(lambda: self._answers(), timeout=timeout, what="haproxy's admin socket",
                   details=lambda: titled_log_tail(self.log_path))

    def _answers(self) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            raise FixtureError(f"haproxy exited\n{titled_log_tail(self.log_path)}")
        self.runtime().process_identity()
        self.known_pids |= children_of(self.proc.pid)
        return True

    def runtime(self, timeout: float = 2.0) -> RuntimeApi:
        return RuntimeApi(str(self.admin_socket), timeout=timeout)

    def states(self) -> dict[tuple[str, str], ServerState]:
        return {(s.backend, s.server): s for s in self.runtime().servers_state()}

    def stop(self) -> None:
        if self.proc is None:
            return
        workers = children_of(self.proc.pid) if self.proc.poll() is None else set()
        for signum in (signal.SIGUSR1, signal.SIGTERM, signal.SIGKILL):
            if self.proc.poll() is not None:
                break
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signum)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(5)
        signal_pids(any_alive(workers | self.known_pids), signal.SIGKILL)


def usable(state: ServerState) -> bool:
    """Takes new requests: admin ready, operationally up, and a weight above 0."""
    return state.admin == "ready" and state.up and state.weight > 0


# ------------------------------------------------------------------------------------------- agents


def lb_agent_config(cluster: PretixCluster, *, shared_checks: Iterable[str] = ("redis",)) -> str:
    """The agent on the load balancer: an http check of each node's /healthcheck/ gating its
    server in the shipped backend, with its own check of Redis as the backend's shared cause
    (`shared_checks`); the replica's postgres check gating the replica in pretix's read path
    (`listen pretix_replica`), shutting its sessions when it takes it out; the broker's queues as a
    status-only check."""
    text = ""
    for name, node in cluster.nodes.items():
        text += (f"\n[checks.web-{name}]\ntype = \"http\"\nurl = \"http://127.0.0.1:{node.port}/healthcheck/\"\n"
                 f"host = \"{HOST_HEADER}\"\ninterval = \"{int(AGENT_INTERVAL * 1000)}ms\"\n"
                 f"timeout = \"{int(AGENT_TIMEOUT * 1000)}ms\"\nfall = {AGENT_FALL}\nrise = {AGENT_RISE}\n")
    replica, primary = cluster.pg.replica, cluster.pg.primary
    assert replica is not None
    agent_login = f"dbname=postgres user={pg_fixture.AGENT_ROLE} password={cluster.pg.agent_password}"
    text += (
        f"\n[checks.broker]\ntype = \"redis\"\nurl = \"{cluster.redis.url(1)}\"\n"
        f"queues = {json.dumps(list(PRETIX_QUEUES))}\nmax_queue_length = {cluster.max_queue_length}\n"
        f"max_queue_age = \"{cluster.max_queue_age:g}s\"\ninterval = \"1s\"\ntimeout = \"800ms\"\nfall = 1\nrise = 1\n"
        + redis_check(cluster) +
        # fall 1: a replica that is down or behind is out at its first failed probe (the bound
        # is one failed page probe a second); rise 2: it returns once caught up twice in a row.
        f"\n[checks.replica]\ntype = \"postgres\"\nrole = \"standby\"\n"
        f"dsn = \"host={replica.socket_dir} port={replica.port} {agent_login}\"\n"
        f"primary_dsn = \"host={primary.socket_dir} port={primary.port} {agent_login}\"\n"
        f"max_lag_seconds = \"{REPLICA_MAX_LAG:g}s\"\n"
        f"interval = \"1s\"\ntimeout = \"800ms\"\nfall = 1\nrise = {AGENT_RISE}\n"
        # The change rate is loosened so that scenarios may follow one another; flap_window is
        # short so that one scenario's take-out does not count as a flap of the next one's (the
        # shipped hold_down, 10 s, stays: a server taken out once must come back after `rise`).
        # haproxy is read back every 500 ms: a node drained through agent-check is noticed soon.
        f"\n[haproxy]\nsocket = \"{cluster.lb.admin_socket}\"\ninterval = \"500ms\"\n"
        f"flap_window = \"{FLAP_WINDOW:g}s\"\nmax_changes_per_minute = 120\nmin_ready = 1\n"
        f"state_file = \"{cluster.lb.state_file}\"\nshared_checks = {json.dumps(list(shared_checks))}\n"
    )
    for name in cluster.nodes:
        text += f"\n[[haproxy.server]]\nbackend = \"pretix\"\nserver = \"{name}\"\nchecks = [\"web-{name}\"]\n"
    text += ("\n[[haproxy.server]]\nbackend = \"pretix_replica\"\nserver = \"replica\"\nchecks = [\"replica\"]\n"
             "shared_checks = []\nshutdown_sessions = true\n")
    return text


def redis_check(cluster: PretixCluster) -> str:
    """An agent's check of Redis itself (reachable, writable), named `redis`."""
    return (f"\n[checks.redis]\ntype = \"redis\"\nurl = \"{cluster.redis.url(1)}\"\n"
            f"interval = \"1s\"\ntimeout = \"800ms\"\nfall = 1\nrise = {AGENT_RISE}\n")


def node_agent_config(node: Node, cluster: PretixCluster | None = None, *, gate_on_web: bool = False,
                      shared_checks: Iterable[str] = ()) -> str:
    """A node's agent: its maintenance marker is the one its nginx looks at (write_config puts it
    in agent_dir/state), and it answers haproxy's agent-check. By default its agent-check gates on
    no check, so that haproxy's view of a failing node comes from the load balancer's agent alone
    (what the node fault scenarios measure); it answers `up 0%` while drained. With `gate_on_web`,
    it gates on its own http check of its node's /healthcheck/, with its own Redis check (`redis`)
    available to `shared_checks` and to `[maintenance] on_failing` (agent_toml's `maintenance`)."""
    text = ""
    if gate_on_web or shared_checks:
        assert cluster is not None
        text += (f"\n[checks.web]\ntype = \"http\"\nurl = \"http://127.0.0.1:{node.port}/healthcheck/\"\n"
                 f"host = \"{HOST_HEADER}\"\ninterval = \"{int(AGENT_INTERVAL * 1000)}ms\"\n"
                 f"timeout = \"{int(AGENT_TIMEOUT * 1000)}ms\"\nfall = {AGENT_FALL}\nrise = {AGENT_RISE}\n"
                 + redis_check(cluster))
    text += (f"\n[agent_check]\nlisten = \"127.0.0.1:{node.agent_check_port}\"\n"
             f"checks = {json.dumps(['web'] if gate_on_web else [])}\n"
             f"shared_checks = {json.dumps(list(shared_checks))}\n")
    return text


def agent_toml(directory: Path, config_text: str, node: str, maintenance: str = "") -> Path:
    """Write the agent's configuration (agent_fixture.write_config, with this node's name);
    `maintenance`: more keys of its [maintenance] table (`on_failing = ["redis"]`)."""
    config = write_config(directory, config_text, windows=maintenance)
    config.write_text(config.read_text().replace('node = "test-node"', f'node = "{node}"'))
    return config


def start_agent(directory: Path, config_text: str, node: str, maintenance: str = "") -> Agent:
    agent = Agent(directory, agent_toml(directory, config_text, node, maintenance))
    try:
        agent.wait_ready(60)
    except AssertionError:
        log = agent.log()
        agent.stop()
        raise FixtureError(f"the agent {node} did not become ready:\n{log[-3000:]}") from None
    return agent


def reconfigure_agent(agent: Agent, config_text: str, node: str, maintenance: str = "",
                      timeout: float = 30.0) -> None:
    """Give a running agent a new configuration: write it, SIGHUP, wait until it was applied."""
    done = agent.log().count("config.reloaded")
    failed = agent.log().count("config.reload_failed")
    agent_toml(agent.directory, config_text, node, maintenance)
    agent.signal(signal.SIGHUP)

    def applied() -> bool:
        log = agent.log()
        if log.count("config.reload_failed") > failed:
            raise FixtureError(f"the agent {node} refused its new configuration:\n{log[-3000:]}")
        return log.count("config.reloaded") > done

    wait_until(applied, timeout=timeout, what=f"the agent {node} to reload", details=lambda: agent.log()[-3000:])


# ------------------------------------------------------------------------------------------ cluster


class PretixCluster:
    def __init__(self, *, workers: int = 2, max_queue_length: int = 20, max_queue_age: float = 5.0,
                 base_dir: Path | None = None, keep_dir: bool | None = None):
        self.workers = workers
        self.max_queue_length = max_queue_length
        self.max_queue_age = max_queue_age
        self.keep_dir = bool(os.environ.get("PRETIX_AGENT_KEEP_FIXTURES")) if keep_dir is None else keep_dir
        parent = base_dir or pg_fixture.default_parent_dir()
        self.dir = Path(tempfile.mkdtemp(prefix="pa-pretix-", dir=parent))
        self.dir.chmod(0o755)
        self.timings: dict[str, float] = {}
        self.venv: pretix_venv.PretixVenv
        self.pg: pg_fixture.PgReplicationCluster
        self.redis: RedisBroker
        self.celery: ManagedProcess
        self.nodes: dict[str, Node] = {}
        self.lb: LoadBalancer
        self.lb_agent: Agent | None = None
        self.shop: Shop
        self._closers: list[Callable[[], None]] = []
        self._agent_serial = iter(range(1, 1_000_000))
        self.fencing_password = ""
        self.fencing_passfile = self.dir / "fencing" / "pgpass"
        self._finalizer = weakref.finalize(self, _close_all, self._closers, self.dir, self.keep_dir)

    def __enter__(self) -> PretixCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop every process this cluster started (by PID), remove its directory. Idempotent."""
        self._finalizer()

    def _timed(self, name: str, step: Callable[[], Any]) -> Any:
        started = time.monotonic()
        value = step()
        self.timings[name] = round(time.monotonic() - started, 1)
        return value

    def start(self) -> PretixCluster:
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def _start(self) -> None:
        started = time.monotonic()
        self.venv = self._timed("venv", pretix_venv.ensure_venv)
        template = self._timed("db_template", lambda: ensure_db_template(self.venv))
        self.pg = pg_fixture.PgReplicationCluster(tcp=False, template=template, base_dir=self.dir, keep_dir=True)
        self._closers.append(self.pg.close)
        self._timed("postgres", self.pg.start)
        self._timed("roles", self._create_roles)
        self.redis = RedisBroker(self.dir / "redis")
        self._closers.append(self.redis.stop)
        self._timed("redis", self.redis.start)
        config = write_pretix_cfg(self.dir, self.pg, self.redis, user=PRETIX_ROLE,
                                  replica=self.read_endpoint("pretix_replica"))
        self.config = config
        # The shop is made before haproxy runs: should it read through [replica], it reads the replica.
        shop = self._timed("shop", lambda: self._run_in_venv([str(SHOP_SCRIPT)], "creating the shop",
                                                             env=self._read_env("direct")))
        self.shop = Shop(**json.loads(shop.strip().splitlines()[-1]))
        self.celery = ManagedProcess(
            "celery", [str(self.venv.python), "-m", "celery", "-A", "pretix.celery_app", "worker", "-l", "warning",
                       "-Q", ",".join(PRETIX_QUEUES), "--concurrency", "1", "-n", "tier@%h", "--without-gossip",
                       "--without-mingle", "--without-heartbeat"],
            {**pretix_env(config), "PGAPPNAME": "pretix-celery"}, self.dir / "celery.log", self.dir)
        self._closers.append(self.celery.stop)
        self.celery.start()
        for name in NODES:
            node = Node(name, self.dir / name, self.venv, config, self.workers, self.read_endpoint)
            self.nodes[name] = node
            self._closers.append(node.gunicorn.stop)
            node.start_nginx()
            self._closers.append(lambda node=node: node.nginx and node.nginx.stop())
        self._timed("gunicorn", lambda: [node.start() for node in self.nodes.values()])
        for node in self.nodes.values():
            self._start_node_agent(node)
        self.lb = LoadBalancer(self.dir / "lb")
        self._closers.append(self.lb.stop)
        self.lb.start(load_balancer_config(self.lb.dir, self.nodes, self.pg))
        (self.dir / "lb" / "agent").mkdir()
        self.lb_agent = start_agent(self.dir / "lb" / "agent", lb_agent_config(self), "lb")
        self._closers.append(self.lb_agent.stop)
        self._timed("settle", lambda: self.wait_all_usable(timeout=60))
        self.timings["total"] = round(time.monotonic() - started, 1)

    def _start_node_agent(self, node: Node) -> None:
        for _ in range(8):
            node.agent_check_port = pick_port()
            agent = start_agent(node.agent_dir, node_agent_config(node), node.name)
            self._closers.append(agent.stop)
            listening = wait_until(lambda agent=agent: self._agent_check_state(agent, node), timeout=15,
                                   what=f"{node.name}'s agent-check responder", details=agent.log)
            if listening == "listening":
                node.agent = agent
                return
            agent.stop()
        raise FixtureError(f"{node.name}: no free port for the agent-check responder after 8 tries")

    @staticmethod
    def _agent_check_state(agent: Agent, node: Node) -> str | None:
        import socket

        if in_use(agent.log()):
            return "in use"
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", node.agent_check_port), 1) as sock:
            sock.settimeout(1)
            if sock.recv(100):
                return "listening"
        return None

    def _run_in_venv(self, args: list[str], what: str, timeout: float = 300, env: dict[str, str] | None = None) -> str:
        result = subprocess.run([str(self.venv.python), *args], env={**pretix_env(self.config), **(env or {})},
                                capture_output=True, text=True, timeout=timeout, cwd=self.dir,
                                preexec_fn=pdeathsig(signal.SIGKILL))
        if result.returncode != 0:
            raise FixtureError(f"{what} failed (exit {result.returncode}):\n{result.stdout[-2000:]}"
                               f"{result.stderr[-4000:]}")
        return result.stdout

    # -- database roles and pretix's read path
    def _create_roles(self) -> None:
        """pretix's role (the template's tables belong to the superuser that migrated them: pretix
        gets every right on them), and lock fencing's role as docs/lock_fencing.md has it, which
        logs in with a password (scram-sha-256, from a passfile) over the primary's socket."""
        self.fencing_password = secrets.token_hex(16)
        with psycopg.connect(self.pg.primary.superuser_dsn("pretix"), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(PRETIX_ROLE)))
            for grant in ("GRANT ALL ON ALL TABLES IN SCHEMA public TO {}",
                          "GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO {}", "GRANT USAGE ON SCHEMA public TO {}"):
                conn.execute(sql.SQL(grant).format(sql.Identifier(PRETIX_ROLE)))
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                sql.Identifier(FENCING_ROLE), sql.Literal(self.fencing_password)))
            conn.execute(sql.SQL("GRANT pg_signal_backend, pg_read_all_stats TO {}").format(
                sql.Identifier(FENCING_ROLE)))
        hba = self.pg.primary.datadir / "pg_hba.conf"  # first match wins: before the fixture's `local all all trust`
        hba.write_text(f"local   postgres     {FENCING_ROLE}                    scram-sha-256\n" + hba.read_text())
        self.pg.primary.execute("SELECT pg_reload_conf()")
        fencing_dir = self.dir / "fencing"
        fencing_dir.mkdir(mode=0o700)
        self.fencing_passfile = fencing_dir / "pgpass"
        self.fencing_passfile.touch(mode=0o600)
        primary = self.pg.primary
        self.fencing_passfile.write_text(f"{primary.socket_dir}:{primary.port}:postgres:{FENCING_ROLE}:"
                                         f"{self.fencing_password}\n")

    def read_endpoint(self, read_path: str) -> tuple[str, int]:
        """Where pretix's [replica] connects for `read_path` (one of READ_PATHS): a socket directory
        and a port."""
        if read_path == "direct":
            assert self.pg.replica is not None
            return str(self.pg.replica.socket_dir), self.pg.replica.port
        return str(self.dir / "lb"), READ_PATHS[read_path]

    def _read_env(self, read_path: str) -> dict[str, str]:
        host, port = self.read_endpoint(read_path)
        return {"PRETIX_REPLICA_HOST": host, "PRETIX_REPLICA_PORT": str(port)}

    def pretix_sessions(self, server: str = "replica") -> dict[str, int]:
        """{application_name: sessions} of pretix's role on one PostgreSQL server (its workers name
        their sessions pretix-<node>-<pid>)."""
        target = self.pg.replica if server == "replica" else self.pg.primary
        assert target is not None
        with psycopg.connect(target.superuser_dsn(), autocommit=True) as conn:
            rows = conn.execute("SELECT application_name, count(*) FROM pg_stat_activity WHERE usename = %s "
                                "GROUP BY application_name", [PRETIX_ROLE]).fetchall()
        return {name: int(count) for name, count in rows}

    # -- agents
    def reconfigure_nodes(self, *, gate_on_web: bool = False, shared_checks: Iterable[str] = (),
                          on_failing: dict[str, Iterable[str]] | None = None) -> None:
        """Reload every node's agent with node_agent_config(...) (no arguments: the tier's default);
        `on_failing`: per node, its `[maintenance] on_failing`."""
        for name, node in self.nodes.items():
            assert node.agent is not None
            failing = list((on_failing or {}).get(name, ()))
            reconfigure_agent(node.agent, node_agent_config(node, self, gate_on_web=gate_on_web,
                                                            shared_checks=shared_checks), name,
                              maintenance=f"on_failing = {json.dumps(failing)}" if failing else "")

    def reconfigure_lb(self, **options: Any) -> None:
        """Reload the load balancer's agent with lb_agent_config(self, **options)."""
        assert self.lb_agent is not None
        reconfigure_agent(self.lb_agent, lb_agent_config(self, **options), "lb")

    def fencing_agent_config(self, *, enforce: bool) -> str:
        primary = self.pg.primary
        return (f"\n[lock_fencing]\ndsn = \"host={primary.socket_dir} port={primary.port} dbname=postgres "
                f"user={FENCING_ROLE} passfile={self.fencing_passfile}\"\n"
                f"enforce = {'true' if enforce else 'false'}\ndatabases = [\"pretix\"]\nusers = [\"{PRETIX_ROLE}\"]\n")

    @contextlib.contextmanager
    def fencing_agent(self, *, enforce: bool) -> Iterator[Agent]:
        """An agent with [lock_fencing] (the shipped max_hold, interval and timeout) on the primary,
        as on a database node, while the block runs; `enforce = false`: its dry run. Waits until it
        is connected."""
        directory = self.dir / "fencing" / f"agent-{next(self._agent_serial)}"
        directory.mkdir()
        agent = start_agent(directory, self.fencing_agent_config(enforce=enforce), "db")
        self._closers.append(agent.stop)
        try:
            wait_until(lambda: (agent.status().get("lock_fencing") or {}).get("connected"), timeout=30,
                       what="the fencing agent to connect to the primary", details=lambda: agent.log()[-3000:])
            yield agent
        finally:
            agent.stop()

    # -- state
    def wait_all_usable(self, timeout: float = 60.0) -> None:
        """Every node serving and every server of every backend usable in haproxy."""
        for node in self.nodes.values():
            if not node.gunicorn.running:
                node.start()
        wait_until(lambda: all(usable(s) for s in self.lb.states().values()), timeout=timeout,
                   what="every haproxy server usable",
                   details=lambda: "\n".join(f"{k}: admin={s.admin} up={s.up} weight={s.weight}"
                                             for k, s in self.lb.states().items()) + "\n"
                   + (self.lb_agent.log()[-3000:] if self.lb_agent else ""))

    def agent_changes(self, since_line: int = 0) -> list[str]:
        """The load balancer agent's haproxy changes (log lines) from line `since_line` on."""
        assert self.lb_agent is not None
        lines = self.lb_agent.log().splitlines()[since_line:]
        return [" ".join(line.split()[2:]) for line in lines if "haproxy.server_state_changed" in line]

    def seconds_since_take_out(self, backend: str, server: str) -> float | None:
        """How long ago the load balancer's agent last took backend/server out (by its log's
        wall-clock time, to the second, rounded up); None if it never did."""
        assert self.lb_agent is not None
        marker = f"haproxy.server_state_changed backend={backend} server={server} state="
        stamps = [line.split()[0] for line in self.lb_agent.log().splitlines()
                  if marker in line and f"{marker}ready" not in line]
        if not stamps:
            return None
        now = datetime.datetime.now()
        at = datetime.datetime.combine(now.date(), datetime.time.fromisoformat(stamps[-1]))
        if at > now:  # logged before midnight
            at -= datetime.timedelta(days=1)
        return (now - at).total_seconds() - 1.0

    def agent_log_lines(self) -> int:
        assert self.lb_agent is not None
        return len(self.lb_agent.log().splitlines())

    def wait_settled(self, timeout: float = 90.0) -> None:
        """Every server usable and every gating check of the load balancer's agent passing."""
        self.wait_all_usable(timeout)
        assert self.lb_agent is not None
        agent = self.lb_agent
        wait_until(lambda: all(agent.status()["checks"][f"web-{name}"]["state"] == "passing" for name in self.nodes)
                   and all(usable(s) for s in self.lb.states().values()), timeout=timeout,
                   what="every node's check passing and every server usable")

    def ctl(self, node: str, *args: str) -> subprocess.CompletedProcess[str]:
        agent = self.nodes[node].agent if node in self.nodes else self.lb_agent
        assert agent is not None
        return ctl(agent.config, *args)

    def orders_in_db(self, run_id: str) -> dict[str, int]:
        """{email: how many orders} of one driver run, from the primary."""
        with psycopg.connect(self.pg.primary.superuser_dsn("pretix"), autocommit=True) as conn:
            rows = conn.execute("SELECT email, count(*) FROM pretixbase_order WHERE email LIKE %s GROUP BY email",
                                [f"{run_id}-%"]).fetchall()
        return {email: int(count) for email, count in rows}

    def driver(self, run_id: str, *, rate: float = 5.0, backends: Iterable[str] = ("pretix",),
               timeout: float = 30.0, limited: bool = False) -> OrderDriver:
        """An order driver through the frontends of `backends`; `limited`: orders of the product in
        a quota with a size (each takes the quota's lock)."""
        return OrderDriver([self.lb.frontend(b) for b in backends], self.shop, rate=rate, run_id=run_id,
                           timeout=timeout, item=self.shop.limited_item if limited else None)

    def set_notification_load(self, tasks_last_minute: int) -> None:
        """Set pretix's fair-use counter of the shop's organizer (pretix/helpers/celery.py,
        get_task_priority): under 50 notification and webhook tasks a minute they are sent at high
        priority (the bare `notifications` list), from 50 at priority 5 (`notifications:4`), from
        250 at low priority (`notifications:8`). The counter lives 60 s after its last increment."""
        key = f"pretix:task_priority:notifications:{self.shop.organizer_id}"
        with redis_fixture.redis.Redis(unix_socket_path=str(self.redis.server.unixsocket), db=0,
                                       socket_timeout=2) as client:
            if tasks_last_minute:
                client.set(key, tasks_last_minute, ex=60)
            else:
                client.delete(key)

    def purge_queues(self) -> None:
        """Delete every task waiting in pretix's queues (with the worker stopped: a task a worker
        runs may send more, a notify task sends one per recipient)."""
        if self.celery.running:
            raise FixtureError("stop the celery worker before purging its queues")
        with redis_fixture.redis.Redis(unix_socket_path=str(self.redis.server.unixsocket), db=1,
                                       socket_timeout=2) as client:
            keys = [key for queue in PRETIX_QUEUES for key in (queue, f"{queue}:4", f"{queue}:8")]
            client.delete(*keys)

    def oldest_message(self, key: str) -> dict[str, Any] | None:
        """The message at the consuming end of one queue list, as kombu stored it (JSON)."""
        with redis_fixture.redis.Redis(unix_socket_path=str(self.redis.server.unixsocket), db=1,
                                       socket_timeout=2) as client:
            raw = client.lindex(key, -1)
        return None if raw is None else json.loads(raw)

    def redis_lists(self) -> dict[str, int]:
        """Every non-empty list in the broker's database (the celery queues), by name."""
        with redis_fixture.redis.Redis(unix_socket_path=str(self.redis.server.unixsocket), db=1,
                                       socket_timeout=2) as client:
            return {key.decode(): int(client.llen(key)) for key in client.scan_iter(count=1000)
                    if client.type(key) == b"list"}

    def process_states(self) -> dict[str, str | None]:
        out = {}
        for node in self.nodes.values():
            out[node.name] = process_state(node.gunicorn.proc.pid) if node.gunicorn.proc else None
        return out

    def all_known_pids(self) -> set[int]:
        pids = set(self.pg.all_known_pids()) | self.redis.server.known_pids | self.celery.known_pids \
            | self.lb.known_pids
        for node in self.nodes.values():
            pids |= node.gunicorn.known_pids
            if node.nginx is not None and node.nginx.proc is not None:
                pids.add(node.nginx.proc.pid)
            if node.agent is not None:
                pids.add(node.agent.process.pid)
        if self.lb_agent is not None:
            pids.add(self.lb_agent.process.pid)
        return pids


def _close_all(closers: list[Callable[[], None]], directory: Path, keep_dir: bool) -> None:
    errors = []
    for close in reversed(closers):
        try:
            close()
        except Exception as error:  # keep going: everything else must stop too
            errors.append(repr(error))
    if not keep_dir:
        shutil.rmtree(directory, ignore_errors=True)
    if errors:
        raise FixtureError("cleanup problems: " + "; ".join(errors))
