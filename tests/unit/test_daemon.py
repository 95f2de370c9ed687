"""The daemon's cycle with hand-written controllers: isolation, the sentence, the watchdog gate."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, replace

import pytest

from pretix_agent import config as config_module
from pretix_agent import daemon as daemon_module
from pretix_agent.adapters import logs
from pretix_agent.controller import Controller, Swap


@dataclass(frozen=True)
class Said:
    sentence: str


class Scripted(Controller):  # type: ignore[type-arg]
    """A controller whose cycle says `sentence`, or raises while `broken` is set."""

    section = "loki"  # an optional section of the document: None is a valid status

    def __init__(self, name: str, sentence: str, essential: bool = False):
        self.name = name
        self.sentence = sentence
        self.essential = essential
        self.broken: str | None = None
        self.cycles = 0
        self.stuck: list[str] = []
        self.stopped = False

    def prepare(self, config):
        return Swap()

    def observe(self, facts):
        self.cycles += 1
        if self.broken:
            raise RuntimeError(self.broken)
        return facts

    def decide(self, observation):
        return Said(self.sentence)

    def act(self, decision, facts):
        return replace(facts, drain=(facts.drain or "") + self.name)

    def status(self):
        return None

    def unhealthy(self, now):
        return list(self.stuck)

    def stop(self):
        self.stopped = True


class Notes:
    """Stands in for the sd_notify socket."""

    enabled = True
    watchdog_interval = 10.0
    last_error = None

    def __init__(self):
        self.sent: list[dict[str, str]] = []

    def send(self, **fields):
        self.sent.append(fields)
        return True

    def close(self):
        pass


@pytest.fixture
def logged():
    """The daemon's log lines, as the console renders them."""
    stream = io.StringIO()
    logs.configure("debug", "console", stream=stream)
    yield stream
    logs.configure("info", "console")


@pytest.fixture
def made(tmp_path, monkeypatch, logged):
    controllers = [Scripted("first", "first says"), Scripted("core", "core says", essential=True),
                   Scripted("last", "last says")]
    monkeypatch.setattr(daemon_module, "build_controllers", lambda services, bus, offset: controllers)
    config = config_module.parse(f'[agent]\nstatus_file = "{tmp_path}/status.json"\nstate_dir = "{tmp_path}"\n')
    notes = Notes()
    daemon = daemon_module.Daemon(tmp_path / "agent.toml", config, notifier=notes)
    return daemon, controllers, notes, tmp_path / "status.json"


def test_a_cycle_runs_every_controller_in_order_and_joins_their_clauses(made):
    daemon, _controllers, notes, status_file = made
    daemon.cycle(["start"])
    assert daemon.sentence == "first says; core says; last says"
    assert json.loads(status_file.read_text())["sentence"] == daemon.sentence
    assert {"STATUS": daemon.sentence} in notes.sent


def test_a_controller_that_raises_is_reported_once_and_the_others_go_on(made, logged):
    daemon, controllers, _notes, status_file = made
    controllers[0].broken = "a bug"
    daemon.cycle(["x"])
    daemon.cycle(["y"])
    assert [c.cycles for c in controllers] == [2, 2, 2]
    assert daemon.sentence == "first FAILED: RuntimeError: a bug; core says; last says"
    written = json.loads(status_file.read_text())
    assert written["controllers"]["first"]["ok"] is False
    assert written["controllers"]["first"]["error"] == "RuntimeError: a bug"
    assert logged.getvalue().count("controller.failed") == 1


def test_a_failed_controller_that_works_again_is_said_to_have_recovered(made, logged):
    daemon, controllers, _notes, status_file = made
    controllers[2].broken = "flaky"
    daemon.cycle(["x"])
    controllers[2].broken = None
    daemon.cycle(["y"])
    assert "controller.recovered" in logged.getvalue()
    assert "last" not in json.loads(status_file.read_text())["controllers"]


def test_the_watchdog_is_fed_while_only_a_non_essential_controller_fails(made):
    daemon, controllers, notes, _status_file = made
    controllers[0].broken = "a bug in shipping logs"
    daemon.cycle(["x"])
    assert daemon._ping() is True
    assert {"WATCHDOG": "1"} in notes.sent


def test_the_watchdog_is_withheld_when_the_essential_controller_fails(made):
    daemon, controllers, notes, status_file = made
    controllers[1].broken = "cannot keep the marker"
    daemon.cycle(["x"])
    assert daemon._ping() is False
    assert {"WATCHDOG": "1"} not in notes.sent
    assert json.loads(status_file.read_text())["healthy"] is False


def test_the_watchdog_is_withheld_when_a_worker_is_stuck(made):
    daemon, controllers, _notes, _status_file = made
    controllers[2].stuck = ["loki"]
    daemon.cycle(["x"])
    assert daemon._withhold_reasons() == ["loki"]
    assert daemon._ping() is False


def test_a_refused_reload_changes_nothing_and_says_why(made, tmp_path, logged):
    daemon, _controllers, notes, status_file = made
    daemon.cycle(["start"])
    (tmp_path / "agent.toml").write_text('[agent]\nreconcile_interval = "soon"\n')
    daemon.reload()
    assert daemon.config.agent.status_file == status_file
    err = logged.getvalue()
    assert "config.reload_rejected" in err and "agent.reconcile_interval" in err
    assert notes.sent[-1]["READY"] == "1"


def test_a_shutdown_stops_the_last_controller_after_publishing_the_final_status(made):
    daemon, controllers, _notes, status_file = made
    order = []
    controllers[0].stop = lambda: order.append("first")  # type: ignore[method-assign]
    controllers[2].stop = lambda: order.append(("last", json.loads(status_file.read_text())["state"]))  # type: ignore[method-assign]
    daemon.cycle(["start"])
    daemon._shutdown()
    assert order == ["first", ("last", "stopped")]


def test_a_probe_result_that_changes_no_decision_leaves_the_status_file_to_the_backstop(made):
    daemon, _controllers, _notes, status_file = made
    assert daemon.cycle(["start"]) is True
    written = status_file.read_text()
    assert daemon.cycle(["check:web", "haproxy"]) is False
    assert status_file.read_text() == written
    assert daemon.cycle(["backstop"]) is True
    assert status_file.read_text() != written


def test_a_probe_result_that_changes_the_decision_is_published_at_once(made):
    daemon, controllers, _notes, status_file = made
    daemon.cycle(["start"])
    controllers[0].sentence = "first says something else"
    assert daemon.cycle(["check:web"]) is True
    assert json.loads(status_file.read_text())["sentence"].startswith("first says something else")
