"""Tests for pretix_agent.metrics.controller and server: the snapshot, the textfile, the listener."""

from __future__ import annotations

import dataclasses
import http.client
from datetime import datetime, timezone
from pathlib import Path

import pytest

from pretix_agent import config, status
from pretix_agent.controller import Facts, Services
from pretix_agent.errors import ConfigError
from pretix_agent.events import Event
from pretix_agent.metrics.controller import TEXTFILE_INTERVAL, MetricsController, Observed, Publish, plan
from pretix_agent.metrics.exposition import CONTENT_TYPE
from pretix_agent.metrics.server import MetricsError, MetricsServer, NotReady
from tests.metrics_helpers import document, full_document


class FakeDaemon:
    """What the daemon lends the controller: events recorded, wake-ups recorded, a document to hand."""

    def __init__(self, doc: status.Document | None = None):
        self.events: list[Event] = []
        self.woken: list[str] = []
        self.doc = doc if doc is not None else document()

    def services(self) -> Services:
        return Services(self.woken.append, self.events.append, lambda: self.doc)

    def names(self) -> list[str]:
        return [event.name for event in self.events]


def metrics_config(**keys: str) -> config.Config:
    return config.parse("[metrics]\n" + "".join(f'{key} = "{value}"\n' for key, value in keys.items()))


def facts(monotonic: float) -> Facts:
    return Facts(now=datetime(2026, 12, 2, 10, tzinfo=timezone.utc), monotonic=monotonic)


def started(controller: MetricsController, cfg: config.Config) -> MetricsController:
    controller.prepare(cfg).commit()
    return controller


# ---------------------------------------------------------------------------------------------
# plan (pure)


def test_plan_keeps_the_new_document_and_writes_no_textfile_without_one():
    doc = document()
    assert plan(Observed(doc, None, 100.0, None)) == Publish(doc, False, None)


def test_plan_writes_the_first_textfile_at_once():
    assert plan(Observed(document(), Path("/x.prom"), 100.0, None)).write_textfile


def test_plan_writes_again_once_the_interval_has_passed():
    decision = plan(Observed(document(), Path("/x.prom"), 100.0 + TEXTFILE_INTERVAL, 100.0))
    assert decision.write_textfile and decision.due is None


def test_plan_within_the_interval_asks_for_a_cycle_when_it_is_over():
    decision = plan(Observed(document(), Path("/x.prom"), 101.0, 100.0))
    assert not decision.write_textfile and decision.due == 100.0 + TEXTFILE_INTERVAL


def test_plan_without_a_document_keeps_the_old_snapshot_and_writes_nothing():
    assert plan(Observed(None, Path("/x.prom"), 100.0, None)) == Publish(None, False, None)


def test_metrics_add_no_clause_to_the_daemons_sentence():
    assert plan(Observed(document(), None, 1.0, None)).sentence == ""


# ---------------------------------------------------------------------------------------------
# The controller


def test_without_a_metrics_section_a_cycle_does_nothing_and_asks_for_no_document():
    daemon = FakeDaemon()
    daemon.doc = None  # would fail loudly below if it were asked for and used
    controller = started(MetricsController(daemon.services()), config.defaults())
    assert controller.reconcile(facts(1.0)) == (facts(1.0), "")
    assert controller.snapshot is None and controller.status() is None


def test_each_cycle_keeps_the_document_as_it_would_be_published_now(tmp_path):
    daemon = FakeDaemon(document(cycles=1))
    controller = started(MetricsController(daemon.services()), metrics_config(textfile=f"{tmp_path}/a.prom"))
    controller.reconcile(facts(1.0))
    daemon.doc = document(cycles=2)
    controller.reconcile(facts(2.0))
    assert controller.snapshot is daemon.doc


def test_the_textfile_holds_the_metrics_and_is_rewritten_at_most_every_interval(tmp_path):
    path = tmp_path / "pretix-agent.prom"
    daemon = FakeDaemon(document(cycles=1))
    controller = started(MetricsController(daemon.services()), metrics_config(textfile=str(path)))
    controller.reconcile(facts(10.0))
    assert "pretix_agent_loop_cycles_total 1.0" in path.read_text()
    assert path.stat().st_mode & 0o777 == 0o644  # node_exporter reads it as another user
    daemon.doc = document(cycles=2)
    controller.reconcile(facts(11.0))
    assert "pretix_agent_loop_cycles_total 1.0" in path.read_text()
    assert controller.due() == 10.0 + TEXTFILE_INTERVAL  # the loop runs a cycle then, and it is written
    controller.reconcile(facts(10.0 + TEXTFILE_INTERVAL))
    assert "pretix_agent_loop_cycles_total 2.0" in path.read_text() and controller.due() is None
    assert [p.name for p in tmp_path.iterdir()] == ["pretix-agent.prom"]  # no temporary file left behind
    assert controller.status().textfile == str(path) and controller.status().textfile_written_at


def test_the_textfile_has_only_the_agents_metrics_not_the_process_ones(tmp_path):
    path = tmp_path / "pretix-agent.prom"
    controller = started(MetricsController(FakeDaemon().services()), metrics_config(textfile=str(path)))
    controller.reconcile(facts(1.0))
    assert "process_cpu_seconds_total" not in path.read_text()  # node_exporter has its own


