"""The daemon's metrics: a real scrape of the real agent, the textfile, and a real Prometheus scraping it.

Prometheus (Debian's package) scrapes the agent every second and loads conf/prometheus's rules;
the tests ask it over its HTTP API, as an operator's dashboards and alerts would.
"""

from __future__ import annotations

import re
import urllib.request

import pytest

from tests.metrics_helpers import RULES, dashboard_expressions, metric_names, rule_expressions
from tests.waiting import wait_until

from .agent_fixture import Agent, ctl
from .haproxy_fixture import HaproxyFixture, haproxy_unavailable_reason
from .prometheus_fixture import (
    PrometheusServer,
    prometheus_unavailable_reason,
)
from .redis_fixture import RedisReplicationPair, redis_unavailable_reason

pytestmark = pytest.mark.integration
needs_prometheus = pytest.mark.skipif(prometheus_unavailable_reason() is not None,
                                      reason=str(prometheus_unavailable_reason()))


@pytest.fixture
def agent_with_metrics(agent_with_port):
    """Start the daemon with `[metrics] listen` on a candidate port (a fresh one if it is in use):
    `agent, port = agent_with_metrics(config_text)`."""

    def start(config: str = "") -> tuple[Agent, int]:
        agent, port = agent_with_port(lambda port: config + f'\n[metrics]\nlisten = "127.0.0.1:{port}"\n')
        return agent, port

    return start


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        assert response.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
        return response.read().decode()


