"""Tests for pretix_agent.loki.push: the body, truncation, backoff, answers, credentials, headers."""

from __future__ import annotations

import base64
import gzip
import json

import pytest

from pretix_agent.loki import push
from pretix_agent.loki.entries import make_entry
from pretix_agent.loki.push import Backoff, Outcome
from tests.loki_helpers import loki_section
from tests.ports import refused_port

AGENT = (("host", "node1"), ("service_name", "pretix-agent"), ("unit", "pretix-agent.service"))
WEB = (("host", "node1"), ("service_name", "pretix-web"), ("unit", "pretix-web.service"))


# ---------------------------------------------------------------------------------------------
# body


def test_body_groups_lines_into_one_stream_per_label_set_in_order_of_first_line():
    entries = [make_entry(WEB, 1, "w1"), make_entry(AGENT, 2, "a1"), make_entry(WEB, 3, "w2"),
               make_entry(AGENT, 4, "a2")]
    document = json.loads(push.build_body(entries))
    assert document == {"streams": [
        {"stream": {"host": "node1", "service_name": "pretix-web", "unit": "pretix-web.service"},
         "values": [["1", "w1"], ["3", "w2"]]},
        {"stream": {"host": "node1", "service_name": "pretix-agent", "unit": "pretix-agent.service"},
         "values": [["2", "a1"], ["4", "a2"]]},
    ]}


def test_body_keeps_the_order_lines_were_logged_even_when_timestamps_go_backwards():
    entries = [make_entry(AGENT, 5, "first"), make_entry(AGENT, 3, "second")]
    values = json.loads(push.build_body(entries))["streams"][0]["values"]
    assert values == [["5", "first"], ["3", "second"]]


def test_body_timestamps_are_strings_of_nanoseconds():
    body = json.loads(push.build_body([make_entry(AGENT, 1_700_000_000_123_456_789, "x")]))
    assert body["streams"][0]["values"][0][0] == "1700000000123456789"


def test_body_is_utf8_json_and_survives_a_lone_surrogate():
    body = push.build_body([make_entry(AGENT, 1, "Grüße \ud800 ✓")])
    line = json.loads(body.decode("utf-8"))["streams"][0]["values"][0][1]
    assert line.startswith("Grüße ") and line.endswith(" ✓")


def test_a_line_with_metadata_is_sent_in_loki_3s_three_element_form():
    entry = make_entry(AGENT, 1, "check.failing check=db", metadata=(("level", "error"), ("event", "check.failing")))
    values = json.loads(push.build_body([entry, make_entry(AGENT, 2, "plain")]))["streams"][0]["values"]
    assert values == [["1", "check.failing check=db", {"level": "error", "event": "check.failing"}], ["2", "plain"]]


def test_with_structured_metadata_off_every_value_has_two_elements_for_an_older_loki():
    entry = make_entry(AGENT, 1, "x", metadata=(("level", "info"),))
    assert json.loads(push.build_body([entry], metadata=False))["streams"][0]["values"] == [["1", "x"]]


def test_the_client_sends_metadata_unless_the_section_turns_it_off():
    assert push.PushClient("http://loki:3100").structured_metadata
    assert not push.PushClient("http://loki:3100", structured_metadata=False).structured_metadata


def test_compressed_body_is_gzip_of_the_json():
    body = push.build_body([make_entry(AGENT, 1, "x" * 1000)])
    assert gzip.decompress(push.compress(body)) == body
    assert len(push.compress(body)) < len(body) / 5


# ---------------------------------------------------------------------------------------------
# truncation and splitting


def test_truncated_line_keeps_its_start_and_says_how_many_bytes_were_cut():
    assert push.truncate_line("a" * 100, 10) == "a" * 10 + "…[truncated 90 bytes]"


def test_truncation_counts_from_the_original_size_when_cut_again():
    assert push.truncate_line("a" * 50, 10, original_bytes=100) == "a" * 10 + "…[truncated 90 bytes]"


def test_truncation_never_cuts_a_character_in_half():
    line = "€" * 10  # three bytes each
    cut = push.truncate_line(line, 4)
    assert cut == "€…[truncated 27 bytes]"


