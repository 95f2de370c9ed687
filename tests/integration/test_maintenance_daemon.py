"""Maintenance mode with the real daemon and the real pretix-agentctl on real files."""

import concurrent.futures
import json
import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from tests.waiting import wait_until

from .agent_fixture import Agent, ctl, write_config

pytestmark = pytest.mark.integration

DAYS = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]


def weekly(moment: datetime) -> str:
    return f"{DAYS[moment.weekday()]} {moment:%H:%M}"


def window_around_now() -> str:
    now = datetime.now(timezone.utc)
    return f'[[maintenance.window]]\nstart = "{weekly(now - timedelta(hours=1))}"\n' \
           f'end = "{weekly(now + timedelta(hours=2))}"\n'


def window_far_away() -> str:
    now = datetime.now(timezone.utc)
    return f'[[maintenance.window]]\nstart = "{weekly(now + timedelta(days=3))}"\n' \
           f'end = "{weekly(now + timedelta(days=3, hours=2))}"\n'


def marker_is(agent, present: bool, timeout: float = 5.0):
    wait_until(lambda: agent.marker.exists() == present, timeout,
               message=lambda: f"marker present={present}; log:\n{agent.log()}")


def test_lock_outside_window_turns_maintenance_on_and_unlock_turns_it_off(agent_factory):
    agent = agent_factory(windows=window_far_away())
    locked = ctl(agent.config, "lock", "--reason", "deploy 2026.11")
    assert locked.returncode == 0, locked.stderr
    assert "maintenance is ON: locked by" in locked.stdout and "(deploy 2026.11)" in locked.stdout
    assert agent.marker.exists()
    lock = json.loads(agent.lock.read_text())
    assert lock["reason"] == "deploy 2026.11" and lock["by"] and lock["at"]
    unlocked = ctl(agent.config, "unlock")
    assert unlocked.returncode == 0, unlocked.stderr
    assert "maintenance is OFF; next window starts" in unlocked.stdout
    assert not agent.marker.exists() and not agent.lock.exists()
    log = agent.log()
    assert "maintenance.enabled old=off new=on cause=lock" in log
    assert "maintenance.disabled old=on new=off cause=unlock" in log


def test_locking_a_locked_node_says_so_and_succeeds(agent_factory):
    agent = agent_factory()
    assert ctl(agent.config, "lock").returncode == 0
    again = ctl(agent.config, "lock", "--reason", "other")
    assert again.returncode == 0
    assert "already locked" in again.stdout and "nothing changed" in again.stdout
    assert "other" not in agent.lock.read_text()


def test_unlock_inside_window_keeps_marker(agent_factory):
    agent = agent_factory(windows=window_around_now())
    marker_is(agent, True)
    assert ctl(agent.config, "lock").returncode == 0
    unlocked = ctl(agent.config, "unlock")
    assert unlocked.returncode == 0
    assert "maintenance is ON: inside a weekly window until" in unlocked.stdout
    assert agent.marker.exists() and not agent.lock.exists()


def test_daemon_starting_inside_a_window_enters_maintenance_before_ready(agent_factory):
    agent = agent_factory(windows=window_around_now())
    assert agent.marker.exists()  # READY comes after the first evaluation
    assert agent.status()["maintenance"]["cause"] == "window"
    assert agent.notify.with_key("READY")[0][1]["STATUS"].startswith("maintenance on: inside a window")


def test_marker_deleted_by_hand_is_restored_with_a_warning(agent_factory):
    agent = agent_factory()
    assert ctl(agent.config, "lock").returncode == 0
    agent.marker.unlink()
    marker_is(agent, True)
    wait_until(lambda: "maintenance.marker_restored" in agent.log(), message="the warning")
    assert "warning maintenance.marker_restored why=lock" in agent.log()


def test_marker_created_by_hand_is_adopted_as_a_lock(agent_factory):
    agent = agent_factory()
    agent.marker.touch()
    wait_until(agent.lock.exists, message="the adopted lock")
    assert json.loads(agent.lock.read_text())["reason"] == "marker created by hand"
    document = agent.wait_status(lambda d: d["maintenance"].get("cause") == "lock")
    assert document["maintenance"]["on"] and agent.marker.exists()
    assert "warning maintenance.marker_adopted" in agent.log()
    assert ctl(agent.config, "unlock").returncode == 0
    assert not agent.marker.exists()