def test_a_textfile_that_cannot_be_written_is_one_error_per_episode_and_shows_as_degraded(tmp_path):
    path = tmp_path / "pretix-agent.prom"
    daemon = FakeDaemon()
    controller = started(MetricsController(daemon.services()), metrics_config(textfile=str(path)))
    path.symlink_to(tmp_path / "elsewhere")  # write_atomic refuses to write through a symlink
    controller.reconcile(facts(1.0))
    controller.reconcile(facts(1.0 + TEXTFILE_INTERVAL))
    assert daemon.names() == ["metrics.textfile_failed"]
    assert "symlink" in controller.degraded()[0] and controller.status().textfile_error
    path.unlink()
    controller.reconcile(facts(1.0 + 2 * TEXTFILE_INTERVAL))
    assert daemon.names() == ["metrics.textfile_failed", "metrics.textfile_recovered"]
    assert controller.degraded() == [] and path.exists()


def test_a_reload_that_names_another_textfile_removes_the_old_one_a_stop_keeps_it(tmp_path):
    old, new = tmp_path / "old.prom", tmp_path / "new.prom"
    controller = started(MetricsController(FakeDaemon().services()), metrics_config(textfile=str(old)))
    controller.reconcile(facts(1.0))
    controller.prepare(metrics_config(textfile=str(new))).commit()
    controller.reconcile(facts(2.0))
    assert not old.exists() and new.exists()
    controller.stop()
    assert new.exists()  # node_exporter's mtime of it tells Prometheus the agent stopped


def test_check_refuses_a_textfile_directory_that_does_not_exist(tmp_path):
    cfg = metrics_config(textfile=f"{tmp_path}/missing/pretix-agent.prom")
    (problem,) = MetricsController.check(cfg)
    assert problem.path == "metrics.textfile" and "does not exist" in problem.message
    with pytest.raises(ConfigError):
        MetricsController(FakeDaemon().services()).prepare(cfg)


def test_check_refuses_a_listen_host_that_does_not_resolve():
    (problem,) = MetricsController.check(metrics_config(listen="no-such-host.invalid:8998"))
    assert problem.path == "metrics.listen" and "cannot resolve" in problem.message


def test_exposition_before_the_first_cycle_is_not_ready():
    controller = MetricsController(FakeDaemon().services())
    with pytest.raises(NotReady):
        controller.exposition()


def test_exposition_is_the_snapshots_metrics_and_this_processs():
    daemon = FakeDaemon(full_document())
    controller = started(MetricsController(daemon.services()), metrics_config(textfile="/tmp/unused.prom"))
    controller.snapshot = daemon.doc
    body = controller.exposition().decode()
    assert "pretix_agent_maintenance_on 1.0" in body and "process_resident_memory_bytes" in body


def test_two_scrapes_of_one_snapshot_render_it_once():
    controller = MetricsController(FakeDaemon().services())
    doc = document()
    assert controller.agent_text(doc) is controller.agent_text(doc)
    assert controller.agent_text(dataclasses.replace(doc, cycles=5)) is not controller.agent_text(doc)


# ---------------------------------------------------------------------------------------------
# The listener (a real socket in this process, on a port the kernel gives it)


@pytest.fixture
def server():
    bodies = [b"pretix_agent_loop_cycles_total 1.0\n"]

    def render() -> bytes:
        if not bodies:
            raise NotReady()
        if bodies[0] == b"boom":
            raise RuntimeError("bug")
        return bodies[0]

    running = MetricsServer("127.0.0.1:0", render)
    running.bind()
    running.start()
    running.bodies = bodies  # type: ignore[attr-defined]
    yield running
    running.stop()


def get(server: MetricsServer, path: str = "/metrics", method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    assert server.address is not None
    connection = http.client.HTTPConnection(*server.address, timeout=5)
    try:
        connection.request(method, path)
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def test_the_listener_serves_the_text_format_on_metrics_and_counts_scrapes(server):
    code, headers, body = get(server)
    assert (code, headers["Content-Type"], body) == (200, CONTENT_TYPE, b"pretix_agent_loop_cycles_total 1.0\n")
    assert get(server, method="HEAD")[2] == b""
    assert server.scrapes == 2


def test_the_listener_answers_404_elsewhere_and_points_to_metrics_at_the_root(server):
    assert get(server, "/other")[0] == 404
    code, _, body = get(server, "/")
    assert code == 200 and b"/metrics" in body


def test_before_the_first_cycle_a_scrape_gets_503_and_a_rendering_bug_500(server):
    server.bodies.clear()
    assert get(server)[0] == 503
    server.bodies.append(b"boom")
    assert get(server)[0] == 500 and server.errors == 1 and "RuntimeError" in server.last_error


def test_an_address_in_use_is_refused_in_one_line(server):
    host, port = server.address
    with pytest.raises(MetricsError, match="address in use"):
        MetricsServer(f"{host}:{port}", lambda: b"").bind()


def test_stop_closes_the_port_and_is_idempotent(server):
    server.stop()
    server.stop()
    with pytest.raises(OSError):
        get(server)


def test_a_reload_to_another_address_that_is_in_use_changes_nothing(server):
    daemon = FakeDaemon()
    controller = started(MetricsController(daemon.services()), config.defaults())
    host, port = server.address
    with pytest.raises(MetricsError):
        controller.prepare(metrics_config(listen=f"{host}:{port}"))
    assert controller.server is None and controller.settings is None


# ---------------------------------------------------------------------------------------------
# pretix-agentctl status


def test_ctl_status_shows_where_the_metrics_are_and_a_textfile_that_is_not_written():
    from pretix_agent.render import status_lines

    doc = document(metrics=status.Metrics(listen="0.0.0.0:8998", textfile="/var/lib/x/pretix-agent.prom",
                                          scrapes=12, textfile_error="cannot write /var/lib/x: read-only"))
    lines = status_lines(doc, status.Liveness(True, "running", 0.0))
    assert ("metrics:     0.0.0.0:8998/metrics (12 scrapes); textfile /var/lib/x/pretix-agent.prom NOT WRITTEN: "
            "cannot write /var/lib/x: read-only") in lines
