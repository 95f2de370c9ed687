"""The Redis check's decisions, from plain observed values (no server)."""

from __future__ import annotations

import dataclasses

import pytest

from pretix_agent.checks import redis as redis_check
from pretix_agent.checks.celery import QueueReading
from pretix_agent.checks.model import Deadline
from pretix_agent.checks.redis import (
    WRITE_DENIED,
    WRITE_OK,
    WRITE_OOM,
    WRITE_READONLY,
    WRITE_REFUSED,
    RedisObservation,
    classify,
)
from pretix_agent.config import RedisCheck


def options(**changes) -> RedisCheck:
    base = RedisCheck(url="redis://127.0.0.1:6379/0", write_probe=True, max_latency=0.25, max_memory_ratio=0.95,
                      max_master_io=30.0, queues=(), max_queue_length=1000, max_queue_age=300.0)
    return dataclasses.replace(base, **changes)


def master(**changes) -> RedisObservation:
    base = RedisObservation(ping_seconds=0.0003, write=WRITE_OK, role="master", used_memory=1_000_000, maxmemory=0)
    return dataclasses.replace(base, **changes)


def replica(**changes) -> RedisObservation:
    base = RedisObservation(ping_seconds=0.0003, write=None, role="slave", master_link_status="up",
                            master_last_io_seconds_ago=1, used_memory=1_000_000, maxmemory=0)
    return dataclasses.replace(base, **changes)


def test_healthy_master_passes_with_one_sentence_and_its_values():
    result = classify(master(), options())
    assert result.outcome == "pass"
    assert result.reason == "master, PING 0.3 ms, writable, no maxmemory"
    assert result.values == {"latency_ms": 0.3, "role": "master", "writable": True, "used_memory": 1_000_000,
                             "maxmemory": None, "memory_ratio": None}


def test_slow_ping_fails_softly_with_the_latency():
    result = classify(master(ping_seconds=0.4), options(max_latency=0.25))
    assert result.outcome == "fail"
    assert result.reason == "PING took 400 ms (max 250 ms)"
    assert not result.hard


@pytest.mark.parametrize(("write", "error", "reason"), [
    (WRITE_READONLY, "You can't write against a read only replica.",
     "read-only: the write probe was refused (You can't write against a read only replica.)"),
    (WRITE_OOM, "OOM command not allowed when used memory > 'maxmemory'.",
     "writes refused, out of memory (OOM command not allowed when used memory > 'maxmemory'.)"),
    (WRITE_REFUSED, "MISCONF Redis is configured to save RDB snapshots, but it's currently unable to persist",
     "writes refused (MISCONF Redis is configured to save RDB snapshots, but it's currently unable to persist)"),
])
def test_refused_write_probe_fails_with_the_servers_answer(write, error, reason):
    result = classify(master(write=write, write_error=error), options())
    assert result.outcome == "fail"
    assert result.reason == reason
    assert result.values["writable"] is False


def test_write_probe_forbidden_by_the_acl_is_unknown_not_failing():
    result = classify(master(write=WRITE_DENIED, write_error="User pretix-agent has no permissions to run 'set'"),
                      options())
    assert result.outcome == "unknown"
    assert result.reason.startswith("cannot measure: write probe not permitted (User pretix-agent has no")


def test_write_probe_off_reports_writable_as_not_measured():
    result = classify(master(write=None), options(write_probe=False))
    assert result.outcome == "pass"
    assert result.values["writable"] is None
    assert "writable" not in result.reason


def test_replica_with_link_up_passes_and_reports_the_link():
    result = classify(replica(), options(write_probe=False))
    assert result.outcome == "pass"
    assert result.reason == "replica, PING 0.3 ms, master link up, last I/O 1 s ago, no maxmemory"
    assert result.values["master_link_status"] == "up"
    assert result.values["master_last_io_seconds_ago"] == 1
    assert result.values["role"] == "replica"


def test_replica_with_link_down_fails_with_since_when():
    result = classify(replica(master_link_status="down", master_last_io_seconds_ago=None,
                              master_link_down_since_seconds=42), options())
    assert result.outcome == "fail"
    assert result.reason == "master link down for 42 s"
    assert result.values["master_link_down_since_seconds"] == 42
    assert result.values["master_last_io_seconds_ago"] is None


