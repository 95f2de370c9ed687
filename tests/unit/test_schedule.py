"""Tests for pretix_agent.schedule: weekly maintenance-window maths, edges first.

Dates used below (all verified against tzdata):
  2026-01-05 is a Monday; 2026-01-07 a Wednesday; 2026-01-11 a Sunday.
  Europe/Berlin springs forward 2026-03-29 01:00 UTC (02:00 CET -> 03:00 CEST) and falls back
  2026-10-25 01:00 UTC (03:00 CEST -> 02:00 CET).
  America/New_York springs forward 2026-03-08 07:00 UTC (02:00 EST -> 03:00 EDT) and falls back
  2026-11-01 06:00 UTC (02:00 EDT -> 01:00 EST).
  Australia/Lord_Howe moves by 30 minutes: 2026-10-04 02:00 +10:30 -> 02:30 +11 (15:30 UTC the
  day before) and 2026-04-05 02:00 +11 -> 01:30 +10:30 (15:00 UTC the day before).
"""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pretix_agent.schedule import (
    Schedule,
    ScheduleState,
    WeeklyTime,
    Window,
    evaluate,
    is_inside,
    local_to_utc,
    next_boundary,
    parse_weekly_time,
    validate_window,
)

UTC = timezone.utc
BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")
LORD_HOWE = ZoneInfo("Australia/Lord_Howe")
US = timedelta(microseconds=1)


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def schedule(*pairs: tuple[str, str], tz=None) -> Schedule:
    windows = tuple(Window.parse(start, end) for start, end in pairs)
    return Schedule(windows) if tz is None else Schedule(windows, tz)


def occurrence(sched: Schedule, probe: datetime) -> tuple[datetime, datetime]:
    """Return the [start, end) of the merged interval that `probe` lies in, found from outside."""
    assert not is_inside(sched, probe), "probe must lie before the interval"
    start = next_boundary(sched, probe)
    end = next_boundary(sched, start)
    return start, end


# --- parsing ---------------------------------------------------------------------------------


DAY_SPELLINGS = [
    (index, spelling)
    for index, (short, full) in enumerate(
        zip(
            ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"],
            ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"],
            strict=True,
        )
    )
    for spelling in (short, short.lower(), short.upper(), full, full.lower(), full.upper())
]


@pytest.mark.parametrize(("weekday", "spelling"), DAY_SPELLINGS)
def test_every_short_and_full_english_weekday_name_is_accepted_in_any_case(weekday, spelling):
    assert parse_weekly_time(f"{spelling} 13:45") == WeeklyTime(weekday, 13, 45)


def test_sun_2200_parses_to_sunday_22_00():
    assert parse_weekly_time("Sun 22:00") == WeeklyTime(6, 22, 0)


def test_mixed_case_names_are_accepted():
    assert parse_weekly_time("sUnDaY 05:00") == WeeklyTime(6, 5, 0)


def test_one_digit_hour_is_accepted():
    assert parse_weekly_time("Mon 5:07") == WeeklyTime(0, 5, 7)


def test_several_spaces_between_day_and_time_are_accepted():
    assert parse_weekly_time("Mon    05:00") == WeeklyTime(0, 5, 0)


def test_first_and_last_minute_of_the_day_are_accepted():
    assert parse_weekly_time("Mon 00:00") == WeeklyTime(0, 0, 0)
    assert parse_weekly_time("Sun 23:59") == WeeklyTime(6, 23, 59)


@pytest.mark.parametrize(
    "text",
    [
        "su",  # the old shell script compared "Sun" with "su": two letters is no weekday
        "su 22:00",
        "Su 22:00",
        "Sun",
        "Sun 24:00",
        "Sun 9",
        "Funday 10:00",
        "",
        "Sonntag 10:00",
        "Tues 10:00",
        "Sund 10:00",
        "Sun 22:60",
        "Sun 22:0",
        "Sun 022:00",
        "Sun 22:00:00",
        "Sun22:00",
        "Sun\t22:00",
        " Sun 22:00",
        "Sun 22:00 ",
        "Sun 22.00",
        "Sun -1:00",
        "Sun \uff12\uff12:\uff10\uff10",  # full-width digits
        "22:00 Sun",
        "Sun 22:00 UTC",
    ],
)
def test_anything_but_a_weekday_and_hh_mm_is_rejected(text):
    with pytest.raises(ValueError, match="is not a weekly time"):
        parse_weekly_time(text)


def test_su_is_rejected_so_the_old_sun_versus_su_shell_bug_cannot_recur():
    with pytest.raises(ValueError):
        parse_weekly_time("su 22:00")
    assert parse_weekly_time("sun 22:00") == parse_weekly_time("Sun 22:00")