@pytest.mark.parametrize("content", [b"", b"because I said so\n", b"\xff\x00garbage"], ids=["touch", "text", "binary"])
def test_any_lock_file_content_is_a_lock(agent_factory, content):
    agent = agent_factory()
    agent.lock.write_bytes(content)
    marker_is(agent, True)
    shown = ctl(agent.config, "status")
    assert "maintenance: ON: locked" in shown.stdout
    if content.strip():
        wait_until(lambda: "maintenance.lock_unreadable" in agent.log(), message="the warning")


def test_symlinked_lock_counts_as_a_lock_and_is_never_followed(agent_factory, tmp_path):
    agent = agent_factory()
    target = tmp_path / "elsewhere"
    target.write_text("precious")
    agent.lock.symlink_to(target)
    marker_is(agent, True)
    assert target.read_text() == "precious"
    # A planted marker link is replaced, its target untouched. Planted in one step (a rename over
    # the marker): between an unlink and a symlink the daemon may restore the marker first, and
    # with Debian 13's watchdog it often does.
    planted = agent.marker.with_name(".planted-marker")
    planted.symlink_to(target)
    os.replace(planted, agent.marker)
    wait_until(lambda: not agent.marker.is_symlink() or "refusing" in agent.log(), message="handling")
    assert target.read_text() == "precious"


def test_ctl_with_the_daemon_down_still_locks_and_explains_unlock(tmp_path):
    config = write_config(tmp_path)
    locked = ctl(config, "lock", "--reason", "db migration")
    assert locked.returncode == 0
    assert "the daemon is not running" in locked.stdout
    assert (tmp_path / "state" / "maintenance").exists()
    unlocked = ctl(config, "unlock")
    assert unlocked.returncode == 3
    assert "the marker stays until it runs" in unlocked.stderr
    assert (tmp_path / "state" / "maintenance").exists()
    status = ctl(config, "status")
    assert status.returncode == 3 and "no status file" in status.stderr
    # When the daemon comes back, the marker left by the lock goes, as the unlock asked.
    agent = Agent(tmp_path, config)
    try:
        agent.wait_ready()
        assert not (tmp_path / "state" / "maintenance").exists()
        assert "cause=unlock" in agent.log()
    finally:
        agent.stop()


def test_concurrent_locks_and_unlocks_agree(agent_factory):
    agent = agent_factory()
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        locks = list(pool.map(lambda i: ctl(agent.config, "lock", "--reason", f"r{i}"), range(8)))
    assert [r.returncode for r in locks] == [0] * 8, [r.stderr for r in locks]
    assert sum("locked: maintenance is pinned" in r.stdout for r in locks) == 1
    assert agent.marker.exists()
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        unlocks = list(pool.map(lambda i: ctl(agent.config, "unlock"), range(8)))
    assert [r.returncode for r in unlocks] == [0] * 8, [r.stderr for r in unlocks]
    marker_is(agent, False)


def test_window_edges_are_applied_at_the_boundary_by_the_wall_clock_timer(tmp_path):
    # Start the daemon a little before a window edge (in its shifted clock), then see the edge
    # applied by the timer. The lead is what start-up may take; on a loaded machine start-up can
    # outlast it, so a start that found itself past the edge is retried with a longer lead: this
    # test is about the timer, not about start-up speed.
    start = datetime(2026, 11, 29, 22, 0, tzinfo=timezone.utc)
    windows = '[[maintenance.window]]\nstart = "Sun 22:00"\nend = "Sun 22:01"\n'
    config = write_config(tmp_path, windows=windows)
    for edge, expected in ((start, True), (start + timedelta(minutes=1), False)):
        for lead in (1.5, 4.0, 10.0):
            offset = (edge - timedelta(seconds=lead)).timestamp() - datetime.now(timezone.utc).timestamp()
            agent = Agent(tmp_path, config, env={"PRETIX_AGENT_TEST_CLOCK_OFFSET": str(offset)})
            try:
                agent.wait_ready()
                if agent.status()["maintenance"]["on"] == expected:
                    continue  # started after the edge: try again with more lead
                marker_is(agent, expected, timeout=lead + 5)
                # The daemon logs right after it changed the marker: wait for the line, do not race it.
                wait_until(lambda: "trigger=boundary" in agent.log(), timeout=5,  # noqa: B023
                           message=lambda: f"trigger=boundary in the log:\n{agent.log()}")  # noqa: B023
                break
            finally:
                agent.stop()
        else:
            pytest.fail(f"the daemon never started before the edge at {edge}, even with {lead} s of lead")


