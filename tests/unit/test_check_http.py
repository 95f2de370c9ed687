"""The HTTP check's decisions, from plain answers (no server)."""

from __future__ import annotations

import pytest

from pretix_agent.checks import http as http_check
from pretix_agent.checks.http import HttpAnswer, body_excerpt, classify


def test_200_passes_with_the_latency():
    result = classify(HttpAnswer(200, b"OK", None, 0.0123))
    assert result.outcome == "pass"
    assert result.reason == "HTTP 200 in 12 ms"
    assert result.values == {"status": 200, "latency_ms": 12.3}


@pytest.mark.parametrize(("status", "body", "reason"), [
    (400, b"Unknown host", "HTTP 400: Unknown host"),
    (500, b"<h1>Server Error (500)</h1>", "HTTP 500: Server Error (500)"),
    (503, b"", "HTTP 503 (empty body)"),
    (204, b"", "HTTP 204 (empty body)"),
])
def test_anything_but_200_fails_with_the_status_and_the_start_of_the_body(status, body, reason):
    result = classify(HttpAnswer(status, body, None, 0.01))
    assert result.outcome == "fail"
    assert result.reason == reason
    assert result.values["status"] == status
    assert not result.hard


def test_a_redirect_fails_and_names_where_it_points():
    result = classify(HttpAnswer(302, b"", "/control/login/?next=/healthcheck/", 0.01))
    assert result.outcome == "fail"
    assert result.reason == "HTTP 302: redirect to /control/login/?next=/healthcheck/ (redirects are not followed)"
    assert result.values["location"] == "/control/login/?next=/healthcheck/"


def test_body_excerpt_is_one_line_of_at_most_100_characters_without_markup():
    page = (b"<html><head><style>body { color: red }</style><script>var x = 1;</script></head>\n<body>\n"
            b"<h1>Bad   Request</h1>\n<p>" + b"word " * 60 + b"</p></body></html>")
    excerpt = body_excerpt(page)
    assert excerpt.startswith("Bad Request word word")
    assert len(excerpt) <= 100
    assert excerpt.endswith("…")
    assert "\n" not in excerpt and "color" not in excerpt and "var x" not in excerpt


def test_body_excerpt_survives_bytes_that_are_not_utf8():
    assert body_excerpt(b"caf\xe9 closed") == "caf\ufffd closed"


@pytest.mark.parametrize(("header", "name"), [
    ("shop.example.org", "shop.example.org"), ("shop.example.org:8443", "shop.example.org"),
    ("[::1]:8443", "::1"), ("[::1]", "::1"),
])
def test_host_name_drops_the_port_of_a_host_header(header, name):
    assert http_check._host_name(header) == name
