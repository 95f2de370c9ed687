"""The cluster controller with a hand-written fake worker: the lock file, the request file, the status."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import pytest

from pretix_agent import config, status
from pretix_agent.adapters.status_file import load, publish
from pretix_agent.cluster.controller import ClusterController
from pretix_agent.cluster.model import CONNECTED, UNREACHABLE, ClusterLock, NodeRow, Outcome, Report, Request, View
from pretix_agent.cluster.request import encode
from pretix_agent.controller import Facts, Services
from pretix_agent.errors import ConfigError
from pretix_agent.maintenance.decide import parse_lock

LOCK = ClusterLock("L1", "alice", 1_700_000_000.0, "inventory", "app2")


class FakeWorker:
    """Stands in for the thread: records what the controller hands over; the test reports for it."""

    instances: list[FakeWorker] = []

    def __init__(self, settings, report, beat, wall):
        self.settings, self.report, self.beat, self.wall = settings, report, beat, wall
        self.published: list = []
        self.submitted: list[Request] = []
        self.running = False
        self.stopped = False
        FakeWorker.instances.append(self)

    def start(self) -> None:
        self.running = True

    def stop(self) -> None:
        self.running, self.stopped = False, True

    def alive(self) -> bool:
        return self.running

    def publish(self, state) -> None:
        self.published.append(state)

    def submit(self, request: Request) -> None:
        self.submitted.append(request)


@pytest.fixture
def conf(tmp_path):
    (tmp_path / "state").mkdir()
    path = tmp_path / "agent.toml"
    path.write_text(f"""
