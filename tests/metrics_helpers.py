"""Shared by the metrics tests: status documents as the daemon builds them, and the metric names the
alert rules and the Grafana dashboard use."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

from pretix_agent import status
from pretix_agent.metrics.model import families
from pretix_agent.metrics.sections import SECTIONS

ROOT = Path(__file__).resolve().parents[1]
RULES = ROOT / "conf" / "prometheus" / "pretix-agent.rules.yml"
DASHBOARD = ROOT / "conf" / "grafana" / "pretix-agent.json"

SECRET = "hunter2"


def document(**changes: Any) -> status.Document:
    """A running daemon's document with nothing configured but maintenance, then `changes`."""
    base = status.Document(
        format=status.FORMAT, state="running", written_at="2026-12-02T10:00:00.000+00:00",
        written_at_unix=1_796_205_600.0, stale_after=20.0, node="app1", pid=4242, version="0.1.0",
        started_at="2026-12-02T09:00:00+00:00", config="/etc/pretix-agent/agent.toml",
        sentence="maintenance off", cycles=120, healthy=True,
        maintenance=status.Maintenance(marker="/var/lib/pretix-agent/maintenance",
                                       lock_file="/var/lib/pretix-agent/maintenance.lock", timezone="Europe/Berlin",
                                       on=False, applied=True, inside_window=False,
                                       lock=status.Holder(present=False)),
        drain=status.Drain(file="/var/lib/pretix-agent/drain"),
        controllers={"maintenance": status.ControllerHealth(), "checks": status.ControllerHealth()},
    )
    return dataclasses.replace(base, **changes)


def check(type_: str, state: str = "passing", **values: Any) -> status.Check:
    return status.Check(type=type_, state=state, interval=2.0, timeout=1.0, fall=3, rise=2,
                        since="2026-12-02T09:59:00+00:00", reason=f"probe of postgresql://agent:{SECRET}@db",
                        outcome="pass" if state == "passing" else "fail", hard=False, values=values, probes=300,
                        duration_seconds=0.0042)


