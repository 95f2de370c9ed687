"""The Loki receiver answers as Loki's push API does, so the shipper's tests against it mean something."""

from __future__ import annotations

import gzip
import http.client
import json
import re
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request

import pytest

from tests.integration.loki_receiver import PUSH_PATH, LokiReceiver
from tests.waiting import wait_until

pytestmark = pytest.mark.integration


@pytest.fixture
def receiver():
    with LokiReceiver(max_body_bytes=4096, basic_auth=None) as running:
        yield running


def post(receiver: LokiReceiver, document, *, compress=True, headers=None, raw: bytes | None = None,
         path: str = PUSH_PATH, timeout: float = 5.0):
    body = raw if raw is not None else json.dumps(document).encode()
    sent = {"Content-Type": "application/json", **(headers or {})}
    if compress and raw is None:
        body = gzip.compress(body)
        sent["Content-Encoding"] = "gzip"
    request = urllib.request.Request(receiver.url + path, data=body, headers=sent, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def stream(labels, *values):
    return {"stream": labels, "values": [list(v) for v in values]}


def test_a_valid_push_is_answered_204_with_an_empty_body_and_stored_with_its_tenant(receiver):
    status, body = post(receiver, {"streams": [stream({"host": "a"}, ("1", "one"), ("2", "two"))]},
                        headers={"X-Scope-OrgID": "shop"})
    assert (status, body) == (204, "")
    assert [(r["tenant"], r["labels"], r["ts"], r["line"]) for r in receiver.lines()] == [
        ("shop", {"host": "a"}, "1", "one"), ("shop", {"host": "a"}, "2", "two")]
    (push,) = receiver.pushes()
    assert push.content_encoding == "gzip" and push.tenant == "shop"


def test_without_a_tenant_header_lines_go_to_the_single_tenant_fake(receiver):
    post(receiver, {"streams": [stream({"host": "a"}, ("1", "x"))]})
    assert receiver.lines()[0]["tenant"] == "fake"


def test_a_tenant_can_be_required():
    with LokiReceiver(require_tenant=True) as strict:
        assert post(strict, {"streams": [stream({"host": "a"}, ("1", "x"))]}) == (401, "no org id\n")


def test_structured_metadata_is_accepted_and_kept(receiver):
    assert post(receiver, {"streams": [stream({"a": "b"}, ("1", "x", {"trace_id": "t1"}))]})[0] == 204
    assert receiver.lines()[0]["metadata"] == {"trace_id": "t1"}


def test_the_two_element_form_without_metadata_is_still_accepted(receiver):
    assert post(receiver, {"streams": [stream({"a": "b"}, ("1", "x"), ("2", "y", {}))]})[0] == 204
    assert [line["metadata"] for line in receiver.lines()] == [{}, {}]


def test_metadata_that_is_not_an_object_of_strings_refuses_the_whole_request(receiver):
    status, body = post(receiver, {"streams": [stream({"a": "b"}, ("1", "x", {"level": 3}))]})
    assert status == 400 and "structured metadata must be an object of strings" in body


def test_a_metadata_name_loki_would_refuse_refuses_that_entry(receiver):
    status, body = post(receiver, {"streams": [stream({"a": "b"}, ("1", "bad", {"log-level": "x"}),
                                                      ("2", "good", {"level": "info"}))]})
    assert status == 400 and "invalid structured metadata name 'log-level'" in body
    assert receiver.texts() == ["good"]


def test_a_loki_without_structured_metadata_refuses_lines_that_carry_it_as_loki_2_does():
    with LokiReceiver(allow_structured_metadata=False) as older:
        status, body = post(older, {"streams": [stream({"a": "b"}, ("1", "x", {"level": "info"}), ("2", "y"))]})
        assert status == 400 and "includes structured metadata, but this feature is disallowed" in body
        assert older.texts() == ["y"]


def test_a_numeric_timestamp_refuses_the_whole_request(receiver):
    status, body = post(receiver, {"streams": [stream({"a": "b"}, ("1", "ok")),
                                               {"stream": {"a": "c"}, "values": [[2, "x"]]}]})
    assert status == 400 and "timestamp must be a string" in body
    assert receiver.lines() == []


@pytest.mark.parametrize("raw", [b"not json", b'{"streams": 5}', b'{"streams": [{"stream": {}, "values": [["1"]]}]}'])
def test_a_body_that_does_not_decode_is_400(receiver, raw):
    assert post(receiver, None, raw=raw)[0] == 400


def test_bad_gzip_is_400(receiver):
    assert post(receiver, None, raw=b"\x1f\x8bnope", headers={"Content-Encoding": "gzip"})[0] == 400


def test_a_non_json_content_type_is_400(receiver):
    assert post(receiver, {"streams": []}, headers={"Content-Type": "application/x-protobuf"})[0] == 400


def test_an_invalid_label_name_refuses_that_stream_and_keeps_the_others(receiver):
    status, body = post(receiver, {"streams": [stream({"service-name": "x"}, ("1", "bad")),
                                               stream({"host": "a"}, ("1", "good"))]})
    assert status == 400 and "invalid label name 'service-name'" in body
    assert receiver.texts() == ["good"]


def test_a_stream_without_labels_is_refused(receiver):
    status, body = post(receiver, {"streams": [stream({}, ("1", "x")), stream({"env": ""}, ("1", "y"))]})
    assert status == 400 and body.count("at least one label pair is required per stream") == 2


def test_exact_duplicates_are_dropped_but_same_time_different_text_is_kept(receiver):
    post(receiver, {"streams": [stream({"a": "b"}, ("1", "x"), ("1", "y"))]})
    assert post(receiver, {"streams": [stream({"a": "b"}, ("1", "x"), ("2", "x"))]})[0] == 204
    assert receiver.texts() == ["x", "y", "x"]
    assert receiver.duplicates == 1
    # The same line in another stream or tenant is no duplicate.
    post(receiver, {"streams": [stream({"a": "c"}, ("1", "x"))]})
    post(receiver, {"streams": [stream({"a": "b"}, ("1", "x"))]}, headers={"X-Scope-OrgID": "other"})
    assert len(receiver.lines()) == 5


def test_entries_too_far_behind_the_streams_newest_are_refused():
    with LokiReceiver(out_of_order_window=1.0) as windowed:
        post(windowed, {"streams": [stream({"a": "b"}, (str(10 * 10**9), "new"))]})
        status, body = post(windowed, {"streams": [stream({"a": "b"}, (str(9_500_000_000), "late-ok"),
                                                          (str(5 * 10**9), "too-late"))]})
        assert status == 400 and "entry too far behind" in body
        assert windowed.texts() == ["new", "late-ok"]


def test_a_body_over_the_limit_is_413(receiver):
    big = {"streams": [stream({"a": "b"}, ("1", "x" * 10000))]}
    status, body = post(receiver, big, compress=False)
    assert status == 413 and "too large" in body


def test_scripted_answers_come_in_order_and_store_nothing(receiver):
    receiver.script([500, 429])
    document = {"streams": [stream({"a": "b"}, ("1", "x"))]}
    assert [post(receiver, document)[0] for _ in range(3)] == [500, 429, 204]
    assert receiver.texts() == ["x"]


def test_fail_for_answers_503_until_the_time_is_up(receiver):
    receiver.fail_for(0.3)
    document = {"streams": [stream({"a": "b"}, ("1", "x"))]}
    assert post(receiver, document)[0] == 503
    wait_until(lambda: post(receiver, document)[0] == 204, timeout=5, message="recovery")


def test_hang_never_answers_until_released(receiver):
    receiver.script(["hang"])
    with pytest.raises((TimeoutError, urllib.error.URLError, socket.timeout)):
        post(receiver, {"streams": [stream({"a": "b"}, ("1", "x"))]}, timeout=0.3)
    receiver.release()


def test_store_then_hang_keeps_the_lines_but_never_answers(receiver):
    receiver.script(["store-then-hang"])
    with pytest.raises((TimeoutError, urllib.error.URLError, socket.timeout)):
        post(receiver, {"streams": [stream({"a": "b"}, ("1", "x"))]}, timeout=0.3)
    assert receiver.texts() == ["x"]
    receiver.release()


def test_refuse_makes_connections_fail_and_accept_listens_again_on_the_same_port(receiver):
    port = receiver.port
    receiver.refuse()
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port), timeout=1):
        pass
    receiver.accept()
    assert receiver.port == port
    assert post(receiver, {"streams": [stream({"a": "b"}, ("1", "x"))]})[0] == 204


