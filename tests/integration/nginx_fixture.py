"""Run a real nginx with the shipped maintenance snippet, plus a stub pretix upstream.

Plain helpers, no pytest needed::

    with StubUpstream() as upstream, NginxServer(upstream.port, marker_path=...) as nginx:
        response = http_request(nginx.port, "GET", "/control/")

``NginxServer`` writes a throw-away nginx configuration into a temporary
directory: the http {} context includes ``conf/nginx/pretix-maintenance-map.conf``
and the server {} block includes ``conf/nginx/pretix-maintenance.conf``, both
by their path in this repository (so they are tested byte for byte), after
setting ``$pretix_maintenance_marker`` and ``$pretix_maintenance_root`` the
way an operator would. nginx runs in the foreground on a 127.0.0.1 port,
keeps its pid file, logs and temp directories inside the temporary directory
and is stopped by its own PID. The port is a candidate outside the kernel's
ephemeral range (tests/ports.py); when nginx says "Address already in use"
it is started again on a fresh one.

We usually run as root: the nginx master then switches its workers to
``nobody``, which is what happens in production too (www-data). The workers
stat the marker file and read the maintenance page, so the temporary
directory and everything in it is made world-readable (mkdtemp creates 0700
directories, which ``nobody`` could not enter). The page is copied (byte for
byte) into that directory because the checkout itself may not be readable
by ``nobody``.
"""

from __future__ import annotations

import contextlib
import grp
import http.client
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import BinaryIO

from tests.ports import PortInUse, address_in_use, start_with_ports

from .processes import children_of, pdeathsig

REPO_ROOT = Path(__file__).resolve().parents[2]
NGINX_CONF_DIR = REPO_ROOT / "conf" / "nginx"
SNIPPET = NGINX_CONF_DIR / "pretix-maintenance.conf"
MAP_FILE = NGINX_CONF_DIR / "pretix-maintenance-map.conf"
MAINTENANCE_PAGE = NGINX_CONF_DIR / "maintenance.html"
EXAMPLE_SITE = NGINX_CONF_DIR / "pretix-site.conf"
NGINX_BIN = os.environ.get("PRETIX_AGENT_TEST_NGINX", "/usr/sbin/nginx")

# Directory for extra exempt paths, relative to the directory of nginx.conf
# (that is how the shipped map file includes it).
EXEMPT_DIR_NAME = "pretix-maintenance-exempt.d"

HOST = "127.0.0.1"


def nginx_available() -> bool:
    return os.access(NGINX_BIN, os.X_OK)


