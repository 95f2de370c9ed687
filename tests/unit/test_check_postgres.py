"""The PostgreSQL check's decisions, from plain observed values (no server)."""

from __future__ import annotations

import dataclasses

import pytest

from pretix_agent.checks import pg_connection, postgres
from pretix_agent.checks.model import Deadline
from pretix_agent.checks.postgres import PostgresObservation, Standby, classify, format_bytes, parse_lsn
from pretix_agent.config import PostgresCheck

MiB = 1024**2
LSN = 0x3_0000_0000  # some position


def options(**changes) -> PostgresCheck:
    base = PostgresCheck(dsn="host=db2 user=pretix_agent", primary_dsn="", role="any", max_lag_bytes=16 * MiB,
                         max_lag_seconds=30.0)
    return dataclasses.replace(base, **changes)


def standby(**changes) -> PostgresObservation:
    """A healthy streaming standby that has replayed everything it received, on an idle primary
    (the last replayed transaction committed an hour ago)."""
    base = PostgresObservation(in_recovery=True, read_only=True, receive_lsn=LSN, replay_lsn=LSN, replay_age=3600.0,
                               receiver_status="streaming", replay_paused=False)
    return dataclasses.replace(base, **changes)


def primary(**changes) -> PostgresObservation:
    base = PostgresObservation(in_recovery=False, read_only=False,
                               standbys=(Standby("replica", "10.0.0.2/32", "streaming", "async", 0),))
    return dataclasses.replace(base, **changes)


# ---------------------------------------------------------------------------------------------
# LSNs and sizes


@pytest.mark.parametrize(("text", "number"), [
    ("0/0", 0), ("0/3000000", 0x3000000), ("16/B374D848", (0x16 << 32) + 0xB374D848), (None, None),
])
def test_parse_lsn_reads_postgresql_notation(text, number):
    assert parse_lsn(text) == number
    assert postgres.format_lsn(number) == (None if text is None else text.upper())


@pytest.mark.parametrize(("count", "text"), [
    (0, "0 B"), (812, "812 B"), (1536, "1.5 KiB"), (16 * MiB, "16.0 MiB"), (3 * 1024**3, "3.0 GiB"),
    (5 * 1024**4, "5120.0 GiB"),
])
def test_format_bytes_uses_binary_units(count, text):
    assert format_bytes(count) == text


# ---------------------------------------------------------------------------------------------
# standby


def test_caught_up_standby_on_an_idle_primary_passes_with_time_lag_zero_however_old_the_last_commit():
    result = classify(standby(replay_age=86400.0), options(max_lag_seconds=2.0))
    assert result.outcome == "pass"
    assert result.reason == "standby streaming, replay 0 B / 0.0 s behind"
    assert result.values["lag_seconds"] == 0.0
    assert result.values["lag_bytes"] == 0
    assert result.values["role"] == "standby"


def test_standby_behind_received_wal_uses_the_age_of_the_last_replayed_commit_as_time_lag():
    result = classify(standby(receive_lsn=LSN + 4096, replay_age=5.25), options(max_lag_seconds=2.0))
    assert result.outcome == "fail"
    assert result.reason == "replay 5.2 s behind (max 2 s)"
    assert result.values["lag_seconds"] == 5.25
    assert result.values["lag_bytes"] == 4096
    assert not result.hard


def test_first_wal_after_a_quiet_spell_is_no_time_lag_older_than_the_last_probe_that_saw_replay_caught_up():
    # Measured in the pretix tier: 24 bytes received but not yet replayed, the last replayed commit
    # 21.6 s old (no orders for 21 s), the replay caught up at the probe a second before.
    seen = standby(receive_lsn=LSN + 24, replay_age=21.6, caught_up_age=1.0)
    result = classify(seen, options(max_lag_seconds=5.0))
    assert result.outcome == "pass"
    assert result.values["lag_seconds"] == 1.0
    assert result.reason == "standby streaming, replay 24 B / 1.0 s behind"


def test_a_replay_long_behind_is_as_far_behind_as_its_last_replayed_commit_when_that_is_more_recent():
    seen = standby(receive_lsn=LSN + 4096, replay_age=7.5, caught_up_age=40.0)
    result = classify(seen, options(max_lag_seconds=5.0))
    assert result.outcome == "fail"
    assert result.values["lag_seconds"] == 7.5


