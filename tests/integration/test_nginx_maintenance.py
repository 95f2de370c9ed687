"""Maintenance mode on the nginx side, proved against the real nginx of Debian.

The shipped files conf/nginx/pretix-maintenance.conf and
pretix-maintenance-map.conf are included byte for byte; only the marker path
and the page directory are set per test, the way an operator sets them.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.ports import candidate_port, start_with_ports

from .nginx_fixture import (
    EXAMPLE_SITE,
    MAINTENANCE_PAGE,
    MAP_FILE,
    NGINX_CONF_DIR,
    NginxProcess,
    NginxServer,
    StubUpstream,
    _q,
    adapt_example_site,
    http_request,
    main_config,
    make_world_readable_tempdir,
    nginx_available,
    self_signed_certificate,
)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not nginx_available(), reason="needs /usr/sbin/nginx (apt-get install nginx-light)"),
]

PUBLIC_PATHS = ["/", "/myorg/myevent/", "/myorg/myevent/checkout/start"]
EXEMPT_PATHS = [
    "/control/",
    "/control/login",
    "/download/x",
    "/healthcheck/",
    "/api/v1/organizers/",
    "/_stripe/webhook/",
    "/_paypal/webhook/",
]
# What an operator puts into /etc/nginx/pretix-maintenance-exempt.d/*.conf.
PLUGIN_EXEMPT_FILE = "# webhooks of our payment plugin\n~^/_myplugin/webhook/   1;\n"
PAGE = MAINTENANCE_PAGE.read_bytes()


@pytest.fixture(scope="module")
def upstream() -> Iterator[StubUpstream]:
    with StubUpstream() as stub:
        yield stub


@pytest.fixture(scope="module")
def nginx(upstream: StubUpstream) -> Iterator[NginxServer]:
    server = NginxServer(upstream.port, extra_exempt={"myplugin.conf": PLUGIN_EXEMPT_FILE})
    with server:
        yield server


@pytest.fixture
def maintenance(nginx: NginxServer) -> Iterator[NginxServer]:
    nginx.maintenance_on()
    yield nginx
    nginx.maintenance_off()


@pytest.fixture
def no_maintenance(nginx: NginxServer) -> NginxServer:
    nginx.maintenance_off()
    return nginx


def assert_maintenance_page(response, method: str = "GET") -> None:
    assert response.status == 503, response.text
    assert response.header("Retry-After") == "300"
    assert response.header("Cache-Control") == "no-store"
    assert response.header("Content-Type") == "text/html; charset=utf-8"
    assert response.body == (b"" if method == "HEAD" else PAGE)


def assert_proxied(response, method: str, path: str) -> None:
    assert response.status == 200, response.text
    assert response.text == f"upstream saw {method} {path}\n"


# --------------------------------------------------------------------------- marker present


@pytest.mark.parametrize("path", PUBLIC_PATHS)
def test_marker_present_makes_public_paths_answer_503_with_retry_after(
    maintenance: NginxServer, upstream: StubUpstream, path: str
) -> None:
    seen_before = len(upstream.seen)
    assert_maintenance_page(maintenance.request("GET", path))
    assert len(upstream.seen) == seen_before, "a public request reached pretix during maintenance"


@pytest.mark.parametrize("path", EXEMPT_PATHS)
def test_marker_present_keeps_exempt_paths_proxied_with_the_path_unchanged(maintenance: NginxServer, path: str) -> None:
    assert_proxied(maintenance.request("GET", path), "GET", path)


@pytest.mark.parametrize(
    "path",
    [
        "/control/event/myorg/a%2Fb/orders/?query=J%C3%BCrgen&page=2",
        "/api/v1/organizers/myorg/events/?name=a%20b&ordering=-date_from",
        "/download/myorg/myevent/ABC12/secret%3D%3D/?x=1",
    ],
)
def test_exempt_paths_reach_pretix_with_query_string_and_encoded_segments_unchanged(
    maintenance: NginxServer, path: str
) -> None:
    assert_proxied(maintenance.request("GET", path), "GET", path)


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE"])
def test_requests_with_other_methods_to_a_public_path_also_get_503_and_the_page(
    maintenance: NginxServer, upstream: StubUpstream, method: str
) -> None:
    seen_before = len(upstream.seen)
    response = maintenance.request(
        method,
        "/myorg/myevent/checkout/start",
        body=b"csrfmiddlewaretoken=x&email=a%40example.org" * 100,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert_maintenance_page(response)
    assert len(upstream.seen) == seen_before


def test_head_request_to_a_public_path_gets_503_without_a_body(maintenance: NginxServer) -> None:
    assert_maintenance_page(maintenance.request("HEAD", "/myorg/myevent/"), method="HEAD")


def test_webhook_post_during_maintenance_reaches_pretix_with_its_body(
    maintenance: NginxServer, upstream: StubUpstream
) -> None:
    body = b'{"id": "evt_1", "type": "charge.succeeded"}'
    response = maintenance.request("POST", "/_stripe/webhook/", body=body, headers={"Content-Type": "application/json"})
    assert_proxied(response, "POST", "/_stripe/webhook/")
    assert upstream.last().body == body


@pytest.mark.parametrize(
    "path", ["/control/../myorg/myevent/", "/control/%2e%2e/myorg/myevent/", "/api/v1/./../myorg/"]
)
def test_dot_segments_cannot_smuggle_a_public_path_past_an_exempt_prefix(maintenance: NginxServer, path: str) -> None:
    assert_maintenance_page(maintenance.request("GET", path))


@pytest.mark.parametrize("path", ["/controlpanel/", "/mycontrol/", "/myorg/control/", "/api/v2/"])
def test_paths_that_only_look_like_exempt_ones_get_the_maintenance_page(maintenance: NginxServer, path: str) -> None:
    assert_maintenance_page(maintenance.request("GET", path))


def test_the_internal_page_location_cannot_be_requested_directly(nginx: NginxServer) -> None:
    nginx.maintenance_off()
    assert nginx.request("GET", "/.pretix-maintenance/maintenance.html").status == 404


def test_missing_maintenance_page_still_answers_503_with_retry_after(maintenance: NginxServer) -> None:
    page = maintenance.page_root / "maintenance.html"
    hidden = page.with_name("maintenance.html.hidden")
    page.rename(hidden)
    try:
        response = maintenance.request("GET", "/myorg/myevent/")
    finally:
        hidden.rename(page)
    assert response.status == 503
    assert response.header("Retry-After") == "300"
    assert response.header("Cache-Control") == "no-store"


@pytest.mark.skipif(os.geteuid() != 0, reason="workers only drop privileges when nginx starts as root")
def test_marker_in_a_directory_the_nginx_workers_cannot_enter_is_not_seen(
    maintenance: NginxServer,
) -> None:
    # Documents a deployment requirement: the workers run as an unprivileged
    # user and must be able to stat the marker, or maintenance never shows.
    state_dir = maintenance.marker_path.parent
    state_dir.chmod(0o700)
    try:
        hidden = maintenance.request("GET", "/myorg/myevent/")
    finally:
        state_dir.chmod(0o755)
    assert hidden.status == 200
    assert maintenance.request("GET", "/myorg/myevent/").status == 503


# --------------------------------------------------------------------------- marker absent, switching


@pytest.mark.parametrize("path", PUBLIC_PATHS + EXEMPT_PATHS + ["/_myplugin/webhook/x"])
def test_marker_absent_proxies_every_path(no_maintenance: NginxServer, path: str) -> None:
    assert_proxied(no_maintenance.request("GET", path), "GET", path)


def test_marker_absent_proxies_a_checkout_post_with_its_body(
    no_maintenance: NginxServer, upstream: StubUpstream
) -> None:
    body = b"email=a%40example.org"
    response = no_maintenance.request(
        "POST", "/myorg/myevent/checkout/start", body=body,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )  # fmt: skip
    assert_proxied(response, "POST", "/myorg/myevent/checkout/start")
    assert upstream.last().body == body


def test_creating_and_removing_the_marker_takes_effect_on_the_next_request_without_reload(
    nginx: NginxServer,
) -> None:
    pid = nginx.pid
    log_before = (nginx.workdir / "error.log").read_text()
    nginx.maintenance_off()
    assert nginx.request("GET", "/myorg/myevent/").status == 200
    nginx.maintenance_on()
    assert nginx.request("GET", "/myorg/myevent/").status == 503
    nginx.maintenance_off()
    assert nginx.request("GET", "/myorg/myevent/").status == 200
    nginx.maintenance_on()
    try:
        assert nginx.request("GET", "/myorg/myevent/").status == 503
    finally:
        nginx.maintenance_off()
    assert nginx.pid == pid
    assert nginx.process.proc is not None and nginx.process.proc.poll() is None
    log_after = (nginx.workdir / "error.log").read_text()
    assert "reconfiguring" not in log_after[len(log_before) :]


def test_proxied_requests_carry_host_and_forwarded_headers(maintenance: NginxServer, upstream: StubUpstream) -> None:
    response = maintenance.request(
        "GET", "/control/", headers={"Host": "tickets.example.org", "X-Forwarded-For": "203.0.113.9"}
    )
    assert_proxied(response, "GET", "/control/")
    headers = upstream.last().headers
    assert headers["host"] == "tickets.example.org"
    assert headers["x-forwarded-for"] == "203.0.113.9, 127.0.0.1"
    assert headers["x-forwarded-proto"] == "http"


# --------------------------------------------------------------------------- plugin paths


def test_plugin_path_added_the_documented_way_is_proxied_during_maintenance(
    maintenance: NginxServer,
) -> None:
    assert_proxied(maintenance.request("POST", "/_myplugin/webhook/", body=b"{}"), "POST", "/_myplugin/webhook/")
    assert_maintenance_page(maintenance.request("GET", "/_otherplugin/webhook/"))


def test_adding_a_plugin_path_file_and_reloading_nginx_exempts_that_path(upstream: StubUpstream) -> None:
    with NginxServer(upstream.port) as server:
        server.maintenance_on()
        assert_maintenance_page(server.request("GET", "/_lateplugin/callback/"))
        server.add_exempt_file("lateplugin.conf", "~^/_lateplugin/   1;\n")
        pid = server.pid
        server.reload()  # returns when only workers with the new config are left
        assert server.pid == pid
        assert_proxied(server.request("GET", "/_lateplugin/callback/"), "GET", "/_lateplugin/callback/")
        assert_maintenance_page(server.request("GET", "/myorg/myevent/"))


# --------------------------------------------------------------------------- shipped files


class ExampleSite:
    """conf/nginx/pretix-site.conf in an http {} wrapper, with a temporary certificate and paths; its
    two ports are chosen at start() (fresh ones if nginx finds one in use)."""

    def __init__(self, workdir: Path, upstream_port: int) -> None:
        self.workdir = workdir
        self.upstream_port = upstream_port
        self.cert, self.key = self_signed_certificate(workdir)
        (workdir / "state").mkdir(mode=0o755)
        self.marker = workdir / "state" / "maintenance"
        self.page_root = workdir / "page"
        self.page_root.mkdir(mode=0o755)
        shutil.copyfile(MAINTENANCE_PAGE, self.page_root / "maintenance.html")
        (self.page_root / "maintenance.html").chmod(0o644)
        self.http_port = self.https_port = 0
        self.process = self._configure(candidate_port(), candidate_port())  # nginx -t needs the files

    def _configure(self, http_port: int, https_port: int) -> NginxProcess:
        self.http_port, self.https_port = http_port, https_port
        site = adapt_example_site(
            EXAMPLE_SITE.read_text(),
            http_port=http_port,
            https_port=https_port,
            upstream_port=self.upstream_port,
            marker_path=self.marker,
            page_root=self.page_root,
            cert=self.cert,
            key=self.key,
        )
        (self.workdir / "pretix.conf").write_text(site)
        conf = self.workdir / "nginx.conf"
        conf.write_text(
            main_config(
                self.workdir,
                # As Debian's nginx.conf does with conf.d/*.conf and sites-enabled/*.
                f"    include /etc/nginx/mime.types;\n"
                f"    include {_q(MAP_FILE)};\n"
                f"    include {_q(self.workdir / 'pretix.conf')};\n",
            )
        )
        return NginxProcess(self.workdir, conf, https_port)

    def _start_on(self, http_port: int, https_port: int) -> None:
        self.process = self._configure(http_port, https_port)
        self.process.start()

    def start(self) -> None:
        start_with_ports(self._start_on, count=2, what="nginx with the example site")

    def stop(self) -> None:
        self.process.stop()


@pytest.fixture
def example_site(upstream: StubUpstream) -> Iterator[ExampleSite]:
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command for a throw-away certificate")
    workdir = make_world_readable_tempdir("pretix-nginx-example-")
    try:
        yield ExampleSite(workdir, upstream.port)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def test_nginx_accepts_the_shipped_example_site_config(example_site: ExampleSite) -> None:
    checked = example_site.process.test_config()
    assert checked.returncode == 0, checked.stderr
    assert "test is successful" in checked.stderr


def test_the_shipped_example_site_serves_maintenance_over_https_and_proxies_the_backend(
    example_site: ExampleSite, upstream: StubUpstream
) -> None:
    example_site.start()
    http_port, https_port, marker = example_site.http_port, example_site.https_port, example_site.marker
    try:
        redirect = http_request(http_port, "GET", "/myorg/myevent/?a=1", headers={"Host": "tickets.example.org"})
        assert redirect.status == 301
        assert redirect.header("Location") == "https://tickets.example.org/myorg/myevent/?a=1"

        marker.touch()
        assert_maintenance_page(http_request(https_port, "GET", "/myorg/myevent/", tls=True))
        assert_maintenance_page(
            http_request(https_port, "POST", "/myorg/myevent/checkout/start", body=b"x=1", tls=True)
        )
        path = "/control/event/myorg/a%2Fb/?q=%C3%BC"
        response = http_request(https_port, "GET", path, tls=True, headers={"Host": "tickets.example.org"})
        assert_proxied(response, "GET", path)
        assert upstream.last().headers["x-forwarded-proto"] == "https"
        assert upstream.last().headers["host"] == "tickets.example.org"

        marker.unlink()
        assert_proxied(http_request(https_port, "GET", "/myorg/myevent/", tls=True), "GET", "/myorg/myevent/")
    finally:
        example_site.stop()


def test_no_shipped_config_gives_proxy_pass_a_uri_part() -> None:
    # pretix: "proxy_pass http://pretix/;" (trailing slash) breaks ticket validation.
    for conf in sorted(NGINX_CONF_DIR.glob("*.conf")):
        for line in conf.read_text().splitlines():
            code = line.split("#", 1)[0]
            match = re.search(r"\bproxy_pass\s+(\S+?);", code)
            if match:
                assert re.fullmatch(r"https?://[^/]+", match.group(1)), f"{conf.name}: {line.strip()}"


def test_maintenance_page_is_self_contained() -> None:
    html = PAGE.decode("utf-8")
    assert "<title>" in html and 'lang="en"' in html
    assert not re.search(r"""(src|href)\s*=|@import|url\(""", html), "page must not load anything else"