def wait_for_port(
    port: int,
    timeout: float = 10.0,
    host: str = HOST,
    alive: Callable[[], bool] | None = None,
) -> None:
    """Poll until a TCP connect to host:port succeeds.

    ``alive`` is checked between attempts so that a process that died on
    start-up fails fast instead of running into the timeout.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            pass
        if alive is not None and not alive():
            raise RuntimeError(f"process died before {host}:{port} accepted connections")
        if time.monotonic() > deadline:
            raise TimeoutError(f"nothing accepted connections on {host}:{port} within {timeout} s")
        time.sleep(0.02)


# --------------------------------------------------------------------------- client


@dataclass
class Response:
    status: int
    reason: str
    headers: http.client.HTTPMessage
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")

    def header(self, name: str) -> str | None:
        return self.headers.get(name)


def http_request(
    port: int,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    host: str = HOST,
    timeout: float = 5.0,
    tls: bool = False,
) -> Response:
    """One request on a fresh connection; ``path`` is sent exactly as given."""
    if tls:
        import ssl

        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        conn: http.client.HTTPConnection = http.client.HTTPSConnection(host, port, timeout=timeout, context=context)
    else:
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=dict(headers or {}))
        resp = conn.getresponse()
        data = resp.read()
        return Response(resp.status, resp.reason, resp.headers, data)
    finally:
        conn.close()


# --------------------------------------------------------------------------- stub upstream


@dataclass
class SeenRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


class _StubHandler(BaseHTTPRequestHandler):
    server: _StubHTTPServer
    protocol_version = "HTTP/1.1"

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        seen = SeenRequest(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body)
        with self.server.lock:
            self.server.seen.append(seen)
        payload = f"upstream saw {self.command} {self.path}\n".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _answer

    def log_message(self, format: str, *args: object) -> None:  # keep test output quiet
        pass


class _StubHTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int]) -> None:
        super().__init__(address, _StubHandler)
        self.lock = threading.Lock()
        self.seen: list[SeenRequest] = []


class StubUpstream:
    """Stands in for pretix/gunicorn: answers every request with 200 and
    ``upstream saw METHOD RAW-REQUEST-TARGET``, and records what it saw."""

    def __init__(self, host: str = HOST) -> None:
        self._server = _StubHTTPServer((host, 0))
        self.host = host
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="stub-upstream", daemon=True)

    def start(self) -> StubUpstream:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    @property
    def seen(self) -> list[SeenRequest]:
        with self._server.lock:
            return list(self._server.seen)

    def last(self) -> SeenRequest:
        with self._server.lock:
            return self._server.seen[-1]

    def __enter__(self) -> StubUpstream:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --------------------------------------------------------------------------- nginx


def _worker_user_directive() -> str:
    """Only a root master switches users; name the unprivileged user explicitly."""
    if os.geteuid() != 0:
        return ""
    for name in ("nobody", "www-data"):
        try:
            pw = pwd.getpwnam(name)
        except KeyError:
            continue
        return f"user {name} {grp.getgrgid(pw.pw_gid).gr_name};\n"
    raise RuntimeError("no unprivileged user (nobody, www-data) for the nginx workers")


def _q(path: Path | str) -> str:
    """Quote a path for nginx.conf."""
    text = str(path)
    if any(c in text for c in '"\\;{}$ \t\n'):
        raise ValueError(f"path not usable in the test nginx.conf: {text!r}")
    return f'"{text}"'


def main_config(workdir: Path, http_body: str, error_log_level: str = "notice") -> str:
    """An nginx.conf for a foreground nginx that keeps everything in ``workdir``."""
    return (
        f"{_worker_user_directive()}"
        "daemon off;\n"
        "master_process on;\n"
        "worker_processes 1;\n"
        f"pid {_q(workdir / 'nginx.pid')};\n"
        f"error_log {_q(workdir / 'error.log')} {error_log_level};\n"
        "events { worker_connections 128; }\n"
        "http {\n"
        f"    access_log {_q(workdir / 'access.log')};\n"
        f"    client_body_temp_path {_q(workdir / 'tmp' / 'client_body')};\n"
        f"    proxy_temp_path {_q(workdir / 'tmp' / 'proxy')};\n"
        f"    fastcgi_temp_path {_q(workdir / 'tmp' / 'fastcgi')};\n"
        f"    uwsgi_temp_path {_q(workdir / 'tmp' / 'uwsgi')};\n"
        f"    scgi_temp_path {_q(workdir / 'tmp' / 'scgi')};\n"
        "    default_type application/octet-stream;\n"
        f"{http_body}"
        "}\n"
    )


def site_config(
    port: int,
    upstream_port: int,
    marker_path: Path,
    page_root: Path,
) -> str:
    """The server block an operator writes, reduced to what the test needs.

    Same proxy settings as conf/nginx/pretix-site.conf: no URI part in
    proxy_pass, Host / X-Forwarded-For / X-Forwarded-Proto passed on.
    """
    return (
        "    upstream pretix {\n"
        f"        server {HOST}:{upstream_port};\n"
        "    }\n"
        "    server {\n"
        f"        listen {HOST}:{port};\n"
        "        server_name _;\n"
        f"        set $pretix_maintenance_marker {_q(marker_path)};\n"
        f"        set $pretix_maintenance_root {_q(page_root)};\n"
        f"        include {_q(SNIPPET)};\n"
        "        location / {\n"
        "            proxy_pass http://pretix;\n"
        "            proxy_set_header Host $http_host;\n"
        "            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n"
        "            proxy_set_header X-Forwarded-Proto $scheme;\n"
        "        }\n"
        "    }\n"
    )


def make_world_readable_tempdir(prefix: str) -> Path:
    workdir = Path(tempfile.mkdtemp(prefix=prefix))
    workdir.chmod(0o755)
    return workdir


def _pid_file_names(path: Path, pid: int) -> bool:
    try:
        return path.read_text().strip() == str(pid)
    except OSError:
        return False


def _read_from(path: Path, offset: int) -> str:
    """What was appended to ``path`` after ``offset`` (a log nginx appends to)."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace")
    except OSError:
        return ""


# In the child before exec: SIGTERM nginx (a fast shutdown that also ends
# its workers) if the process that started it dies, e.g. a SIGKILLed pytest.
# The signal is tied to the starting *thread*: start nginx from the main thread.
_die_with_parent = pdeathsig(signal.SIGTERM)