def test_replica_that_has_heard_nothing_from_its_master_for_too_long_fails():
    # an idle master pings its replicas every 10 s: up to that is normal
    assert classify(replica(master_last_io_seconds_ago=10), options(max_master_io=30.0)).outcome == "pass"
    result = classify(replica(master_last_io_seconds_ago=31), options(max_master_io=30.0))
    assert result.outcome == "fail"
    assert result.reason == "no data from the master for 31 s (max 30 s)"


def test_memory_ratio_over_the_limit_fails_and_unlimited_memory_is_none_not_zero():
    result = classify(master(used_memory=970, maxmemory=1000), options(max_memory_ratio=0.95))
    assert result.outcome == "fail"
    assert result.reason == "memory at 97% of maxmemory (max 95%)"
    assert result.values["memory_ratio"] == 0.97
    unlimited = classify(master(used_memory=10**12, maxmemory=0), options())
    assert unlimited.outcome == "pass"
    assert unlimited.values["memory_ratio"] is None
    assert unlimited.values["maxmemory"] is None


def test_queue_depths_are_all_reported_and_any_over_the_limit_fails():
    depths = {"default": 3, "checkout": 0, "mail": 1500, "background": 2000, "notifications": 0}
    result = classify(master(queue_depths=depths), options(queues=tuple(depths), max_queue_length=1000))
    assert result.outcome == "fail"
    assert result.reason == "queue over 1000 tasks: mail 1500, background 2000"
    assert result.values["queues"] == depths


def test_short_queues_pass_and_appear_in_the_sentence():
    result = classify(master(queue_depths={"default": 2, "mail": 0}), options(queues=("default", "mail")))
    assert result.outcome == "pass"
    assert result.reason.endswith("queues default 2, mail 0")


def with_readings(readings: dict[str, QueueReading]) -> RedisObservation:
    return master(queue_depths={name: reading.depth for name, reading in readings.items()}, queue_readings=readings)


def test_pretix_priority_lists_count_and_a_long_queue_names_the_lists_its_tasks_wait_in():
    seen = with_readings({"default": QueueReading(depth=8, lists={"default:4": 8}, oldest_seconds=3.0,
                                                  oldest_list="default:4"),
                          "mail": QueueReading(depth=0)})
    result = classify(seen, options(queues=("default", "mail"), max_queue_length=5))
    assert result.outcome == "fail"
    assert result.reason == "queue over 5 tasks: default 8 (default:4 8)"
    assert result.values["queues"] == {"default": 8, "mail": 0}
    assert result.values["queue_lists"] == {"default:4": 8}


def test_an_oldest_task_waiting_over_max_queue_age_fails_naming_the_queue_its_list_and_the_age():
    seen = with_readings({"default": QueueReading(depth=4, lists={"default:4": 4}, oldest_seconds=12.4,
                                                  oldest_list="default:4"),
                          "checkout": QueueReading(depth=1, lists={"checkout:4": 1}, oldest_seconds=2.0,
                                                   oldest_list="checkout:4")})
    result = classify(seen, options(queues=("default", "checkout"), max_queue_age=10.0))
    assert result.outcome == "fail"
    assert not result.hard
    assert result.reason == "oldest task waiting over 10 s: default in default:4 for 12 s"
    assert result.values["queue_ages"] == {"default": 12.4, "checkout": 2.0}


def test_queue_ages_within_the_limit_pass_and_appear_in_the_sentence_empty_queues_have_none():
    seen = with_readings({"default": QueueReading(depth=2, lists={"default:4": 2}, oldest_seconds=1.0,
                                                  oldest_list="default:4"),
                          "mail": QueueReading(depth=0)})
    result = classify(seen, options(queues=("default", "mail")))
    assert result.outcome == "pass"
    assert result.reason.endswith("queues default 2 (oldest 1 s in default:4), mail 0")
    assert result.values["queue_ages"] == {"default": 1.0, "mail": None}


