"""Tests for pretix_agent.metrics: the names, where each value comes from, and the text format."""

from __future__ import annotations

import dataclasses
import re

import pytest
from prometheus_client.parser import text_string_to_metric_families

from pretix_agent import status
from pretix_agent.metrics import exposition, sections
from pretix_agent.metrics.model import COUNTER, GAUGE, Section, Spec, declared, families, reference_markdown, sample
from pretix_agent.metrics.sections import SECTIONS
from tests.metrics_helpers import ROOT, SECRET, check, document, full_document, samples

NAME = re.compile(r"pretix_agent_[a-z0-9]+(_[a-z0-9]+)*")
LABEL = re.compile(r"[a-z_][a-z0-9_]*")


def value(doc: status.Document, name: str, **labels: str) -> float | None:
    return samples(doc)[name].get(tuple((key, labels[key]) for key in _label_order(name)))


def _label_order(name: str) -> tuple[str, ...]:
    return next(spec.labels for spec in declared(SECTIONS) if spec.name == name)


def text(doc: status.Document) -> str:
    return exposition.render(families(doc, SECTIONS)).decode()


# ---------------------------------------------------------------------------------------------
# Names and conventions


def test_every_metric_is_named_by_prometheus_conventions():
    specs = declared(SECTIONS)
    assert len({spec.name for spec in specs}) == len(specs), "a name is declared twice"
    for spec in specs:
        assert NAME.fullmatch(spec.name), spec.name
        assert spec.kind in (GAUGE, COUNTER)
        assert spec.name.endswith("_total") == (spec.kind == COUNTER), spec.name
        assert all(LABEL.fullmatch(label) for label in spec.labels), spec
        assert not any(word in spec.name for word in ("_milliseconds", "_ms", "_percent", "_kb", "_mib")), spec.name
        assert spec.help and not spec.help[0].islower() and spec.help.endswith("."), spec.name


def test_the_metrics_reference_in_docs_is_current():
    text = (ROOT / "docs" / "metrics.md").read_text()
    start, end = "<!-- metrics-reference:start -->\n", "<!-- metrics-reference:end -->"
    assert text[text.index(start) + len(start):text.index(end)] == reference_markdown(SECTIONS), (
        "run `make readme-reference`")


def test_a_fully_configured_busy_agent_has_a_sample_for_every_metric():
    found = samples(full_document())
    empty = [name for name, values in found.items() if not values]
    assert empty == []


def test_no_section_fails_on_a_full_document_or_an_empty_one():
    for doc in (full_document(), document()):
        assert set(samples(doc)["pretix_agent_metrics_section_failed"].values()) == {0.0}


def test_an_unconfigured_capability_declares_its_metrics_without_samples():
    found = samples(document())
    assert found["pretix_agent_haproxy_reachable"] == {} and found["pretix_agent_loki_pushes_total"] == {}
    assert "# TYPE pretix_agent_haproxy_changes_total counter" in text(document())


# ---------------------------------------------------------------------------------------------
# The daemon


def test_build_info_names_the_version_python_and_node():
    ((labels, one),) = samples(document())["pretix_agent_build_info"].items()
    assert dict(labels)["version"] == "0.1.0" and dict(labels)["node"] == "app1" and one == 1.0


def test_loop_cycles_controller_failures_and_withheld_watchdog_pings_are_counters_from_the_document():
    doc = full_document()
    assert value(doc, "pretix_agent_loop_cycles_total") == 120
    assert value(doc, "pretix_agent_controller_failures_total", controller="haproxy") == 3
    assert value(doc, "pretix_agent_controller_failures_total", controller="checks") == 0
    assert value(doc, "pretix_agent_controller_healthy", controller="haproxy") == 0
    assert value(doc, "pretix_agent_watchdog_withheld_total") == 2
    assert value(doc, "pretix_agent_degraded") == 1


def test_start_time_is_unix_time():
    assert value(document(), "pretix_agent_start_time_seconds") == 1_796_202_000.0


