"""Tests for pretix_agent.loki.shipper with a fake push client and a list source (no network)."""

from __future__ import annotations

import itertools
import json
import time

import pytest

from pretix_agent.loki import shipper as shipper_module
from pretix_agent.loki.entries import make_entry
from pretix_agent.loki.shipper import LokiShipper, heartbeat_deadline
from tests.loki_helpers import FakePushClient, ListSource, loki_section
from tests.waiting import wait_until

LABELS = (("host", "node1"), ("service_name", "pretix-agent"))


def lines(count: int, size: int = 10, prefix: str = "l") -> list:
    return [make_entry(LABELS, 1_000_000 + i, f"{prefix}{i:0{size - len(prefix)}d}") for i in range(count)]


@pytest.fixture
def run(tmp_path):
    """Start a shipper over a list source and a fake client; stop it after the test."""
    made = []

    def start(answers=(), limit_bytes=None, heartbeat=None, **section_overrides):
        settings = {"batch_wait": 0.05, "min_backoff": 0.001, "max_backoff": 0.005, **section_overrides}
        source = ListSource()
        client = FakePushClient(answers, limit_bytes)
        shipper = LokiShipper(loki_section(**settings), "node1", tmp_path, source, client=client,
                              heartbeat=heartbeat, rand=lambda: 0.5)
        shipper.start()
        made.append(shipper)
        return shipper, source, client

    yield start
    for shipper in made:
        shipper.stop(0.5)


def test_a_batch_is_sent_once_batch_wait_has_passed_since_its_first_line(run):
    _shipper, source, client = run(batch_wait=0.2)
    began = time.monotonic()
    source.add(lines(3))
    wait_until(lambda: client.pushed, message="a push")
    assert time.monotonic() - began >= 0.15
    assert [len(batch) for batch in client.pushed] == [3]


def test_a_batch_is_sent_as_soon_as_it_reaches_batch_size(run):
    shipper, source, client = run(batch_size=100, batch_wait=60.0)
    source.add(lines(25))
    wait_until(lambda: len(client.pushed) == 2, message="two full batches")
    assert [len(batch) for batch in client.pushed] == [10, 10]
    assert shipper.stop(1.0)
    assert [len(batch) for batch in client.pushed] == [10, 10, 5]


def test_no_batch_exceeds_batch_size_unless_a_single_line_does(run):
    _shipper, source, client = run(batch_size=100, batch_wait=0.02)
    big = make_entry(LABELS, 5, "x" * 500)
    source.add([*lines(5), big, *lines(12, prefix="m")])
    wait_until(lambda: len(client.accepted) == 18, message="every line")
    for batch in client.pushed:
        assert sum(entry.size for entry in batch) <= 100 or batch == [big]
    assert [big] in client.pushed


def test_lines_are_pushed_in_the_order_they_came(run):
    _shipper, source, client = run(batch_size=50)
    expected = lines(200)
    for start in range(0, 200, 7):
        source.add(expected[start:start + 7])
    wait_until(lambda: len(client.accepted) == 200, message="every line")
    assert client.accepted == expected


def test_a_rejected_batch_is_dropped_and_counted_and_later_batches_still_go(run):
    shipper, source, client = run(answers=[400])
    source.add(lines(4, prefix="bad"))
    wait_until(lambda: shipper.status()["drops"]["rejected_400"] == 4, message="the drop counted")
    source.add(lines(3, prefix="good"))
    wait_until(lambda: len(client.accepted) == 3, message="later lines")
    status = shipper.status()
    assert status["last_error"] == "HTTP 400: fake 400"
    assert status["shipped_lines"] == 3
    assert len(source.committed) == 7  # the source moves past refused lines too


def test_too_large_batches_are_split_in_halves_until_they_fit(run):
    shipper, source, client = run(limit_bytes=200, batch_wait=0.05)
    expected = lines(16)
    source.add(expected)
    wait_until(lambda: len(client.accepted) == 16, message="every line")
    assert client.accepted == expected
    assert len(client.pushed) > 2
    assert shipper.status()["drops"]["truncated"] == 0


def test_a_single_line_too_large_is_truncated_with_a_marker_and_counted(run):
    shipper, source, client = run(limit_bytes=2000)
    source.add([make_entry(LABELS, 1, "y" * 10000)])
    wait_until(lambda: client.accepted, message="the cut line")
    (entry,) = client.accepted
    kept = 10000 // 2 // 2 // 2  # halved until the body fits 2000 bytes
    assert entry.line == "y" * kept + f"…[truncated {10000 - kept} bytes]"
    assert shipper.status()["drops"]["truncated"] == 1


def test_a_line_refused_even_when_cut_small_is_dropped_and_counted_and_shipping_goes_on(run):
    shipper, source, client = run(answers=[413] * 4)
    source.add([make_entry(LABELS, 1, "z" * 5000)])
    wait_until(lambda: shipper.status()["drops"]["rejected_413"] == 1, message="the drop")
    source.add(lines(2))
    wait_until(lambda: len(client.accepted) == 2, message="later lines")


def test_failures_are_retried_without_a_cap_until_loki_takes_the_batch(run):
    shipper, source, client = run(answers=[503] * 30 + [None] * 20 + [429] * 5)
    source.add(lines(5))
    wait_until(lambda: len(client.accepted) == 5, message="the batch, at last")
    status = shipper.status()
    assert status["failed_pushes"] == 55
    assert status["retry_attempts"] == 0 and status["backoff_seconds"] == 0
    assert status["last_error"] == "HTTP 429: fake 429"