def test_split_halves_keeps_order_and_every_entry():
    entries = [make_entry(AGENT, i, str(i)) for i in range(5)]
    first, second = push.split_halves(entries)
    assert [*first, *second] == entries and len(first) == 2


# ---------------------------------------------------------------------------------------------
# answers


@pytest.mark.parametrize(("status", "outcome"), [
    pytest.param(204, Outcome.ACCEPTED, id="204"),
    pytest.param(200, Outcome.ACCEPTED, id="200"),
    pytest.param(400, Outcome.REJECTED, id="400"),
    pytest.param(413, Outcome.TOO_LARGE, id="413"),
    pytest.param(401, Outcome.HOLD, id="401"),
    pytest.param(403, Outcome.HOLD, id="403"),
    pytest.param(404, Outcome.HOLD, id="404-wrong-url"),
    pytest.param(301, Outcome.HOLD, id="301-redirect"),
    pytest.param(429, Outcome.RETRY, id="429"),
    pytest.param(408, Outcome.RETRY, id="408"),
    pytest.param(500, Outcome.RETRY, id="500"),
    pytest.param(502, Outcome.RETRY, id="502"),
    pytest.param(503, Outcome.RETRY, id="503"),
    pytest.param(504, Outcome.RETRY, id="504"),
    pytest.param(None, Outcome.RETRY, id="network-error"),
])
def test_each_answer_is_classified(status, outcome):
    assert push.classify(status) is outcome


@pytest.mark.parametrize(("header", "seconds"), [
    ("30", 30.0), (" 1.5 ", 1.5), (None, None), ("", None), ("Wed, 21 Oct 2015 07:28:00 GMT", None), ("-1", None),
])
def test_retry_after_in_seconds_is_read_and_anything_else_ignored(header, seconds):
    assert push.parse_retry_after(header) == seconds


def test_describe_names_the_status_and_the_receivers_words():
    assert push.describe(push.PushResult(Outcome.REJECTED, 400, "bad labels")) == "HTTP 400: bad labels"
    assert push.describe(push.PushResult(Outcome.RETRY, None, "connection refused")) == "connection refused"


# ---------------------------------------------------------------------------------------------
# backoff


def test_backoff_doubles_from_min_to_max_at_the_top_of_its_jitter():
    backoff = Backoff(0.5, 300.0, rand=lambda: 1.0)
    delays = [backoff.next() for _ in range(12)]
    assert delays == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 300.0, 300.0, 300.0]


def test_backoff_at_the_bottom_of_its_jitter_is_half_and_never_below_min():
    backoff = Backoff(0.5, 300.0, rand=lambda: 0.0)
    assert [backoff.next() for _ in range(4)] == [0.5, 1.0, 2.0, 4.0]


def test_backoff_never_runs_out_and_stays_within_its_bounds():
    values = iter([0.0, 0.3, 0.999, 0.5] * 5000)
    backoff = Backoff(0.01, 0.2, rand=lambda: next(values))
    delays = [backoff.next() for _ in range(20000)]
    assert all(0.01 <= delay <= 0.2 for delay in delays)
    assert backoff.attempt == 20000


def test_backoff_starts_over_after_a_reset():
    backoff = Backoff(1.0, 60.0, rand=lambda: 1.0)
    backoff.next()
    backoff.next()
    backoff.reset()
    assert backoff.next() == 2.0 and backoff.current == 2.0


def test_hold_retries_slowly_but_at_least_once_a_minute():
    assert push.hold_delay(loki_section(max_backoff=300.0), rand=lambda: 1.0) == 60.0
    assert push.hold_delay(loki_section(min_backoff=0.01, max_backoff=0.2), rand=lambda: 1.0) == 0.2
    assert push.hold_delay(loki_section(max_backoff=300.0), rand=lambda: 0.0) == 45.0


# ---------------------------------------------------------------------------------------------
# credentials and headers


def test_password_file_gives_basic_auth_with_the_username(tmp_path):
    secret = tmp_path / "password"
    secret.write_text("s3cret\n")
    credentials = push.load_credentials(loki_section(username="node1", password_file=secret))
    assert credentials.authorization == "Basic " + base64.b64encode(b"node1:s3cret").decode()
    assert credentials.problem is None


