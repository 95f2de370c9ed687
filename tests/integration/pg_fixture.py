"""A real PostgreSQL primary with a streaming hot-standby replica, in temporary directories.

For integration tests of the replication-lag / PostgreSQL health checks. Plain classes, no pytest:

    with PgReplicationCluster() as pg:          # primary + replica, streaming, a few seconds
        conn = psycopg.connect(pg.dsn())        # role "agent", member of pg_monitor only
        pg.write_load(10_000)
        pg.pause_replay()
        pg.primary.sigstop(); pg.primary.sigcont(); pg.primary.kill(); pg.primary.start()
        pg.cut_off_replica(); pg.reconnect_replica()

Layout: one base directory per cluster, removed on close (keep it: PRETIX_AGENT_KEEP_FIXTURES=1),
under $PRETIX_AGENT_TEST_TMPDIR, else /dev/shm (tmpfs, if > 1 GiB free), else /tmp:
    primary/  replica/            data directories (owned by the ``postgres`` system user when run as root)
    sock-primary/  sock-replica/  Unix socket directories
    primary.log  replica.log      the servers' stderr (startup, FATALs, "terminating walreceiver ...")
initdb runs once per test process into a template directory that each cluster copies (``cp -a``).

How the servers run:
  * PostgreSQL refuses to run as root, so when we are root every binary runs as the ``postgres`` system
    user (``subprocess.Popen(user=..., group=...)``, i.e. setuid in the child, not ``runuser``: runuser
    forks and would leave us holding the PID of runuser instead of the server).
  * ``postgres -D DIR`` is spawned directly (not ``pg_ctl``), so ``PgServer.pid`` is the postmaster.
    Every child of a postmaster calls setsid() (it is its own process group), so ``killpg`` cannot
    reach the backends/walsender/walreceiver/checkpointer. ``PgServer.pids()`` therefore finds a
    server's processes in /proc: the postmaster, its children, and anything whose process title is
    "postgres: <cluster_name>: ..." (cluster_name is unique per fixture; this still finds children
    after the postmaster died and they were re-parented).
  * ``sigstop()``/``sigcont()``/``kill()`` signal all of those by default: stopping only the
    postmaster would leave running backends answering queries and the walsender streaming, which is
    not what "the server hangs" means. ``sigstop(all_processes=False)`` stops just the postmaster (new
    connections hang, existing ones keep working).
  * The postmaster gets PR_SET_PDEATHSIG=SIGKILL, so if the test process itself is SIGKILLed the servers
    die with it instead of lingering (the children then exit on postmaster death). Note that
    PDEATHSIG fires when the *thread* that started the server exits: create clusters in the main thread.
    Not covered: a test process SIGKILLed while a server is SIGSTOPped leaves that server's stopped
    children behind (a stopped process cannot notice its postmaster's death). Normal failures,
    exceptions and Ctrl-C are covered by close() (also run by weakref.finalize at exit).
  * Per-server settings (port, listen_addresses, unix_socket_directories, cluster_name) are passed with
    ``-c``; everything else lives in postgresql.conf / postgresql.auto.conf, so tests can still change
    it with ALTER SYSTEM + pg_reload_conf() (``-c`` would take precedence over ALTER SYSTEM).

Authentication (pg_hba.conf): the superuser ``postgres`` and replication connections are trusted
(Unix socket and 127.0.0.1); role ``agent`` needs its password (scram-sha-256) on both, so a wrong
password fails.

Replication timing knobs (set in postgresql.conf, see ``PRIMARY_SETTINGS``):
  * ``wal_receiver_timeout = 5s``: a replica whose primary stops answering (SIGSTOPped primary, network
    black hole) ends its walreceiver after 5 s -> pg_stat_wal_receiver has no 'streaming' row any more.
    A primary that dies/closes the connection (SIGKILL, shutdown, port closed) is noticed at once.
  * ``wal_receiver_status_interval = 1s``: how often the replica reports its positions to the primary
    (pg_stat_replication.*_lsn / *_lag freshness on the primary).
  * ``wal_sender_timeout = 5s``: the primary drops a walsender whose replica stopped answering.
  * ``wal_retrieve_retry_interval = 1s``: how soon a replica retries after its walreceiver died.
  * primary_conninfo carries ``connect_timeout=2`` so reconnect attempts to a hung primary give up.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from tests.ports import refusing_socket

from . import processes
from .processes import FixtureError as FixtureError
from .processes import ServerGroup, address_in_use, candidate_port, die_with_parent, signal_pids, titled_log_tail
from .processes import any_alive as any_alive
from .processes import log_tail as log_tail
from .processes import pid_alive as pid_alive
from .processes import process_state as process_state
from .processes import track as track
from .processes import wait_stopped as wait_stopped


def installed_pg_bindir(explicit: str | None, root: Path = Path("/usr/lib/postgresql")) -> Path:
    """The PostgreSQL binaries to test with: `explicit` ($PRETIX_AGENT_TEST_PG_BINDIR) if given,
    else those of the newest major version installed the Debian way (/usr/lib/postgresql/N/bin:
    15 on Debian 12, 17 on Debian 13), else Debian 12's path (pg_unavailable_reason then says so)."""
    if explicit:
        return Path(explicit)
    installed = [path for path in root.glob("*/bin") if path.parent.name.isdigit() and (path / "initdb").is_file()]
    return max(installed, key=lambda path: int(path.parent.name), default=root / "15" / "bin")