def test_parse_error_is_one_sentence_naming_the_input_and_what_is_accepted():
    with pytest.raises(ValueError) as caught:
        parse_weekly_time("Sun 25:00")
    message = str(caught.value)
    assert message.startswith("'Sun 25:00' is not a weekly time: expected a weekday")
    assert "Mon to Sun or Monday to Sunday" in message
    assert "00:00 to 23:59" in message
    assert message.endswith("such as 'Sun 22:00'")
    assert "\n" not in message and message.count(". ") == 0


@pytest.mark.parametrize("value", [None, 2200, b"Sun 22:00"])
def test_a_non_string_is_rejected_with_value_error(value):
    with pytest.raises(ValueError, match="is not a weekly time"):
        parse_weekly_time(value)


@pytest.mark.parametrize(
    ("weekly_time", "text"),
    [
        (WeeklyTime(6, 22, 0), "Sun 22:00"),
        (WeeklyTime(0, 5, 7), "Mon 05:07"),
        (WeeklyTime(2, 0, 0), "Wed 00:00"),
        (WeeklyTime(5, 23, 59), "Sat 23:59"),
    ],
)
def test_str_gives_the_canonical_spelling(weekly_time, text):
    assert str(weekly_time) == text


@pytest.mark.parametrize(("weekday", "spelling"), DAY_SPELLINGS)
def test_str_round_trips_through_parse(weekday, spelling):
    parsed = parse_weekly_time(f"{spelling} 7:05")
    assert parse_weekly_time(str(parsed)) == parsed


@pytest.mark.parametrize(
    ("weekday", "hour", "minute"), [(7, 0, 0), (-1, 0, 0), (0, 24, 0), (0, 0, 60), (0, -1, 0), (True, 0, 0)]
)
def test_weekly_time_rejects_out_of_range_fields(weekday, hour, minute):
    with pytest.raises(ValueError, match="must be an integer"):
        WeeklyTime(weekday, hour, minute)


# --- windows and schedules -------------------------------------------------------------------


def test_zero_length_window_raises_value_error():
    with pytest.raises(ValueError, match="zero length"):
        Window.parse("Sun 22:00", "Sun 22:00")


def test_zero_length_message_names_the_window():
    with pytest.raises(ValueError) as caught:
        Window(WeeklyTime(6, 22, 0), WeeklyTime(6, 22, 0))
    assert str(caught.value) == (
        "maintenance window from 'Sun 22:00' to 'Sun 22:00' has zero length: start and end must differ"
    )


def test_validate_window_reuses_the_constructor_check():
    validate_window(WeeklyTime(6, 22, 0), WeeklyTime(0, 5, 0))
    with pytest.raises(ValueError, match="zero length"):
        validate_window(WeeklyTime(6, 22, 0), WeeklyTime(6, 22, 0))


def test_window_parse_reports_the_bad_string():
    with pytest.raises(ValueError, match="'Sun 24:00' is not a weekly time"):
        Window.parse("Sun 22:00", "Sun 24:00")


def test_window_rejects_strings_instead_of_weekly_times():
    with pytest.raises(TypeError):
        Window("Sun 22:00", "Mon 05:00")


def test_window_ending_one_minute_before_its_start_lasts_a_week_minus_a_minute():
    assert Window.parse("Mon 05:00", "Mon 04:59").length_minutes == 7 * 24 * 60 - 1
    assert Window.parse("Sun 22:00", "Mon 05:00").length_minutes == 7 * 60


def test_schedule_defaults_to_utc_and_stores_windows_as_a_tuple():
    sched = Schedule([Window.parse("Wed 10:00", "Wed 12:00")])
    assert sched.timezone.utcoffset(None) == timedelta(0)
    assert isinstance(sched.windows, tuple)
    assert is_inside(sched, utc(2026, 1, 7, 10, 0))
    assert next_boundary(sched, utc(2026, 1, 7, 10, 0)) == utc(2026, 1, 7, 12, 0)


def test_schedule_with_zoneinfo_utc_agrees_with_the_default():
    default = schedule(("Wed 10:00", "Wed 12:00"))
    zoned = schedule(("Wed 10:00", "Wed 12:00"), tz=ZoneInfo("UTC"))
    for probe in (utc(2026, 1, 7, 9, 59), utc(2026, 1, 7, 10), utc(2026, 1, 7, 12)):
        assert evaluate(default, probe) == evaluate(zoned, probe)


def test_schedule_rejects_a_timezone_name_instead_of_a_tzinfo():
    with pytest.raises(TypeError):
        Schedule((), "Europe/Berlin")


def test_naive_now_raises_value_error():
    sched = schedule(("Wed 10:00", "Wed 12:00"))
    for function in (evaluate, is_inside, next_boundary):
        with pytest.raises(ValueError, match="timezone-aware"):
            function(sched, datetime(2026, 1, 7, 11, 0))


def test_naive_now_raises_value_error_even_for_an_empty_schedule():
    with pytest.raises(ValueError):
        evaluate(Schedule(), datetime(2026, 1, 7, 11, 0))


