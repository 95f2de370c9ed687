"""The maintenance controller with a hand-written file watcher: files kept right, failures said once,
a lost watch set up again."""

from __future__ import annotations

import os
from datetime import datetime, timezone

import pytest

from pretix_agent import config as config_module
from pretix_agent.checks.health import CheckState
from pretix_agent.checks.model import failed, passed
from pretix_agent.controller import Facts, Services
from pretix_agent.errors import ConfigError
from pretix_agent.maintenance.controller import MaintenanceController

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=timezone.utc)  # a Wednesday


class FakeWatcher:
    def __init__(self, problems: list[str]):
        self.problems = problems
        self.started = False
        self.stopped = False

    def start(self):
        self.started = True

    def intact(self):
        return list(self.problems)

    def alive(self):
        return not self.stopped

    def stop(self):
        self.stopped = True


class Watched(MaintenanceController):
    """Makes FakeWatchers; each new one reports the problems of `next_problems`."""

    def __init__(self, services):
        super().__init__(services)
        self.made: list[FakeWatcher] = []
        self.next_problems: list[str] = []

    def _watcher(self, section):
        watcher = FakeWatcher(list(self.next_problems))
        self.made.append(watcher)
        return watcher


@pytest.fixture
def setup(tmp_path):
    events, woken = [], []
    state = tmp_path / "state"
    state.mkdir()
    config = config_module.parse(f'[agent]\nstate_dir = "{state}"\nstatus_file = "{tmp_path}/status.json"\n')
    controller = Watched(Services(woken.append, events.append))
    controller.prepare(config).commit()
    yield controller, config, events, state
    controller.stop()


def cycle(controller, now=NOW):
    return controller.reconcile(Facts(now=now, monotonic=0.0))


def names(events):
    return [event.name for event in events]


def test_a_lock_puts_the_marker_there_and_tells_the_next_controllers(setup):
    controller, _config, events, state = setup
    (state / "maintenance.lock").touch()
    facts, sentence = cycle(controller)
    assert (state / "maintenance").exists()
    assert facts.maintenance is not None and facts.maintenance.on and facts.maintenance.cause == "lock"
    assert sentence == "maintenance on: locked"
    shown = controller.status()
    assert (shown.on, shown.applied, shown.lock.present, shown.watch) == (True, True, True, "ok")
    assert "maintenance.enabled" in names(events)


def test_a_write_that_keeps_failing_is_said_once_and_its_end_once(setup):
    controller, _config, events, state = setup
    (state / "maintenance.lock").touch()
    (state / "maintenance").mkdir()  # the marker cannot be written over a directory
    for _ in range(3):
        _facts, sentence = cycle(controller)
    assert names(events).count("maintenance.apply_failed") == 1
    assert "FAILED: cannot write" in sentence
    assert controller.status().applied is False
    os.rmdir(state / "maintenance")
    cycle(controller)
    assert names(events).count("maintenance.apply_recovered") == 1
    assert controller.status().applied is True and controller.status().errors == []


def test_a_lost_watch_is_set_up_again_and_said_once_lost_and_once_back(setup):
    controller, _config, events, state = setup
    controller.made[-1].problems = [f"{state} was replaced by another directory"]
    controller.next_problems = [f"{state} does not exist"]
    cycle(controller)
    cycle(controller)
    assert len(controller.made) == 3  # the first, then one attempt per cycle while it is not intact
    assert names(events).count("maintenance.watch_lost") == 1
    assert controller.degraded() == [f"maintenance files are not watched ({state} does not exist): changes are "
                                     "seen by the backstop only until the watch is set up again"]
    assert controller.status().watch == f"{state} does not exist"
    controller.next_problems = []
    cycle(controller)
    assert names(events).count("maintenance.watch_restored") == 1
    assert controller.degraded() == [] and controller.status().watch == "ok"
    assert all(w.stopped for w in controller.made[:-1]) and not controller.made[-1].stopped


def test_a_reload_with_the_same_files_keeps_the_watch(setup):
    controller, config, _events, _state = setup
    controller.prepare(config).commit()
    assert len(controller.made) == 1


def test_a_discarded_reload_stops_the_watch_it_prepared_and_keeps_the_running_one(setup, tmp_path):
    controller, config, _events, _state = setup
    other = tmp_path / "other"
    other.mkdir()
    change = controller.prepare(config_module.parse(f'[maintenance]\nmarker = "{other}/m"\nlock = "{other}/l"\n'))
    change.discard()
    assert controller.made[1].stopped and not controller.made[0].stopped
    assert controller.settings == config.maintenance


def test_missing_directories_are_refused_with_their_toml_paths(tmp_path):
    config = config_module.parse(f'[maintenance]\nmarker = "{tmp_path}/gone/m"\nlock = "{tmp_path}/l"\n', "agent.toml")
    problems = MaintenanceController.check(config)
    assert [str(p) for p in problems] == [f"agent.toml:2: maintenance.marker: directory {tmp_path}/gone does not "
                                          "exist: create it or change [maintenance] marker"]
    with pytest.raises(ConfigError):
        Watched(Services(lambda reason: None, lambda event: None)).prepare(config)


def test_the_window_edge_timer_is_a_file_descriptor_of_the_loop(setup):
    controller, _config, _events, _state = setup
    cycle(controller)
    (_fd, read), = controller.fds().items()
    assert read() == "timer"  # nothing happened yet


def test_an_on_failing_check_in_the_facts_closes_the_shop_and_its_recovery_reopens_it(tmp_path):
    events: list = []
    state = tmp_path / "state"
    state.mkdir()
    config = config_module.parse(f'[agent]\nstate_dir = "{state}"\n[maintenance]\non_failing = ["redis"]\n'
                                 '[checks.redis]\ntype = "redis"\nurl = "redis://127.0.0.1:1/0"\n')
    controller = Watched(Services(lambda reason: None, events.append))
    controller.prepare(config).commit()
    down = {"redis": CheckState("failing", last=failed("connection refused", hard=True))}
    facts, sentence = controller.reconcile(Facts(now=NOW, monotonic=0.0, checks=down))
    assert (state / "maintenance").exists() and not (state / "maintenance.lock").exists()
    assert facts.maintenance is not None and facts.maintenance.cause == "check:redis"
    assert controller.status().cause == "check:redis" and "check redis failing" in sentence
    controller.reconcile(Facts(now=NOW, monotonic=1.0, checks={"redis": CheckState("passing", last=passed("ok"))}))
    assert not (state / "maintenance").exists()
    assert [e.name for e in events] == ["maintenance.enabled", "maintenance.disabled"]
