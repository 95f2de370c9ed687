"""Weekly maintenance windows: pure, clock-free interval maths.

A schedule is a set of weekly windows such as ``Sun 22:00`` to ``Mon 05:00``, read as local wall
time in one IANA timezone. Every function here takes the current instant as an argument and never
reads a clock, does no I/O and does not log, so the daemon can evaluate a schedule at any instant
and the tests can pin every edge exactly.

Rules (from the product spec):

* A window is the half-open interval ``[start, end)``: inside at its start, outside at its end.
* The end of an occurrence is the first occurrence of the end weekly time after the start's local
  time, so windows may cross midnight and the week's end; ``Mon 05:00`` to ``Mon 04:00`` lasts
  six days and 23 hours.
* Overlapping and touching occurrences merge into one interval, so a boundary is only reported
  where being inside actually changes.
* A local time that does not exist (DST spring-forward gap) means the first instant after the
  gap; an ambiguous local time (DST fall-back fold) means its first occurrence.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, timezone, tzinfo

__all__ = [
    "Schedule",
    "ScheduleState",
    "WeeklyTime",
    "Window",
    "evaluate",
    "is_inside",
    "local_to_utc",
    "next_boundary",
    "parse_weekly_time",
    "validate_window",
]

_DAY_ABBREVIATIONS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_DAY_NAMES = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_WEEKDAYS = {
    name.lower(): index
    for names in (_DAY_ABBREVIATIONS, _DAY_NAMES)
    for index, name in enumerate(names)
}

# Explicit ASCII classes rather than \d, which would also accept non-ASCII digits (fullwidth ones, say). The
# weekday token is matched loosely here and then looked up in the exact list of names.
_WEEKLY_TIME_RE = re.compile(r"([A-Za-z]+) +([0-9]{1,2}):([0-9]{2})")

_MINUTES_PER_WEEK = 7 * 24 * 60

# Occurrences are computed for the local weeks WEEKS_BEFORE..WEEKS_AFTER around `now`. One week
# back catches an occurrence that started last week and is still running (no occurrence lasts a
# week); the extra weeks absorb a whole-week shift from a UTC offset and an occurrence that a DST
# gap swallows, which can push the next boundary out by one more week.
_WEEKS_BEFORE = 2
_WEEKS_AFTER = 3

_ONE_MICROSECOND = timedelta(microseconds=1)

# Schedule has a field named `timezone`; a module-level alias keeps the two from being confused.
_UTC = timezone.utc


@dataclass(frozen=True)
class WeeklyTime:
    """A weekday and a wall-clock time of day, to the minute.

    ``weekday`` is 0 for Monday up to 6 for Sunday, as in ``datetime.weekday()``. Raise ValueError
    if a field is out of range.
    """

    weekday: int
    hour: int
    minute: int

    def __post_init__(self) -> None:
        fields = (("weekday", self.weekday, 6), ("hour", self.hour, 23), ("minute", self.minute, 59))
        for name, value, upper in fields:
            # bool is an int subclass, but True as a weekday is certainly a bug upstream.
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= upper:
                raise ValueError(f"WeeklyTime {name} must be an integer from 0 to {upper}, got {value!r}")

    def __str__(self) -> str:
        """Return the canonical spelling, e.g. ``Sun 22:00``, which parse_weekly_time accepts."""
        return f"{_DAY_ABBREVIATIONS[self.weekday]} {self.hour:02d}:{self.minute:02d}"

    @property
    def minute_of_week(self) -> int:
        """Return minutes since Monday 00:00 of the same week, from 0 to 10079."""
        return (self.weekday * 24 + self.hour) * 60 + self.minute


def parse_weekly_time(text: str) -> WeeklyTime:
    """Given a string such as ``"Sun 22:00"``, return the WeeklyTime it names.

    The weekday is a three-letter English abbreviation or a full English name, in any case
    (``Sun``, ``sun``, ``Sunday``, ``SUNDAY``); one or more spaces separate it from the time
    ``H:MM`` or ``HH:MM``, 00:00 to 23:59. Nothing else is accepted: no surrounding whitespace,
    no tabs, no seconds, no other languages and no other abbreviations (``su``, ``Tues``).
    Raise ValueError, with a one-sentence message saying what is accepted, for anything else,
    including a non-string.
    """
    match = _WEEKLY_TIME_RE.fullmatch(text) if isinstance(text, str) else None
    if match is not None:
        weekday = _WEEKDAYS.get(match.group(1).lower())
        hour, minute = int(match.group(2)), int(match.group(3))
        if weekday is not None and hour <= 23 and minute <= 59:
            return WeeklyTime(weekday, hour, minute)
    raise ValueError(
        f"{text!r} is not a weekly time: expected a weekday (Mon to Sun or Monday to Sunday, any case) "
        f"and a time HH:MM from 00:00 to 23:59, such as 'Sun 22:00'"
    )


@dataclass(frozen=True)
class Window:
    """One weekly maintenance window, the half-open interval ``[start, end)`` in local wall time.

    The end is the first occurrence of ``end`` after ``start``, so an end earlier in the week
    than the start crosses the week's end. Raise ValueError if start equals end, because such a
    window would be either empty or the whole week and the config cannot mean either.
    """

    start: WeeklyTime
    end: WeeklyTime

    def __post_init__(self) -> None:
        for name, value in (("start", self.start), ("end", self.end)):
            if not isinstance(value, WeeklyTime):
                raise TypeError(f"Window {name} must be a WeeklyTime, got {value!r}")
        if self.start == self.end:
            raise ValueError(
                f"maintenance window from '{self.start}' to '{self.end}' has zero length: "
                f"start and end must differ"
            )

    @classmethod
    def parse(cls, start: str, end: str) -> Window:
        """Given start and end strings such as ``"Sun 22:00"``, return the Window.

        Raise ValueError if either string is not a weekly time or the window has zero length.
        """
        return cls(parse_weekly_time(start), parse_weekly_time(end))

    @property
    def length_minutes(self) -> int:
        """Return the window's nominal wall-clock length in minutes, from 1 to 10079.

        Across a DST change the absolute length differs; see ``evaluate`` for exact instants.
        """
        return (self.end.minute_of_week - self.start.minute_of_week) % _MINUTES_PER_WEEK


def validate_window(start: WeeklyTime, end: WeeklyTime) -> None:
    """Given a start and an end, return None if they form a valid Window.

    Raise ValueError with the same message as the Window constructor if they do not.
    """
    Window(start, end)


@dataclass(frozen=True)
class Schedule:
    """Weekly windows read in one timezone (default UTC). An empty schedule is never inside.

    ``windows`` may be given as any iterable of Window and is stored as a tuple. Raise TypeError
    if an item is not a Window or the timezone is not a tzinfo.
    """

    windows: tuple[Window, ...] = ()
    timezone: tzinfo = field(default=_UTC)

    def __post_init__(self) -> None:
        windows = tuple(self.windows)
        for window in windows:
            if not isinstance(window, Window):
                raise TypeError(f"Schedule windows must be Window objects, got {window!r}")
        if not isinstance(self.timezone, tzinfo):
            raise TypeError(
                f"Schedule timezone must be a tzinfo such as ZoneInfo('UTC'), got {self.timezone!r}"
            )
        # Frozen dataclass: the tuple coercion has to bypass __setattr__.
        object.__setattr__(self, "windows", windows)

    @property
    def always_inside(self) -> bool:
        """Return True if the windows together cover every minute of the week.

        This is decided on the wall-clock week, not on instants: then every instant is inside,
        because the chain of merged occurrences never breaks, DST changes included.
        """
        pieces: list[tuple[int, int]] = []
        for window in self.windows:
            start = window.start.minute_of_week
            end = start + window.length_minutes
            pieces.append((start, min(end, _MINUTES_PER_WEEK)))
            if end > _MINUTES_PER_WEEK:
                pieces.append((0, end - _MINUTES_PER_WEEK))
        covered_until = 0
        for start, end in sorted(pieces):
            if start > covered_until:
                return False
            covered_until = max(covered_until, end)
        return covered_until >= _MINUTES_PER_WEEK


@dataclass(frozen=True)
class ScheduleState:
    """A schedule evaluated at one instant. All datetimes are aware and in UTC.

    ``inside``: whether the instant is inside a window.
    ``current_end``: if inside, the end of the merged interval containing the instant; None if
    outside or if the schedule is always inside.
    ``next_start``: if outside, the start of the next merged interval; None if inside or if the
    schedule has no windows.
    ``next_boundary``: the first instant after the evaluated one at which ``inside`` changes,
    which is ``current_end`` or ``next_start``; None if it never changes.
    """

    inside: bool
    current_end: datetime | None
    next_start: datetime | None
    next_boundary: datetime | None


def _wall_time(instant: datetime, tz: tzinfo) -> datetime:
    """Given an aware instant, return its naive wall time in tz (fold dropped)."""
    return instant.astimezone(tz).replace(tzinfo=None, fold=0)


def local_to_utc(local: datetime, tz: tzinfo) -> datetime:
    """Given a naive local wall time and a timezone, return the aware UTC instant it means.

    An ambiguous wall time (DST fold) means its first occurrence. A wall time that does not exist
    (DST gap) means the first instant after the gap, i.e. the transition instant itself: in
    Europe/Berlin, 2026-03-29 02:30 gives 01:00 UTC (03:00 CEST). Raise ValueError if ``local``
    is aware.
    """
    if local.tzinfo is not None:
        raise ValueError(f"local_to_utc needs a naive local wall time, got the aware datetime {local!r}")
    local = local.replace(fold=0)
    # PEP 495: fold=0 picks the earlier of two occurrences, which is the rule for a fold.
    first = local.replace(tzinfo=tz).astimezone(_UTC)
    if _wall_time(first, tz) == local:
        return first
    # The wall time does not exist. Inside a gap, fold=0 and fold=1 use the offsets before and
    # after the transition, which bracket the transition instant; whatever tzinfo this is, widen
    # the bracket until it provably straddles the gap rather than trusting that.
    second = local.replace(tzinfo=tz, fold=1).astimezone(_UTC)
    low, high = min(first, second), max(first, second)
    step = timedelta(hours=1)
    for _ in range(48):
        if _wall_time(low, tz) < local:
            break
        low -= step
    for _ in range(48):
        if _wall_time(high, tz) > local:
            break
        high += step
    # Invariant: wall(low) < local < wall(high). Narrow it to one microsecond; the transition is
    # then `high`, the first instant whose wall time is past the gap.
    while high - low > _ONE_MICROSECOND:
        middle = low + (high - low) // 2
        if _wall_time(middle, tz) > local:
            high = middle
        else:
            low = middle
    return high


def _occurrence(window: Window, start_date: date, tz: tzinfo) -> tuple[datetime, datetime]:
    """Return the UTC [start, end) of the window's occurrence starting on local ``start_date``."""
    start_local = datetime.combine(start_date, time(window.start.hour, window.start.minute))
    end_local = start_local + timedelta(minutes=window.length_minutes)
    return local_to_utc(start_local, tz), local_to_utc(end_local, tz)