PG_BINDIR = installed_pg_bindir(os.environ.get("PRETIX_AGENT_TEST_PG_BINDIR"))
SUPERUSER = "postgres"
AGENT_ROLE = "agent"
AGENT_PASSWORD = "agent-test-password"
LOAD_TABLE = "fixture_load"
DEFAULT_TIMEOUT = 30.0

# Written to the primary's postgresql.conf; pg_basebackup copies it to the replica.
PRIMARY_SETTINGS: dict[str, str] = {
    # speed: nothing here has to survive a power cut
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "shared_buffers": "16MB",
    "max_connections": "30",
    # replication
    "wal_level": "replica",
    "max_wal_senders": "5",
    "max_replication_slots": "5",
    "wal_keep_size": "128MB",  # a cut-off replica can catch up again without a slot
    "hot_standby": "on",
    "hot_standby_feedback": "off",
    "wal_receiver_status_interval": "1s",
    "wal_receiver_timeout": "5s",
    "wal_sender_timeout": "5s",
    "wal_retrieve_retry_interval": "1s",
    # logging goes to stderr, which is the server's log file
    "logging_collector": "off",
    "log_line_prefix": "'%m [%p] %b '",
    "log_min_messages": "info",
}

PG_HBA = """\
# written by tests/integration/pg_fixture.py
# TYPE  DATABASE     USER       ADDRESS         METHOD
local   all          {agent}                    scram-sha-256
host    all          {agent}    127.0.0.1/32    scram-sha-256
local   all          all                        trust
host    all          all        127.0.0.1/32    trust
local   replication  all                        trust
host    replication  all        127.0.0.1/32    trust
"""

T = TypeVar("T")
Query = str | sql.SQL | sql.Composed


# --------------------------------------------------------------------------------------------- helpers


def pg_unavailable_reason() -> str | None:
    """Why PostgreSQL integration tests cannot run here, or None if they can (for pytest.skip)."""
    for binary in ("initdb", "postgres", "pg_basebackup"):
        if not (PG_BINDIR / binary).is_file():
            return f"{PG_BINDIR / binary} not found (set PRETIX_AGENT_TEST_PG_BINDIR)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(SUPERUSER)
        except KeyError:
            return "running as root but there is no 'postgres' system user to run the server as"
    return None


def wait_until(
    predicate: Callable[[], T],
    *,
    timeout: float,
    what: str,
    details: Callable[[], str] | None = None,
    interval: float = 0.05,
) -> T:
    """``processes.wait_until``, polling every 50 ms by default rather than 20 ms: the predicates here
    mostly open a new PostgreSQL connection each time."""
    return processes.wait_until(predicate, timeout=timeout, what=what, details=details, interval=interval)


def _postgres_pids(postmaster_pid: int | None, cluster_name: str) -> set[int]:
    """Live (non-zombie) PIDs of one PostgreSQL server: the postmaster, its children, and processes
    titled "postgres: <cluster_name>: ..." (children keep that title after the postmaster died).

    Pass ``postmaster_pid=None`` once the postmaster has been reaped: its PID may be reused."""
    title = f"postgres: {cluster_name}: ".encode()
    found: set[int] = set()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                stat = f.read()
            # "pid (comm) state ppid ..." -- comm may contain spaces and parentheses
            state, ppid = stat[stat.rindex(b")") + 2 :].split()[:2]
            if state == b"Z":
                continue
            if postmaster_pid is not None and postmaster_pid in (pid, int(ppid)):
                found.add(pid)
                continue
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if f.read(len(title)) == title:
                    found.add(pid)
        except (OSError, ValueError):
            continue  # exited meanwhile
    return found