@pytest.fixture
def small_mount(tmp_path):
    directory = tmp_path / "state"
    directory.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(directory)]).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    yield directory
    subprocess.run(["umount", "-l", str(directory)], check=False)


def test_read_only_directory_gives_a_clear_error_and_keeps_state(agent_factory, small_mount):
    agent = agent_factory()
    subprocess.run(["mount", "-o", "remount,ro", str(small_mount)], check=True)
    locked = ctl(agent.config, "lock")
    assert locked.returncode == 1
    assert locked.stderr.strip().count("\n") == 0
    assert "Read-only file system" in locked.stderr and str(agent.lock) in locked.stderr
    assert agent.process.poll() is None
    assert agent.status()["maintenance"]["on"] is False


def test_full_directory_gives_a_clear_error_and_the_daemon_retries(agent_factory, small_mount):
    agent = agent_factory()
    filler = small_mount / "filler"
    fd = os.open(filler, os.O_CREAT | os.O_WRONLY)
    try:
        while os.write(fd, b"\0" * 4096):
            pass
    except OSError:
        pass
    finally:
        os.close(fd)
    # A lock made by hand while the disk is full: the daemon cannot write the marker and says so.
    try:
        fd = os.open(agent.lock, os.O_CREAT | os.O_WRONLY)
        os.close(fd)
    except OSError:
        pytest.skip("even an empty file does not fit")
    document = agent.wait_status(lambda d: d["maintenance"].get("errors"))
    assert "No space left on device" in document["maintenance"]["errors"][0]
    assert "maintenance.apply_failed" in agent.log()
    shown = ctl(agent.config, "status")
    assert shown.returncode == 1 and "error:" in shown.stdout
    filler.unlink()
    marker_is(agent, True, timeout=10)  # the backstop retries once there is room


def test_a_group_member_without_root_can_lock_and_unlock():
    """The packaged layout: a setgid, group-writable state directory; ctl run by a plain group member."""
    import grp
    import pwd
    import shutil

    if os.geteuid() != 0 or shutil.which("runuser") is None:
        pytest.skip("needs root and runuser to act as another user")
    from .nginx_fixture import make_world_readable_tempdir

    nobody, nogroup = pwd.getpwnam("nobody"), grp.getgrnam("nogroup")
    tmp_path = make_world_readable_tempdir("agent-group-")  # pytest's own tmp is 0700 root
    config = write_config(tmp_path)
    state = tmp_path / "state"
    os.chown(state, 0, nogroup.gr_gid)
    state.chmod(0o2775)
    config.chmod(0o644)
    agent = Agent(tmp_path, config)
    try:
        agent.wait_ready()
        env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
        as_member = ["runuser", "-u", nobody.pw_name, "--", sys.executable, "-m", "pretix_agent.ctl", "-c", str(config)]
        locked = subprocess.run([*as_member, "lock", "--reason", "as nobody"], capture_output=True, text=True,
                                env=env, cwd="/")
        assert locked.returncode == 0, locked.stderr
        assert "locked by nobody" in locked.stdout
        assert agent.lock.stat().st_gid == nogroup.gr_gid and agent.lock.stat().st_mode & 0o777 == 0o664
        unlocked = subprocess.run([*as_member, "unlock"], capture_output=True, text=True, env=env, cwd="/")
        assert unlocked.returncode == 0, unlocked.stderr
        marker_is(agent, False)
    finally:
        agent.stop()
        shutil.rmtree(tmp_path, ignore_errors=True)