# ---------------------------------------------------------------------------------------------
# Maintenance and drain


def test_a_locked_node_shows_maintenance_on_because_of_the_lock_and_when_it_was_taken():
    doc = full_document()
    assert value(doc, "pretix_agent_maintenance_on") == 1
    assert {dict(k)["cause"]: v for k, v in samples(doc)["pretix_agent_maintenance_cause"].items()} == {
        "lock": 1, "window": 0, "hand_edit": 0}
    assert value(doc, "pretix_agent_maintenance_lock_present") == 1
    assert value(doc, "pretix_agent_maintenance_lock_created_timestamp_seconds") == 1_796_203_800.0
    assert value(doc, "pretix_agent_maintenance_next_change_timestamp_seconds") == 1_796_590_800.0


def test_maintenance_off_has_every_cause_at_zero_and_an_empty_lock_no_creation_time():
    doc = document()
    assert set(samples(doc)["pretix_agent_maintenance_cause"].values()) == {0.0}
    touched = document(maintenance=dataclasses.replace(full_document().maintenance, lock=status.Holder(present=True)))
    assert samples(touched)["pretix_agent_maintenance_lock_created_timestamp_seconds"] == {}


def test_a_daemon_that_has_not_decided_yet_says_nothing_about_maintenance_being_on():
    doc = document(maintenance=status.Maintenance(marker="/m", lock_file="/l", timezone="UTC"))
    found = samples(doc)
    assert found["pretix_agent_maintenance_on"] == {} and found["pretix_agent_maintenance_cause"] == {}


def test_a_drained_node_shows_why():
    doc = full_document()
    assert value(doc, "pretix_agent_drained") == 1
    assert value(doc, "pretix_agent_drain_requested") == 1 and value(doc, "pretix_agent_drain_shutdown") == 0


# ---------------------------------------------------------------------------------------------
# Checks


def test_a_checks_state_is_one_series_per_state_with_1_for_the_current_one():
    doc = full_document()
    states = {dict(k)["state"]: v for k, v in samples(doc)["pretix_agent_check_state"].items()
              if dict(k)["check"] == "pretix"}
    assert states == {"passing": 0, "failing": 1, "unknown": 0}
    assert value(doc, "pretix_agent_check_probe_duration_seconds", check="pretix", type="http") == 0.0042
    assert value(doc, "pretix_agent_check_probes_total", check="pretix", type="http") == 300


def test_a_standbys_lag_receiver_and_replay_are_in_base_units():
    doc = full_document()
    assert value(doc, "pretix_agent_postgres_replay_lag_bytes", check="replica") == 48_000_000
    assert value(doc, "pretix_agent_postgres_replay_lag_seconds", check="replica") == 41.5
    assert value(doc, "pretix_agent_postgres_primary_lag_bytes", check="replica") == 50_000_000
    assert value(doc, "pretix_agent_postgres_wal_receiver_streaming", check="replica") == 1
    assert value(doc, "pretix_agent_postgres_replay_paused", check="replica") == 0
    assert value(doc, "pretix_agent_postgres_in_recovery", check="replica") == 1


def test_a_primary_counts_its_standbys_and_those_streaming():
    doc = full_document()
    assert value(doc, "pretix_agent_postgres_in_recovery", check="primary") == 0
    assert value(doc, "pretix_agent_postgres_standbys", check="primary") == 2
    assert value(doc, "pretix_agent_postgres_standbys_streaming", check="primary") == 1


def test_a_cut_off_standby_is_not_streaming_and_unknown_lag_is_no_sample_never_zero():
    cut_off = check("postgres", "failing", role="standby", receiver_status=None, replay_paused=None, lag_bytes=None,
                    lag_seconds=None, primary_lag_bytes=None)
    doc = document(checks={"replica": cut_off})
    assert value(doc, "pretix_agent_postgres_wal_receiver_streaming", check="replica") == 0
    found = samples(doc)
    assert found["pretix_agent_postgres_replay_lag_bytes"] == {}
    assert found["pretix_agent_postgres_replay_lag_seconds"] == {}
    assert found["pretix_agent_postgres_replay_paused"] == {}