class NginxProcess:
    """A foreground nginx for a config file, started and stopped by its own PID."""

    def __init__(self, workdir: Path, conf_path: Path, port: int) -> None:
        self.workdir = workdir
        self.conf_path = conf_path
        self.port = port
        self.proc: subprocess.Popen[bytes] | None = None
        self._stderr: BinaryIO | None = None
        # nginx creates the temp directories themselves, not their parent.
        (workdir / "tmp").mkdir(mode=0o755, exist_ok=True)

    def _cmd(self, *extra: str) -> list[str]:
        # -p: prefix for any relative path nginx might still use;
        # -e: startup errors go to our log instead of the compiled-in stderr.
        return [
            NGINX_BIN,
            "-p", f"{self.workdir}/",
            "-e", str(self.workdir / "error.log"),
            "-c", str(self.conf_path),
            *extra,
        ]  # fmt: skip

    def test_config(self) -> subprocess.CompletedProcess[str]:
        """``nginx -t`` on the config; returns the completed process."""
        return subprocess.run(self._cmd("-t"), capture_output=True, text=True, timeout=30)

    def start(self, timeout: float = 10.0) -> None:
        """Start nginx; return once it has bound its ports. Raise PortInUse (nginx stopped) if one
        was taken, RuntimeError for anything else."""
        checked = self.test_config()
        if checked.returncode != 0:
            raise RuntimeError(
                f"nginx -t failed:\n{checked.stderr}\n--- {self.conf_path}:\n{self.conf_path.read_text()}"
            )
        pid_file = self.workdir / "nginx.pid"
        pid_file.unlink(missing_ok=True)
        error_log = self.workdir / "error.log"
        log_start = error_log.stat().st_size if error_log.exists() else 0
        self._stderr = open(self.workdir / "nginx.stderr", "wb")
        proc = self.proc = subprocess.Popen(
            self._cmd(), stdout=self._stderr, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent
        )
        try:
            # nginx writes its pid file after it has bound every listening socket: from then on the
            # port is ours (a connect alone could reach whoever held the port before us).
            deadline = time.monotonic() + timeout
            while not _pid_file_names(pid_file, proc.pid):
                if proc.poll() is not None:
                    raise RuntimeError(f"nginx exited with {proc.returncode}")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"nginx wrote no pid file within {timeout} s")
                time.sleep(0.02)
            wait_for_port(self.port, timeout=timeout, alive=lambda: proc.poll() is None)
        except Exception as exc:
            self.stop()
            said = self.stderr_text() + _read_from(error_log, log_start)
            if proc.returncode is not None and address_in_use(said):
                raise PortInUse(f"nginx: {said.strip().splitlines()[-1]}") from None
            raise RuntimeError(f"nginx did not come up: {exc}\n{self.logs()}") from exc

    def stderr_text(self) -> str:
        path = self.workdir / "nginx.stderr"
        return path.read_text(errors="replace") if path.exists() else ""

    @property
    def pid(self) -> int:
        assert self.proc is not None, "nginx not started"
        return self.proc.pid

    def worker_pids(self) -> set[int]:
        """PIDs of the master's live children (workers), from /proc."""
        return children_of(self.pid)

    def reload(self, timeout: float = 10.0) -> None:
        """Like ``nginx -s reload``: SIGHUP to our master, which re-reads the
        config, starts new workers and lets the old ones finish. Returns once
        every old worker is gone, so each later request sees the new config."""
        checked = self.test_config()
        if checked.returncode != 0:
            raise RuntimeError(f"nginx -t failed, not reloading:\n{checked.stderr}")
        old = self.worker_pids()
        os.kill(self.pid, signal.SIGHUP)
        deadline = time.monotonic() + timeout
        while True:
            current = self.worker_pids()
            if current and not current & old:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"old nginx workers {sorted(current & old)} still running after reload")
            time.sleep(0.01)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGQUIT (graceful) to our master PID, then SIGTERM, then SIGKILL."""
        proc = self.proc
        if proc is not None and proc.poll() is None:
            for sig in (signal.SIGQUIT, signal.SIGTERM, signal.SIGKILL):
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(sig)
                try:
                    proc.wait(timeout=timeout)
                    break
                except subprocess.TimeoutExpired:
                    continue
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None

    def logs(self) -> str:
        parts = []
        for name in ("nginx.stderr", "error.log"):
            path = self.workdir / name
            if path.exists():
                parts.append(f"--- {name}:\n{path.read_text(errors='replace')}")
        return "\n".join(parts)


class NginxServer:
    """nginx in front of ``upstream_port`` with the shipped maintenance snippet.

    ``extra_exempt`` maps file names to contents for the operator's exempt
    directory (``pretix-maintenance-exempt.d/NAME``), written before start.
    ``marker_path`` defaults to ``<workdir>/state/maintenance`` (absent); a
    path you pass must be reachable for the unprivileged nginx workers.
    ``workdir`` defaults to a new temporary directory, removed on stop.
    """

    def __init__(
        self,
        upstream_port: int,
        marker_path: Path | None = None,
        extra_exempt: Mapping[str, str] | None = None,
        workdir: Path | None = None,
        port: int = 0,
    ) -> None:
        """``port`` 0: a candidate port at start(), a fresh one if nginx finds it in use."""
        self.upstream_port = upstream_port
        self._own_workdir = workdir is None
        self.workdir: Path = workdir if workdir is not None else make_world_readable_tempdir("pretix-nginx-")
        if marker_path is None:
            state = self.workdir / "state"
            state.mkdir(mode=0o755, exist_ok=True)
            state.chmod(0o755)
            marker_path = state / "maintenance"
        self.marker_path: Path = marker_path
        self.page_root = self.workdir / "page"
        self.page_root.mkdir(mode=0o755, exist_ok=True)
        shutil.copyfile(MAINTENANCE_PAGE, self.page_root / "maintenance.html")
        (self.page_root / "maintenance.html").chmod(0o644)
        (self.workdir / EXEMPT_DIR_NAME).mkdir(mode=0o755, exist_ok=True)
        for name, content in (extra_exempt or {}).items():
            self.add_exempt_file(name, content)
        self._fixed_port = port
        self.port = port
        self.conf_path = self.workdir / "nginx.conf"
        self.process = NginxProcess(self.workdir, self.conf_path, port)  # configured at start()

    def _configure(self, port: int) -> NginxProcess:
        self.port = port
        self.conf_path.write_text(
            main_config(
                self.workdir,
                f"    include {_q(MAP_FILE)};\n"
                + site_config(self.port, self.upstream_port, self.marker_path, self.page_root),
            )
        )
        return NginxProcess(self.workdir, self.conf_path, self.port)

    def _start_on(self, port: int) -> None:
        self.process = self._configure(port)
        self.process.start()

    # -- operator actions

    def add_exempt_file(self, name: str, content: str) -> Path:
        """Write an operator file into the exempt directory (reload to apply)."""
        path = self.workdir / EXEMPT_DIR_NAME / name
        path.write_text(content)
        return path

    def maintenance_on(self) -> None:
        """What pretix-agent does: create the marker file."""
        self.marker_path.touch()

    def maintenance_off(self) -> None:
        self.marker_path.unlink(missing_ok=True)

    # -- process

    def start(self) -> NginxServer:
        try:
            if self._fixed_port:
                self._start_on(self._fixed_port)
            else:
                start_with_ports(self._start_on, what="nginx")
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        self.process.stop()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def reload(self) -> None:
        """Apply changed operator files; returns when old workers are gone."""
        self.process.reload()

    @property
    def pid(self) -> int:
        return self.process.pid

    def request(self, method: str, path: str, **kwargs: object) -> Response:
        return http_request(self.port, method, path, **kwargs)  # type: ignore[arg-type]

    def logs(self) -> str:
        return self.process.logs()

    def __enter__(self) -> NginxServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --------------------------------------------------------------------------- the shipped example site


def replace_once(text: str, old: str, new: str) -> str:
    """Replace ``old``, which must occur exactly once (so a changed example
    fails loudly instead of silently keeping a production path)."""
    count = text.count(old)
    if count != 1:
        raise AssertionError(f"expected {old!r} exactly once in the example site config, found {count}")
    return text.replace(old, new)


def self_signed_certificate(directory: Path, name: str = "tickets.example.org") -> tuple[Path, Path]:
    """A throw-away certificate and key made with the openssl command."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-nodes", "-days", "2",
            "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-keyout", str(key), "-out", str(cert), "-subj", f"/CN={name}",
        ],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return cert, key