def test_empty_schedule_is_never_inside_and_has_no_boundary():
    assert evaluate(Schedule(), utc(2026, 1, 7, 11)) == ScheduleState(False, None, None, None)


# --- edges of one window (UTC, Wed 10:00 -> Wed 12:00) -----------------------------------------

WED = schedule(("Wed 10:00", "Wed 12:00"))
WED_START = utc(2026, 1, 7, 10, 0)
WED_END = utc(2026, 1, 7, 12, 0)


def test_window_is_inside_at_its_exact_start():
    assert evaluate(WED, WED_START) == ScheduleState(True, WED_END, None, WED_END)


def test_window_is_outside_one_microsecond_before_its_start():
    assert evaluate(WED, WED_START - US) == ScheduleState(False, None, WED_START, WED_START)


def test_window_is_inside_one_microsecond_before_its_end():
    assert evaluate(WED, WED_END - US) == ScheduleState(True, WED_END, None, WED_END)


def test_window_is_outside_at_its_exact_end_and_next_starts_a_week_later():
    next_week = WED_START + timedelta(weeks=1)
    assert evaluate(WED, WED_END) == ScheduleState(False, None, next_week, next_week)


def test_boundaries_are_exact_when_now_has_microseconds():
    now = utc(2026, 1, 5, 3, 4, 5, 678901)
    assert next_boundary(WED, now) == WED_START
    assert next_boundary(WED, WED_START + timedelta(microseconds=123457)) == WED_END


def test_now_in_another_timezone_gives_the_same_answer_as_in_utc():
    for probe in (WED_START - US, WED_START, WED_END - US, WED_END):
        assert evaluate(WED, probe.astimezone(NEW_YORK)) == evaluate(WED, probe)
        assert evaluate(WED, probe.astimezone(ZoneInfo("Asia/Kolkata"))) == evaluate(WED, probe)


def test_results_are_aware_and_in_utc_even_when_now_is_not():
    boundary = next_boundary(WED, WED_START.astimezone(BERLIN))
    assert boundary.tzinfo is UTC


def test_window_in_berlin_is_inside_at_local_start_and_outside_at_local_end():
    sched = schedule(("Wed 10:00", "Wed 12:00"), tz=BERLIN)
    start, end = utc(2026, 1, 7, 9, 0), utc(2026, 1, 7, 11, 0)  # CET is UTC+1
    assert not is_inside(sched, start - US)
    assert is_inside(sched, start)
    assert is_inside(sched, end - US)
    assert not is_inside(sched, end)
    assert next_boundary(sched, start - US) == start
    assert next_boundary(sched, start) == end


# --- crossing midnight and the week's end ------------------------------------------------------


def test_window_crossing_midnight_is_inside_at_midnight():
    sched = schedule(("Tue 22:00", "Wed 02:00"))
    assert evaluate(sched, utc(2026, 1, 7, 0, 0)) == ScheduleState(
        True, utc(2026, 1, 7, 2, 0), None, utc(2026, 1, 7, 2, 0)
    )
    assert is_inside(sched, utc(2026, 1, 6, 23, 59, 59, 999999))
    assert not is_inside(sched, utc(2026, 1, 6, 22, 0) - US)
    assert not is_inside(sched, utc(2026, 1, 7, 2, 0))


WEEKEND = schedule(("Sun 22:00", "Mon 05:00"))


def test_window_spanning_sunday_to_monday_seen_from_sunday_evening():
    now = utc(2026, 1, 11, 23, 0)
    assert evaluate(WEEKEND, now) == ScheduleState(True, utc(2026, 1, 12, 5), None, utc(2026, 1, 12, 5))


def test_window_spanning_sunday_to_monday_starts_at_sunday_22_00():
    assert not is_inside(WEEKEND, utc(2026, 1, 11, 22, 0) - US)
    assert is_inside(WEEKEND, utc(2026, 1, 11, 22, 0))
    assert next_boundary(WEEKEND, utc(2026, 1, 11, 21, 0)) == utc(2026, 1, 11, 22, 0)


def test_window_spanning_sunday_to_monday_is_inside_at_midnight():
    now = utc(2026, 1, 12, 0, 0)
    assert evaluate(WEEKEND, now) == ScheduleState(True, utc(2026, 1, 12, 5), None, utc(2026, 1, 12, 5))


def test_window_spanning_sunday_to_monday_seen_from_monday_morning_ends_at_05_00():
    assert is_inside(WEEKEND, utc(2026, 1, 12, 5, 0) - US)
    assert evaluate(WEEKEND, utc(2026, 1, 12, 5, 0)) == ScheduleState(
        False, None, utc(2026, 1, 18, 22, 0), utc(2026, 1, 18, 22, 0)
    )


