"""The maintenance decision, with plain values: no files, no clock."""

from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from pretix_agent.maintenance import decide as m
from pretix_agent.schedule import Schedule, Window, parse_weekly_time

BERLIN = ZoneInfo("Europe/Berlin")
# Sunday 22:00 to Monday 05:00 Berlin time, the weekly accounting cut-off of the seed.
WEEKLY = Schedule((Window(parse_weekly_time("Sun 22:00"), parse_weekly_time("Mon 05:00")),), BERLIN)
OUTSIDE = datetime(2026, 11, 25, 12, 0, tzinfo=BERLIN)  # a Wednesday
INSIDE = datetime(2026, 11, 29, 23, 0, tzinfo=BERLIN)  # Sunday night

NO_LOCK = m.LockInfo(False)
LOCK = m.LockInfo(True, lock_id="abc", by="alice", at="2026-11-25T11:00:00+00:00", reason="deploy")
NO_MARKER = m.MarkerInfo(False)
OUR_MARKER = m.MarkerInfo(True, ours=True, cause="lock")
WINDOW_MARKER = m.MarkerInfo(True, ours=True, cause="window")
HAND_MARKER = m.MarkerInfo(True, ours=False)
ON_LOCK = m.State(True, "lock")
ON_WINDOW = m.State(True, "window")
OFF = m.State(False, None)


def decide(now, lock, marker, previous):
    return m.decide(WEEKLY, m.Observation(now=now, lock=lock, marker=marker), previous)


def names(decision):
    return [event.name for event in decision.events]


def test_no_lock_outside_window_and_no_marker_needs_nothing():
    decision = decide(OUTSIDE, NO_LOCK, NO_MARKER, OFF)
    assert decision.actions == () and decision.events == ()
    assert decision.state == OFF
    assert decision.sentence == "maintenance off; next window starts Sun 2026-11-29 22:00 CET"
    assert decision.next_change == datetime(2026, 11, 29, 21, 0, tzinfo=timezone.utc)


def test_lock_turns_maintenance_on_with_an_event_naming_the_cause():
    decision = decide(OUTSIDE, LOCK, NO_MARKER, OFF)
    assert decision.actions == (m.WriteMarker("lock"),)
    assert decision.state == ON_LOCK
    (event,) = decision.events
    assert (event.name, event.fields["old"], event.fields["new"], event.fields["cause"]) == (
        "maintenance.enabled", "off", "on", "lock")
    assert decision.next_change is None  # a lock only ends through unlock


def test_lock_written_by_ctl_with_its_marker_needs_no_action_but_is_announced():
    decision = decide(OUTSIDE, LOCK, OUR_MARKER, OFF)
    assert decision.actions == ()
    assert names(decision) == ["maintenance.enabled"]


def test_window_start_turns_maintenance_on_until_the_window_ends():
    decision = decide(INSIDE, NO_LOCK, NO_MARKER, OFF)
    assert decision.actions == (m.WriteMarker("window"),)
    assert decision.state == ON_WINDOW
    assert decision.next_change == datetime(2026, 11, 30, 4, 0, tzinfo=timezone.utc)
    assert decision.sentence == "maintenance on: inside a window until Mon 2026-11-30 05:00 CET"


def test_window_end_removes_the_agents_marker():
    decision = decide(INSIDE + timedelta(hours=6), NO_LOCK, WINDOW_MARKER, ON_WINDOW)
    assert decision.actions == (m.RemoveMarker(),)
    assert decision.events[0].fields["cause"] == "window"
    assert decision.state == OFF


def test_unlock_outside_window_removes_the_marker_with_cause_unlock():
    decision = decide(OUTSIDE, NO_LOCK, OUR_MARKER, ON_LOCK)
    assert decision.actions == (m.RemoveMarker(),)
    assert decision.events[0].fields == {"old": "on", "new": "off", "cause": "unlock",
                                         "next_change": "2026-11-29T21:00:00+00:00"}


def test_unlock_inside_window_keeps_marker():
    decision = decide(INSIDE, NO_LOCK, OUR_MARKER, ON_LOCK)
    assert m.RemoveMarker() not in decision.actions
    assert decision.state == ON_WINDOW
    assert decision.events == ()  # still on: no transition
    assert decision.actions == (m.WriteMarker("window"),)  # the recorded cause follows