def test_a_queue_name_that_is_not_a_list_is_unknown():
    result = classify(master(queue_depths={"default": None}), options(queues=("default",)))
    assert result.outcome == "unknown"
    assert result.reason == "cannot measure: queue default is not a list"


def test_several_problems_are_listed_in_one_line():
    result = classify(replica(write=WRITE_READONLY, write_error="You can't write against a read only replica.",
                              master_link_status="down", master_link_down_since_seconds=3), options())
    assert result.reason == ("read-only: the write probe was refused (You can't write against a read only "
                             "replica.); master link down for 3 s")


@pytest.mark.parametrize(("value", "seconds"), [(None, None), (-1, None), ("-1", None), (0, 0), ("7", 7)])
def test_info_seconds_treats_minus_one_as_not_measured(value, seconds):
    assert redis_check.info_seconds(value) == seconds


@pytest.mark.parametrize(("url", "where"), [
    ("redis://127.0.0.1:6379/0", "127.0.0.1:6379/0"),
    ("redis://:s3cret@10.0.0.5/2", "10.0.0.5:6379/2"),
    ("rediss://agent:s3cret@[::1]:6380", "[::1]:6380"),
    ("unix:///run/redis/redis.sock?db=1", "/run/redis/redis.sock"),
])
def test_describe_url_names_the_server_without_credentials(url, where):
    assert redis_check.describe_url(url) == where


def test_url_secrets_finds_passwords_in_the_user_part_and_the_query():
    assert redis_check.url_secrets("redis://agent:pw1@h/0") == ["pw1"]
    assert redis_check.url_secrets("unix:///s.sock?password=pw2&db=1") == ["pw2"]
    assert redis_check.url_secrets("redis://h/0") == []


def test_an_unusable_url_fails_before_connecting_without_its_password():
    result = redis_check.probe(options(url="redis://:hunter2@127.0.0.1:notaport/0"), Deadline(1.0))
    assert result.outcome == "fail"
    assert result.reason.startswith("invalid URL")
    assert "hunter2" not in repr(result)


def test_a_refused_connection_is_a_hard_failure_found_through_the_exception_chain():
    import redis

    try:
        try:
            raise ConnectionRefusedError(111, "Connection refused")
        except OSError as error:
            raise redis.exceptions.ConnectionError("Error 111 connecting to 10.0.0.5:6379.") from error
    except redis.exceptions.ConnectionError as error:
        result = redis_check._failure(error, Deadline(1.0), "10.0.0.5:6379/0", "connecting", [])
    assert result.hard
    assert result.reason == "Error 111 connecting to 10.0.0.5:6379."


def test_an_error_after_the_deadline_was_aborted_is_a_soft_timeout():
    import redis

    deadline = Deadline(1.0)
    deadline.abort()
    result = redis_check._failure(redis.exceptions.ConnectionError("Connection closed by server."), deadline,
                                  "10.0.0.5:6379/0", "INFO", [])
    assert result.reason == "timeout: no answer from 10.0.0.5:6379/0 within 1 s (INFO)"
    assert not result.hard


def test_a_password_in_an_error_message_is_replaced():
    import redis

    result = redis_check._failure(redis.exceptions.AuthenticationError("bad password hunter2"), Deadline(1.0),
                                  "h:6379/0", "connecting", ["hunter2"])
    assert result.reason == "authentication failed: bad password ***"


def test_info_fields_keeps_the_servers_text_for_every_field_and_drops_section_lines():
    answer = (b"# Replication\r\nrole:slave\r\nmaster_link_status:down\r\nmaster_last_io_seconds_ago:-1\r\n\r\n"
              b"# Memory\r\nused_memory:1004608\r\nmaxmemory:0\r\nused_memory_human:981.06K\r\n")
    fields = redis_check.info_fields(answer)
    assert fields == {"role": "slave", "master_link_status": "down", "master_last_io_seconds_ago": "-1",
                      "used_memory": "1004608", "maxmemory": "0", "used_memory_human": "981.06K"}
    assert redis_check.info_seconds(fields["master_last_io_seconds_ago"]) is None
    assert redis_check.info_fields("role:master\n") == {"role": "master"}  # decoded answers too