def test_window_spanning_sunday_to_monday_seen_from_wednesday_starts_next_sunday():
    assert evaluate(WEEKEND, utc(2026, 1, 7, 12, 0)) == ScheduleState(
        False, None, utc(2026, 1, 11, 22, 0), utc(2026, 1, 11, 22, 0)
    )


def test_window_spanning_sunday_to_monday_seen_from_monday_in_its_own_timezone():
    # In Berlin the local week starts at Monday 00:00 local, i.e. Sunday 23:00 UTC; the
    # occurrence that started in the previous local week must still be found.
    sched = schedule(("Sun 22:00", "Mon 05:00"), tz=BERLIN)
    now = datetime(2026, 1, 12, 0, 30, tzinfo=BERLIN)
    assert evaluate(sched, now) == ScheduleState(True, utc(2026, 1, 12, 4), None, utc(2026, 1, 12, 4))


def test_almost_week_long_window_leaves_one_minute_outside():
    sched = schedule(("Mon 05:00", "Mon 04:59"))
    assert is_inside(sched, utc(2026, 1, 12, 4, 58))
    assert evaluate(sched, utc(2026, 1, 12, 4, 59)) == ScheduleState(
        False, None, utc(2026, 1, 12, 5, 0), utc(2026, 1, 12, 5, 0)
    )
    assert next_boundary(sched, utc(2026, 1, 12, 5, 0)) == utc(2026, 1, 19, 4, 59)


# --- merging ---------------------------------------------------------------------------------


def test_overlapping_windows_merge_into_one_interval():
    sched = schedule(("Mon 10:00", "Mon 12:00"), ("Mon 11:00", "Mon 13:00"))
    assert evaluate(sched, utc(2026, 1, 5, 10, 30)) == ScheduleState(
        True, utc(2026, 1, 5, 13), None, utc(2026, 1, 5, 13)
    )
    assert is_inside(sched, utc(2026, 1, 5, 12, 0))
    assert not is_inside(sched, utc(2026, 1, 5, 13, 0))


def test_touching_windows_merge_and_next_boundary_skips_the_touching_point():
    sched = schedule(("Mon 10:00", "Mon 12:00"), ("Mon 12:00", "Mon 14:00"))
    assert next_boundary(sched, utc(2026, 1, 5, 11, 0)) == utc(2026, 1, 5, 14, 0)
    assert is_inside(sched, utc(2026, 1, 5, 12, 0) - US)
    assert is_inside(sched, utc(2026, 1, 5, 12, 0))
    assert next_boundary(sched, utc(2026, 1, 5, 9, 0)) == utc(2026, 1, 5, 10, 0)


def test_touching_windows_across_the_weeks_end_merge():
    sched = schedule(("Sun 20:00", "Mon 00:00"), ("Mon 00:00", "Mon 05:00"))
    assert evaluate(sched, utc(2026, 1, 11, 21, 0)) == ScheduleState(
        True, utc(2026, 1, 12, 5), None, utc(2026, 1, 12, 5)
    )


def test_nested_window_does_not_shorten_the_outer_one():
    sched = schedule(("Mon 08:00", "Mon 18:00"), ("Mon 10:00", "Mon 12:00"))
    assert next_boundary(sched, utc(2026, 1, 5, 7, 0)) == utc(2026, 1, 5, 8, 0)
    assert next_boundary(sched, utc(2026, 1, 5, 11, 0)) == utc(2026, 1, 5, 18, 0)
    assert next_boundary(sched, utc(2026, 1, 5, 12, 0)) == utc(2026, 1, 5, 18, 0)


def test_window_order_does_not_matter():
    pairs = [("Mon 10:00", "Mon 12:00"), ("Sun 22:00", "Mon 11:00"), ("Fri 01:00", "Fri 02:00")]
    forward, backward = schedule(*pairs), schedule(*reversed(pairs))
    for hours in range(0, 24 * 8, 5):
        probe = utc(2026, 1, 4) + timedelta(hours=hours)
        assert evaluate(forward, probe) == evaluate(backward, probe)


def test_windows_gapped_by_one_minute_do_not_merge():
    sched = schedule(("Mon 10:00", "Mon 12:00"), ("Mon 12:01", "Mon 14:00"))
    assert next_boundary(sched, utc(2026, 1, 5, 11)) == utc(2026, 1, 5, 12, 0)
    assert next_boundary(sched, utc(2026, 1, 5, 12)) == utc(2026, 1, 5, 12, 1)


def test_windows_covering_the_whole_week_are_always_inside():
    sched = schedule(("Mon 00:00", "Thu 00:00"), ("Thu 00:00", "Mon 00:00"))
    assert evaluate(sched, utc(2026, 1, 7, 11)) == ScheduleState(True, None, None, None)


def test_overlapping_windows_covering_the_week_from_an_odd_start_are_always_inside():
    sched = schedule(("Wed 13:37", "Sat 00:00"), ("Fri 00:00", "Wed 13:38"))
    assert evaluate(sched, utc(2026, 1, 7, 13, 37, 30)) == ScheduleState(True, None, None, None)


