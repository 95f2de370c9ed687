"""Careless and hostile input, every way it enters: one clear line, nothing lost, nothing crashes.

Each configuration case is tried three ways: `--check-config` (one line per problem, exit 1), a
start (one line per problem, exit 1), and SIGHUP to a running daemon (it stays up with its old
behaviour: the old log level and Loki target, and a lock still gets its marker at once). Then the
ctl's inputs, the status file, and the directory of the maintenance files.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.waiting import wait_until

from .agent_fixture import REPO, Agent, ctl, write_config

pytestmark = pytest.mark.integration

LOKI = 'url = "http://127.0.0.1:9"\nservice_name = "pretix-agent"'  # nothing listens: pushes fail, harmless


def agent_command(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pretix_agent", "-c", str(config), *args], capture_output=True,
                          text=True, timeout=60, env=dict(os.environ, PYTHONPATH=str(REPO)), cwd=config.parent)


def text_case(extra: str) -> Callable[[Path, str], None]:
    """A configuration that is the good one plus `extra` (later tables win nothing: TOML refuses
    redefinition, so `extra` only adds sections the good file does not have, or replaces text)."""
    def make(path: Path, good: str) -> None:
        path.write_text(good + "\n" + extra + "\n")
    return make


def replaced(*pairs: str) -> Callable[[Path, str], None]:
    """The good configuration with each (old, new) pair of `pairs` replaced."""
    def make(path: Path, good: str) -> None:
        text = good
        for old, new in zip(pairs[::2], pairs[1::2], strict=True):
            assert old in text
            text = text.replace(old, new)
        path.write_text(text)
    return make


def fifo(path: Path, good: str) -> None:
    path.unlink()
    os.mkfifo(path)


def dev_zero(path: Path, good: str) -> None:
    path.unlink()
    path.symlink_to("/dev/zero")


def huge(path: Path, good: str) -> None:
    with open(path, "w") as handle:
        handle.write(good)
        line = "# " + "x" * 1021 + "\n"
        for _ in range(50 * 1024):  # 50 MiB of comments
            handle.write(line)


def directory(path: Path, good: str) -> None:
    path.unlink()
    path.mkdir()


def not_utf8(path: Path, good: str) -> None:
    path.write_bytes(good.encode() + b"\n# caf\xe9\n")


# (id, how to break the file, words one of the lines must hold, text no line may hold)
CASES = [
    ("check-type-is-an-array", text_case('[checks.x]\ntype = []'), "checks.x.type: expected a string", None),
    ("check-type-is-a-table", text_case('[checks.x]\ntype = { a = 1 }'), "checks.x.type: expected a string", None),
    ("size-of-400-nines", replaced('service_name = "pretix-agent"', 'service_name = "pretix-agent"\nbatch_size = "'
                                   + "9" * 400 + 'GiB"'), "loki.batch_size: expected a size of at most", None),
    ("duration-beyond-the-clock", replaced('reconcile_interval = "2s"', 'reconcile_interval = "99999999999999d"'),
     "agent.reconcile_interval: expected a duration of at most 366d", None),
    ("duration-that-is-infinite", replaced('reconcile_interval = "2s"', 'reconcile_interval = "' + "9" * 400 + 's"'),
     "agent.reconcile_interval: expected a duration of at most 366d", None),
    ("listen-on-a-path", text_case('[agent_check]\nlisten = "/path/x.sock"'),
     'agent_check.listen: expected "HOST:PORT"', None),
    ("listen-on-a-blank-host", text_case('[agent_check]\nlisten = "  :18999"'),
     "neither an IP address nor a host name", None),
    ("listen-on-a-superscript-port", text_case('[agent_check]\nlisten = "127.0.0.1:1\u00b2"'),
     'agent_check.listen: expected "HOST:PORT"', None),
    ("new-log-level-and-a-marker-in-a-missing-directory",
     replaced('level = "debug"', 'level = "error"', 'marker = "', 'marker = "/nonexistent/dir/'),
     "maintenance.marker: directory /nonexistent/dir", None),
    ("password-with-at-slash-and-space", text_case('[checks.db]\ntype = "postgres"\n'
                                                   'dsn = "mysql://admin:P@ss/w rd@db/pretix"'),
     "checks.db.dsn", "ss/w rd"),
    ("url-password-with-at", replaced(LOKI.split("\n")[0], 'url = "ftp://u:s3@cr/et@loki"'), "loki.url", "s3@cr"),
    ("a-fifo", fifo, "is not a regular file", None),
    ("dev-zero", dev_zero, "is not a regular file", None),
    ("fifty-megabytes", huge, "more than a configuration can be", None),
    ("a-directory", directory, "is a directory", None),
    ("not-utf8", not_utf8, "not UTF-8 text", None),
]


@pytest.fixture(scope="module")
def running(tmp_path_factory):
    """One daemon for every SIGHUP case: log level debug, a Loki target, a state directory."""
    directory = tmp_path_factory.mktemp("hostile")
    config = write_config(directory, f"[loki]\n{LOKI}\n")
    agent = Agent(directory, config)
    agent.wait_ready()
    yield agent
    agent.stop()


def broken_copy(tmp_path: Path, good: Path, make: Callable[[Path, str], None]) -> Path:
    path = tmp_path / "agent.toml"
    text = good.read_text()
    path.write_text(text)
    make(path, text.replace(str(good.parent), str(tmp_path)))
    (tmp_path / "state").mkdir(exist_ok=True)
    return path


def assert_clean_lines(output: str, words: str, hidden: str | None) -> None:
    lines = [line for line in output.splitlines() if line.strip()]
    assert lines, "nothing said"
    assert not any("Traceback" in line for line in lines), output
    assert any(words in line for line in lines), output
    if hidden is not None:
        assert hidden not in output


@pytest.mark.parametrize(("make", "words", "hidden"), [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_check_config_says_what_is_wrong_in_one_line_per_problem_and_exits_1(running, tmp_path, make, words,
                                                                                hidden):
    path = broken_copy(tmp_path, running.config, make)
    checked = agent_command(path, "--check-config")
    assert checked.returncode == 1, checked.stdout + checked.stderr
    assert all(line.startswith("pretix-agent: ") for line in checked.stderr.splitlines()), checked.stderr
    assert_clean_lines(checked.stderr, words, hidden)


@pytest.mark.parametrize(("make", "words", "hidden"), [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_a_start_with_it_says_what_is_wrong_and_exits_1(running, tmp_path, make, words, hidden):
    path = broken_copy(tmp_path, running.config, make)
    started = agent_command(path)
    assert started.returncode == 1, started.stdout + started.stderr
    assert_clean_lines(started.stdout + started.stderr, words, hidden)


@pytest.mark.parametrize(("make", "words", "hidden"), [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_a_reload_with_it_keeps_the_daemon_and_its_old_behaviour(running, make, words, hidden):
    agent, good = running, running.config.read_text()
    failed_before = agent.log().count("config.reload_failed")
    try:
        make(agent.config, good)
        agent.signal(signal.SIGHUP)
        wait_until(lambda: agent.log().count("config.reload_failed") > failed_before, timeout=20,
                   message=lambda: f"the reload to be refused; log:\n{agent.log()[-3000:]}")
    finally:
        if agent.config.is_dir():
            agent.config.rmdir()
        elif agent.config.exists() or agent.config.is_symlink():
            agent.config.unlink()
        agent.config.write_text(good)
    assert agent.process.poll() is None
    log = agent.log()
    rejected = [line.replace('\\"', '"') for line in log.splitlines() if "config.reload_rejected" in line]
    assert any(words in line for line in rejected), log[-3000:]
    if hidden is not None:
        assert hidden not in log
    document = agent.status()
    assert document["loki"]["url"] == "http://127.0.0.1:9/loki/api/v1/push"  # the old Loki target
    decided_before = agent.log().count("loop.decided")
    # The loop still works, at once, and still logs at info (a rejected "error" level was not applied).
    assert ctl(agent.config, "lock", "--reason", "after a bad reload").returncode == 0
    wait_until(lambda: agent.marker.exists(), timeout=5, message="the marker after a lock")
    assert ctl(agent.config, "unlock").returncode == 0
    wait_until(lambda: not agent.marker.exists(), timeout=5, message="no marker after unlock")
    wait_until(lambda: agent.log().count("loop.decided") > decided_before, timeout=5,
               message="info lines still logged")


def test_a_byte_order_mark_is_no_problem(tmp_path):
    config = write_config(tmp_path)
    config.write_bytes(b"\xef\xbb\xbf" + config.read_bytes())
    checked = agent_command(config, "--check-config")
    assert checked.returncode == 0, checked.stderr


def test_a_load_balancer_with_its_own_state_dir_needs_no_marker_or_lock_setting(tmp_path):
    state = tmp_path / "lb-state"
    state.mkdir()
    config = tmp_path / "agent.toml"
    config.write_text(f'[agent]\nstate_dir = "{state}"\nstatus_file = "{tmp_path}/status.json"\n')
    assert agent_command(config, "--check-config").returncode == 0
    agent = Agent(tmp_path, config)
    try:
        agent.wait_ready()
        assert agent.status()["maintenance"]["marker"] == str(state / "maintenance")
    finally:
        agent.stop()


# -- ctl ----------------------------------------------------------------------------------------


@pytest.fixture
def agent(agent_factory):
    return agent_factory()


@pytest.mark.parametrize(("args", "words"), [
    pytest.param(["lock", "--reason", "\x1b[2J\nmaintenance: off"], "the reason contains a control character",
                 id="escape-sequence-and-newline"),
    pytest.param(["lock", "--reason", "x" * 70_000], "the reason has 70000 characters, at most 1000",
                 id="seventy-thousand-characters"),
    pytest.param(["lock", "--timeout", "-1s"], "expected a duration greater than zero", id="negative-timeout"),
    pytest.param(["lock", "--timeout", "soon"], 'expected a duration such as "2s"', id="word-timeout"),
    pytest.param(["unlock", "--bogus"], "unrecognized arguments", id="unknown-option"),
])
def test_ctl_refuses_bad_arguments_in_one_line_with_exit_2_and_locks_nothing(agent, args, words):
    refused = ctl(agent.config, *args)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert refused.stderr.count("\n") == 1 and words in refused.stderr, refused.stderr
    assert "Traceback" not in refused.stderr
    assert not agent.lock.exists()


def test_ctl_refuses_a_reason_that_is_not_utf8_in_one_line(agent):
    environ = dict(os.environ, PYTHONPATH=str(REPO))
    refused = subprocess.run([sys.executable.encode(), b"-m", b"pretix_agent.ctl", b"-c", bytes(agent.config),
                              b"lock", b"--reason", b"caf\xe9"], capture_output=True, env=environ, timeout=30)
    assert refused.returncode == 2
    assert refused.stderr.decode().count("\n") == 1 and b"not valid UTF-8" in refused.stderr
    assert not agent.lock.exists()


def test_ctl_takes_a_bare_number_of_seconds_as_the_timeout(agent):
    locked = ctl(agent.config, "lock", "--timeout", "5")
    assert locked.returncode == 0, locked.stderr


def test_a_hand_written_lock_reason_reaches_the_terminal_escaped(agent):
    agent.lock.write_text(json.dumps({"pretix_agent_lock": 1, "by": "mallory\x1b]0;owned\x07",
                                      "reason": "\x1b[2J\nmaintenance: off"}))
    agent.wait_status(lambda d: d["maintenance"].get("on") is True)
    shown = ctl(agent.config, "status")
    assert "\x1b" not in shown.stdout and "\x07" not in shown.stdout
    assert "\\x1b[2J\\nmaintenance: off" in shown.stdout
    assert not any(line.startswith("maintenance: off") for line in shown.stdout.splitlines())


def test_status_into_a_closed_pipe_costs_the_output_not_a_traceback(agent):
    read, write = os.pipe()
    os.close(read)
    environ = dict(os.environ, PYTHONPATH=str(REPO))
    try:
        shown = subprocess.run([sys.executable, "-m", "pretix_agent.ctl", "-c", str(agent.config), "status"],
                               stdout=write, stderr=subprocess.PIPE, text=True, env=environ, timeout=30)
    finally:
        os.close(write)
    assert shown.stderr == ""
    assert shown.returncode in (0, 1)  # what status says, not a crash


@pytest.mark.parametrize(("change", "words"), [
    pytest.param({"maintenance": []}, "maintenance: expected an object, got an array", id="maintenance-an-array"),
    pytest.param({"checks": {"db": "failing"}}, "checks.db: expected an object, got a string", id="check-a-string"),
    pytest.param({"pid": "12"}, "pid: expected an integer, got a string", id="pid-a-string"),
])
def test_a_status_file_of_the_wrong_shape_is_said_in_one_line_with_exit_3(tmp_path, change, words):
    config = write_config(tmp_path)
    document = {"format": 1, "state": "running", "written_at": "x", "written_at_unix": 1.0, "stale_after": 10.0,
                "node": "n", "pid": 1, "version": "0", "started_at": "x", "config": "x", "sentence": "",
                "cycles": 1, "healthy": True, **change}
    (tmp_path / "status.json").write_text(json.dumps(document))
    shown = ctl(config, "status")
    assert shown.returncode == 3
    assert shown.stderr.count("\n") == 1 and words in shown.stderr, shown.stderr


# -- the directory of the maintenance files --------------------------------------------------------


def test_a_state_directory_deleted_and_recreated_is_watched_again_without_waiting_for_the_backstop(agent_factory):
    agent = agent_factory()
    config = agent.config.read_text().replace('reconcile_interval = "2s"', 'reconcile_interval = "60s"')
    agent.config.write_text(config)
    agent.signal(signal.SIGHUP)
    wait_until(lambda: "config.reloaded" in agent.log(), message="the reload")
    state = agent.lock.parent
    for entry in state.iterdir():
        entry.unlink()
    state.rmdir()
    document = agent.wait_status(lambda d: d["degraded"], timeout=10)
    assert "does not exist" in document["degraded"][0]
    assert "DEGRADED" in ctl(agent.config, "status").stdout
    state.mkdir()
    agent.wait_status(lambda d: not d["degraded"], timeout=10)
    agent.lock.touch()
    wait_until(lambda: agent.marker.exists(), timeout=5, message="the marker well before the 60 s backstop")
    # Replaced by another directory of the same name: the same.
    state.rename(state.with_name("state.old"))
    state.mkdir()
    agent.wait_status(lambda d: not d["degraded"] and d["maintenance"]["watch"] == "ok", timeout=10)
    agent.lock.touch()
    wait_until(lambda: agent.marker.exists(), timeout=5, message="the marker in the new directory")
    assert "maintenance.watch_restored" in agent.log()


@pytest.fixture
def small_mount(tmp_path):
    directory = tmp_path / "state"
    directory.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(directory)]).returncode:
        pytest.fail("cannot mount a tmpfs here: this test needs root")
    yield directory
    subprocess.run(["umount", "-l", str(directory)], check=False)


def test_lock_on_a_full_disk_with_a_lock_already_there_says_already_locked(agent_factory, small_mount):
    agent = agent_factory()
    assert ctl(agent.config, "lock", "--reason", "first").returncode == 0
    filler = small_mount / "filler"
    fd = os.open(filler, os.O_CREAT | os.O_WRONLY)
    try:
        while os.write(fd, b"\0" * 4096):
            pass
    except OSError:
        pass
    finally:
        os.close(fd)
    again = ctl(agent.config, "lock", "--reason", "second")
    assert again.returncode == 0, again.stderr
    assert "already locked" in again.stdout and "(first)" in again.stdout
    cycles = agent.status()["cycles"]
    agent.wait_status(lambda d: d["cycles"] >= cycles + 2)
    assert "maintenance.apply_failed" not in agent.log()


# -- the agent-check port ------------------------------------------------------------------------


def _ask(port: int, source: str) -> bytes:
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(source, 0)) as conn:
        conn.settimeout(5)
        return conn.recv(100)


def test_a_source_outside_the_allow_list_is_closed_unanswered_and_a_reload_widens_it_in_place(agent_with_port):
    agent, port = agent_with_port(lambda port: f'[agent_check]\nlisten = "127.0.0.1:{port}"\n'
                                                'allow = ["127.0.0.1/32"]\n')
    assert _ask(port, "127.0.0.1") == b"up 100%\n"
    assert _ask(port, "127.0.0.2") == b""
    document = agent.wait_status(lambda d: d["agent_check"]["refused"] == 1)
    assert document["agent_check"]["last_refused"] == "127.0.0.2"
    assert "agent_check.refused" in agent.log()
    agent.config.write_text(agent.config.read_text().replace('"127.0.0.1/32"', '"127.0.0.0/8"'))
    agent.signal(signal.SIGHUP)
    wait_until(lambda: "config.reloaded" in agent.log(), message="the reload")
    assert _ask(port, "127.0.0.2") == b"up 100%\n"  # the same socket, the new rule