class _RunAs:
    """Who runs the PostgreSQL binaries: ``postgres`` if we are root, else ourselves."""

    def __init__(self) -> None:
        self.as_root = os.geteuid() == 0
        if self.as_root:
            pw = pwd.getpwnam(SUPERUSER)
            self.uid, self.gid, self.home = pw.pw_uid, pw.pw_gid, pw.pw_dir
        else:
            self.uid, self.gid, self.home = os.getuid(), os.getgid(), os.environ.get("HOME", "/")

    def popen_kwargs(self) -> dict[str, Any]:
        kw: dict[str, Any] = {"env": self.env()}
        if self.as_root:
            kw.update(user=self.uid, group=self.gid, extra_groups=[])
        return kw

    def env(self) -> dict[str, str]:
        # No inherited PG* variables (PGHOST, PGPORT, ...) may redirect our tools.
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env.update(LC_ALL="C.UTF-8", HOME=self.home, TZ="UTC")
        return env

    def chown(self, path: Path) -> None:
        if self.as_root:
            os.chown(path, self.uid, self.gid)


def _run(args: list[str], what: str, run_as: _RunAs | None, timeout: float, cwd: Path | None = None) -> None:
    """Run a tool to completion (as ``run_as`` if given); raise FixtureError with its output on failure."""
    proc = subprocess.run(
        args,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        cwd=cwd or "/",
        timeout=timeout,
        preexec_fn=die_with_parent,
        **(run_as.popen_kwargs() if run_as else {}),
    )
    if proc.returncode != 0:
        out = (proc.stdout + proc.stderr).decode(errors="replace")
        raise FixtureError(f"{what} failed (exit {proc.returncode}): {' '.join(args)}\n{out}")


def default_parent_dir() -> Path:
    """Where fixtures put their temp dirs: $PRETIX_AGENT_TEST_TMPDIR, else /dev/shm if it is a tmpfs
    with room (initdb + pg_basebackup there take ~0.6 s instead of ~2 s on this disk), else /tmp.
    Keep it short: Unix socket paths are limited to 107 bytes."""
    explicit = os.environ.get("PRETIX_AGENT_TEST_TMPDIR")
    if explicit:
        return Path(explicit)
    shm = Path("/dev/shm")
    with contextlib.suppress(OSError):
        if os.access(shm, os.W_OK | os.X_OK) and shutil.disk_usage(shm).free > 1 << 30:
            return shm
    return Path("/tmp")


_template: Path | None = None


def _initdb_template(run_as: _RunAs, timeout: float) -> Path:
    """An initdb'ed data directory, made once per process and copied for every cluster (initdb is
    the slowest step of a cluster's startup). Removed at interpreter exit."""
    global _template
    if _template is not None and (_template / "PG_VERSION").is_file():
        return _template
    holder = Path(tempfile.mkdtemp(prefix="pa-pg-template-", dir=default_parent_dir()))
    atexit.register(shutil.rmtree, holder, True)
    run_as.chown(holder)
    datadir = holder / "data"
    _run(
        [
            str(PG_BINDIR / "initdb"),
            "-D", str(datadir),
            "-U", SUPERUSER,
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
            "--no-instructions",
        ],
        "initdb",
        run_as,
        timeout=timeout,
        cwd=holder,
    )
    _template = datadir
    return datadir


# ---------------------------------------------------------------------------------------------- server