def test_whole_week_in_berlin_stays_inside_across_both_dst_changes():
    sched = schedule(("Sun 02:30", "Wed 00:00"), ("Tue 00:00", "Sun 02:30"), tz=BERLIN)
    for probe in (utc(2026, 3, 29, 1, 0) - US, utc(2026, 3, 29, 1, 0), utc(2026, 10, 25, 1, 30)):
        assert evaluate(sched, probe) == ScheduleState(True, None, None, None)


# --- local_to_utc ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("local", "tz", "expected"),
    [
        # Europe/Berlin spring forward: 02:00..02:59 do not exist.
        (datetime(2026, 3, 29, 1, 59), BERLIN, utc(2026, 3, 29, 0, 59)),
        (datetime(2026, 3, 29, 2, 0), BERLIN, utc(2026, 3, 29, 1, 0)),
        (datetime(2026, 3, 29, 2, 30), BERLIN, utc(2026, 3, 29, 1, 0)),
        (datetime(2026, 3, 29, 2, 59, 59, 999999), BERLIN, utc(2026, 3, 29, 1, 0)),
        (datetime(2026, 3, 29, 3, 0), BERLIN, utc(2026, 3, 29, 1, 0)),
        # Europe/Berlin fall back: 02:00..02:59 happen twice; the first (CEST) wins.
        (datetime(2026, 10, 25, 1, 59), BERLIN, utc(2026, 10, 24, 23, 59)),
        (datetime(2026, 10, 25, 2, 0), BERLIN, utc(2026, 10, 25, 0, 0)),
        (datetime(2026, 10, 25, 2, 30), BERLIN, utc(2026, 10, 25, 0, 30)),
        (datetime(2026, 10, 25, 3, 0), BERLIN, utc(2026, 10, 25, 2, 0)),
        # America/New_York.
        (datetime(2026, 3, 8, 2, 30), NEW_YORK, utc(2026, 3, 8, 7, 0)),
        (datetime(2026, 3, 8, 3, 0), NEW_YORK, utc(2026, 3, 8, 7, 0)),
        (datetime(2026, 11, 1, 1, 30), NEW_YORK, utc(2026, 11, 1, 5, 30)),
        (datetime(2026, 11, 1, 2, 0), NEW_YORK, utc(2026, 11, 1, 7, 0)),
        # Australia/Lord_Howe: half-hour gap 02:00..02:29 and half-hour fold 01:30..01:59.
        (datetime(2026, 10, 4, 2, 15), LORD_HOWE, utc(2026, 10, 3, 15, 30)),
        (datetime(2026, 10, 4, 2, 30), LORD_HOWE, utc(2026, 10, 3, 15, 30)),
        (datetime(2026, 4, 5, 1, 45), LORD_HOWE, utc(2026, 4, 4, 14, 45)),
        # Pacific/Apia skipped all of 2011-12-30: a 24-hour gap found by the same bisection.
        (datetime(2011, 12, 30, 12, 0), ZoneInfo("Pacific/Apia"), utc(2011, 12, 30, 10, 0)),
        # Fixed offsets have no gaps or folds.
        (datetime(2026, 3, 29, 2, 30), UTC, utc(2026, 3, 29, 2, 30)),
        (datetime(2026, 3, 29, 2, 30), ZoneInfo("Asia/Kolkata"), utc(2026, 3, 28, 21, 0)),
    ],
)
def test_local_to_utc_maps_gaps_to_the_transition_and_folds_to_the_first_occurrence(local, tz, expected):
    result = local_to_utc(local, tz)
    assert result == expected
    assert result.tzinfo is UTC


def test_local_to_utc_ignores_a_fold_flag_on_its_input():
    assert local_to_utc(datetime(2026, 10, 25, 2, 30, fold=1), BERLIN) == utc(2026, 10, 25, 0, 30)


def test_local_to_utc_rejects_an_aware_datetime():
    with pytest.raises(ValueError, match="naive"):
        local_to_utc(datetime(2026, 3, 29, 2, 30, tzinfo=BERLIN), BERLIN)


# --- DST: Europe/Berlin ------------------------------------------------------------------------


def test_berlin_window_starting_in_the_spring_gap_starts_when_the_gap_ends():
    sched = schedule(("Sun 02:30", "Sun 04:00"), tz=BERLIN)
    assert evaluate(sched, utc(2026, 3, 29, 1, 0) - US) == ScheduleState(
        False, None, utc(2026, 3, 29, 1, 0), utc(2026, 3, 29, 1, 0)
    )
    assert evaluate(sched, utc(2026, 3, 29, 1, 0)) == ScheduleState(
        True, utc(2026, 3, 29, 2, 0), None, utc(2026, 3, 29, 2, 0)
    )


