"""The Redis probe against a real master and read-only replica (tests/integration/redis_fixture.py)."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from functools import partial

import pytest
import redis as redis_py

from pretix_agent.checks import celery
from pretix_agent.checks import redis as redis_check
from pretix_agent.checks.model import Deadline
from pretix_agent.config import RedisCheck
from tests.ports import refused_port
from tests.waiting import wait_until

from . import redis_fixture
from .check_helpers import GARBAGE, garbage_server, run_like_the_runner

pytestmark = pytest.mark.integration

_reason = redis_fixture.redis_unavailable_reason()
if _reason:
    pytest.skip(_reason, allow_module_level=True)

TIMEOUT = 1.0
MARGIN = 0.3
KEY = "pretix-agent:probe:test:redis"


@pytest.fixture(scope="module")
def rp() -> Iterator[redis_fixture.RedisReplicationPair]:
    with redis_fixture.RedisReplicationPair() as pair:
        yield pair


@pytest.fixture
def pair(rp):
    """Every test finds (and leaves) the pair replicating, with empty queues and no maxmemory."""
    yield rp
    rp.sigcont("master")
    rp.set_maxmemory(0)
    rp.clear_fill()
    with rp.client() as c:
        c.delete(*(key for queue in redis_fixture.PRETIX_QUEUES
                   for layout in ((":", (0, 4, 8)), ("\x06\x16", (0, 3, 6, 9)))
                   for key in celery.queue_keys(queue, *layout)))
    rp.wait_link("up", timeout=15)


def check(url: str, **changes) -> RedisCheck:
    base = RedisCheck(url=url, write_probe=True, max_latency=0.25, max_memory_ratio=0.95, max_master_io=30.0,
                      queues=(), max_queue_length=1000, max_queue_age=300.0)
    return dataclasses.replace(base, **changes)


def probe(options: RedisCheck, timeout: float = TIMEOUT, memory: celery.QueueMemoryCell | None = None):
    return redis_check.probe(options, Deadline(timeout), probe_key=KEY, queue_memory=memory)


def test_healthy_master_passes_and_the_write_probe_leaves_a_key_that_expires(pair):
    result = probe(check(pair.url(), queues=redis_fixture.PRETIX_QUEUES))
    assert result.outcome == "pass", result.reason
    assert result.values["role"] == "master"
    assert result.values["writable"] is True
    assert result.values["queues"] == dict.fromkeys(redis_fixture.PRETIX_QUEUES, 0)
    assert result.values["memory_ratio"] is None  # no maxmemory: not a fake 0
    with pair.client() as c:
        assert 0 < c.pttl(KEY) <= redis_check.PROBE_KEY_TTL_MS


def test_the_replica_passes_reads_reports_its_link_and_fails_the_write_probe_as_read_only(pair):
    reads_only = probe(check(pair.replica_url(), write_probe=False))
    assert reads_only.outcome == "pass", reads_only.reason
    assert reads_only.values["role"] == "replica"
    assert reads_only.values["master_link_status"] == "up"
    assert reads_only.values["master_last_io_seconds_ago"] is not None
    result = probe(check(pair.replica_url()))
    assert result.outcome == "fail"
    assert result.reason == "read-only: the write probe was refused (You can't write against a read only replica.)"
    assert result.values["writable"] is False
    assert not result.hard


def test_a_queue_over_the_limit_fails_with_every_depth_counting_pretix_priority_lists(pair):
    pair.push_celery_messages("mail", 4)
    pair.push_celery_messages("mail", 2, priority=5)  # pretix's default priority: kombu puts these on "mail:4"
    pair.push_celery_messages("checkout", 1, priority=9)  # pretix's low priority: "checkout:8"
    result = probe(check(pair.url(), queues=redis_fixture.PRETIX_QUEUES, max_queue_length=5))
    assert result.outcome == "fail"
    assert result.reason == "queue over 5 tasks: mail 6 (mail 4, mail:4 2)"
    assert result.values["queues"] == {"default": 0, "checkout": 1, "mail": 6, "background": 0, "notifications": 0}
    assert result.values["queue_lists"] == {"checkout:8": 1, "mail": 4, "mail:4": 2}


def test_kombus_own_layout_is_read_when_configured(pair):
    pair.push_celery_messages("mail", 3, priority=5, sep="\x06\x16", steps=(0, 3, 6, 9))  # "mail\x06\x163"
    kombu = probe(check(pair.url(), queues=("mail",), queue_separator="\x06\x16", priority_steps=(0, 3, 6, 9)))
    assert kombu.values["queues"] == {"mail": 3}
    assert probe(check(pair.url(), queues=("mail",))).values["queues"] == {"mail": 0}


def test_the_oldest_task_ages_across_probes_until_a_worker_takes_it_and_then_fails_over_max_queue_age(pair):
    memory = celery.QueueMemoryCell()
    options = check(pair.url(), queues=("default",), max_queue_age=0.2)
    pair.push_celery_messages("default", 2, priority=5)
    first = probe(options, memory=memory)
    assert first.outcome == "pass", first.reason
    assert first.values["queue_ages"] == {"default": 0.0}
    pair.push_celery_messages("default", 1, priority=5)  # newer tasks do not reset the age of the oldest
    aged = wait_until(lambda: (r := probe(options, memory=memory)).outcome == "fail" and r, timeout=10,
                      message="the oldest task to pass max_queue_age")
    assert aged.reason.startswith("oldest task waiting over 0.2 s: default in default:4 for ")
    assert aged.values["queue_ages"]["default"] >= 0.2  # rounded to 0.1 s in the values
    with pair.client() as c:  # a worker takes the oldest task: the next one is new at the head
        c.rpop("default:4")
    taken = probe(options, memory=memory)
    assert taken.outcome == "pass", taken.reason
    assert taken.values["queue_ages"] == {"default": 0.0}


def test_memory_over_the_ratio_fails_and_a_full_redis_refuses_the_write_probe(pair):
    pair.fill(2_000_000)
    pair.set_maxmemory(pair.used_memory() - 1_000_000)  # over the limit: noeviction refuses writes
    result = probe(check(pair.url()))
    assert result.outcome == "fail"
    assert result.reason.startswith("writes refused, out of memory (")
    assert "memory at 1" in result.reason and "% of maxmemory (max 95%)" in result.reason
    assert result.values["memory_ratio"] > 0.95


def test_memory_ratio_alone_fails_while_writes_still_work(pair):
    used = pair.used_memory()
    pair.set_maxmemory(int(used / 0.8))  # ~80 % full
    result = probe(check(pair.url(), max_memory_ratio=0.5))
    assert result.outcome == "fail"
    assert result.values["writable"] is True
    assert result.reason.startswith("memory at ") and result.reason.endswith("of maxmemory (max 50%)")


def test_sigstopped_redis_fails_as_timeout_within_the_timeout_and_leaves_no_thread(pair):
    pair.sigstop("master")
    try:
        run = run_like_the_runner(partial(redis_check.probe, check(pair.url()), probe_key=KEY), TIMEOUT)
    finally:
        pair.sigcont("master")
    print(f"SIGSTOPped Redis: probe returned after {run.seconds:.3f} s (timeout {TIMEOUT} s)")
    assert run.ended
    assert run.result is not None and run.result.outcome == "fail"
    assert run.result.reason.startswith(f"timeout: no answer from 127.0.0.1:{pair.master.port}/0 within 1 s")
    assert not run.result.hard
    assert run.seconds <= TIMEOUT + MARGIN


def test_abort_frees_a_probe_waiting_on_a_stopped_redis_long_before_its_timeout(pair):
    pair.sigstop("master")
    try:
        run = run_like_the_runner(partial(redis_check.probe, check(pair.url()), probe_key=KEY), timeout=30.0,
                                  abort_after=0.5)
    finally:
        pair.sigcont("master")
    print(f"aborted Redis probe: returned {run.seconds - 0.5:.3f} s after the abort")
    assert run.aborted and run.ended
    assert run.seconds < 0.5 + MARGIN
    assert run.result is not None and run.result.reason.startswith("timeout:")


def test_a_least_privilege_acl_user_can_run_every_part_of_the_probe_and_a_wrong_password_fails(pair):
    with pair.client() as c:  # the ACL from docs/checks.md
        c.execute_command("ACL", "SETUSER", "pretix-agent", "on", ">agent-Pw-1", "resetkeys", "%R~*",
                          "%W~pretix-agent:probe:*", "-@all", "+ping", "+info", "+llen", "+lindex", "+set")
    url = f"redis://pretix-agent:agent-Pw-1@127.0.0.1:{pair.master.port}/0"
    result = probe(check(url, queues=("default", "mail")))
    assert result.outcome == "pass", result.reason
    wrong = probe(check(url.replace("agent-Pw-1", "Wrong-Pw-2")))
    assert wrong.outcome == "fail" and not wrong.hard
    assert wrong.reason.startswith("authentication failed: ")
    assert "Wrong-Pw-2" not in repr(wrong)
    with pair.client() as c:
        c.execute_command("ACL", "SETUSER", "limited", "reset", "on", ">pw", "+ping", "+info", "+llen", "%R~*")
    denied = probe(check(f"redis://limited:pw@127.0.0.1:{pair.master.port}/0"))
    assert denied.outcome == "unknown"
    assert denied.reason.startswith("cannot measure: write probe not permitted")


def test_a_refused_port_and_a_missing_unix_socket_are_hard_failures(tmp_path):
    with refused_port() as port:
        refused = probe(check(f"redis://:Url-Pw@127.0.0.1:{port}/0"))
    assert refused.outcome == "fail" and refused.hard
    assert refused.reason == f"Error 111 connecting to 127.0.0.1:{port}. Connection refused."
    assert "Url-Pw" not in repr(refused)
    missing = probe(check(f"unix://{tmp_path}/redis.sock"))
    assert missing.outcome == "fail" and missing.hard
    assert missing.reason.endswith("No such file or directory.")


def test_a_master_over_its_unix_socket_passes(pair):
    assert probe(check(pair.master.unix_url())).outcome == "pass"


def test_killed_master_makes_the_replicas_probe_report_the_link_down():
    with redis_fixture.RedisReplicationPair() as own:
        options = check(own.replica_url(), write_probe=False)
        assert probe(options).outcome == "pass"
        started = time.monotonic()
        own.kill_master()
        result = wait_until(lambda: (r := probe(options)).outcome == "fail" and r, timeout=5,
                            message="the replica's probe to fail")
        print(f"killed Redis master: replica's probe failing {time.monotonic() - started:.3f} s later")
        assert result.reason.startswith("master link down")
        assert result.values["master_link_status"] == "down"
        assert result.values["master_last_io_seconds_ago"] is None  # -1 in INFO: not a number of seconds
        assert "master_link_down_since_seconds" in result.values
        master_probe = probe(check(own.url()))
        assert master_probe.outcome == "fail" and master_probe.hard


def test_redis_py_is_used_without_retries_so_one_probe_is_one_attempt(monkeypatch):
    # redis-py 6 and later retry three times by default; the probe asks for none
    attempts = []
    original = redis_py.Connection._connect

    def counting_connect(self):
        attempts.append(1)
        return original(self)

    monkeypatch.setattr(redis_py.Connection, "_connect", counting_connect)
    with refused_port() as port:
        result = probe(check(f"redis://127.0.0.1:{port}/0"))
    assert result.hard
    assert len(attempts) == 1


@pytest.mark.parametrize("payload", GARBAGE)
def test_something_else_answering_on_the_port_fails_softly_in_one_line(payload):
    with garbage_server(payload) as port:
        result = probe(check(f"redis://127.0.0.1:{port}/0", queues=("default",)))
    assert result.outcome == "fail" and not result.hard
    assert result.reason.isprintable() and result.reason