class FakeKeeper:
    """Stands in for the probe's ConnectionKeeper: each run returns the next observation."""

    def __init__(self, observations):
        self.observations = list(observations)

    def run(self, deadline, observe):
        return self.observations.pop(0)

    def close(self):
        pass


def test_the_probe_remembers_when_it_last_saw_the_replay_caught_up_and_bounds_the_time_lag_by_it():
    now = [100.0]
    probe = postgres.PostgresProbe(options(max_lag_seconds=5.0), keep=False, clock=lambda: now[0])
    probe.server = FakeKeeper([
        standby(receive_lsn=LSN + 24, replay_age=30.0),  # nothing seen caught up yet: the commit's age
        standby(replay_age=31.0),  # caught up (at 101)
        standby(receive_lsn=LSN + 24, replay_age=32.0),  # a second later: at most a second behind
        standby(receive_lsn=LSN + 8192, replay_age=39.0),  # stuck since: as long as since 101
    ])
    results = []
    for _ in range(4):
        results.append(probe(Deadline(1.0)))
        now[0] += 1.0
    assert [r.values["lag_seconds"] for r in results] == [30.0, 0.0, 1.0, 2.0]
    assert [r.outcome for r in results] == ["fail", "pass", "pass", "pass"]


def test_standby_behind_by_more_than_max_lag_bytes_fails():
    result = classify(standby(receive_lsn=LSN + 20 * MiB, replay_age=1.0), options())
    assert result.outcome == "fail"
    assert result.reason == "replay 20.0 MiB behind received WAL (max 16.0 MiB)"


def test_standby_a_little_behind_passes_and_says_how_far():
    result = classify(standby(receive_lsn=LSN + 1000, replay_age=0.4), options())
    assert result.outcome == "pass"
    assert result.reason == "standby streaming, replay 1000 B / 0.4 s behind"


def test_replay_position_ahead_of_the_receive_position_counts_as_caught_up():
    # right after the WAL receiver restarts, pg_last_wal_receive_lsn() can be behind the replay
    result = classify(standby(receive_lsn=LSN - 8192), options(max_lag_seconds=2.0))
    assert result.outcome == "pass"
    assert result.values["lag_bytes"] == 0
    assert result.values["lag_seconds"] == 0.0


def test_cut_off_standby_fails_although_its_receive_and_replay_positions_are_equal():
    result = classify(standby(receiver_status=None), options())
    assert result.outcome == "fail"
    assert result.reason == "WAL receiver not streaming (no WAL receiver), replay 0 B / 0.0 s behind"
    assert result.values["receiver_status"] is None
    assert not result.hard


@pytest.mark.parametrize("status", ["starting", "waiting", "restarting", "stopping"])
def test_wal_receiver_in_any_state_but_streaming_fails_with_that_state(status):
    result = classify(standby(receiver_status=status), options())
    assert result.outcome == "fail"
    assert result.reason.startswith(f"WAL receiver not streaming (status {status})")


def test_paused_replay_fails_even_when_little_behind_and_shows_the_lag():
    result = classify(standby(replay_paused=True, receive_lsn=LSN + 100, replay_age=1.0), options())
    assert result.outcome == "fail"
    assert result.reason == "replay paused, 100 B / 1.0 s behind"
    assert result.values["replay_paused"] is True
    assert result.values["lag_bytes"] == 100


def test_paused_and_far_behind_lists_every_problem_in_one_line():
    result = classify(standby(replay_paused=True, receive_lsn=LSN + 40 * MiB, replay_age=12.0),
                      options(max_lag_seconds=2.0))
    assert result.reason == ("replay paused, 40.0 MiB / 12.0 s behind; replay 40.0 MiB behind received WAL "
                             "(max 16.0 MiB); replay 12.0 s behind (max 2 s)")


def test_lag_to_the_primary_is_reported_and_judged_when_the_primary_answers():
    check = options(primary_dsn="host=db1 user=pretix_agent")
    ok = classify(standby(primary_lsn=LSN + 2048), check)
    assert ok.outcome == "pass"
    assert ok.reason == "standby streaming, replay 0 B / 0.0 s behind, 2.0 KiB behind the primary"
    assert ok.values["primary_lag_bytes"] == 2048
    far = classify(standby(primary_lsn=LSN + 17 * MiB), check)
    assert far.outcome == "fail"
    assert far.reason == "replay 17.0 MiB behind the primary (max 16.0 MiB)"


