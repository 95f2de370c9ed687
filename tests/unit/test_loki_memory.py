"""Tests for pretix_agent.loki.memory: the structlog tee and the bounded queue behind it."""

from __future__ import annotations

import io
import threading
import time
from pathlib import Path

import pytest
import structlog

from pretix_agent.adapters import logs
from pretix_agent.loki.entries import Labeler, SourceContext
from pretix_agent.loki.memory import MemorySource
from tests.loki_helpers import loki_section


@pytest.fixture(autouse=True)
def fresh_structlog():
    structlog.reset_defaults()
    yield
    structlog.reset_defaults()


def started(source: MemorySource) -> MemorySource:
    source.start(SourceContext(loki_section(), Labeler(loki_section(), "app1"), Path("/nonexistent")))
    return source


def configure_with_tee(source: MemorySource, stream: io.StringIO) -> None:
    """The chain logs.configure builds for the journal format, with the tee before the renderer,
    which is where the daemon inserts it."""
    structlog.configure(
        processors=[structlog.processors.format_exc_info, logs.redact, source.tee, logs.render_journal],
        wrapper_class=structlog.make_filtering_bound_logger(logs.LEVELS["info"]),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )


def test_tee_queues_the_event_as_the_journal_stores_it_and_logging_goes_on():
    source = started(MemorySource())
    stream = io.StringIO()
    configure_with_tee(source, stream)
    structlog.get_logger().warning("maintenance.marker_restored", why="lock", path="/var/lib/x")
    assert stream.getvalue() == "<4>maintenance.marker_restored why=lock path=/var/lib/x\n"
    (entry,) = source.read(1 << 20, 0)
    assert entry.line == "maintenance.marker_restored why=lock path=/var/lib/x"
    assert dict(entry.labels) == {"host": "app1", "service_name": "pretix-agent"}


def test_tee_gives_each_line_its_level_and_event_name_as_metadata():
    source = started(MemorySource())
    configure_with_tee(source, io.StringIO())
    structlog.get_logger().error("check.failing", check="db")
    structlog.get_logger().info("agent.started")
    first, second = source.read(1 << 20, 0)
    assert dict(first.metadata) == {"level": "error", "event": "check.failing"}
    assert dict(second.metadata) == {"level": "info", "event": "agent.started"}


def test_tee_sees_events_after_redaction_so_secrets_are_never_shipped():
    source = started(MemorySource())
    configure_with_tee(source, io.StringIO())
    structlog.get_logger().info("check.failed", dsn="postgresql://agent:hunter2@db/postgres", token="abc")
    (entry,) = source.read(1 << 20, 0)
    assert "hunter2" not in entry.line and "abc" not in entry.line


def test_levels_below_the_configured_one_are_not_queued():
    source = started(MemorySource())
    configure_with_tee(source, io.StringIO())
    structlog.get_logger().debug("noise")
    assert source.read(1 << 20, 0) == []


def test_a_full_queue_drops_new_lines_and_counts_them_without_blocking():
    source = started(MemorySource(max_lines=3))
    results = [source.put(f"line {i}") for i in range(5)]
    assert results == [True, True, True, False, False]
    assert source.status()["queue_full"] == 2
    assert [entry.line for entry in source.read(1 << 20, 0)] == ["line 0", "line 1", "line 2"]


def test_the_queue_is_bounded_in_bytes_too():
    source = started(MemorySource(max_lines=100, max_bytes=25))
    assert [source.put("x" * 10) for _ in range(3)] == [True, True, False]
    assert source.status()["queued_bytes"] == 20


def test_timestamps_strictly_increase_so_identical_lines_stay_distinct():
    source = started(MemorySource())
    source.put("same", ts_ns=1000)
    source.put("same", ts_ns=1000)
    source.put("same", ts_ns=999)
    assert [entry.ts_ns for entry in source.read(1 << 20, 0)] == [1000, 1001, 1002]


def test_read_returns_at_most_max_bytes_but_always_at_least_one_line():
    source = started(MemorySource())
    for line in ("a" * 10, "b" * 10, "c" * 100):
        source.put(line)
    assert [e.line for e in source.read(25, 0)] == ["a" * 10, "b" * 10]
    assert [e.line for e in source.read(25, 0)] == ["c" * 100]


def test_read_waits_for_a_line_until_its_timeout():
    source = started(MemorySource())
    began = time.monotonic()
    assert source.read(100, 0.05) == []
    assert time.monotonic() - began >= 0.04
    threading.Timer(0.02, source.put, args=("late",)).start()
    assert [e.line for e in source.read(100, 5.0)] == ["late"]


class Unprintable:
    def __str__(self) -> str:
        raise RuntimeError("no")


def test_a_tee_that_cannot_render_passes_the_event_on_untouched_and_queues_nothing():
    source = started(MemorySource())
    event = {"event": "x", "value": Unprintable()}
    assert source.tee(None, "info", event) is event
    assert source.read(100, 0) == []