def test_berlin_window_ending_in_the_spring_gap_ends_when_the_gap_ends():
    sched = schedule(("Sun 01:00", "Sun 02:30"), tz=BERLIN)
    assert occurrence(sched, utc(2026, 3, 28, 12)) == (utc(2026, 3, 29, 0, 0), utc(2026, 3, 29, 1, 0))
    assert not is_inside(sched, utc(2026, 3, 29, 1, 0))


def test_berlin_window_wholly_inside_the_spring_gap_does_not_happen_that_week():
    sched = schedule(("Sun 02:10", "Sun 02:50"), tz=BERLIN)
    # The next occurrence is a week later, at 02:10 CEST.
    assert evaluate(sched, utc(2026, 3, 28, 12)) == ScheduleState(
        False, None, utc(2026, 4, 5, 0, 10), utc(2026, 4, 5, 0, 10)
    )
    assert not is_inside(sched, utc(2026, 3, 29, 1, 0))


def test_berlin_window_spanning_spring_forward_is_one_hour_shorter():
    sched = schedule(("Sun 01:00", "Sun 04:00"), tz=BERLIN)
    before = occurrence(sched, utc(2026, 3, 21, 12))
    during = occurrence(sched, utc(2026, 3, 28, 12))
    assert before == (utc(2026, 3, 22, 0, 0), utc(2026, 3, 22, 3, 0))
    assert during == (utc(2026, 3, 29, 0, 0), utc(2026, 3, 29, 2, 0))
    assert during[1] - during[0] == timedelta(hours=2)


def test_berlin_window_starting_in_the_autumn_fold_starts_at_its_first_occurrence():
    sched = schedule(("Sun 02:30", "Sun 04:00"), tz=BERLIN)
    assert not is_inside(sched, utc(2026, 10, 25, 0, 30) - US)
    assert evaluate(sched, utc(2026, 10, 25, 0, 30)) == ScheduleState(
        True, utc(2026, 10, 25, 3, 0), None, utc(2026, 10, 25, 3, 0)
    )
    # 02:30 to 04:00 on the clock, but 2.5 hours because 02:30..03:00 happens twice.
    assert occurrence(sched, utc(2026, 10, 24, 12)) == (utc(2026, 10, 25, 0, 30), utc(2026, 10, 25, 3, 0))


def test_berlin_window_ending_in_the_autumn_fold_ends_at_its_first_occurrence():
    sched = schedule(("Sun 01:00", "Sun 02:30"), tz=BERLIN)
    assert occurrence(sched, utc(2026, 10, 24, 12)) == (utc(2026, 10, 24, 23, 0), utc(2026, 10, 25, 0, 30))
    # The repeated 02:15 (CET, 01:15 UTC) reads as inside on the clock but is outside.
    assert not is_inside(sched, datetime(2026, 10, 25, 2, 15, tzinfo=BERLIN, fold=1))
    assert is_inside(sched, datetime(2026, 10, 25, 2, 15, tzinfo=BERLIN, fold=0))


def test_berlin_window_spanning_fall_back_is_one_hour_longer():
    sched = schedule(("Sun 01:00", "Sun 04:00"), tz=BERLIN)
    start, end = occurrence(sched, utc(2026, 10, 24, 12))
    assert (start, end) == (utc(2026, 10, 24, 23, 0), utc(2026, 10, 25, 3, 0))
    assert end - start == timedelta(hours=4)


def test_berlin_now_given_as_the_second_occurrence_of_a_folded_time_is_that_instant():
    sched = schedule(("Sun 02:45", "Sun 05:00"), tz=BERLIN)
    second = datetime(2026, 10, 25, 2, 30, tzinfo=BERLIN, fold=1)  # 01:30 UTC
    assert evaluate(sched, second) == evaluate(sched, utc(2026, 10, 25, 1, 30))
    assert is_inside(sched, second)  # the window started at the first 02:45, 00:45 UTC


def test_berlin_window_crossing_the_weeks_end_over_spring_forward():
    sched = schedule(("Sat 22:00", "Sun 04:00"), tz=BERLIN)
    assert occurrence(sched, utc(2026, 3, 28, 12)) == (utc(2026, 3, 28, 21, 0), utc(2026, 3, 29, 2, 0))


# --- DST: America/New_York ---------------------------------------------------------------------


def test_new_york_window_starting_in_the_spring_gap_starts_when_the_gap_ends():
    sched = schedule(("Sun 02:30", "Sun 05:00"), tz=NEW_YORK)
    assert occurrence(sched, utc(2026, 3, 7, 12)) == (utc(2026, 3, 8, 7, 0), utc(2026, 3, 8, 9, 0))
    assert not is_inside(sched, utc(2026, 3, 8, 7, 0) - US)


