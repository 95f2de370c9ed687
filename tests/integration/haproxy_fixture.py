"""A real haproxy (Debian 12: 2.6) in master-worker mode, with tiny HTTP backends it balances.

Plain classes, no pytest needed::

    with HaproxyFixture(servers=2) as hx:
        hx.request("/").body                      # b"app1" or b"app2"
        hx.runtime().set_server_state("pretix", "app1", "maint")
        hx.server_admin("pretix", "app1")         # "maint"
        hx.save_state_file(); hx.reload()         # the maint survives the reload
        hx.backends["app2"].kill()                # connections to app2 are refused

haproxy runs in the foreground (`-W -db`, never `daemon`), from a temporary directory holding
everything it uses. The global section carries the lines the agent relies on:

    stats socket <dir>/admin.sock mode 600 level admin expose-fd listeners
        The Runtime API at the level `set server` needs. `expose-fd listeners` lets a new worker
        take the listening sockets over from the old one (seamless reload).
    stats socket <dir>/user.sock mode 600 level user
        The same API at `level user`: `set server` answers "Permission denied" (tested).
    stats socket ipv4@127.0.0.1:<port> level admin
        The Runtime API over TCP ("HOST:PORT" in the agent's configuration).
    server-state-file <dir>/state   +   load-server-state-from-file global (in defaults)
        A starting or reloading haproxy applies the admin states, weights and operational
        states it finds in that file. It is written with `show servers state` (save_state_file()),
        which is what the agent does after each change; without it a reload forgets them.

The master CLI (`-S <dir>/master.sock`) does the reloads: its `reload` command equals SIGUSR2 to the
master, which re-executes itself, re-reads the configuration and forks a new worker; the old worker
finishes its connections and exits. `reload()` waits until the admin socket answers with a new
process identity (Pid + Start_time_sec of `show info`): right after the command the old worker
still answers for a moment.

Ports: the frontend, the TCP Runtime API and the TCP sections take candidate ports outside the
kernel's ephemeral range (tests/ports.py); if haproxy reports one of them in use at start, it starts
again on fresh ones. A restart keeps them. The backends' ports come from the same range, since a
killed backend is revived on its port.

Backends are threaded HTTP servers in this process, each answering 200 with its name (also on
/healthcheck/); `kill()` (or `refuse()`) closes the listening socket and the open connections
(connections are then refused), `hang()` accepts and never answers, `drop()` reads each request and
closes without an answer, `error(500)` answers every request with that status (pretix's
/healthcheck/ with Redis gone), `slow(2.0)` answers each request that much later (an overloaded
node), `revive()` serves normally again on the same port (and answers what waited while hanging).

TCP sections (`tcp_sections`) are `listen` proxies in TCP mode, e.g. pretix's read path to a
PostgreSQL replica with the primary as `backup` (`TcpServer(name, port, backup=True)`); they carry
no haproxy check of their own unless a server's `options` say so, so whatever takes a server out
is the agent. `tcp_port(name)` is the port each listens on.

Stopping is by the master's PID only (SIGUSR1 soft-stop, then SIGTERM, then SIGKILL), and waits
until the master and every worker it started are gone.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import selectors
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any, TypeVar

from pretix_agent.haproxy.runtime import ProcessIdentity, RuntimeApi, RuntimeApiError, ServerState, StatRow
from tests.ports import bind_listener, start_with_ports

from .processes import (
    FixtureError,
    PortInUse,
    address_in_use,
    any_alive,
    candidate_port,
    children_of,
    pdeathsig,
    pid_alive,
    process_state,
    signal_pids,
    titled_log_tail,
    track,
    wait_until,
)

HAPROXY = os.environ.get("PRETIX_AGENT_TEST_HAPROXY", "/usr/sbin/haproxy")
HOST = "127.0.0.1"
BACKEND = "pretix"
HEALTHCHECK_HOST = "tickets.example.org"
DEFAULT_TIMEOUT = 15.0

T = TypeVar("T")


def haproxy_unavailable_reason() -> str | None:
    """Why haproxy integration tests cannot run here, or None (for pytest.skip)."""
    if not os.access(HAPROXY, os.X_OK):
        return f"{HAPROXY} not found (set PRETIX_AGENT_TEST_HAPROXY)"
    return None


# in the child, before exec: SIGTERM the master if pytest dies
_die_with_parent = pdeathsig(signal.SIGTERM)


# --------------------------------------------------------------------------------------------- backends


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    backend: Backend

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        self.backend._wait_while_hanging()
        self.backend._seen(self.command, self.path)
        mode, status = self.backend.mode, 200
        if mode == "dropping":
            self.close_connection = True  # the request arrived (and may have been acted on): no answer
            return
        if mode == "slow":
            self.backend._wait_while_slow()
        elif mode == "erroring":
            status = self.backend.status
        payload = self.backend.name.encode() if status == 200 else f"{self.backend.name}: error {status}".encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    do_GET = do_POST = do_HEAD = _answer

    def log_message(self, format: str, *args: object) -> None:
        pass


class Backend:
    """A tiny threaded HTTP server standing in for one pretix app server."""

    def __init__(self, name: str, port: int | None = None):
        self.name = name
        self.port = port or 0
        self.mode = "stopped"  # serving | hanging | dropping | erroring | slow | killed | stopped
        self.status = 200  # what an erroring backend answers
        self.delay = 0.0  # how late a slow backend answers
        self.requests: list[tuple[str, str]] = []  # (method, path)
        self._lock = threading.Lock()
        self._not_hanging = threading.Event()
        self._not_slow = threading.Event()
        self._held: list[tuple[socket.socket, Any]] = []  # accepted while hanging
        self._listener: socket.socket | None = None
        self._connections: set[socket.socket] = set()
        self._thread: threading.Thread | None = None
        self._wake_read, self._wake_write = socket.socketpair()
        handler = type(f"Handler_{name}", (_Handler,), {"backend": self})
        self._handler: Any = handler

    def __repr__(self) -> str:
        return f"<Backend {self.name} port={self.port} {self.mode}>"

    def _seen(self, method: str, path: str) -> None:
        with self._lock:
            self.requests.append((method, path))

    def start(self) -> Backend:
        """Listen (on the same port again after kill()) and serve; after hang(), answer what waited."""
        self._not_hanging.set()
        self._not_slow.set()
        if self._listener is not None:
            self.mode = "serving"
            with self._lock:
                held, self._held = self._held, []
            for connection, address in held:
                threading.Thread(target=self._serve, args=(connection, address), daemon=True).start()
            return self
        # Not port 0: revive() binds the port again, and an ephemeral one may meanwhile be taken by
        # an outbound connection.
        listener = bind_listener(HOST, self.port or None)
        self.port = listener.getsockname()[1]
        self._listener = listener
        self.mode = "serving"
        self._thread = threading.Thread(target=self._accept_loop, args=(listener,), name=f"backend-{self.name}",
                                        daemon=True)
        self._thread.start()
        return self

    revive = start

    def _accept_loop(self, listener: socket.socket) -> None:
        with selectors.DefaultSelector() as selector:
            selector.register(listener, selectors.EVENT_READ)
            selector.register(self._wake_read, selectors.EVENT_READ)
            while self._listener is listener:
                for key, _ in selector.select():
                    if key.fileobj is self._wake_read:
                        with contextlib.suppress(OSError):
                            self._wake_read.recv(64)
                        continue
                    try:
                        connection, address = listener.accept()
                    except OSError:
                        continue
                    with self._lock:
                        self._connections.add(connection)
                        if self.mode == "hanging":  # accepted, never read, never answered
                            self._held.append((connection, address))
                            continue
                    threading.Thread(target=self._serve, args=(connection, address), daemon=True).start()

    def _serve(self, connection: socket.socket, address: Any) -> None:
        try:
            connection.settimeout(30)
            self._handler(connection, address, self)
        except OSError:
            pass
        finally:
            with self._lock:
                self._connections.discard(connection)
            with contextlib.suppress(OSError):
                connection.close()

    def _wait_while_hanging(self) -> None:
        self._not_hanging.wait()  # set again by revive(), kill() and stop()

    def hang(self) -> None:
        """Accept connections but never answer (a stopped or overloaded app server), also on open
        keep-alive connections. revive() answers what waited."""
        with self._lock:
            self.mode = "hanging"
            self._not_hanging.clear()

    def drop(self) -> None:
        """Read each request, then close the connection without answering (an empty response: a
        worker that crashed after acting on the request)."""
        self.mode = "dropping"

    def error(self, status: int = 500) -> None:
        """Answer every request with `status` (pretix's /healthcheck/ answers 500 while Redis or the
        database is gone): a soft failure, the server is there."""
        self.status = status
        self.mode = "erroring"

    def slow(self, delay: float) -> None:
        """Answer every request `delay` seconds late (an overloaded node: checks time out, the server
        is there). revive() answers what waits at once."""
        self.delay = delay
        self._not_slow.clear()
        self.mode = "slow"

    def _wait_while_slow(self) -> None:
        self._not_slow.wait(self.delay)  # set by revive(), kill() and stop()

    def refuse(self) -> None:
        """Refuse connections (the process is gone): a hard failure. The same as kill()."""
        self.kill()

    def kill(self) -> None:
        """Close the listening socket and every open connection: new connections are refused."""
        listener, self._listener = self._listener, None
        self.mode = "killed"
        self._not_hanging.set()
        self._not_slow.set()
        with self._lock:
            self._held = []
        with contextlib.suppress(OSError):
            self._wake_write.send(b"x")
        if self._thread is not None:
            self._thread.join(5)
        if listener is not None:
            listener.close()
        with self._lock:
            connections, self._connections = self._connections, set()
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                connection.close()

    def stop(self) -> None:
        self.kill()
        self.mode = "stopped"
        self._wake_read.close()
        self._wake_write.close()

    # socketserver API that BaseHTTPRequestHandler touches
    def shutdown_request(self, request: socket.socket) -> None:  # pragma: no cover - unused
        request.close()


# --------------------------------------------------------------------------------------------- haproxy


@dataclass(frozen=True)
class TcpServer:
    """A server line of a TCP section: `server NAME 127.0.0.1:PORT [backup] [OPTIONS]`."""

    name: str
    port: int
    backup: bool = False
    options: str = ""

    def line(self) -> str:
        words = [f"    server {self.name} {HOST}:{self.port}", "backup" if self.backup else "", self.options]
        return " ".join(word for word in words if word)


@dataclass
class Response:
    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


class HaproxyFixture:
    """One haproxy master-worker with a `pretix` backend of `servers` backends (app1, app2, ...).

    Options (the configuration is rewritten by `configure()` before a reload or restart too):
    - `http_check`: haproxy's own HTTP check (`option httpchk`, GET /healthcheck/ with a Host
      header) at `check_inter`/`fall`/`rise` (haproxy's defaults: 2s, 3, 2), each check given
      `check_timeout` to answer.
    - `agent_ports`: {server: port} adds `agent-check agent-addr 127.0.0.1 agent-port P
      agent-inter <agent_inter>` to those servers.
    - `retry_on`: the backend's `retry-on` (conn-failure only by default: SPEC 5).
    - `server_options`: {server: "weight 100 disabled ..."} appended to those server lines.
    - `tcp_sections`: {name: [TcpServer, ...]} adds `listen NAME` in TCP mode on its own port
      (`tcp_port(name)`), with idle timeouts long enough for persistent database connections.
    """

    def __init__(self, servers: int = 2, *, http_check: bool = False, check_inter: str = "2s", fall: int = 3,
                 rise: int = 2, check_timeout: str = "1s", agent_ports: Mapping[str, int] | None = None,
                 agent_inter: str = "500ms",
                 retry_on: str = "conn-failure", server_timeout: str = "10s",
                 server_options: Mapping[str, str] | None = None,
                 tcp_sections: Mapping[str, list[TcpServer]] | None = None, base_dir: str | Path | None = None,
                 keep_dir: bool | None = None,
                 timeout: float = DEFAULT_TIMEOUT):
        self.server_names = [f"app{n}" for n in range(1, servers + 1)]
        self.http_check = http_check
        self.check_inter = check_inter
        self.fall = fall
        self.rise = rise
        self.check_timeout = check_timeout
        self.agent_ports = dict(agent_ports or {})
        self.agent_inter = agent_inter
        self.retry_on = retry_on
        self.server_timeout = server_timeout
        self.server_options = dict(server_options or {})
        self.tcp_sections = {name: list(servers) for name, servers in (tcp_sections or {}).items()}
        self.timeout = timeout
        self.keep_dir = bool(os.environ.get("PRETIX_AGENT_KEEP_FIXTURES")) if keep_dir is None else keep_dir
        parent = base_dir or os.environ.get("PRETIX_AGENT_TEST_TMPDIR") or None
        self.dir = Path(tempfile.mkdtemp(prefix="pa-haproxy-", dir=parent))
        self.config_path = self.dir / "haproxy.cfg"
        self.admin_socket = self.dir / "admin.sock"
        self.user_socket = self.dir / "user.sock"
        self.master_socket = self.dir / "master.sock"
        self.state_file = self.dir / "state"
        self.log_path = self.dir / "haproxy.log"
        self.frontend_port = candidate_port()  # start() takes fresh ones if haproxy finds these in use
        self.tcp_socket_port = candidate_port()
        self.tcp_ports = {name: candidate_port() for name in self.tcp_sections}
        self.backends: dict[str, Backend] = {name: Backend(name) for name in self.server_names}
        self.proc: subprocess.Popen[bytes] | None = None
        self.known_pids: set[int] = set()
        self.identity: ProcessIdentity | None = None
        self._procs: list[subprocess.Popen[bytes]] = []
        self._finalizer = weakref.finalize(self, _cleanup, self.backends, self._procs, self.known_pids, self.dir,
                                           self.keep_dir)

    # -- lifecycle ------------------------------------------------------------------------------

    def __enter__(self) -> HaproxyFixture:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> HaproxyFixture:
        """Start the backends and haproxy; return once the admin socket answers `show info`."""
        reason = haproxy_unavailable_reason()
        if reason:
            raise FixtureError(reason)
        try:
            for backend in self.backends.values():
                if backend.mode in ("stopped", "killed") and backend.port == 0:
                    backend.start()
            start_with_ports(self._start_on, count=2 + len(self.tcp_sections),
                             what="haproxy (frontend, TCP Runtime API and TCP sections)")
        except BaseException:
            self.close()
            raise
        return self

    def _start_on(self, frontend_port: int, tcp_socket_port: int, *section_ports: int) -> None:
        self.frontend_port, self.tcp_socket_port = frontend_port, tcp_socket_port
        self.tcp_ports = dict(zip(self.tcp_sections, section_ports, strict=True))
        self.configure()
        self._spawn()

    def close(self) -> None:
        """Stop haproxy and the backends, remove the directory (unless kept). Idempotent."""
        self._finalizer()

    def configure(self, **options: Any) -> None:
        """Change options (http_check, agent_ports, ...) and write haproxy.cfg; takes effect at the
        next reload() or restart()."""
        for name, value in options.items():
            if not hasattr(self, name):
                raise TypeError(f"unknown option {name}")
            setattr(self, name, value)
        self.config_path.write_text(self.config_text())
        checked = subprocess.run([HAPROXY, "-c", "-q", "-f", str(self.config_path)], capture_output=True, text=True,
                                 timeout=30)
        if checked.returncode != 0:
            raise FixtureError(f"haproxy -c failed:\n{checked.stdout}{checked.stderr}\n--- {self.config_path}:\n"
                               f"{self.config_text()}")

    def config_text(self) -> str:
        servers = []
        for name in self.server_names:
            options = []
            if self.http_check:
                options.append(f"check inter {self.check_inter} fall {self.fall} rise {self.rise}")
            if name in self.agent_ports:
                options.append(f"agent-check agent-addr {HOST} agent-port {self.agent_ports[name]} "
                               f"agent-inter {self.agent_inter}")
            if name in self.server_options:
                options.append(self.server_options[name])
            servers.append(f"    server {name} {HOST}:{self.backends[name].port} {' '.join(options)}".rstrip())
        check = ""
        if self.http_check:
            check = ("    option httpchk\n"
                     f"    http-check send meth GET uri /healthcheck/ hdr Host {HEALTHCHECK_HOST}\n"
                     "    http-check expect status 200\n")
        return (
            "global\n"
            f"    stats socket {self.admin_socket} mode 600 level admin expose-fd listeners\n"
            f"    stats socket {self.user_socket} mode 600 level user\n"
            f"    stats socket ipv4@{HOST}:{self.tcp_socket_port} level admin\n"
            "    stats timeout 10s\n"
            f"    server-state-file {self.state_file}\n"
            "    log stderr format short local0 info\n"
            "\n"
            "defaults\n"
            "    mode http\n"
            "    log global\n"
            "    option httplog\n"
            "    timeout connect 1s\n"
            "    timeout client 10s\n"
            f"    timeout server {self.server_timeout}\n"
            f"    timeout check {self.check_timeout}\n"
            "    load-server-state-from-file global\n"
            "\n"
            "frontend fe\n"
            f"    bind {HOST}:{self.frontend_port}\n"
            f"    default_backend {BACKEND}\n"
            "\n"
            f"backend {BACKEND}\n"
            "    balance roundrobin\n"
            "    option redispatch\n"
            "    retries 2\n"
            f"    retry-on {self.retry_on}\n"
            f"{check}"
            + "\n".join(servers) + "\n"
            + "".join(self._tcp_section(name) for name in self.tcp_sections)
        )

    def _tcp_section(self, name: str) -> str:
        return (
            "\n"
            f"listen {name}\n"
            "    mode tcp\n"
            "    option tcplog\n"
            f"    bind {HOST}:{self.tcp_ports[name]}\n"
            "    timeout client 1h\n"
            "    timeout server 1h\n"
            "    retries 2\n"
            "    option redispatch 1\n"
            + "".join(server.line() + "\n" for server in self.tcp_sections[name])
        )

    def _spawn(self) -> None:
        """Start the master; raise PortInUse (after it exited) if it could not bind a port."""
        with open(self.log_path, "ab") as log:
            log_start = log.tell()
            proc = subprocess.Popen(
                [HAPROXY, "-W", "-db", "-S", f"{self.master_socket},mode,600", "-f", str(self.config_path)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=self.dir,
                start_new_session=True, preexec_fn=_die_with_parent)
        self.proc = proc
        self._procs.append(proc)
        self.known_pids.add(proc.pid)
        try:
            self.identity = self._wait_for_new_worker(None, "haproxy to start")
        except FixtureError:
            if proc.poll() is None:
                raise
            with open(self.log_path, "rb") as log:
                log.seek(log_start)
                said = log.read().decode(errors="replace")
            if address_in_use(said):
                self.proc = None
                raise PortInUse(said.strip().splitlines()[-1] if said.strip() else "address in use") from None
            raise

    def _wait_for_new_worker(self, old: ProcessIdentity | None, what: str,
                             timeout: float | None = None) -> ProcessIdentity:
        """Wait until the admin socket answers with an identity other than `old`, from a worker the
        master CLI lists: at start and after a reload the master CLI refuses connections for a
        moment (the master re-executes itself), and after a reload the old worker still answers on
        the admin socket until the new one has taken it over."""
        proc = self.proc
        assert proc is not None

        def new_worker() -> ProcessIdentity | None:
            assert proc is not None
            if proc.poll() is not None:
                raise FixtureError(f"haproxy exited with {proc.returncode}\n{self.log_tail()}")
            identity = self.runtime(timeout=1.0).process_identity()
            if identity == old or identity.pid not in self.worker_pids():
                return None
            return identity if str(identity.pid) in self.master_command("show proc", timeout=1.0) else None

        identity = wait_until(new_worker, timeout=timeout or self.timeout, what=what, details=self.log_tail)
        assert identity is not None
        return identity

    @property
    def pid(self) -> int:
        """The master's PID."""
        if self.proc is None:
            raise FixtureError("haproxy is not started")
        return self.proc.pid

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def worker_pids(self) -> set[int]:
        """The master's live children (current and leaving workers)."""
        if not self.running:
            return set()
        pids = children_of(self.pid)
        self.known_pids |= pids
        return pids

    def reload(self, timeout: float | None = None, *, signal_master: bool = False) -> ProcessIdentity:
        """Reload through the master CLI (`reload`; or SIGUSR2 to the master) and return the new
        worker's identity once the admin socket answers with it."""
        old = self.identity or self.runtime().process_identity()
        if signal_master:
            os.kill(self.pid, signal.SIGUSR2)
        else:
            output = self.master_command("reload")
            # haproxy 2.6 answers nothing; 2.7 and later (Debian 13's 3.0) wait for the new worker
            # and answer "Success=1" (or 0), "--" and the new process's startup messages.
            if output.strip() and not output.startswith("Success=1\n"):
                raise FixtureError(f"master CLI answered {output!r} to reload")
        self.identity = self._wait_for_new_worker(old, "a new haproxy worker after the reload", timeout)
        return self.identity

    def restart(self) -> ProcessIdentity:
        """Stop haproxy and start it again on the same ports (a new master and worker)."""
        self.stop()
        self.configure()
        try:
            self._spawn()
        except PortInUse as clash:  # kept ports: another test's server took one meanwhile
            raise FixtureError(f"haproxy could not get its ports back for the restart: {clash}") from None
        assert self.identity is not None
        return self.identity

    def stop(self, timeout: float = 10.0) -> None:
        """Soft-stop (SIGUSR1 to the master), escalate to SIGTERM and SIGKILL; wait until the master
        and every worker it started are gone. Idempotent."""
        proc = self.proc
        if proc is None:
            return
        workers = track(self.worker_pids())
        _stop_process(proc, timeout)
        wait_until(lambda: not any_alive(workers), timeout=timeout,
                   what=f"haproxy workers {sorted(pid for pid, _ in workers)} to exit")
        self.proc = None
        self.identity = None

    # -- access ---------------------------------------------------------------------------------

    def runtime(self, timeout: float = 2.0, *, socket_path: Path | None = None) -> RuntimeApi:
        """A Runtime API client for the admin socket (or another socket path)."""
        return RuntimeApi(str(socket_path or self.admin_socket), timeout=timeout)

    @property
    def tcp_address(self) -> str:
        return f"{HOST}:{self.tcp_socket_port}"

    def tcp_port(self, section: str) -> int:
        """The port a TCP section listens on."""
        return self.tcp_ports[section]

    def sessions(self, backend: str, server: str) -> int:
        """Current sessions haproxy holds to a server (`show stat` scur)."""
        return self.stat_row(backend, server).sessions or 0

    def master_command(self, command: str, timeout: float = 5.0) -> str:
        """Send one command to the master CLI; return its answer (the connection closes after it)."""
        deadline = time.monotonic() + timeout
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(self.master_socket))
            sock.sendall(command.encode() + b"\n")
            sock.shutdown(socket.SHUT_WR)  # the master CLI answers at the end of input
            chunks: list[bytes] = []
            while True:
                sock.settimeout(max(0.001, deadline - time.monotonic()))
                chunk = sock.recv(65536)
                if not chunk:
                    return b"".join(chunks).decode()
                chunks.append(chunk)

    def show_stat(self) -> list[StatRow]:
        return self.runtime().stat()

    def stat_row(self, backend: str, server: str) -> StatRow:
        for row in self.show_stat():
            if row.proxy == backend and row.name == server:
                return row
        raise FixtureError(f"show stat has no {backend}/{server}")

    def server_state(self, backend: str, server: str) -> ServerState:
        for state in self.runtime().servers_state(backend):
            if state.server == server:
                return state
        raise FixtureError(f"show servers state has no {backend}/{server}")

    def server_admin(self, backend: str, server: str) -> str:
        """ready, drain or maint, as `show servers state` says."""
        return self.server_state(backend, server).admin

    def save_state_file(self) -> str:
        """`show servers state > <dir>/state`, as haproxy's documentation does before a reload."""
        return self.runtime().save_server_state(self.state_file)

    def wait_for(self, condition: Callable[[], T], what: str, timeout: float | None = None) -> T:
        """Wait (with a deadline) until condition() is truthy; the haproxy log tail explains a timeout."""
        return wait_until(condition, timeout=timeout or self.timeout, what=what, details=self.log_tail)

    def request(self, path: str = "/", method: str = "GET", *, host: str = HEALTHCHECK_HOST, body: bytes | None = None,
                timeout: float = 10.0) -> Response:
        """One HTTP request through the frontend, on a fresh connection."""
        connection = http.client.HTTPConnection(HOST, self.frontend_port, timeout=timeout)
        try:
            connection.request(method, path, body=body, headers={"Host": host})
            response = connection.getresponse()
            return Response(response.status, response.read(), {k.lower(): v for k, v in response.getheaders()})
        finally:
            connection.close()

    def log_tail(self, lines: int = 40) -> str:
        return titled_log_tail(self.log_path, lines)


def _stop_process(proc: subprocess.Popen[bytes], timeout: float) -> None:
    for signum in (signal.SIGUSR1, signal.SIGTERM, signal.SIGKILL):
        if proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signum)
        try:
            proc.wait(timeout / 2 if signum != signal.SIGKILL else timeout)
            return
        except subprocess.TimeoutExpired:
            continue


def _cleanup(backends: Mapping[str, Backend], procs: Iterable[subprocess.Popen[bytes]], pids: set[int], directory: Path,
             keep_dir: bool) -> None:
    for proc in procs:
        _stop_process(proc, 10.0)
    # workers of a master that had to be killed: only PIDs this fixture saw
    signal_pids(any_alive(pids), signal.SIGKILL)
    for backend in backends.values():
        with contextlib.suppress(Exception):
            backend.stop()
    if not keep_dir:
        shutil.rmtree(directory, ignore_errors=True)


__all__ = ["BACKEND", "HEALTHCHECK_HOST", "Backend", "FixtureError", "HaproxyFixture", "Response",
           "RuntimeApiError", "TcpServer", "haproxy_unavailable_reason", "pid_alive", "process_state", "wait_until"]