def test_lock_inside_window_says_both():
    decision = decide(INSIDE, LOCK, WINDOW_MARKER, ON_WINDOW)
    assert decision.state == ON_LOCK
    assert "and inside a window until" in decision.sentence


def test_marker_deleted_by_hand_while_locked_is_restored_with_a_warning_saying_why():
    decision = decide(OUTSIDE, LOCK, NO_MARKER, ON_LOCK)
    assert decision.actions == (m.WriteMarker("lock"),)
    (event,) = decision.events
    assert event.name == "maintenance.marker_restored" and event.level == "warning"
    assert "locked by alice" in event.fields["detail"]


def test_marker_deleted_by_hand_inside_window_is_restored_naming_the_window_end():
    decision = decide(INSIDE, NO_LOCK, NO_MARKER, ON_WINDOW)
    (event,) = decision.events
    assert event.name == "maintenance.marker_restored"
    assert "inside a window until Mon 2026-11-30 05:00 CET" in event.fields["detail"]


def test_marker_created_by_hand_outside_window_is_adopted_as_a_lock_never_removed():
    decision = decide(OUTSIDE, NO_LOCK, HAND_MARKER, OFF)
    assert m.RemoveMarker() not in decision.actions
    assert decision.actions[0] == m.WriteLock(m.ADOPTED_REASON)
    assert decision.state.on
    assert names(decision) == ["maintenance.marker_adopted", "maintenance.enabled"]
    assert decision.events[0].level == "warning"


def test_hand_made_marker_found_at_start_is_adopted_without_claiming_a_transition():
    decision = decide(OUTSIDE, NO_LOCK, HAND_MARKER, None)
    assert decision.actions[0] == m.WriteLock(m.ADOPTED_REASON)
    assert names(decision) == ["maintenance.marker_adopted"]


def test_agents_marker_left_from_a_lock_is_removed_at_start_as_an_unlock():
    decision = decide(OUTSIDE, NO_LOCK, OUR_MARKER, None)
    assert decision.actions == (m.RemoveMarker(),)
    assert decision.events[0].fields["cause"] == "unlock"


def test_agents_marker_left_from_a_window_is_removed_at_start_as_a_window_end():
    decision = decide(OUTSIDE, NO_LOCK, WINDOW_MARKER, None)
    assert decision.events[0].fields["cause"] == "window"


def test_daemon_starting_inside_a_window_enters_maintenance_at_once():
    decision = decide(INSIDE, NO_LOCK, NO_MARKER, None)
    assert decision.actions == (m.WriteMarker("window"),)
    assert names(decision) == ["maintenance.enabled"]


def test_hand_made_marker_while_maintenance_is_on_is_claimed_quietly():
    decision = decide(INSIDE, NO_LOCK, HAND_MARKER, ON_WINDOW)
    assert decision.actions == (m.WriteMarker("window"),)
    assert decision.events == ()


def test_unreadable_lock_still_locks_and_warns_once():
    garbage = m.LockInfo(True, problem="not JSON")
    first = decide(OUTSIDE, garbage, OUR_MARKER, ON_LOCK)
    assert first.state.on and names(first) == ["maintenance.lock_unreadable"]
    again = decide(OUTSIDE, garbage, OUR_MARKER, first.state)
    assert again.events == ()


@pytest.mark.parametrize(("content", "expected"), [
    (b"", m.LockInfo(True)),
    (b"\n", m.LockInfo(True)),
    (b'{"id": "x", "by": "bob", "reason": "r"}', m.LockInfo(True, lock_id="x", by="bob", reason="r")),
    (b"maintenance until friday", m.LockInfo(True, problem="not JSON")),
    (b"[1, 2]", m.LockInfo(True, problem="not a JSON object")),
    (b"\xff\xfe", m.LockInfo(True, problem="not JSON")),
    (b'{"by": 42}', m.LockInfo(True)),
], ids=["empty", "newline", "ctl", "text", "array", "binary", "wrong-types"])
def test_every_lock_content_is_a_lock(content, expected):
    assert m.parse_lock(content) == expected


def test_a_lock_whose_content_cannot_be_read_is_still_a_lock():
    assert m.parse_lock(None, "it is a symlink") == m.LockInfo(True, problem="it is a symlink")