def test_new_york_window_ending_in_the_spring_gap_ends_when_the_gap_ends():
    sched = schedule(("Sun 00:00", "Sun 02:30"), tz=NEW_YORK)
    assert occurrence(sched, utc(2026, 3, 7, 12)) == (utc(2026, 3, 8, 5, 0), utc(2026, 3, 8, 7, 0))


def test_new_york_window_spanning_spring_forward_is_one_hour_shorter():
    sched = schedule(("Sun 00:00", "Sun 05:00"), tz=NEW_YORK)
    start, end = occurrence(sched, utc(2026, 3, 7, 12))
    assert (start, end) == (utc(2026, 3, 8, 5, 0), utc(2026, 3, 8, 9, 0))
    assert end - start == timedelta(hours=4)


def test_new_york_window_starting_in_the_autumn_fold_starts_at_its_first_occurrence():
    sched = schedule(("Sun 01:30", "Sun 03:00"), tz=NEW_YORK)
    assert occurrence(sched, utc(2026, 10, 31, 12)) == (utc(2026, 11, 1, 5, 30), utc(2026, 11, 1, 8, 0))


def test_new_york_window_ending_in_the_autumn_fold_ends_at_its_first_occurrence():
    sched = schedule(("Sun 00:00", "Sun 01:30"), tz=NEW_YORK)
    assert occurrence(sched, utc(2026, 10, 31, 12)) == (utc(2026, 11, 1, 4, 0), utc(2026, 11, 1, 5, 30))
    assert not is_inside(sched, datetime(2026, 11, 1, 1, 15, tzinfo=NEW_YORK, fold=1))


def test_new_york_window_spanning_fall_back_is_one_hour_longer():
    sched = schedule(("Sun 00:00", "Sun 05:00"), tz=NEW_YORK)
    start, end = occurrence(sched, utc(2026, 10, 31, 12))
    assert (start, end) == (utc(2026, 11, 1, 4, 0), utc(2026, 11, 1, 10, 0))
    assert end - start == timedelta(hours=6)


# --- properties ------------------------------------------------------------------------------

TIMEZONES = [
    ZoneInfo("UTC"),
    UTC,
    BERLIN,
    NEW_YORK,
    LORD_HOWE,
    ZoneInfo("Asia/Kolkata"),
]

# DST changes in 2026-2027 in the zones above, as UTC instants; probes cluster around them.
TRANSITIONS = [
    utc(2026, 3, 29, 1),
    utc(2026, 10, 25, 1),
    utc(2027, 3, 28, 1),
    utc(2027, 10, 31, 1),
    utc(2026, 3, 8, 7),
    utc(2026, 11, 1, 6),
    utc(2027, 3, 14, 7),
    utc(2027, 11, 7, 6),
    utc(2026, 4, 4, 15),
    utc(2026, 10, 3, 15, 30),
    utc(2027, 4, 3, 15),
    utc(2027, 10, 2, 15, 30),
]

# Strategies are composite functions rather than lambdas: Hypothesis extracts a lambda's source
# for every draw it records, which cost more than the schedule maths itself.
RANGE_START = utc(2026, 1, 1)
RANGE_MICROSECONDS = (utc(2028, 1, 1) - RANGE_START) // US
EIGHT_DAYS_MICROSECONDS = 8 * 24 * 3600 * 10**6


@st.composite
def weekly_times(draw) -> WeeklyTime:
    # Half of the draws hit the hours where DST changes happen, on the minutes that matter.
    hour = draw(st.one_of(st.integers(0, 23), st.sampled_from([0, 1, 2, 3])))
    minute = draw(st.one_of(st.integers(0, 59), st.sampled_from([0, 15, 30, 45, 59])))
    return WeeklyTime(draw(st.integers(0, 6)), hour, minute)


@st.composite
def schedules(draw) -> Schedule:
    windows = []
    for _ in range(draw(st.integers(1, 3))):
        start = draw(weekly_times())
        end = draw(weekly_times())
        if start != end:
            windows.append(Window(start, end))
    if not windows:
        windows.append(Window(WeeklyTime(6, 22, 0), WeeklyTime(0, 5, 0)))
    return Schedule(tuple(windows), draw(st.sampled_from(TIMEZONES)))


@st.composite
def instants(draw) -> datetime:
    """An aware UTC instant in 2026-2027, half of them within 8 days of a DST change."""
    if draw(st.booleans()):
        return RANGE_START + draw(st.integers(0, RANGE_MICROSECONDS - 1)) * US
    base = draw(st.sampled_from(TRANSITIONS))
    return base + draw(st.integers(-EIGHT_DAYS_MICROSECONDS, EIGHT_DAYS_MICROSECONDS)) * US