def test_bearer_token_file_gives_a_bearer_header(tmp_path):
    token = tmp_path / "token"
    token.write_text("abc.def\n")
    assert push.load_credentials(loki_section(bearer_token_file=token)).authorization == "Bearer abc.def"


def test_no_credential_files_means_no_authorization_header():
    assert push.load_credentials(loki_section()) == push.Credentials()


@pytest.mark.parametrize(("content", "reason"), [
    pytest.param(None, "No such file or directory", id="missing"),
    pytest.param(b"\n", "empty", id="empty"),
    pytest.param(b"\xff\xfe", "not UTF-8 text", id="binary"),
])
def test_an_unusable_secret_file_is_a_problem_that_names_the_file_not_the_content(tmp_path, content, reason):
    secret = tmp_path / "token"
    if content is not None:
        secret.write_bytes(content)
    credentials = push.load_credentials(loki_section(bearer_token_file=secret))
    assert credentials.authorization is None
    assert credentials.problem == f"cannot use [loki] bearer_token_file {secret}: {reason}"


def test_credentials_never_show_the_secret_in_their_repr(tmp_path):
    token = tmp_path / "token"
    token.write_text("hunter2")
    credentials = push.load_credentials(loki_section(bearer_token_file=token))
    assert "hunter2" not in repr(credentials) and "***" in repr(credentials)


def test_headers_carry_json_gzip_tenant_and_authorization():
    client = push.PushClient("http://loki:3100", tenant="pretix", credentials=push.Credentials("Bearer t"))
    headers = client.headers(123)
    assert headers["Content-Type"] == "application/json"
    assert headers["Content-Encoding"] == "gzip"
    assert headers["Content-Length"] == "123"
    assert headers["X-Scope-OrgID"] == "pretix"
    assert headers["Authorization"] == "Bearer t"


def test_headers_without_tenant_or_credentials_send_neither():
    headers = push.PushClient("http://loki:3100").headers(1)
    assert "X-Scope-OrgID" not in headers and "Authorization" not in headers


def test_a_client_with_a_credentials_problem_holds_without_sending(tmp_path):
    client = push.PushClient("http://127.0.0.1:9", credentials=push.Credentials(problem="cannot use it"))
    result = client.push([make_entry(AGENT, 1, "x")])
    assert result.outcome is Outcome.HOLD and result.message == "cannot use it"


@pytest.mark.parametrize(("url", "endpoint"), [
    ("https://loki.example.org", "https://loki.example.org/loki/api/v1/push"),
    ("https://loki.example.org/", "https://loki.example.org/loki/api/v1/push"),
    ("http://gw:8080/tenant-a", "http://gw:8080/tenant-a/loki/api/v1/push"),
    ("http://loki:3100/loki/api/v1/push", "http://loki:3100/loki/api/v1/push"),
])
def test_the_push_endpoint_is_appended_to_a_base_url_once(url, endpoint):
    assert push.push_url(url) == endpoint


def test_a_password_in_the_url_becomes_basic_auth_and_is_hidden_when_shown():
    client = push.PushClient("https://node1:pw@loki.example.org")
    assert client.credentials.authorization == "Basic " + base64.b64encode(b"node1:pw").decode()
    assert push.redacted_url(client.url) == "https://node1:***@loki.example.org/loki/api/v1/push"


def test_a_refused_connection_is_a_retry_with_a_plain_reason():
    with refused_port() as port:  # bound, never listening: every connection is refused
        result = push.PushClient(f"http://127.0.0.1:{port}", timeout=1.0).push([make_entry(AGENT, 1, "x")])
    assert result.outcome is Outcome.RETRY and result.status is None
    assert result.message == "connection refused"


def test_credentials_from_a_file_win_over_the_url_and_the_url_stays_the_fallback():
    client = push.PushClient("https://node1:pw@loki.example.org", credentials=push.Credentials("Bearer file"))
    assert client.credentials.authorization == "Bearer file"
    client.update_credentials(push.Credentials())
    assert client.credentials.authorization == "Basic " + base64.b64encode(b"node1:pw").decode()