def _merged_intervals(schedule: Schedule, now_utc: datetime) -> list[tuple[datetime, datetime]]:
    """Return the merged UTC occurrences for the local weeks around now_utc, sorted by start."""
    tz = schedule.timezone
    local_today = now_utc.astimezone(tz).date()
    monday = local_today - timedelta(days=local_today.weekday())
    occurrences = []
    for week in range(-_WEEKS_BEFORE, _WEEKS_AFTER + 1):
        for window in schedule.windows:
            start, end = _occurrence(window, monday + timedelta(weeks=week, days=window.start.weekday), tz)
            # A window lying wholly inside a DST gap maps to an empty interval: it has no instants
            # that week, and keeping it would invent a boundary where nothing changes.
            if end > start:
                occurrences.append((start, end))
    occurrences.sort()
    merged: list[tuple[datetime, datetime]] = []
    for start, end in occurrences:
        # `<=` rather than `<`: touching intervals merge, so their shared instant is no boundary.
        if merged and start <= merged[-1][1]:
            if end > merged[-1][1]:
                merged[-1] = (merged[-1][0], end)
        else:
            merged.append((start, end))
    return merged


def evaluate(schedule: Schedule, now: datetime) -> ScheduleState:
    """Given a schedule and an aware instant, return the ScheduleState at that instant.

    Results are exact to the microsecond. Raise ValueError if ``now`` is naive, because a naive
    time cannot be placed on the timeline without guessing a timezone.
    """
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError(f"evaluate needs a timezone-aware datetime, got the naive datetime {now!r}")
    if not schedule.windows:
        return ScheduleState(inside=False, current_end=None, next_start=None, next_boundary=None)
    if schedule.always_inside:
        return ScheduleState(inside=True, current_end=None, next_start=None, next_boundary=None)
    now_utc = now.astimezone(_UTC)
    for start, end in _merged_intervals(schedule, now_utc):
        if now_utc < start:
            return ScheduleState(inside=False, current_end=None, next_start=start, next_boundary=start)
        if now_utc < end:
            return ScheduleState(inside=True, current_end=end, next_start=None, next_boundary=end)
    # Unreachable: a schedule that does not cover the whole week has an uncovered instant in every
    # week without a DST gap, and the horizon reaches several weeks past `now`.
    raise RuntimeError(f"no maintenance window boundary found near {now_utc.isoformat()} for {schedule!r}")


def is_inside(schedule: Schedule, now: datetime) -> bool:
    """Given a schedule and an aware instant, return True if the instant is inside a window.

    Raise ValueError if ``now`` is naive.
    """
    return evaluate(schedule, now).inside


def next_boundary(schedule: Schedule, now: datetime) -> datetime | None:
    """Given a schedule and an aware instant, return the first later instant (aware, UTC) at
    which ``is_inside`` changes, or None if it never changes.

    Raise ValueError if ``now`` is naive.
    """
    return evaluate(schedule, now).next_boundary