@st.composite
def local_times(draw) -> datetime:
    """A naive wall time to the minute in 2026-2027, half of them within 3 hours of a DST change."""
    if draw(st.booleans()):
        return datetime(2026, 1, 1) + timedelta(minutes=draw(st.integers(0, 2 * 365 * 24 * 60)))
    base = draw(st.sampled_from(TRANSITIONS)).astimezone(draw(st.sampled_from(TIMEZONES)))
    return base.replace(tzinfo=None, fold=0) + timedelta(minutes=draw(st.integers(-180, 180)))


PROPERTY_SETTINGS = settings(
    max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)


def sample_points(now: datetime, boundary: datetime | None) -> list[datetime]:
    if boundary is None:
        return [now + timedelta(days=days) for days in (0, 1, 3.5, 7, 30, 200)]
    span = boundary - now
    return [now, now + span / 4, now + span / 2, now + span * 3 / 4, boundary - US]


@PROPERTY_SETTINGS
@given(schedules(), instants())
def test_next_boundary_is_after_now_and_inside_flips_exactly_there(sched, now):
    state = evaluate(sched, now)
    boundary = state.next_boundary
    # (a) the boundary lies strictly in the future.
    assert boundary is None or boundary > now
    # (b) nothing changes before it.
    for point in sample_points(now, boundary):
        assert is_inside(sched, point) == state.inside, point
    # (c) it does change at it.
    if boundary is not None:
        assert is_inside(sched, boundary) != state.inside
    else:
        assert state.inside, "a non-empty schedule that is never inside cannot exist"


@PROPERTY_SETTINGS
@given(schedules(), instants())
def test_evaluate_agrees_with_is_inside_and_next_boundary(sched, now):
    state = evaluate(sched, now)
    # (d) the three entry points tell one story.
    assert state.inside == is_inside(sched, now)
    assert state.next_boundary == next_boundary(sched, now)
    if state.inside:
        assert state.next_start is None
        assert state.current_end == state.next_boundary
    else:
        assert state.current_end is None
        assert state.next_start == state.next_boundary
    for value in (state.current_end, state.next_start, state.next_boundary):
        assert value is None or value.utcoffset() == timedelta(0)
    # The timezone `now` is expressed in does not matter.
    assert evaluate(sched, now.astimezone(sched.timezone)) == state


@PROPERTY_SETTINGS
@given(schedules(), instants())
def test_evaluating_at_the_boundary_flips_the_state_and_finds_a_later_boundary(sched, now):
    state = evaluate(sched, now)
    if state.next_boundary is None:
        return
    after = evaluate(sched, state.next_boundary)
    assert after.inside != state.inside
    assert after.next_boundary is not None and after.next_boundary > state.next_boundary


def oracle_local_to_utc(local: datetime, tz) -> datetime:
    """Brute force: first valid reading, else scan minute by minute to the end of the gap."""
    readings = sorted(local.replace(tzinfo=tz, fold=fold).astimezone(UTC) for fold in (0, 1))
    valid = [r for r in readings if r.astimezone(tz).replace(tzinfo=None) == local]
    if valid:
        return valid[0]
    probe = readings[0]
    while probe.astimezone(tz).replace(tzinfo=None) < local:
        probe += timedelta(minutes=1)
    return probe


def oracle_is_inside(sched: Schedule, now: datetime) -> bool:
    """Brute force: is `now` in any single occurrence of any window, without merging?"""
    local_day = now.astimezone(sched.timezone).date()
    for window in sched.windows:
        for days_back in range(9):
            day = local_day - timedelta(days=days_back)
            if day.weekday() != window.start.weekday:
                continue
            start_local = datetime(day.year, day.month, day.day, window.start.hour, window.start.minute)
            end_local = start_local + timedelta(minutes=window.length_minutes)
            start = oracle_local_to_utc(start_local, sched.timezone)
            end = oracle_local_to_utc(end_local, sched.timezone)
            if start <= now < end:
                return True
    return False


@PROPERTY_SETTINGS
@given(schedules(), instants())
def test_is_inside_matches_a_brute_force_check_of_every_occurrence(sched, now):
    assert is_inside(sched, now) == oracle_is_inside(sched, now)
    boundary = next_boundary(sched, now)
    if boundary is not None:
        assert is_inside(sched, boundary) == oracle_is_inside(sched, boundary)
        assert is_inside(sched, boundary - US) == oracle_is_inside(sched, boundary - US)


@PROPERTY_SETTINGS
@given(st.sampled_from(TIMEZONES), local_times())
def test_local_to_utc_matches_a_brute_force_scan(tz, local):
    assert local_to_utc(local, tz) == oracle_local_to_utc(local, tz)


def test_the_reference_dates_in_this_file_are_the_weekdays_claimed():
    assert date(2026, 1, 5).weekday() == 0
    assert date(2026, 1, 7).weekday() == 2
    assert date(2026, 1, 11).weekday() == 6
    for day in (date(2026, 3, 29), date(2026, 10, 25), date(2026, 3, 8), date(2026, 11, 1)):
        assert day.weekday() == 6