class PgServer:
    """One PostgreSQL server (primary or replica). ``pid`` is its postmaster."""

    def __init__(
        self, name: str, cluster_name: str, datadir: Path, socket_dir: Path, log_path: Path, run_as: _RunAs,
        listen_addresses: str = "127.0.0.1",
        tcp: bool = True,
    ):
        self.name = name
        self.listen_addresses = listen_addresses
        # tcp=False: the Unix socket only (listen_addresses=''); the port then only names the socket
        # file in this server's own directory, so no TCP port is taken from anyone.
        self.tcp = tcp
        self.cluster_name = cluster_name  # process titles are "postgres: <cluster_name>: ..."
        self.datadir = datadir
        self.socket_dir = socket_dir
        self.log_path = log_path
        self.port = 0
        self._run_as = run_as
        self._proc: subprocess.Popen[bytes] | None = None
        self._stopped: set[int] = set()  # PIDs we SIGSTOPped
        self.known_pids: set[int] = set()  # every PID of this server we have seen

    # -- identity / state
    @property
    def pid(self) -> int:
        if self._proc is None:
            raise FixtureError(f"{self.name}: not started")
        return self._proc.pid

    @property
    def running(self) -> bool:
        """The postmaster process exists (it may be SIGSTOPped)."""
        return self._proc is not None and self._proc.poll() is None

    def pids(self) -> set[int]:
        """Live PIDs of this server (postmaster + children); empty once it is fully stopped."""
        if self._proc is None:
            return set()
        # poll() reaps: until it returns non-None the postmaster's PID cannot have been reused
        postmaster = self._proc.pid if self._proc.poll() is None else None
        pids = _postgres_pids(postmaster, self.cluster_name)
        self.known_pids |= pids
        return pids

    def log_tail(self, lines: int = 30) -> str:
        return titled_log_tail(self.log_path, lines)

    def __repr__(self) -> str:
        state = "running" if self.running else "not running"
        return f"<PgServer {self.name} port={self.port} pid={self._proc.pid if self._proc else None} {state}>"

    # -- DSNs
    def superuser_dsn(self, dbname: str = "postgres", connect_timeout: int = 3) -> str:
        """libpq keyword DSN: superuser ``postgres`` over this server's Unix socket (trust)."""
        return make_conninfo(
            host=str(self.socket_dir),
            port=self.port,
            user=SUPERUSER,
            dbname=dbname,
            connect_timeout=connect_timeout,
            application_name="pg_fixture",
        )

    def tcp_dsn(
        self, user: str, password: str | None = None, dbname: str = "postgres", connect_timeout: int = 3
    ) -> str:
        """libpq keyword DSN over TCP 127.0.0.1 for ``user`` (with ``password`` if given)."""
        kw: dict[str, Any] = dict(
            host="127.0.0.1", port=self.port, user=user, dbname=dbname, connect_timeout=connect_timeout
        )
        if password is not None:
            kw["password"] = password
        return make_conninfo(**kw)

    # -- SQL
    def execute(self, query: Query, params: Sequence[Any] | None = None) -> list[tuple]:
        """Run one statement as superuser in autocommit mode; return its rows ([] if none)."""
        with psycopg.connect(self.superuser_dsn(), autocommit=True) as conn:
            cur = conn.execute(query, params)
            return cur.fetchall() if cur.description is not None else []

    def scalar(self, query: Query, params: Sequence[Any] | None = None) -> Any:
        rows = self.execute(query, params)
        return rows[0][0] if rows else None

    # -- lifecycle
    def start(self, timeout: float = DEFAULT_TIMEOUT, port: int | None = None) -> None:
        """Spawn the postmaster and wait until it accepts connections.

        The first start picks a free port (and retries with another one if it lost a race for it);
        a restart after ``stop()``/``kill()`` reuses the previous port, so the replica's
        primary_conninfo and DSNs handed out before stay valid (crash recovery runs after a kill)."""
        if self.running:
            raise FixtureError(f"{self.name}: already running")
        if port is None and self.port:
            port = self.port
        self._run_as.chown(self.socket_dir)
        for attempt in range(5):
            self.port = port if port is not None else (candidate_port() if self.tcp else 5432)
            self._spawn()
            try:
                self.wait_ready(timeout)
                return
            except FixtureError:
                tail = log_tail(self.log_path, 15)
                clash = address_in_use(tail)
                if self.running or not clash or port is not None or attempt == 4:
                    raise
                self._reap_children()  # lost a race for the port: try another one

    def _spawn(self) -> None:
        cmd = [
            str(PG_BINDIR / "postgres"),
            "-D", str(self.datadir),
            "-c", f"port={self.port}",
            "-c", f"listen_addresses={self.listen_addresses if self.tcp else ''}",
            "-c", f"unix_socket_directories={self.socket_dir}",
            "-c", f"cluster_name={self.cluster_name}",
        ]  # fmt: skip
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.datadir.parent,
                start_new_session=True,
                preexec_fn=die_with_parent,
                **self._run_as.popen_kwargs(),
            )
        self._stopped.clear()
        self.known_pids.add(self._proc.pid)

    def wait_ready(self, timeout: float = DEFAULT_TIMEOUT) -> None:
        """Wait until the server answers ``SELECT 1`` (a replica: once it reached consistency)."""

        def ready() -> bool:
            if not self.running:
                raise FixtureError(f"{self.name}: postmaster exited during startup\n{self.log_tail()}")
            self.execute("SELECT 1")
            return True

        wait_until(ready, timeout=timeout, what=f"{self.name} to accept connections", details=self.log_tail)
        self.pids()

    def sigstop(self, all_processes: bool = True) -> None:
        """SIGSTOP the server: all its processes (default) or only the postmaster.

        The postmaster is stopped first, so it cannot fork new children while we stop the others."""
        os.kill(self.pid, signal.SIGSTOP)
        self._stopped.add(self.pid)
        wait_stopped([self.pid])
        if all_processes:
            while todo := self.pids() - self._stopped:  # repeat: a fork may have been in flight
                signal_pids(todo, signal.SIGSTOP)
                self._stopped |= todo
            wait_stopped(self._stopped)

    def sigcont(self) -> None:
        """SIGCONT every process of the server (harmless if none is stopped)."""
        signal_pids(self.pids() | self._stopped, signal.SIGCONT)
        self._stopped.clear()

    def kill(self, timeout: float = 10.0) -> None:
        """SIGKILL the postmaster and all its children (a crash) and wait until every process is gone."""
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self.pids()
            os.kill(self._proc.pid, signal.SIGSTOP)  # no new forks while we collect the children
            signal_pids(self.pids() | {self._proc.pid}, signal.SIGKILL)
            self._proc.wait(timeout)
        self._stopped.clear()
        self._reap_children(timeout)

    def stop(self, mode: str = "fast", timeout: float = 15.0) -> None:
        """Shut down (``fast``: SIGINT, ``smart``: SIGTERM, ``immediate``: SIGQUIT), SIGKILL on timeout.

        Idempotent. A SIGSTOPped server is SIGCONTed first.
        """
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self.sigcont()
            sig = {"fast": signal.SIGINT, "smart": signal.SIGTERM, "immediate": signal.SIGQUIT}[mode]
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._proc.pid, sig)
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self._reap_children()

    def _reap_children(self, timeout: float = 10.0) -> None:
        """After the postmaster is gone: wait for its children to exit (they do on postmaster death),
        SIGKILL whatever is left after ``timeout``."""
        assert self._proc is not None and self._proc.poll() is not None
        signal_pids(self.pids(), signal.SIGCONT)  # a stopped child cannot notice postmaster death
        try:
            wait_until(lambda: not self.pids(), timeout=timeout, what=f"the processes of {self.name} to exit")
        except FixtureError:
            signal_pids(self.pids(), signal.SIGKILL)
            wait_until(lambda: not self.pids(), timeout=5, what=f"the processes of {self.name} to die")


