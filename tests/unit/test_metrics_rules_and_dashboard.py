"""Tests that the alert rules and the Grafana dashboard read only metrics the agent exports, and that
each alert carries what an operator needs. (promtool tests what the rules do: tests/prometheus/; the
integration tier compares the names with a real scrape.)"""

from __future__ import annotations

import json

import pytest

from pretix_agent.metrics.model import declared
from pretix_agent.metrics.sections import SECTIONS
from tests.metrics_helpers import (
    DASHBOARD,
    dashboard_expressions,
    full_document,
    metric_names,
    rule_expressions,
    rules,
    samples,
)

EXPORTED = {spec.name for spec in declared(SECTIONS)}


def test_every_metric_the_rules_read_is_one_the_agent_exports():
    used = metric_names(rule_expressions())
    assert used and used <= EXPORTED, sorted(used - EXPORTED)


def test_every_metric_the_dashboard_reads_is_one_the_agent_exports():
    used = metric_names(dashboard_expressions())
    assert len(used) > 40 and used <= EXPORTED, sorted(used - EXPORTED)


def test_every_metric_the_rules_read_has_samples_when_the_agent_is_busy():
    found = samples(full_document())
    assert [name for name in sorted(metric_names(rule_expressions())) if not found[name]] == []


@pytest.mark.parametrize("rule", [rule for rule in rules() if "alert" in rule], ids=lambda rule: rule["alert"])
def test_every_alert_says_what_it_means_and_what_to_do(rule):
    assert rule["alert"].startswith("PretixAgent")
    assert rule["labels"]["severity"] in ("critical", "warning", "info")
    assert {"summary", "description", "runbook"} <= set(rule["annotations"])
    assert len(rule["annotations"]["runbook"]) > 60


def test_the_dashboard_has_a_row_per_capability_and_the_agents_warnings_from_loki():
    dashboard = json.loads(DASHBOARD.read_text())
    rows = [panel["title"] for panel in dashboard["panels"] if panel["type"] == "row"]
    for capability in ("Agent", "Maintenance", "Health checks", "haproxy", "Agent-check", "Loki", "Logs"):
        assert any(title.startswith(capability) for title in rows), capability
    (logs,) = [panel for panel in dashboard["panels"] if panel["type"] == "logs"]
    assert logs["datasource"]["type"] == "loki"
    assert '| level=~"warning|error|critical"' in logs["targets"][0]["expr"]


def test_the_dashboards_panels_do_not_overlap():
    taken: set[tuple[int, int]] = set()
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        grid = panel["gridPos"]
        cells = {(x, y) for x in range(grid["x"], grid["x"] + grid["w"])
                 for y in range(grid["y"], grid["y"] + grid["h"])}
        assert not cells & taken, panel["title"]
        assert grid["x"] + grid["w"] <= 24
        taken |= cells
