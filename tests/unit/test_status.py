"""Tests for pretix_agent.status: reading the status document and judging the daemon's liveness."""

from __future__ import annotations

import json
import os
import stat

import pytest

from pretix_agent import status
from pretix_agent.adapters import status_file
from pretix_agent.errors import StatusUnavailable

NOW = 1_767_225_600.0  # 2026-01-01 00:00:00 UTC


def raw(**changes):
    base = {"format": status.FORMAT, "written_at_unix": NOW - 1.0, "stale_after": 20.0, "pid": 4242,
            "state": "running", "written_at": "2025-12-31T23:59:59.000+00:00", "node": "app1", "version": "0.1.0",
            "started_at": "2025-12-31T23:00:00+00:00", "config": "/etc/pretix-agent/agent.toml",
            "sentence": "maintenance off", "cycles": 3, "healthy": True}
    base.update(changes)
    return {key: value for key, value in base.items() if value is not ...}


def document(**changes):
    return status.parse(raw(**changes))


def alive(pid: int) -> bool:
    return True


def dead(pid: int) -> bool:
    return False


# ---------------------------------------------------------------------------------------------
# judge


def test_a_fresh_status_of_a_running_daemon_is_alive():
    liveness = status.judge(document(), NOW, alive)
    assert liveness == status.Liveness(True, "running (pid 4242), status 1.0 s old", 1.0)


def test_a_status_exactly_stale_after_old_is_still_alive():
    assert status.judge(document(written_at_unix=NOW - 20.0), NOW, alive).alive is True


def test_a_status_older_than_stale_after_is_stale():
    liveness = status.judge(document(written_at_unix=NOW - 21.0), NOW, alive)
    assert liveness.alive is False
    assert liveness.reason.startswith("the status is stale: written 21.0 s ago, expected within 20 s")
    assert liveness.age == 21.0


def test_a_stopped_daemon_is_not_alive_even_if_its_status_is_fresh():
    liveness = status.judge(document(state="stopped"), NOW, alive)
    assert (liveness.alive, liveness.reason) == (False, "the daemon stopped 1 s ago")


def test_a_dead_pid_is_not_alive_even_if_the_status_is_fresh():
    asked = []

    def dead_and_recorded(pid):
        asked.append(pid)
        return False

    liveness = status.judge(document(), NOW, dead_and_recorded)
    assert asked == [4242]
    assert liveness.alive is False
    assert liveness.reason == "the daemon (pid 4242) is not running; its last status is 1 s old"


def test_a_status_slightly_in_the_future_is_alive_with_age_shown_as_zero():
    liveness = status.judge(document(written_at_unix=NOW + 5.0), NOW, alive)
    assert liveness.alive is True
    assert liveness.reason == "running (pid 4242), status 0.0 s old"


def test_a_status_from_the_future_beyond_stale_after_is_not_alive():
    liveness = status.judge(document(written_at_unix=NOW + 21.0), NOW, alive)
    assert liveness.alive is False
    assert liveness.reason == "the status is from the future (21 s): the wall clock was set back"


@pytest.mark.parametrize("missing", ["written_at_unix", "stale_after", "pid"])
def test_a_status_missing_a_field_is_refused_naming_it(missing):
    with pytest.raises(StatusUnavailable) as caught:
        document(**{missing: ...})
    assert str(caught.value) == f"the status file is not a valid status document: {missing}: is missing"


@pytest.mark.parametrize(("changes", "words"), [
    pytest.param({"written_at_unix": "yesterday"}, "written_at_unix: expected a finite number, got a string",
                 id="text-time"),
    pytest.param({"written_at_unix": None}, "written_at_unix: expected a finite number, got null", id="null-time"),
    pytest.param({"written_at_unix": [NOW]}, "written_at_unix: expected a finite number, got an array",
                 id="array-time"),
    pytest.param({"stale_after": {}}, "stale_after: expected a finite number, got an object", id="table-stale-after"),
    pytest.param({"written_at_unix": float("nan")}, "written_at_unix: expected a finite number", id="nan-time"),
    pytest.param({"written_at_unix": float("-inf")}, "written_at_unix: expected a finite number", id="infinite-time"),
    pytest.param({"stale_after": float("nan")}, "stale_after: expected a finite number", id="nan-stale-after"),
    pytest.param({"stale_after": float("inf")}, "stale_after: expected a finite number", id="infinite-stale-after"),
    pytest.param({"pid": None}, "pid: expected an integer, got null", id="null-pid"),
    pytest.param({"pid": "4242"}, "pid: expected an integer, got a string", id="text-pid"),
    pytest.param({"pid": 4242.0}, "pid: expected an integer, got a number", id="float-pid"),
    pytest.param({"pid": True}, "pid: expected an integer, got a boolean", id="boolean-pid"),
    pytest.param({"maintenance": []}, "maintenance: expected an object, got an array", id="maintenance-not-an-object"),
    pytest.param({"maintenance": {"marker": "/m", "lock_file": "/l", "timezone": "UTC", "lock": {"by": 7}}},
                 "maintenance.lock.by: expected a string, got an integer", id="lock-by-a-number"),
    pytest.param({"checks": {"db": {"type": "postgres"}}}, "checks.db.state: is missing", id="check-without-state"),
])
def test_a_status_with_a_value_of_the_wrong_shape_is_refused_in_one_line_naming_it(changes, words):
    with pytest.raises(StatusUnavailable) as caught:
        document(**changes)
    assert str(caught.value).startswith(f"the status file is not a valid status document: {words}")
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("changes", [
    pytest.param({"stale_after": 0}, id="zero-stale-after"),
    pytest.param({"stale_after": -5}, id="negative-stale-after"),
    pytest.param({"pid": 0}, id="pid-zero-means-the-process-group"),
    pytest.param({"pid": -1}, id="pid-minus-one-means-every-process"),
])
def test_a_status_with_an_impossible_value_is_not_alive(changes):
    liveness = status.judge(document(**changes), NOW, alive)
    assert liveness.alive is False
    assert liveness.reason.startswith("the status file has no valid ")