# --------------------------------------------------------------------------------------------- cluster


class PgReplicationCluster(ServerGroup[PgServer]):
    """A PostgreSQL primary and (optionally) a streaming hot-standby replica.

    ``start()`` (or entering the context manager) creates everything; ``close()`` stops everything and
    removes the directories; it is idempotent and also runs at interpreter exit / garbage collection.
    """

    def __init__(
        self,
        *,
        with_replica: bool = True,
        base_dir: str | Path | None = None,
        keep_dir: bool | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        listen_addresses: str = "127.0.0.1",
        tcp: bool = True,
        template: Path | None = None,
    ) -> None:
        self.with_replica = with_replica
        # "*" only where the servers run in a network namespace of their own (tests/integration/netns_fixture.py)
        self.listen_addresses = listen_addresses
        self.timeout = timeout
        # tcp=False: both servers on Unix sockets only, the replica streaming over the primary's socket.
        self.tcp = tcp
        # A data directory to copy instead of a fresh initdb (one holding a migrated application
        # database, say); it must have been shut down cleanly.
        self.template = template
        self.agent_password = AGENT_PASSWORD
        self.timings: dict[str, float] = {}
        self._run_as = _RunAs()
        super().__init__(base_dir, keep_dir)  # servers: primary first, then replica
        self.primary: PgServer
        self.replica: PgServer | None = None
        self._original_conninfo: str | None = None
        self._refusing: socket.socket | None = None  # holds the port a cut-off replica is sent to

    def __enter__(self) -> PgReplicationCluster:
        return self.start()

    # -- startup
    def start(self) -> PgReplicationCluster:
        self._begin("cluster", pg_unavailable_reason())
        t_total = time.monotonic()
        try:
            self._start_primary()
            if self.with_replica:
                self._start_replica()
        except BaseException:
            self.close()
            raise
        self.timings["total"] = time.monotonic() - t_total
        return self

    def _cluster_name(self, role: str) -> str:
        # unique per fixture (the temp dir name is), so process titles identify this server's processes
        return f"pgfix-{self.base_dir.name.removeprefix('pa-pg-')}-{role}"

    def _mkdir(self, path: Path) -> Path:
        path.mkdir(mode=0o700)
        self._run_as.chown(path)
        return path

    def _run_tool(self, args: list[str], what: str, timeout: float) -> None:
        _run(args, what, self._run_as, timeout=timeout, cwd=self.base_dir)

    def _start_primary(self) -> None:
        parent = self._requested_base or default_parent_dir()
        self._res.base_dir = Path(tempfile.mkdtemp(prefix="pa-pg-", dir=parent))
        self._run_as.chown(self.base_dir)
        datadir = self.base_dir / "primary"
        t = time.monotonic()
        template = self.template or _initdb_template(self._run_as, self.timeout * 2)
        self.timings["initdb"] = time.monotonic() - t  # ~0 unless this is the first cluster
        t = time.monotonic()
        # cp -a keeps owner (postgres) and modes (0700) of the template
        _run(["cp", "-a", str(template), str(datadir)], "copying the initdb template", None, timeout=60)
        self.timings["copy_template"] = time.monotonic() - t
        with open(datadir / "postgresql.conf", "a") as conf:
            conf.write("\n# --- pg_fixture ---\n")
            for key, value in PRIMARY_SETTINGS.items():
                conf.write(f"{key} = {value}\n")
        (datadir / "pg_hba.conf").write_text(PG_HBA.format(agent=AGENT_ROLE))

        self.primary = PgServer(
            "primary",
            self._cluster_name("primary"),
            datadir,
            self._mkdir(self.base_dir / "sock-primary"),
            self.base_dir / "primary.log",
            self._run_as,
            self.listen_addresses,
            self.tcp,
        )
        self._res.servers.append(self.primary)
        t = time.monotonic()
        self.primary.start(self.timeout)
        self.timings["primary_start"] = time.monotonic() - t
        if not self.primary.scalar("SELECT count(*) FROM pg_roles WHERE rolname = %s", [AGENT_ROLE]):  # a template's
            self.primary.execute(
                sql.SQL("CREATE ROLE {} LOGIN PASSWORD {} IN ROLE pg_monitor").format(
                    sql.Identifier(AGENT_ROLE), sql.Literal(self.agent_password)
                )
            )
        self.primary.execute(
            f"CREATE TABLE IF NOT EXISTS {LOAD_TABLE} (id bigserial PRIMARY KEY, payload text NOT NULL,"
            " created_at timestamptz NOT NULL DEFAULT clock_timestamp())"
        )
        self.primary.execute(f"GRANT SELECT ON {LOAD_TABLE} TO {AGENT_ROLE}")

    def _start_replica(self) -> None:
        datadir = self.base_dir / "replica"
        # -R writes standby.signal and a primary_conninfo built from *this* connection string,
        # so the replica streams over TCP with application_name=replica and connect_timeout=2.
        conninfo = make_conninfo(
            host="127.0.0.1" if self.tcp else str(self.primary.socket_dir), port=self.primary.port, user=SUPERUSER,
            application_name="replica", connect_timeout=2,
        )
        t = time.monotonic()
        self._run_tool(
            [
                str(PG_BINDIR / "pg_basebackup"),
                "-D", str(datadir),
                "-d", conninfo,
                "-R",
                "-X", "stream",
                "--checkpoint=fast",
                "--no-sync",
                "--no-manifest",
            ],
            "pg_basebackup",
            timeout=self.timeout * 2,
        )
        self.timings["basebackup"] = time.monotonic() - t
        self.replica = PgServer(
            "replica",
            self._cluster_name("replica"),
            datadir,
            self._mkdir(self.base_dir / "sock-replica"),
            self.base_dir / "replica.log",
            self._run_as,
            self.listen_addresses,
            self.tcp,
        )
        self._res.servers.append(self.replica)
        t = time.monotonic()
        self.replica.start(self.timeout)
        self.timings["replica_start"] = time.monotonic() - t
        t = time.monotonic()
        self.wait_streaming()
        self.timings["replica_streaming"] = time.monotonic() - t
        self._original_conninfo = self.replica.scalar("SHOW primary_conninfo")

    # -- access
    def server(self, which: str | PgServer = "primary") -> PgServer:
        if isinstance(which, PgServer):
            return which
        if which == "primary":
            return self.primary
        if which == "replica":
            if self.replica is None:
                raise FixtureError("this cluster has no replica")
            return self.replica
        raise ValueError(f"server must be 'primary' or 'replica', not {which!r}")

    def dsn(
        self,
        role: str = AGENT_ROLE,
        *,
        server: str | PgServer = "primary",
        password: str | None = None,
        dbname: str = "postgres",
        connect_timeout: int = 3,
    ) -> str:
        """libpq keyword DSN over TCP 127.0.0.1. For ``agent`` the right password is filled in unless
        ``password`` is given (pass a wrong one to test authentication failures)."""
        if password is None and role == AGENT_ROLE:
            password = self.agent_password
        return self.server(server).tcp_dsn(role, password, dbname, connect_timeout)

    def superuser_dsn(self, server: str | PgServer = "primary", dbname: str = "postgres") -> str:
        """Superuser DSN over the server's Unix socket."""
        return self.server(server).superuser_dsn(dbname)

    def execute(
        self, query: Query, params: Sequence[Any] | None = None, *, server: str = "primary"
    ) -> list[tuple]:
        """Run one statement as superuser (autocommit) on ``server``; return rows ([] if none)."""
        return self.server(server).execute(query, params)

    def scalar(
        self, query: Query, params: Sequence[Any] | None = None, *, server: str = "primary"
    ) -> Any:
        return self.server(server).scalar(query, params)

    # -- load and replication state
    def write_load(self, rows: int = 1000, payload_bytes: int = 100) -> int:
        """Insert ``rows`` rows (~``payload_bytes`` each) on the primary to generate WAL.

        Returns the id of the last row inserted (see ``wait_replica_has_row``)."""
        return int(
            self.primary.scalar(
                f"WITH ins AS (INSERT INTO {LOAD_TABLE} (payload)"
                " SELECT repeat('x', %s) FROM generate_series(1, %s) RETURNING id)"
                " SELECT max(id) FROM ins",
                [payload_bytes, rows],
            )
        )

    def replica_has_row(self, row_id: int) -> bool:
        return bool(self.scalar(f"SELECT count(*) FROM {LOAD_TABLE} WHERE id = %s", [row_id], server="replica"))

    def wait_replica_has_row(self, row_id: int, timeout: float | None = None) -> None:
        """Wait until the replica has replayed the insert of row ``row_id``."""
        self._wait_replica(lambda: self.replica_has_row(row_id), f"row {row_id} on the replica", timeout)

    def wait_caught_up(self, timeout: float | None = None) -> None:
        """Write a marker row on the primary and wait until the replica shows it (fails if paused)."""
        self.wait_replica_has_row(self.write_load(1, 1), timeout)

    def wal_receiver_status(self) -> str | None:
        """``pg_stat_wal_receiver.status`` on the replica, None if no WAL receiver runs."""
        return self.scalar("SELECT status FROM pg_stat_wal_receiver", server="replica")

    def wait_streaming(self, timeout: float | None = None) -> None:
        """Wait until ``pg_stat_wal_receiver.status = 'streaming'`` on the replica."""
        self._wait_replica(lambda: self.wal_receiver_status() == "streaming", "the replica to stream", timeout)

    def wait_not_streaming(self, timeout: float | None = None) -> float:
        """Wait until the replica has no 'streaming' WAL receiver; return how long that took."""
        t = time.monotonic()
        self._wait_replica(
            lambda: self.wal_receiver_status() != "streaming", "the replica to stop streaming", timeout
        )
        return time.monotonic() - t

    def current_wal_lsn(self) -> str:
        """pg_current_wal_lsn() of the primary."""
        return str(self.primary.scalar("SELECT pg_current_wal_lsn()::text"))

    def replica_lsns(self) -> dict[str, str | None]:
        """``receive`` (pg_last_wal_receive_lsn) and ``replay`` (pg_last_wal_replay_lsn) of the replica."""
        receive, replay = self.execute(
            "SELECT pg_last_wal_receive_lsn()::text, pg_last_wal_replay_lsn()::text", server="replica"
        )[0]
        return {"receive": receive, "replay": replay}

    def lsn_diff(self, a: str, b: str) -> int:
        """``a - b`` in bytes (pg_wal_lsn_diff), computed on the primary."""
        return int(self.scalar("SELECT pg_wal_lsn_diff(%s::pg_lsn, %s::pg_lsn)", [a, b]))

    def replay_pause_state(self) -> str:
        """'not paused', 'pause requested' or 'paused' (pg_get_wal_replay_pause_state on the replica)."""
        return str(self.scalar("SELECT pg_get_wal_replay_pause_state()", server="replica"))

    def pause_replay(self, timeout: float | None = None) -> None:
        """pg_wal_replay_pause() on the replica and wait until it is really 'paused'.

        Receiving continues (pg_last_wal_receive_lsn advances), replay stops."""
        self.execute("SELECT pg_wal_replay_pause()", server="replica")
        self._wait_replica(lambda: self.replay_pause_state() == "paused", "replay to pause", timeout)

    def resume_replay(self) -> None:
        """pg_wal_replay_resume() on the replica."""
        self.execute("SELECT pg_wal_replay_resume()", server="replica")

    def cut_off_replica(self, timeout: float | None = None) -> float:
        """Make the replica lose its primary while both keep running; return seconds until noticed.

        How: ALTER SYSTEM SET primary_conninfo to the same conninfo with a port nothing listens on,
        then pg_reload_conf(). Since PostgreSQL 13 a changed primary_conninfo makes the startup process
        stop the WAL receiver at once and start a new one with the new conninfo; that one gets
        "connection refused", so pg_stat_wal_receiver has no 'streaming' row (usually no row at all,
        briefly 'starting' while a retry connects) until ``reconnect_replica()``. The primary stays
        fully usable, pg_stat_replication on it loses the replica's row.
        Unlike a SIGSTOPped primary this does not depend on wal_receiver_timeout: it is noticed
        within milliseconds."""
        replica = self.server("replica")
        if self._original_conninfo is None:
            self._original_conninfo = replica.scalar("SHOW primary_conninfo")
        # same conninfo, another port: one we hold bound without listening, so every connection to
        # it is refused until reconnect_replica() (a port merely free a moment ago could be taken)
        if self._refusing is None:
            self._refusing = refusing_socket()
        port = self._refusing.getsockname()[1]
        self._set_primary_conninfo(make_conninfo(self._original_conninfo, port=port))
        return self.wait_not_streaming(timeout)

    def reconnect_replica(self, timeout: float | None = None) -> None:
        """Undo ``cut_off_replica()`` (restore primary_conninfo) and wait until the replica streams."""
        if self._original_conninfo is None:
            return
        self._set_primary_conninfo(self._original_conninfo)
        self.wait_streaming(timeout)
        self._release_refusing()

    def _release_refusing(self) -> None:
        refusing, self._refusing = self._refusing, None
        if refusing is not None:
            refusing.close()

    def close(self) -> None:
        self._release_refusing()
        super().close()

    def _set_primary_conninfo(self, conninfo: str) -> None:
        replica = self.server("replica")
        replica.execute(sql.SQL("ALTER SYSTEM SET primary_conninfo = {}").format(sql.Literal(conninfo)))
        replica.execute("SELECT pg_reload_conf()")

    def _wait_replica(self, predicate: Callable[[], Any], what: str, timeout: float | None) -> None:
        replica = self.server("replica")

        def details() -> str:
            return f"{replica.log_tail()}\n{self.primary.log_tail(10)}"

        wait_until(predicate, timeout=self.timeout if timeout is None else timeout, what=what, details=details)

    def all_known_pids(self) -> set[int]:
        """Every PID of every server seen so far (to check that nothing survives ``close()``)."""
        pids: set[int] = set()
        for server in self._res.servers:
            server.pids()
            pids |= server.known_pids
        return pids