def test_while_failing_the_status_shows_the_error_the_attempts_and_the_backoff(run):
    shipper, source, _client = run(answers=[503] * 100000, min_backoff=0.01, max_backoff=0.02)
    source.add(lines(2))
    status = wait_until(lambda: (s := shipper.status())["retry_attempts"] >= 3 and s, message="retries")
    assert status["state"] == "retrying"
    assert status["last_error"] == "HTTP 503: fake 503"
    assert 0.01 <= status["backoff_seconds"] <= 0.02
    assert status["buffered_lines"] == 2
    assert status["failing_since"] is not None


def test_a_configuration_error_holds_the_batch_and_says_so_until_it_is_fixed(run):
    shipper, source, client = run(answers=[401] * 5)
    source.add(lines(3))
    status = wait_until(lambda: (s := shipper.status())["holding"] and s, message="holding")
    assert status["hold_reason"] == "HTTP 401: fake 401"
    assert status["state"] == "holding"
    wait_until(lambda: len(client.accepted) == 3, message="the held batch")
    assert shipper.status()["holding"] is False
    assert shipper.status()["drops"]["rejected_400"] == 0


def test_stop_flushes_what_is_buffered(run):
    shipper, source, client = run(batch_wait=60.0)
    source.add(lines(7))
    wait_until(lambda: shipper.status()["buffered_lines"] == 7, message="lines buffered")
    assert shipper.stop(2.0)
    assert len(client.accepted) == 7
    assert client.closed and source.closed
    assert not shipper.alive()


def test_stop_gives_up_after_its_timeout_while_loki_stays_down(run):
    shipper, source, _client = run(answers=[503] * 100000, min_backoff=0.01, max_backoff=0.05)
    source.add(lines(4))
    wait_until(lambda: shipper.status()["failed_pushes"] >= 2, message="failures")
    began = time.monotonic()
    assert shipper.stop(0.3)
    assert 0.25 <= time.monotonic() - began < 1.5
    assert source.committed == []
    assert shipper.status()["drops"]["unsent_at_stop"] == 4  # not a journal: these lines are lost


def test_the_heartbeat_beats_at_least_every_interval_even_while_backing_off(run, monkeypatch):
    monkeypatch.setattr(shipper_module, "HEARTBEAT_EVERY", 0.05)
    beats: list[float] = []
    shipper, source, _client = run(answers=[503] * 100000, min_backoff=0.5, max_backoff=0.5,
                                  heartbeat=lambda: beats.append(time.monotonic()))
    source.add(lines(1))
    wait_until(lambda: shipper.status()["failed_pushes"] >= 2, message="two failures")
    gaps = [b - a for a, b in itertools.pairwise(beats)]
    assert len(beats) > 10 and max(gaps) < 0.2


def test_the_heartbeat_deadline_leaves_room_for_a_whole_push():
    section = loki_section(timeout=10.0)
    assert heartbeat_deadline(section) > 2 * section.timeout


def test_the_shipper_is_alive_from_start_to_stop(run):
    shipper, source, _client = run()
    assert shipper.alive()
    wait_until(lambda: source.started, message="the source started from the shipper's thread")
    shipper.stop(0.5)
    assert not shipper.alive()


def test_a_bug_in_the_source_is_reported_and_shipping_goes_on(run):
    shipper, source, client = run()
    original = source.read
    calls = {"n": 0}

    def flaky(max_bytes, timeout):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("boom")
        return original(max_bytes, timeout)

    source.read = flaky
    wait_until(lambda: calls["n"] >= 3, message="reads after the bug")
    source.add(lines(2))
    wait_until(lambda: len(client.accepted) == 2, message="lines after the bug")
    status = shipper.status()
    assert status["last_error"] == "internal error: RuntimeError: boom" and shipper.alive()


def test_status_is_one_json_document_with_the_figures_operators_need(run):
    shipper, source, _client = run()
    source.add(lines(3))
    wait_until(lambda: shipper.status()["shipped_lines"] == 3, message="shipped")
    status = json.loads(json.dumps(shipper.status()))
    for key in ("state", "alive", "url", "source", "buffered_lines", "buffered_bytes", "backlog_lines",
                "last_success_at", "last_error", "backoff_seconds", "holding", "hold_reason", "drops",
                "shipped_lines", "pushes", "failed_pushes", "oldest_unsent_age_seconds"):
        assert key in status, key
    assert set(status["drops"]) == {"rejected_400", "rejected_413", "truncated", "queue_full", "unsent_at_stop"}
    assert status["last_success_at"].endswith("+00:00")


def test_without_journald_the_source_is_the_in_memory_queue():
    source, why = shipper_module.choose_source(under_journald=False)
    assert source.kind == "memory" and why == "not running under journald"


def test_under_journald_with_a_readable_journal_the_source_is_the_journal(monkeypatch):
    monkeypatch.setattr(shipper_module, "journal_access_problem", lambda: None)
    source, why = shipper_module.choose_source(under_journald=True)
    assert source.kind == "journal" and why is None


def test_under_journald_without_journal_access_the_source_falls_back_to_memory_and_says_why(monkeypatch):
    monkeypatch.setattr(shipper_module, "journal_access_problem", lambda: "no access")
    source, why = shipper_module.choose_source(under_journald=True)
    assert source.kind == "memory" and why == "no access"