def test_unknown_keys_from_a_newer_daemon_are_ignored():
    assert document(new_section={"x": 1}).node == "app1"


def test_judge_by_default_asks_the_real_process_table():
    assert status.judge(document(pid=os.getpid()), NOW).alive is True


def test_pid_alive_knows_this_process():
    assert status.pid_alive(os.getpid()) is True


@pytest.mark.parametrize("pid", [0, -1])
def test_pid_alive_refuses_pids_that_kill_reads_as_groups(pid):
    assert status.pid_alive(pid) is False


def test_pid_alive_of_a_reaped_child_is_false():
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    assert status.pid_alive(pid) is False


# ---------------------------------------------------------------------------------------------
# read and publish


def test_publish_then_load_round_trips_the_typed_document(tmp_path):
    path = tmp_path / "status.json"
    written = document(sentence="no action. maintenance is off", node="app1 \u2013 größer",
                       maintenance={"marker": "/m", "lock_file": "/l", "timezone": "UTC", "on": True,
                                    "lock": {"present": True, "by": "alice", "reason": "\x1b[2J"}})
    status_file.publish(path, written)
    assert status_file.load(path) == written
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644
    assert os.listdir(tmp_path) == ["status.json"]


def test_read_of_a_missing_file_says_the_daemon_is_not_running(tmp_path):
    with pytest.raises(StatusUnavailable) as caught:
        status_file.read(tmp_path / "status.json")
    assert str(caught.value) == (f"no status file at {tmp_path / 'status.json'}: the daemon is not running "
                                 "(or uses another [agent] status_file)")


@pytest.mark.parametrize("content", [
    pytest.param(b"", id="empty"),
    pytest.param(b"garbage{", id="garbage"),
    pytest.param(b'{"format": 1', id="truncated"),
    pytest.param(b"\xff\xfe{}", id="not-utf8"),
])
def test_read_of_a_file_that_is_not_json_says_so_in_one_line(tmp_path, content):
    path = tmp_path / "status.json"
    path.write_bytes(content)
    with pytest.raises(StatusUnavailable) as caught:
        status_file.read(path)
    assert str(caught.value) == f"{path} is not a status document (not JSON)"


@pytest.mark.parametrize("value", [
    pytest.param({"format": 2}, id="newer-format"),
    pytest.param({"format": "1"}, id="format-as-text"),
    pytest.param({"pid": 1}, id="no-format"),
    pytest.param([1, 2], id="array"),
    pytest.param("status", id="string"),
])
def test_read_of_another_format_asks_to_upgrade_together(tmp_path, value):
    path = tmp_path / "status.json"
    path.write_text(json.dumps(value))
    with pytest.raises(StatusUnavailable) as caught:
        status_file.read(path)
    assert str(caught.value) == (f"{path} is not a status document of format 1: upgrade pretix-agentctl "
                                 "together with the daemon")


def test_read_of_a_symlink_is_refused_in_one_line(tmp_path):
    real = tmp_path / "real.json"
    real.write_text(json.dumps(raw()))
    (tmp_path / "status.json").symlink_to(real)
    with pytest.raises(StatusUnavailable) as caught:
        status_file.read(tmp_path / "status.json")
    assert str(caught.value) == f"cannot read {tmp_path / 'status.json'}: it is a symlink"


def test_read_of_a_directory_is_refused_in_one_line(tmp_path):
    (tmp_path / "status.json").mkdir()
    with pytest.raises(StatusUnavailable) as caught:
        status_file.read(tmp_path / "status.json")
    assert str(caught.value) == f"cannot read {tmp_path / 'status.json'}: not a regular file"