def test_lock_encoding_round_trips_with_unicode_reason():
    content = m.encode_lock("id1", "jörg (via sudo)", datetime(2026, 1, 1, tzinfo=timezone.utc), "Wartung 🚧",
                            "node1")
    assert m.parse_lock(content) == m.LockInfo(True, lock_id="id1", by="jörg (via sudo)",
                                               at="2026-01-01T00:00:00+00:00", reason="Wartung 🚧", host="node1")


@pytest.mark.parametrize(("present", "content", "expected"), [
    (False, None, m.MarkerInfo(False)),
    (True, b"", m.MarkerInfo(True)),
    (True, b"on\n", m.MarkerInfo(True)),
    (True, b'{"pretix_agent_marker": 2}', m.MarkerInfo(True)),
    (True, m.encode_marker("window", datetime(2026, 1, 1, tzinfo=timezone.utc)),
     m.MarkerInfo(True, ours=True, cause="window")),
], ids=["absent", "touched", "text", "other-version", "ours"])
def test_only_a_marker_the_agent_wrote_counts_as_ours(present, content, expected):
    assert m.parse_marker(present, content) == expected


# --------------------------------------------------------------------------------------------- on_failing

REDIS_MARKER = m.MarkerInfo(True, ours=True, cause="check:redis")
ON_REDIS = m.State(True, "check:redis")


def decide_checks(now, lock, marker, previous, failing=(), undecided=()):
    seen = m.Observation(now=now, lock=lock, marker=marker, failing_checks=failing, undecided_checks=undecided)
    return m.decide(WEEKLY, seen, previous)


def test_a_failing_on_failing_check_closes_the_shop_with_its_own_cause_and_no_lock():
    decision = decide_checks(OUTSIDE, NO_LOCK, NO_MARKER, OFF, failing=("redis",))
    assert decision.actions == (m.WriteMarker("check:redis"),)
    assert decision.state == ON_REDIS and decision.next_change is None
    (event,) = decision.events
    assert (event.name, event.fields["cause"]) == ("maintenance.enabled", "check:redis")
    assert decision.sentence == ("maintenance on: check redis failing ([maintenance] on_failing); ends when it "
                                 "passes again")
    assert not any(isinstance(action, m.WriteLock) for action in decision.actions)


def test_it_ends_by_itself_when_the_check_passes_again():
    decision = decide_checks(OUTSIDE, NO_LOCK, REDIS_MARKER, ON_REDIS)
    assert decision.actions == (m.RemoveMarker(),) and decision.state == OFF
    (event,) = decision.events
    assert (event.name, event.fields["cause"], event.fields["detail"]) == (
        "maintenance.disabled", "check:redis", "redis passes again")


def test_a_check_without_a_verdict_after_a_restart_keeps_the_marker_written_for_it():
    decision = decide_checks(OUTSIDE, NO_LOCK, REDIS_MARKER, None, undecided=("redis",))
    assert decision.actions == () and decision.state == ON_REDIS and decision.events == ()
    # ... but not a marker written for something else
    other = decide_checks(OUTSIDE, NO_LOCK, OUR_MARKER, OFF, undecided=("redis",))
    assert other.actions == (m.RemoveMarker(),)


def test_a_lock_outranks_the_check_and_unlock_leaves_the_check_in_charge():
    locked = decide_checks(OUTSIDE, LOCK, OUR_MARKER, ON_LOCK, failing=("redis",))
    assert locked.state == ON_LOCK and locked.actions == ()
    assert locked.sentence.endswith("(and check redis failing ([maintenance] on_failing))")
    unlocked = decide_checks(OUTSIDE, NO_LOCK, OUR_MARKER, ON_LOCK, failing=("redis",))
    assert unlocked.state == ON_REDIS and unlocked.actions == (m.WriteMarker("check:redis"),)
    assert unlocked.events == ()  # still on: no transition


def test_a_marker_deleted_by_hand_while_the_check_fails_is_restored_with_the_reason():
    decision = decide_checks(OUTSIDE, NO_LOCK, NO_MARKER, ON_REDIS, failing=("redis",))
    assert decision.actions == (m.WriteMarker("check:redis"),)
    (event,) = decision.events
    assert event.name == "maintenance.marker_restored" and "check redis failing" in event.fields["detail"]