def adapt_example_site(
    text: str,
    *,
    http_port: int,
    https_port: int,
    upstream_port: int,
    marker_path: Path,
    page_root: Path,
    cert: Path,
    key: Path,
) -> str:
    """conf/nginx/pretix-site.conf with only its machine-specific values
    swapped: listen addresses, upstream port, certificate, marker, page and
    snippet paths. Everything else stays as shipped."""
    text = replace_once(text, "server 127.0.0.1:8345;", f"server {HOST}:{upstream_port};")
    text = replace_once(text, "    listen 80;\n", f"    listen {HOST}:{http_port};\n")
    text = replace_once(text, "    listen [::]:80;\n", "")
    text = replace_once(text, "    listen 443 ssl http2;\n", f"    listen {HOST}:{https_port} ssl http2;\n")
    text = replace_once(text, "    listen [::]:443 ssl http2;\n", "")
    text = replace_once(text, "/etc/ssl/certs/tickets.example.org.fullchain.pem;", f"{_q(cert)};")
    text = replace_once(text, "/etc/ssl/private/tickets.example.org.key;", f"{_q(key)};")
    text = replace_once(
        text,
        "$pretix_maintenance_marker /var/lib/pretix-agent/maintenance;",
        f"$pretix_maintenance_marker {_q(marker_path)};",
    )
    text = replace_once(
        text,
        "$pretix_maintenance_root   /usr/share/pretix-agent/nginx;",
        f"$pretix_maintenance_root {_q(page_root)};",
    )
    text = replace_once(text, "include /etc/nginx/snippets/pretix-maintenance.conf;", f"include {_q(SNIPPET)};")
    return text
