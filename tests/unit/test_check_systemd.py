"""The `systemd` check: judging unit states (pure), and a probe that reads the watcher's snapshot."""

import pytest

from pretix_agent.checks.model import Deadline
from pretix_agent.checks.systemd import judge, make_systemd_probe
from pretix_agent.unit_states import UnitsSnapshot, UnitState

WEB = "pretix-web.service"
WORKER = "pretix-worker.service"


def snapshot(*states: tuple[str, str, str] | tuple[str, str, str, str]) -> UnitsSnapshot:
    units = {}
    for unit, active, sub, *load in states:
        units[unit] = UnitState(unit, load[0] if load else "loaded", active, sub)
    return UnitsSnapshot(True, "", units)


class FakeWatcher:
    """Stands for UnitWatcher: hands out whatever snapshot the test set, and counts the reads."""

    def __init__(self, current: UnitsSnapshot):
        self.current = current
        self.reads = 0

    def snapshot(self) -> UnitsSnapshot:
        self.reads += 1
        return self.current


def test_all_units_active_passes_and_lists_their_sub_states():
    result = judge([WEB, WORKER], snapshot((WEB, "active", "running"), (WORKER, "active", "running")))
    assert result.outcome == "pass"
    assert result.reason == "2 units active: pretix-web.service (running), pretix-worker.service (running)"
    assert result.values["active"] == 2 and result.values["units"] == 2


def test_a_oneshot_unit_that_exited_successfully_is_active():
    assert judge(["migrate.service"], snapshot(("migrate.service", "active", "exited"))).outcome == "pass"


@pytest.mark.parametrize("active, sub", [("failed", "failed"), ("inactive", "dead")])
def test_a_failed_or_inactive_unit_is_a_hard_failure_that_names_it(active, sub):
    result = judge([WEB, WORKER], snapshot((WEB, active, sub), (WORKER, "active", "running")))
    assert result.outcome == "fail" and result.hard
    assert result.reason == f"not active: pretix-web.service {active} ({sub}); active: pretix-worker.service (running)"


@pytest.mark.parametrize("active, sub", [("activating", "start"), ("deactivating", "stop-sigterm"),
                                         ("reloading", "reload"), ("maintenance", "cleaning")])
def test_a_unit_in_transition_is_a_soft_failure(active, sub):
    result = judge([WEB], snapshot((WEB, active, sub)))
    assert result.outcome == "fail" and not result.hard
    assert f"{active} ({sub})" in result.reason


def test_a_unit_restarting_after_a_crash_is_a_soft_failure():
    # Restart=on-failure: between the crash and the new start systemd says activating/auto-restart.
    result = judge([WEB], snapshot((WEB, "activating", "auto-restart")))
    assert result.outcome == "fail" and not result.hard


def test_a_unit_that_does_not_exist_is_a_hard_failure_that_says_not_found():
    result = judge(["pretix-wbe.service"], snapshot(("pretix-wbe.service", "inactive", "dead", "not-found")))
    assert result.outcome == "fail" and result.hard
    assert result.reason == "not active: pretix-wbe.service inactive (dead) [not-found]"


def test_a_hard_failure_wins_over_a_soft_one():
    result = judge([WEB, WORKER], snapshot((WEB, "activating", "start"), (WORKER, "failed", "failed")))
    assert result.outcome == "fail" and result.hard


def test_without_d_bus_the_check_is_unknown_not_failing():
    result = judge([WEB], UnitsSnapshot(False, "no D-Bus connection to unix:path=/run/dbus/system_bus_socket"))
    assert result.outcome == "unknown"
    assert result.reason == "unit states unknown: no D-Bus connection to unix:path=/run/dbus/system_bus_socket"


def test_a_unit_without_a_state_yet_is_unknown():
    result = judge([WEB, WORKER], snapshot((WEB, "active", "running")))
    assert result.outcome == "unknown" and result.reason == "no state yet for pretix-worker.service"


def test_a_failure_is_reported_even_while_another_unit_is_unknown():
    result = judge([WEB, WORKER], snapshot((WEB, "failed", "failed")))
    assert result.outcome == "fail" and result.hard and result.reason.endswith("; unknown: pretix-worker.service")


def test_the_probe_judges_the_latest_snapshot_each_time_without_blocking():
    watcher = FakeWatcher(snapshot((WEB, "active", "running")))
    probe = make_systemd_probe([WEB], watcher)
    assert probe(Deadline(1.0)).outcome == "pass"
    watcher.current = snapshot((WEB, "failed", "failed"))
    assert probe(Deadline(1.0)).outcome == "fail"
    assert watcher.reads == 2


def test_the_probe_only_judges_its_own_units():
    watcher = FakeWatcher(snapshot((WEB, "active", "running"), (WORKER, "failed", "failed")))
    assert make_systemd_probe([WEB], watcher)(Deadline(1.0)).outcome == "pass"