def test_redis_latency_is_in_seconds_and_memory_in_bytes():
    doc = full_document()
    assert value(doc, "pretix_agent_redis_ping_latency_seconds", check="redis") == pytest.approx(0.0008)
    assert value(doc, "pretix_agent_redis_memory_used_bytes", check="redis") == 800
    assert value(doc, "pretix_agent_redis_memory_used_ratio", check="redis") == 0.8
    assert value(doc, "pretix_agent_redis_writable", check="redis") == 0
    assert value(doc, "pretix_agent_redis_replica", check="redis") == 1
    assert value(doc, "pretix_agent_redis_master_link_up", check="redis") == 1


def test_celery_queues_are_one_series_each_and_a_queue_that_could_not_be_measured_has_none():
    doc = full_document()
    assert {dict(k)["queue"]: v for k, v in samples(doc)["pretix_agent_celery_queue_tasks"].items()} == {
        "default": 3, "mail": 0}
    assert {dict(k)["queue"]: v for k, v in samples(doc)["pretix_agent_celery_queue_oldest_task_age_seconds"]
            .items()} == {"default": 12.5}


def test_a_value_of_the_wrong_type_renders_no_sample_instead_of_failing_the_section():
    doc = document(checks={"redis": check("redis", latency_ms="fast", queues="not a mapping", used_memory=True)})
    found = samples(doc)
    assert found["pretix_agent_redis_ping_latency_seconds"] == {}
    assert found["pretix_agent_celery_queue_tasks"] == {}
    assert set(found["pretix_agent_metrics_section_failed"].values()) == {0.0}


def test_a_new_check_value_is_one_row_of_the_table():
    row = sections.CHECK_VALUES["redis"][0]
    assert row.key == "latency_ms" and row.spec.name == "pretix_agent_redis_ping_latency_seconds"
    assert all(spec in sections.CHECKS.specs for rows in sections.CHECK_VALUES.values() for spec in
               (r.spec for r in rows))


# ---------------------------------------------------------------------------------------------
# haproxy and the agent-check


def test_haproxy_servers_show_desired_and_actual_state_held_and_the_changes_made():
    doc = full_document()
    found = samples(doc)

    def states(name: str, server: str) -> dict[str, float]:
        return {dict(k)["state"]: v for k, v in found[name].items() if dict(k)["server"] == server}

    assert states("pretix_agent_haproxy_server_desired_state", "app1") == {"ready": 0, "drain": 0, "maint": 1}
    assert states("pretix_agent_haproxy_server_actual_state", "app1") == {"ready": 0, "drain": 0, "maint": 1}
    assert states("pretix_agent_haproxy_server_actual_state", "app3") == {}  # unknown to haproxy: no series
    assert value(doc, "pretix_agent_haproxy_server_held", backend="pretix", server="app2") == 1
    assert value(doc, "pretix_agent_haproxy_servers_held") == 1
    assert value(doc, "pretix_agent_haproxy_servers_taken_out") == 1
    assert {dict(k)["state"]: v for k, v in found["pretix_agent_haproxy_changes_total"].items()} == {
        "ready": 1, "drain": 0, "maint": 2}
    assert value(doc, "pretix_agent_haproxy_change_failures_total") == 1


@pytest.mark.parametrize(("answer", "state", "weight"), [
    ("up 100%\n", "up", 1.0),
    ("up 75%\n", "up", 0.75),
    ("up 0% #kernel update\n", "drain", 0.0),
    ("down 100% #web: connection refused\n", "down", 1.0),
    (None, None, None),
])
def test_the_agent_check_answer_is_up_drain_or_down_and_its_weight(answer, state, weight):
    assert sections.agent_check_state(answer) == state
    assert sections.agent_check_weight(answer) == weight


def test_before_the_first_verdict_no_agent_check_answer_is_1():
    doc = document(agent_check=status.AgentCheck(listen="0.0.0.0:8999"))
    assert set(samples(doc)["pretix_agent_agent_check_answer"].values()) == {0.0}