def test_refuse_cuts_kept_alive_connections_too(receiver):
    connection = http.client.HTTPConnection("127.0.0.1", receiver.port, timeout=2)
    connection.request("GET", "/ready")
    assert connection.getresponse().read() == b"ready\n"
    receiver.refuse()
    with pytest.raises((http.client.HTTPException, ConnectionError)):
        connection.request("GET", "/ready")
        connection.getresponse()
    connection.close()


def test_basic_and_bearer_credentials_are_checked_when_configured():
    with LokiReceiver(bearer_token="right") as guarded:
        document = {"streams": [stream({"a": "b"}, ("1", "x"))]}
        assert post(guarded, document, headers={"Authorization": "Bearer wrong"})[0] == 401
        assert post(guarded, document, headers={"Authorization": "Bearer right"})[0] == 204


def test_lines_and_scripts_are_reachable_over_http_for_other_processes(receiver):
    post(receiver, {"streams": [stream({"a": "b"}, ("1", "x"))]}, headers={"X-Scope-OrgID": "t"})
    with urllib.request.urlopen(receiver.url + "/test/lines?tenant=t", timeout=5) as response:
        assert [r["line"] for r in json.loads(response.read())] == ["x"]
    assert post(receiver, {"actions": [502]}, path="/test/script", compress=False)[0] == 204
    assert post(receiver, {"streams": [stream({"a": "b"}, ("2", "y"))]})[0] == 502


def test_the_receiver_runs_as_a_program(tmp_path):
    # --port 0: the receiver takes a port outside the ephemeral range itself and names it
    process = subprocess.Popen([sys.executable, "-m", "tests.integration.loki_receiver", "--port", "0"],
                               stderr=subprocess.PIPE, text=True)
    try:
        first_line: list[str] = []
        ready = threading.Event()
        threading.Thread(target=lambda: (first_line.append(process.stderr.readline()), ready.set()),
                         daemon=True).start()
        assert ready.wait(10)
        match = re.search(r"listening on (http://127\.0\.0\.1:\d+)/loki/api/v1/push", first_line[0])
        assert match, first_line
        with urllib.request.urlopen(f"{match.group(1)}/ready", timeout=5) as response:
            assert response.status == 200
    finally:
        process.terminate()
        assert process.wait(10) == 0