def exported(text: str) -> set[str]:
    """The metric names a scrape declares (# TYPE lines) or has samples of."""
    declared = set(re.findall(r"^# TYPE (\S+) ", text, re.MULTILINE))
    sampled = set(re.findall(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)[{ ]", text, re.MULTILINE))
    return declared | sampled


def test_every_metric_the_rules_and_the_dashboard_use_is_in_a_real_scrape(agent_with_metrics):
    _agent, port = agent_with_metrics()
    names = exported(scrape(port))
    used = metric_names(rule_expressions()) | metric_names(dashboard_expressions())
    assert len(used) > 40
    assert used - names == set()
    assert "process_resident_memory_bytes" in names  # the agent's own CPU and memory, too


def test_the_scrape_follows_the_lock_within_a_cycle_and_counts_cycles(agent_with_metrics):
    agent, port = agent_with_metrics()
    assert "pretix_agent_maintenance_on 0.0" in scrape(port)
    assert ctl(agent.config, "lock", "--reason", "metrics").returncode == 0
    text = scrape(port)  # lock waits until the daemon applied it: the same cycle left the snapshot
    assert "pretix_agent_maintenance_on 1.0" in text
    assert 'pretix_agent_maintenance_cause{cause="lock"} 1.0' in text
    assert "hunter2" not in text


def test_the_textfile_for_node_exporter_holds_the_same_metrics(agent_factory, tmp_path):
    textfile = tmp_path / "textfile" / "pretix-agent.prom"
    textfile.parent.mkdir()
    agent = agent_factory(f'[metrics]\ntextfile = "{textfile}"\n')
    wait_until(textfile.exists, timeout=10, message="the textfile")
    assert ctl(agent.config, "lock").returncode == 0
    wait_until(lambda: "pretix_agent_maintenance_on 1.0" in textfile.read_text(), timeout=15,
               message=lambda: f"maintenance on in the textfile; log:\n{agent.log()}")
    assert oct(textfile.stat().st_mode & 0o777) == "0o644"
    assert sorted(p.name for p in textfile.parent.iterdir()) == ["pretix-agent.prom"]
    assert agent.status()["metrics"]["textfile"] == str(textfile)


def test_a_textfile_directory_that_does_not_exist_refuses_the_configuration(agent_factory, tmp_path):
    agent = agent_factory(f'[metrics]\ntextfile = "{tmp_path}/missing/pretix-agent.prom"\n', wait_ready=False)
    wait_until(lambda: agent.process.poll() is not None, timeout=20, message="the agent to refuse to start")
    assert agent.process.returncode == 1
    assert "metrics.textfile: directory" in agent.log()


# ---------------------------------------------------------------------------------------------
# A real Prometheus


@pytest.fixture
def redis():
    if redis_unavailable_reason():
        pytest.skip(str(redis_unavailable_reason()))
    with RedisReplicationPair(with_replica=False) as pair:
        yield pair


@pytest.fixture
def hx():
    if haproxy_unavailable_reason():
        pytest.skip(str(haproxy_unavailable_reason()))
    with HaproxyFixture(servers=2) as haproxy:
        yield haproxy


def cluster_config(hx: HaproxyFixture, redis: RedisReplicationPair) -> str:
    text = f"""
[checks.redis]
type = "redis"
url = "{redis.master.unix_url()}"
interval = "200ms"
timeout = "150ms"
queues = ["default", "mail"]
"""
    for name, backend in hx.backends.items():
        text += f"""
[checks.web-{name}]
type = "http"
url = "http://127.0.0.1:{backend.port}/healthcheck/"
host = "tickets.example.org"
interval = "200ms"
timeout = "150ms"
fall = 2
"""
    text += f'\n[haproxy]\nsocket = "{hx.admin_socket}"\ninterval = "500ms"\nhold_down = "1s"\n'
    for name in hx.backends:
        text += f'\n[[haproxy.server]]\nbackend = "pretix"\nserver = "{name}"\nchecks = ["web-{name}"]\n'
    return text


@needs_prometheus
def test_prometheus_sees_maintenance_follow_a_lock_a_check_fail_and_a_haproxy_change(
        agent_with_metrics, tmp_path, hx, redis):
    agent, port = agent_with_metrics(cluster_config(hx, redis))
    with PrometheusServer(tmp_path / "prometheus", [f"127.0.0.1:{port}"], rule_files=[RULES]) as prometheus:
        prometheus.wait_scraped()
        prometheus.wait_for('pretix_agent_check_state{check="redis",state="passing"} == 1')
        prometheus.wait_for("pretix_agent_maintenance_on == 0")

        assert ctl(agent.config, "lock", "--reason", "stock-taking").returncode == 0
        prometheus.wait_for('pretix_agent_maintenance_on == 1')
        prometheus.wait_for('pretix_agent_maintenance_cause{cause="lock"} == 1')
        assert prometheus.values("pretix_agent_maintenance_lock_present") == [1.0]
        assert ctl(agent.config, "unlock").returncode == 0
        prometheus.wait_for('pretix_agent_maintenance_on == 0')

        redis.master.kill()
        failing = prometheus.wait_for('pretix_agent_check_state{check="redis",state="failing"} == 1')
        assert failing[0]["metric"]["type"] == "redis"
        # The alert rule is loaded and sees it (pending for its `for:` of 2 minutes).
        prometheus.wait_for('ALERTS{alertname="PretixAgentCheckFailing",check="redis"}')

        assert prometheus.values('pretix_agent_haproxy_changes_total{state="maint"}') == [0.0]
        hx.backends["app1"].kill()
        wait_until(lambda: hx.server_admin("pretix", "app1") == "maint", timeout=15, message="app1 in maint")
        prometheus.wait_for('pretix_agent_haproxy_changes_total{state="maint"} == 1')
        prometheus.wait_for('pretix_agent_haproxy_server_actual_state{server="app1",state="maint"} == 1')
        prometheus.wait_for('pretix_agent_haproxy_server_desired_state{server="app1",state="maint"} == 1')
        assert prometheus.values("pretix_agent_haproxy_servers_taken_out") == [1.0]


@needs_prometheus
def test_every_rule_and_dashboard_query_runs_in_prometheus(agent_with_metrics, tmp_path):
    _agent, port = agent_with_metrics()
    with PrometheusServer(tmp_path / "prometheus", [f"127.0.0.1:{port}"], rule_files=[RULES]) as prometheus:
        prometheus.wait_scraped()
        rules = prometheus.api("rules")["groups"]
        assert {rule["health"] for group in rules for rule in group["rules"]} <= {"ok", "unknown"}
        for expression in rule_expressions() + dashboard_expressions():
            if expression.startswith("label_values") or expression.startswith("{"):
                continue  # a Grafana variable query, or LogQL
            query = (expression.replace("$__rate_interval", "1m").replace('"$instance"', '".*"')
                     .replace('"$node"', '".*"'))
            prometheus.query(query)  # raises with Prometheus's error if it does not parse or run