# ---------------------------------------------------------------------------------------------
# Loki


def test_loki_sent_dropped_backlog_and_last_success():
    doc = full_document()
    assert value(doc, "pretix_agent_loki_lines_sent_total") == 5000
    assert value(doc, "pretix_agent_loki_lines_dropped_total", reason="rejected_400") == 5
    assert value(doc, "pretix_agent_loki_backlog_lines") == 120
    assert value(doc, "pretix_agent_loki_oldest_unsent_age_seconds") == 95
    assert value(doc, "pretix_agent_loki_last_success_timestamp_seconds") == 1_796_205_500.0


def test_under_journald_the_backlog_is_in_the_journal_and_has_no_sample():
    loki = dataclasses.replace(full_document().loki, backlog_lines=None, oldest_unsent_age_seconds=None)
    found = samples(document(loki=loki))
    assert found["pretix_agent_loki_backlog_lines"] == {}
    assert found["pretix_agent_loki_oldest_unsent_age_seconds"] == {(): 0.0}  # nothing waits in memory


# ---------------------------------------------------------------------------------------------
# Secrets, sections that fail, the text


def test_no_secret_reaches_a_label_or_a_value():
    rendered = text(full_document())
    assert SECRET not in rendered
    assert "postgresql://" not in rendered and "https://" not in rendered


def test_a_section_that_raises_fails_alone_and_is_named():
    def broken(_document):
        raise KeyError("bug")

    extra = Section("broken", (Spec("pretix_agent_broken", GAUGE, "Broken."),), broken)
    result = {family.spec.name: family for family in families(full_document(), (*SECTIONS, extra))}
    assert result["pretix_agent_broken"].samples == ()
    failed = dict(result["pretix_agent_metrics_section_failed"].samples)
    assert failed[("broken",)] == 1 and failed[("checks",)] == 0
    assert result["pretix_agent_loop_cycles_total"].samples == (((), 120.0),)


@pytest.mark.parametrize("wrong", [
    pytest.param(lambda _d: [sample("pretix_agent_undeclared", 1)], id="undeclared"),
    pytest.param(lambda _d: [sample("pretix_agent_x", 1, other="a")], id="other-labels"),
    pytest.param(lambda _d: [sample("pretix_agent_x", 1, a="1"), sample("pretix_agent_x", 2, a="1")], id="twice"),
])
def test_a_section_sampling_what_it_did_not_declare_is_a_bug_caught_here(wrong):
    section = Section("wrong", (Spec("pretix_agent_x", GAUGE, "X.", ("a",)),), wrong)
    failed = dict(families(document(), (section,))[-1].samples)
    assert failed == {("wrong",): 1.0}


def test_the_text_is_prometheus_format_that_parses_back_with_every_declared_metric():
    rendered = text(full_document())
    parsed = {family.name: family for family in text_string_to_metric_families(rendered)}
    for spec in declared(SECTIONS):
        base = spec.name.removesuffix("_total") if spec.kind == COUNTER else spec.name
        assert base in parsed, spec.name
        assert parsed[base].type == spec.kind
    assert "# TYPE pretix_agent_loop_cycles_total counter\npretix_agent_loop_cycles_total 120.0\n" in rendered


def test_label_values_are_escaped():
    doc = document(checks={'we"ird\\name': check("http", status=200)})
    rendered = text(doc)
    assert 'check="we\\"ird\\\\name"' in rendered


@pytest.mark.parametrize(("text_", "unix"), [
    ("2026-12-02T09:30:00+00:00", 1_796_203_800.0),
    ("2026-12-02T10:30:00+01:00", 1_796_203_800.0),
    ("2026-12-02T09:30:00Z", 1_796_203_800.0),
    ("2026-12-02T09:30:00", None),
    ("yesterday", None),
    (None, None),
])
def test_times_in_the_document_become_unix_time_only_with_their_offset(text_, unix):
    assert sections.timestamp(text_) == unix