def test_unreachable_primary_leaves_its_lag_unknown_and_does_not_fail_the_standby():
    check = options(primary_dsn="host=db1 user=pretix_agent")
    result = classify(standby(primary_problem="primary_dsn: connection refused"), check)
    assert result.outcome == "pass"
    assert result.reason == ("standby streaming, replay 0 B / 0.0 s behind; lag to the primary not measured: "
                             "primary_dsn: connection refused")
    assert result.values["primary_lag_bytes"] is None
    assert result.values["primary_problem"] == "primary_dsn: connection refused"


def test_behind_with_no_replayed_commit_yet_has_an_unknown_time_lag_not_zero():
    result = classify(standby(receive_lsn=LSN + 100, replay_age=None), options())
    assert result.outcome == "pass"
    assert result.values["lag_seconds"] is None
    assert result.reason == "standby streaming, replay 100 B / unknown time behind"


def test_unknown_positions_on_a_streaming_standby_are_unknown_not_passing():
    result = classify(standby(receive_lsn=None), options())
    assert result.outcome == "unknown"
    assert result.values["lag_bytes"] is None


def test_clock_skew_never_makes_a_negative_time_lag():
    result = classify(standby(receive_lsn=LSN + 10, replay_age=-0.3), options())
    assert result.values["lag_seconds"] == 0.0


def test_standby_where_a_primary_is_expected_fails_as_not_writable():
    result = classify(standby(), options(role="primary"))
    assert result.outcome == "fail"
    assert result.reason == "not writable: in recovery (a standby), expected a primary"


def test_standby_expected_and_found_passes():
    assert classify(standby(), options(role="standby")).outcome == "pass"


# ---------------------------------------------------------------------------------------------
# primary


def test_writable_primary_passes_and_lists_its_standbys_with_state_and_lag():
    result = classify(primary(), options())
    assert result.outcome == "pass"
    assert result.reason == "primary, writable, 1 standby: replica (streaming, 0 B behind)"
    assert result.values == {"role": "primary", "read_only": False, "standbys": [
        {"name": "replica", "client_addr": "10.0.0.2/32", "state": "streaming", "sync_state": "async",
         "lag_bytes": 0}]}


def test_primary_without_standbys_still_passes():
    result = classify(primary(standbys=()), options(role="primary"))
    assert result.outcome == "pass"
    assert result.reason == "primary, writable, no standby connected"
    assert result.values["standbys"] == []


def test_primary_reports_each_standby_even_one_catching_up_or_hidden():
    standbys = (Standby("a", None, "catchup", "async", 3 * MiB), Standby("b", None, None, None, None),
                Standby("c", None, "streaming", "sync", None))
    result = classify(primary(standbys=standbys), options())
    assert result.outcome == "pass"
    assert result.reason == ("primary, writable, 3 standbys: a (catchup, 3.0 MiB behind), "
                             "b (state hidden: the role needs pg_monitor), c (streaming, replay position unknown)")


def test_read_only_primary_fails_as_not_writable():
    result = classify(primary(read_only=True), options(role="primary"))
    assert result.outcome == "fail"
    assert result.reason.startswith("not writable: transaction_read_only is on")


def test_primary_where_a_standby_is_expected_fails():
    result = classify(primary(), options(role="standby"))
    assert result.outcome == "fail"
    assert result.reason == "is a primary (not in recovery), expected a standby"


# ---------------------------------------------------------------------------------------------
# reasons never carry a password (no server needed: these fail before connecting)


def test_an_unparsable_dsn_fails_without_echoing_its_words():
    result = postgres.probe(options(dsn="host=db2 password=se cret user=x"), Deadline(1.0))
    assert result.outcome == "fail"
    assert result.reason == 'invalid DSN: missing "=" after "…" in connection info string'
    assert "cret" not in repr(result)


def test_clean_drops_severity_prefixes_from_libpq_messages():
    line = 'connection to server at "10.0.0.1", port 5432 failed: FATAL:  password authentication failed for user "a"'
    assert pg_connection._clean(line) == (
        'connection to server at "10.0.0.1", port 5432 failed: password authentication failed for user "a"')