def full_document() -> status.Document:
    """Every capability configured and busy: locked maintenance, every check type (a standby and a
    primary), haproxy with a held and a taken-out server, the agent-check, a drain, Loki with drops."""
    return document(
        maintenance=status.Maintenance(
            marker="/var/lib/pretix-agent/maintenance", lock_file="/var/lib/pretix-agent/maintenance.lock",
            timezone="Europe/Berlin", windows=[status.WindowText("Sun 22:00", "Mon 05:00")], on=True, cause="lock",
            applied=True, inside_window=False,
            next_change=status.Moment(utc="2026-12-06T21:00:00+00:00", local="2026-12-06T22:00:00+01:00"),
            lock=status.Holder(present=True, by="alice", at="2026-12-02T09:30:00+00:00", reason="db upgrade")),
        drain=status.Drain(file="/var/lib/pretix-agent/drain", request=status.Holder(present=True, by="bob"),
                           reason="requested by bob"),
        degraded=["maintenance files are not watched"],
        controllers={"maintenance": status.ControllerHealth(), "checks": status.ControllerHealth(),
                     "haproxy": status.ControllerHealth(False, "RuntimeError: boom", "2026-12-02T09:58:00+00:00")},
        controller_failures={"haproxy": 3}, watchdog_withheld=2,
        checks={
            "replica": check("postgres", "failing", role="standby", receiver_status="streaming", replay_paused=False,
                             lag_bytes=48_000_000, lag_seconds=41.5, primary_lag_bytes=50_000_000,
                             receive_lsn="0/5000000", replay_lsn="0/2000000", primary_problem=None),
            "primary": check("postgres", role="primary", read_only=False,
                             standbys=[{"name": "db2", "client_addr": "10.0.0.12", "state": "streaming",
                                        "sync_state": "async", "lag_bytes": 0},
                                       {"name": "db3", "client_addr": "10.0.0.13", "state": "catchup",
                                        "sync_state": "async", "lag_bytes": None}]),
            "redis": check("redis", latency_ms=0.8, role="replica", writable=False, used_memory=800,
                           maxmemory=1000, memory_ratio=0.8, master_link_status="up", master_last_io_seconds_ago=3,
                           master_link_down_since_seconds=None,
                           queues={"default": 3, "mail": 0, "broken": None},
                           queue_ages={"default": 12.5, "mail": None, "broken": None}),
            "pretix": check("http", "failing", status=500, latency_ms=12.0),
            "units": check("systemd", units=2, active=1, states="pretix-web.service=active/running"),
        },
        haproxy=status.Haproxy(
            socket="/run/haproxy/admin.sock", reachable=True, process="pid 10",
            held=["pretix/app2"], taken_out=["pretix/app1"],
            servers=[status.HaproxyServer("pretix", "app1", "maint", False, "maint", "pretix failing"),
                     status.HaproxyServer("pretix", "app2", "ready", True, "ready", "held: min_ready is 1"),
                     status.HaproxyServer("pretix", "app3", None, None, "ready", "unknown to haproxy")],
            changes={"maint": 2, "ready": 1}, change_failures=1),
        agent_check=status.AgentCheck(listen="0.0.0.0:8999", answer="up 0% #requested by bob\n", why="drained",
                                      answered=57),
        loki=status.Loki(url=f"https://node1:{SECRET}@loki.example.org", source="memory", state="failing",
                         buffered_lines=10, buffered_bytes=2048, backlog_lines=120, oldest_unsent_age_seconds=95.0,
                         shipped_lines=5000, shipped_bytes=900_000, pushes=80, failed_pushes=12,
                         last_success_unix=1_796_205_500.0, last_error=f"HTTP 503 from {SECRET}", holding=False,
                         backoff_seconds=4.0, drops={"rejected_400": 5, "queue_full": 0}, internal_errors=0),
        lock_fencing=status.LockFencing(enabled=True, enforce=True, connected=True, last_round=1_796_205_599.0,
                                        sentence="watching", rounds=3600, fences_total=2, would_fence_total=0,
                                        failures_total=1),
        cluster=status.Cluster(name="pretix", database="host=db1 dbname=pretix_agent", heartbeat_interval=3.0,
                               listen=True, state="connected", request_file="/var/lib/pretix-agent/cluster-request",
                               server="db1:5432", view_at_unix=1_796_205_598.0, locked=False,
                               problems=["app2: silent for 12 s"],
                               nodes=[status.ClusterNode(node="app1", seen_at="2026-12-02T12:00:00+00:00", age=0.4,
                                                         heartbeat_interval=3.0, version="0.1.0", maintenance=False,
                                                         clock_offset=0.01),
                                      status.ClusterNode(node="app2", seen_at="2026-12-02T11:59:48+00:00", age=12.0,
                                                         heartbeat_interval=3.0, version="0.1.0", maintenance=False,
                                                         clock_offset=-0.2, problems=["silent for 12 s"])]),
    )


def samples(doc: status.Document) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """Metric name -> {labels: value}, from the families of `doc`."""
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in families(doc, SECTIONS):
        out[family.spec.name] = {tuple(zip(family.spec.labels, values, strict=True)): value
                                 for values, value in family.samples}
    return out


# ---------------------------------------------------------------------------------------------
# The names the rules and the dashboard use.

# Not after ":": recorded series (`instance:pretix_agent_loki_lines_sent:rate5m`) exist only in Prometheus.
_NAME = re.compile(r"(?<![\w:])pretix_agent_[a-z0-9_]+")


def rules() -> list[dict[str, Any]]:
    """Every rule of conf/prometheus/pretix-agent.rules.yml, recording and alerting."""
    import yaml

    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def rule_expressions() -> list[str]:
    return [str(rule["expr"]) for rule in rules()]


def recorded_names() -> set[str]:
    """The series the rules record (they exist only in Prometheus, not in a scrape)."""
    return {rule["record"] for rule in rules() if "record" in rule}


def dashboard_expressions() -> list[str]:
    """Every Prometheus query (`expr`) of conf/grafana/pretix-agent.json, and of its variables."""
    found: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("expr", "query", "definition") and isinstance(value, str | dict):
                    found.append(value if isinstance(value, str) else json.dumps(value))
                else:
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(json.loads(DASHBOARD.read_text()))
    return found


def metric_names(expressions: list[str]) -> set[str]:
    """The agent's metric names the expressions read (not the series the rules record)."""
    return {name for expression in expressions for name in _NAME.findall(expression)}
