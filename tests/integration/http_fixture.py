"""A small HTTP/1.1 keep-alive server in its own process, for the HTTP probe's kept connection.

In its own process so that tests can SIGSTOP, SIGKILL and restart it on the same port, as they
do with PostgreSQL and Redis. Plain classes, no pytest:

    with KeepAliveHttpServer() as web:
        web.url("/healthcheck/")      # 200 "OK", connection kept alive
        web.url("/close/")            # 200 "OK" with Connection: close
        web.url("/big/")              # 200 with a body longer than the probe reads
        web.url("/once-per-connection/")  # answers the first request of a connection; later ones
                                      # are read and the connection closed without an answer
        web.sigstop(); web.sigcont(); web.kill(); web.stop(); web.start()

Answers are written in one piece (head and body together), as nginx does. The port is chosen at
random outside the kernel's ephemeral range (so no outgoing connection can take it between a
stop and the restart) and kept across restarts; a start that finds it in use tries another one,
unless it is a restart.

Run as a script (`python3 http_fixture.py PORT`) it is the server: it prints "listening PORT"
once it is bound, or exits with status 3 if the port is in use.
"""

from __future__ import annotations

import contextlib
import errno
import os
import random
import select
import signal
import subprocess
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PORT_RANGE = (20000, 32767)  # below the ephemeral range (32768-60999)
PORT_IN_USE = 3


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    requests_on_this_connection = 0

    def do_GET(self) -> None:
        self.requests_on_this_connection += 1
        if self.path == "/once-per-connection/" and self.requests_on_this_connection > 1:
            self.close_connection = True  # as if its keep-alive had just ended: no answer at all
            return
        body = b"x" * 10_000 if self.path == "/big/" else b"OK"
        close = self.path == "/close/"
        head = (f"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {len(body)}\r\n"
                + ("Connection: close\r\n" if close else "") + "\r\n")
        self.wfile.write(head.encode() + body)
        self.close_connection = close

    def log_message(self, *args: object) -> None:
        pass


def _serve(port: int) -> int:
    try:
        server = ThreadingHTTPServer(("127.0.0.1", port), _Handler)
    except OSError as error:
        if error.errno == errno.EADDRINUSE:
            return PORT_IN_USE
        raise
    server.daemon_threads = True
    print(f"listening {port}", flush=True)
    server.serve_forever()
    return 0


class KeepAliveHttpServer:
    def __init__(self) -> None:
        self.port = 0
        self._proc: subprocess.Popen[str] | None = None

    def __enter__(self) -> KeepAliveHttpServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def pid(self) -> int:
        assert self._proc is not None, "not started"
        return self._proc.pid

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def url(self, path: str = "/healthcheck/") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def start(self, timeout: float = 10.0) -> None:
        """Start the server and return once it listens (on the same port as before, if any)."""
        from .processes import die_with_parent

        assert not self.running, "already running"
        restart = bool(self.port)
        for _ in range(20):
            port = self.port or random.randint(*PORT_RANGE)
            proc = subprocess.Popen([sys.executable, __file__, str(port)], stdin=subprocess.DEVNULL,
                                    stdout=subprocess.PIPE, text=True, preexec_fn=die_with_parent)
            assert proc.stdout is not None
            try:
                if not select.select([proc.stdout], [], [], timeout)[0]:
                    proc.kill()
                    proc.wait(timeout)
                    raise RuntimeError(f"the HTTP server said nothing within {timeout:g} s")
                line = proc.stdout.readline()  # "listening PORT", or "" when it exited
            finally:
                proc.stdout.close()
            if line.startswith("listening "):
                self.port, self._proc = port, proc
                return
            status = proc.wait(timeout)
            if status != PORT_IN_USE or restart:
                raise RuntimeError(f"the HTTP server did not start on port {port} (exit status {status})")
        raise RuntimeError("no free port for the HTTP server after 20 tries")

    def sigstop(self) -> None:
        from .processes import wait_stopped

        os.kill(self.pid, signal.SIGSTOP)
        wait_stopped([self.pid])

    def sigcont(self) -> None:
        if self.running:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGCONT)

    def kill(self) -> None:
        """SIGKILL it and reap it: every connection it had is reset."""
        if self.running:
            assert self._proc is not None
            self._proc.kill()
            self._proc.wait(10)

    def stop(self) -> None:
        """SIGCONT, SIGTERM, reap (SIGKILL if that takes more than 10 s). Idempotent."""
        if self.running:
            assert self._proc is not None
            self.sigcont()
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


if __name__ == "__main__":
    sys.exit(_serve(int(sys.argv[1])))
