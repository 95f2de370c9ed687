"""The HTTP probe against a small local server that behaves like pretix's /healthcheck/ and worse."""

from __future__ import annotations

import dataclasses
import http.server
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest

from pretix_agent.checks import http as http_check
from pretix_agent.checks.model import Deadline
from pretix_agent.config import HttpCheck
from tests.ports import refused_port

from .check_helpers import GARBAGE, garbage_server, run_like_the_runner

pytestmark = pytest.mark.integration

TIMEOUT = 1.0
MARGIN = 0.3
SHOP = "tickets.example.org"


class PretixLike(http.server.BaseHTTPRequestHandler):
    """/healthcheck/ answers 200 only for the shop's Host (else 400 "Unknown host", as pretix
    does for a bare IP); /error/ is a 500, /login-redirect/ a 302."""

    seen_hosts: list[str] = []

    def do_GET(self) -> None:
        host = self.headers.get("Host", "")
        self.seen_hosts.append(host)
        if host.partition(":")[0] != SHOP:
            self.answer(400, b"Unknown host")
        elif self.path == "/healthcheck/":
            self.answer(200, b"OK")
        elif self.path == "/error/":
            self.answer(500, b"<!doctype html><html><body><h1>Server Error (500)</h1>\n<p>Sorry.</p></body></html>")
        elif self.path == "/login-redirect/":
            self.send_response(302)
            self.send_header("Location", "/control/login/?next=/healthcheck/")
            self.send_header("Content-Length", "0")
            self.end_headers()
        else:
            self.answer(404, b"Not found")

    def answer(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:  # quiet
        pass


@pytest.fixture(scope="module")
def server() -> Iterator[http.server.ThreadingHTTPServer]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), PretixLike)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port where the kernel completes the TCP handshake and nobody ever answers (a hung server)."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        yield listener.getsockname()[1]


def check(url: str, **changes) -> HttpCheck:
    return dataclasses.replace(HttpCheck(url=url, host=SHOP, verify_tls=True), **changes)


def url(server, path: str = "/healthcheck/") -> str:
    return f"http://127.0.0.1:{server.server_address[1]}{path}"


def probe(options: HttpCheck):
    return http_check.probe(options, Deadline(TIMEOUT))


def test_healthcheck_with_the_shops_host_header_passes_with_its_latency(server):
    result = probe(check(url(server)))
    assert result.outcome == "pass", result.reason
    assert result.reason.startswith("HTTP 200 in ")
    assert result.values["status"] == 200
    assert 0 < result.values["latency_ms"] <= TIMEOUT * 1000  # in milliseconds, and a pass ends within the timeout
    assert PretixLike.seen_hosts[-1] == SHOP


def test_without_a_host_header_pretix_answers_unknown_host_and_the_check_fails(server):
    result = probe(check(url(server), host=""))
    assert result.outcome == "fail"
    assert result.reason == "HTTP 400: Unknown host"
    assert not result.hard
    assert PretixLike.seen_hosts[-1] == f"127.0.0.1:{server.server_address[1]}"  # the URL's host


def test_a_server_error_fails_with_the_status_and_the_start_of_the_body(server):
    result = probe(check(url(server, "/error/")))
    assert result.outcome == "fail"
    assert result.reason == "HTTP 500: Server Error (500) Sorry."


def test_a_redirect_is_not_followed_and_fails(server):
    result = probe(check(url(server, "/login-redirect/")))
    assert result.outcome == "fail"
    assert result.reason == "HTTP 302: redirect to /control/login/?next=/healthcheck/ (redirects are not followed)"


def test_a_server_that_accepts_and_never_answers_fails_as_timeout_within_the_timeout(silent_port):
    run = run_like_the_runner(partial(http_check.probe, check(f"http://127.0.0.1:{silent_port}/healthcheck/")),
                              TIMEOUT)
    print(f"hung HTTP server: probe returned after {run.seconds:.3f} s (timeout {TIMEOUT} s)")
    assert run.ended
    assert run.result is not None and run.result.outcome == "fail"
    assert run.result.reason == (f"timeout: no answer from 127.0.0.1:{silent_port} within 1 s "
                                 "(waiting for the answer)")
    assert not run.result.hard
    assert run.seconds <= TIMEOUT + MARGIN


def test_abort_frees_a_probe_waiting_on_a_hung_server_long_before_its_timeout(silent_port):
    run = run_like_the_runner(partial(http_check.probe, check(f"http://127.0.0.1:{silent_port}/")), timeout=30.0,
                              abort_after=0.5)
    assert run.aborted and run.ended
    assert run.seconds < 0.5 + MARGIN
    assert run.result is not None and run.result.reason.startswith("timeout:")


def test_a_refused_port_is_a_hard_failure():
    with refused_port() as port:
        result = probe(check(f"http://127.0.0.1:{port}/healthcheck/"))
    assert result.outcome == "fail" and result.hard
    assert result.reason == f"connection refused by 127.0.0.1:{port}"


# ---------------------------------------------------------------------------------------------
# https: the Host name is the SNI name and the name the certificate is verified against


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory) -> Iterator[tuple[int, list[str]]]:
    directory: Path = tmp_path_factory.mktemp("tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", f"/CN={SHOP}",
                    "-addext", f"subjectAltName=DNS:{SHOP}", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    sni_names: list[str] = []
    context.sni_callback = lambda sock, name, ctx: sni_names.append(name)  # type: ignore[assignment,func-returns-value]
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), PretixLike)
    httpd.daemon_threads = True
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd.server_address[1], sni_names
    httpd.shutdown()
    httpd.server_close()


def test_https_sends_the_host_as_sni_and_a_self_signed_certificate_passes_only_unverified(tls_server):
    port, sni_names = tls_server
    unverified = probe(check(f"https://127.0.0.1:{port}/healthcheck/", verify_tls=False))
    assert unverified.outcome == "pass", unverified.reason
    assert sni_names[-1] == SHOP
    verified = probe(check(f"https://127.0.0.1:{port}/healthcheck/"))
    assert verified.outcome == "fail" and not verified.hard
    assert verified.reason.startswith("TLS certificate not accepted: self")  # "self-signed certificate"


@pytest.mark.parametrize("payload", GARBAGE[1:])
def test_something_else_answering_on_the_port_fails_softly_in_one_line(payload):
    with garbage_server(payload) as port:
        result = probe(check(f"http://127.0.0.1:{port}/healthcheck/"))
    assert result.outcome == "fail" and not result.hard
    assert result.reason.startswith("waiting for the answer: not a valid HTTP answer (BadStatusLine: ")
    assert result.reason.isprintable()
