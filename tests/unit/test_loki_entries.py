"""Tests for pretix_agent.loki.entries: labels per stream, their validation, line sizes."""

from __future__ import annotations

import pytest

from pretix_agent.loki import entries
from pretix_agent.loki.entries import Labeler
from tests.loki_helpers import loki_section


def test_agent_lines_from_the_journal_carry_host_service_name_env_and_unit():
    labeler = Labeler(loki_section(env="prod"), "app1")
    assert dict(labeler.for_unit("pretix-agent.service")) == {
        "host": "app1", "service_name": "pretix-agent", "env": "prod", "unit": "pretix-agent.service"}


def test_other_units_are_named_by_their_unit_without_the_service_suffix():
    labeler = Labeler(loki_section(), "app1")
    assert dict(labeler.for_unit("pretix-web.service"))["service_name"] == "pretix-web"
    assert dict(labeler.for_unit("nginx.service"))["service_name"] == "nginx"


def test_the_configured_service_name_applies_to_the_agents_own_unit_only():
    labeler = Labeler(loki_section(service_name="agent"), "app1", own_unit="pretix-agent.service")
    assert dict(labeler.for_unit("pretix-agent.service"))["service_name"] == "agent"
    assert dict(labeler.for_unit("pretix-worker.service"))["service_name"] == "pretix-worker"


def test_an_empty_env_sends_no_env_label():
    assert "env" not in dict(Labeler(loki_section(env=""), "app1").for_unit("x.service"))


def test_lines_not_from_the_journal_have_no_unit_label():
    assert dict(Labeler(loki_section(), "app1").own()) == {"host": "app1", "service_name": "pretix-agent"}


def test_label_sets_are_built_once_and_shared():
    labeler = Labeler(loki_section(), "app1")
    assert labeler.for_unit("a.service") is labeler.for_unit("a.service")


def test_label_sets_are_sorted_so_equal_sets_are_equal_keys():
    labels = Labeler(loki_section(env="prod"), "app1").for_unit("a.service")
    assert list(labels) == sorted(labels)


@pytest.mark.parametrize("labels", [
    pytest.param((), id="empty"),
    pytest.param((("service-name", "x"),), id="dash"),
    pytest.param((("1host", "x"),), id="leading-digit"),
    pytest.param((("host.name", "x"),), id="dot"),
])
def test_label_sets_loki_refuses_are_caught(labels):
    with pytest.raises(ValueError):
        entries.check_labels(labels)


def test_valid_label_names_pass():
    entries.check_labels((("_private", "x"), ("host", "a"), ("service_name", "b"), ("Env2", "")))


@pytest.mark.parametrize(("unit", "normal"), [
    ("pretix-web", "pretix-web.service"), ("nginx.service", "nginx.service"), ("x.socket", "x.socket"),
    ("getty@tty1", "getty@tty1.service"),
])
def test_unit_names_are_normalised_as_journalctl_does(unit, normal):
    assert entries.normalize_unit(unit) == normal


@pytest.mark.parametrize(("priority", "level"), [
    (0, "critical"), (2, "critical"), (3, "error"), (4, "warning"), (5, "notice"), ("6", "info"), ("7", "debug"),
])
def test_journal_priorities_become_level_names_grafana_knows(priority, level):
    assert entries.level_of(priority) == level


@pytest.mark.parametrize("priority", [None, "", "high", 8, -1])
def test_a_priority_that_is_not_one_gives_no_level(priority):
    assert entries.level_of(priority) is None


def test_line_metadata_has_the_level_and_the_event_name():
    assert entries.line_metadata("error", "check.failing") == (("level", "error"), ("event", "check.failing"))


@pytest.mark.parametrize("event", ["Traceback", "", "GET /x", "check.", "Check.Failing", None])
def test_line_metadata_leaves_out_what_is_not_an_event_name_of_the_agent(event):
    assert entries.line_metadata("warning", event) == (("level", "warning"),)


def test_line_metadata_of_a_line_without_a_level_is_empty():
    assert entries.line_metadata(None, None) == ()


def test_line_size_counts_utf8_bytes():
    assert entries.line_size("abc") == 3
    assert entries.line_size("Grüße") == 7
    assert entries.make_entry((("a", "b"),), 1, "€").size == 3