[agent]
node = "app1"
state_dir = "{tmp_path}/state"
status_file = "{tmp_path}/status.json"
[cluster]
dsn = "host=db1,db2 dbname=pretix_agent user=pretix_agent target_session_attrs=read-write"
""")
    return config.load(path)


@pytest.fixture
def controller(conf):
    FakeWorker.instances.clear()
    woken, events = [], []
    maintenance = status.Maintenance(marker="/m", lock_file=str(conf.maintenance.lock), timezone="UTC", on=False)
    cluster = ClusterController(Services(woken.append, events.append), maintenance=lambda: maintenance,
                                worker_factory=FakeWorker)
    cluster.prepare(conf).commit()
    cluster.woken, cluster.events = woken, events  # type: ignore[attr-defined]
    yield cluster
    cluster.stop()


def cycle(controller: ClusterController) -> str:
    facts = Facts(now=datetime.now(timezone.utc), monotonic=0.0)
    return controller.reconcile(facts)[1]


def report(lock: ClusterLock | None = None, state: str = CONNECTED, outcomes=(), rows=()) -> Report:
    view = View(lock=lock, changed_at=None, nodes=tuple(rows), server_now=LOCK.at + 10)
    return Report(state, server="db1:5432", view=view, view_at=LOCK.at + 10, outcomes=tuple(outcomes),
                  failing_since=LOCK.at if state != CONNECTED else None, error=None if state == CONNECTED else "down")


def names(controller) -> list[str]:
    return [event.name for event in controller.events]


def test_prepare_starts_the_worker_and_the_first_cycle_hands_it_this_nodes_row(controller):
    (worker,) = FakeWorker.instances
    assert worker.running and worker.settings.name == "pretix"
    assert cycle(controller) == "cluster: connecting to the database"
    (row,) = worker.published
    assert row.node == "app1" and row.maintenance is False and row.heartbeat_interval == 3.0
    cycle(controller)
    assert len(worker.published) == 1  # unchanged: not handed again


def test_a_report_wakes_the_loop(controller):
    FakeWorker.instances[0].report(report())
    assert controller.woken == ["cluster"]


def test_the_cluster_lock_is_written_into_the_lock_file_as_the_clusters(controller, conf):
    controller.report = report(LOCK)
    sentence = cycle(controller)
    lock = parse_lock(conf.maintenance.lock.read_bytes())
    assert (lock.origin, lock.lock_id, lock.by, lock.reason, lock.host) == ("cluster", "L1", "alice", "inventory",
                                                                            "app2")
    assert sentence.startswith("cluster: locked by alice at ")
    assert "cluster.lock_mirrored" in names(controller)
    cycle(controller)  # the one the lock file's change brings: it writes the mirror's memory
    assert json.loads((conf.agent.state_dir / "cluster.json").read_text()) == {"mirrored": "L1", "dismissed": None}


def test_the_end_of_the_cluster_lock_removes_the_copy_but_a_nodes_own_lock_stays(controller, conf):
    controller.report = report(LOCK)
    cycle(controller)
    controller.report = report(None)
    cycle(controller)
    assert not conf.maintenance.lock.exists()
    conf.maintenance.lock.write_text("")  # the node's own lock, by touch
    controller.report = report(LOCK)
    cycle(controller)
    controller.report = report(None)
    cycle(controller)
    assert conf.maintenance.lock.read_text() == ""


def test_a_lock_of_an_operator_written_meanwhile_is_never_overwritten(controller, conf):
    controller.report = report(LOCK)
    observed = controller.observe(Facts(now=datetime.now(timezone.utc), monotonic=0.0))
    decision = controller.decide(observed)
    conf.maintenance.lock.write_text("mine")  # between the observation and the act
    controller.act(decision, Facts(now=datetime.now(timezone.utc), monotonic=0.0))
    assert conf.maintenance.lock.read_text() == "mine"
    assert controller.memory.mirrored is None


def test_a_dismissal_is_remembered_across_a_restart(controller, conf):
    controller.report = report(LOCK)
    cycle(controller)
    conf.maintenance.lock.unlink()  # pretix-agentctl unlock on this node
    cycle(controller)
    assert "cluster.lock_dismissed" in names(controller)
    controller.stop()
    restarted = ClusterController(Services(lambda _: None, lambda _: None), worker_factory=FakeWorker)
    restarted.prepare(conf).commit()
    restarted.report = report(LOCK)
    cycle(restarted)
    assert not conf.maintenance.lock.exists()
    restarted.stop()


def test_a_request_file_is_handed_to_the_worker_removed_and_shown_pending_then_done(controller, conf):
    path = conf.agent.state_dir / "cluster-request"
    wanted = Request(id="r1", action="lock", by="bob", at=1.0, host="app1", expires_at=4e9, reason="why")
    path.write_bytes(encode(wanted))
    cycle(controller)
    assert FakeWorker.instances[0].submitted == [wanted]
    assert not path.exists()
    (pending,) = controller.status().requests
    assert (pending.id, pending.state) == ("r1", "pending")
    done = Outcome("r1", "lock", True, "cluster locked by bob", True, LOCK, 2.0)
    controller.report = report(LOCK, outcomes=[done])
    cycle(controller)
    (shown,) = controller.status().requests
    assert (shown.state, shown.detail, shown.lock.id) == ("done", "cluster locked by bob", "L1")
    assert names(controller).count("cluster.locked") == 1


def test_a_request_file_not_written_by_ctl_is_refused_and_removed(controller, conf):
    path = conf.agent.state_dir / "cluster-request"
    path.write_text("lock everything")
    cycle(controller)
    assert not path.exists() and FakeWorker.instances[0].submitted == []
    (shown,) = controller.status().requests
    assert shown.state == "failed" and "not JSON" in shown.detail


def test_the_status_shows_every_node_with_its_problems_and_survives_the_status_file(controller, conf):
    published = FakeWorker.instances[0].published
    cycle(controller)
    skewed = NodeRow(published[0], seen_at=LOCK.at + 2, clock_offset=2.5)  # within a heartbeat of the lock
    controller.report = report(LOCK, rows=[skewed])
    cycle(controller)
    section = controller.status()
    assert section.state == "connected" and section.locked and section.lock.by == "alice"
    (shown,) = section.nodes
    assert shown.node == "app1" and shown.age == 8.0 and shown.clock_offset == 2.5
    assert shown.problems == ["clock off by +2.50 s against the database server (at most 1 s)"]
    assert section.problems == ["app1: clock off by +2.50 s against the database server (at most 1 s)"]
    document = status.Document(format=status.FORMAT, state="running", written_at="x", written_at_unix=1.0,
                               stale_after=10.0, node="app1", pid=1, version="0", started_at="x", config="x",
                               sentence="", cycles=1, healthy=True, cluster=section)
    publish(conf.agent.status_file, document)
    assert load(conf.agent.status_file).cluster == section


def test_an_unreachable_database_is_degraded_and_says_since_when(controller):
    controller.report = report(LOCK, state=UNREACHABLE)
    cycle(controller)
    (degraded,) = controller.degraded()
    assert degraded.startswith("cluster view stale since 2023-11-14T22:13:20+00:00: down")
    assert controller.status().stale_since == "2023-11-14T22:13:20+00:00"
    assert "cluster.unreachable" in names(controller)


def test_a_reload_without_a_cluster_stops_the_worker_and_the_section(controller, conf):
    (worker,) = FakeWorker.instances
    controller.prepare(config.parse(f'[agent]\nstate_dir = "{conf.agent.state_dir}"\n')).commit()
    assert not worker.running and controller.status() is None
    assert cycle(controller) == ""


def test_a_reload_with_the_same_cluster_keeps_its_worker(controller, conf):
    controller.prepare(conf).commit()
    assert len(FakeWorker.instances) == 1 and FakeWorker.instances[0].running


def test_a_passfile_others_may_read_is_refused(conf, tmp_path):
    passfile = tmp_path / "pgpass"
    passfile.write_text("*:*:*:pretix_agent:secret\n")
    passfile.chmod(0o640)
    text = (tmp_path / "agent.toml").read_text() + f'passfile = "{passfile}"\n'
    (tmp_path / "agent.toml").write_text(text)
    (problem,) = ClusterController.check(config.load(tmp_path / "agent.toml"))
    assert problem.path == "cluster.passfile" and "mode 0640" in problem.message
    with pytest.raises(ConfigError):
        ClusterController(Services(lambda _: None, lambda _: None), worker_factory=FakeWorker).prepare(
            config.load(tmp_path / "agent.toml"))
    passfile.chmod(0o600)
    assert ClusterController.check(config.load(tmp_path / "agent.toml")) == []


def test_a_discarded_configuration_leaves_the_running_worker_alone_and_closes_the_new_one(controller, conf):
    (running,) = FakeWorker.instances
    path = Path(conf.source)
    path.write_text(path.read_text() + 'heartbeat_interval = "5s"\n')
    change = controller.prepare(config.load(path))
    (_, new) = FakeWorker.instances
    change.discard()
    assert new.stopped and not running.stopped and running.running and controller.worker is running
