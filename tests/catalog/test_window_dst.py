"""Preload windows on the days the clocks change (catalog.profile.window_open's rules), for
Europe/Berlin and America/New_York on both transition days of 2026, read minute by minute.

Berlin: 2026-03-29 01:00 UTC the clocks go from 02:00 to 03:00 (02:00-03:00 is skipped);
2026-10-25 01:00 UTC they go from 03:00 back to 02:00 (02:00-03:00 is read twice).
New York: 2026-03-08 07:00 UTC, 02:00 -> 03:00; 2026-11-01 06:00 UTC, 02:00 -> 01:00.
All four are Sundays.
"""
from __future__ import annotations

import datetime as dt

import pytest

from models_registry.catalog.profile import window_open

UTC = dt.timezone.utc
MIN = dt.timedelta(minutes=1)
SAT, SUN = 5, 6


def z(day: str, hhmm: str) -> dt.datetime:
    return dt.datetime.fromisoformat(f"{day}T{hhmm}:00+00:00")


def open_spans(days, start: str, end: str, zone: str, around: dt.datetime) -> list[tuple[dt.datetime, dt.datetime]]:
    """Every [open, close) of the window within 30 hours of `around`, minute by minute."""
    s, e = dt.time.fromisoformat(start), dt.time.fromisoformat(end)
    spans, t, lo = [], around - dt.timedelta(hours=30), None
    while t <= around + dt.timedelta(hours=30):
        is_open = window_open(days, s, e, zone, t)
        if is_open and lo is None:
            lo = t
        elif not is_open and lo is not None:
            spans.append((lo, t))
            lo = None
        t += MIN
    assert lo is None, "still open at the end of the scan"
    return spans


BERLIN_BACK, BERLIN_FORWARD = z("2026-10-25", "01:00"), z("2026-03-29", "01:00")
NY_BACK, NY_FORWARD = z("2026-11-01", "06:00"), z("2026-03-08", "07:00")

CASES = [
    # clocks go back: one continuous span from the first start to the last end
    ("Europe/Berlin", BERLIN_BACK, [SUN], "02:30", "03:30", [("2026-10-25", "00:30", "2026-10-25", "02:30")]),
    ("Europe/Berlin", BERLIN_BACK, [SUN], "02:10", "02:40", [("2026-10-25", "00:10", "2026-10-25", "01:40")]),
    ("Europe/Berlin", BERLIN_BACK, [SUN], "01:00", "02:30", [("2026-10-24", "23:00", "2026-10-25", "01:30")]),
    ("Europe/Berlin", BERLIN_BACK, [SUN], "00:00", "02:00", [("2026-10-24", "22:00", "2026-10-25", "00:00")]),
    ("Europe/Berlin", BERLIN_BACK, [SUN], "02:00", "05:00", [("2026-10-25", "00:00", "2026-10-25", "04:00")]),
    ("Europe/Berlin", BERLIN_BACK, [SAT], "22:00", "09:00", [("2026-10-24", "20:00", "2026-10-25", "08:00")]),
    ("Europe/Berlin", BERLIN_BACK, [SUN], "09:00", "17:00", [("2026-10-25", "08:00", "2026-10-25", "16:00")]),
    # clocks go forward: a start in the skipped hour opens at the transition; inside it, for its length
    ("Europe/Berlin", BERLIN_FORWARD, [SUN], "02:10", "02:40", [("2026-03-29", "01:00", "2026-03-29", "01:30")]),
    ("Europe/Berlin", BERLIN_FORWARD, [SUN], "02:00", "03:00", [("2026-03-29", "01:00", "2026-03-29", "02:00")]),
    ("Europe/Berlin", BERLIN_FORWARD, [SUN], "02:30", "04:00", [("2026-03-29", "01:00", "2026-03-29", "02:00")]),
    ("Europe/Berlin", BERLIN_FORWARD, [SUN], "01:00", "02:30", [("2026-03-29", "00:00", "2026-03-29", "01:00")]),
    ("Europe/Berlin", BERLIN_FORWARD, [SAT], "22:00", "09:00", [("2026-03-28", "21:00", "2026-03-29", "07:00")]),
    ("America/New_York", NY_BACK, [SUN], "01:30", "02:30", [("2026-11-01", "05:30", "2026-11-01", "07:30")]),
    ("America/New_York", NY_BACK, [SUN], "01:15", "01:45", [("2026-11-01", "05:15", "2026-11-01", "06:45")]),
    ("America/New_York", NY_BACK, [SUN], "00:00", "01:00", [("2026-11-01", "04:00", "2026-11-01", "05:00")]),
    ("America/New_York", NY_BACK, [SAT], "22:00", "09:00", [("2026-11-01", "02:00", "2026-11-01", "14:00")]),
    ("America/New_York", NY_FORWARD, [SUN], "02:15", "02:45", [("2026-03-08", "07:00", "2026-03-08", "07:30")]),
    ("America/New_York", NY_FORWARD, [SUN], "02:30", "05:00", [("2026-03-08", "07:00", "2026-03-08", "09:00")]),
    ("America/New_York", NY_FORWARD, [SUN], "01:00", "02:30", [("2026-03-08", "06:00", "2026-03-08", "07:00")]),
    ("America/New_York", NY_FORWARD, [SAT], "22:00", "09:00", [("2026-03-08", "03:00", "2026-03-08", "13:00")]),
]


@pytest.mark.parametrize("zone,transition,days,start,end,expected", CASES,
                         ids=[f"{c[0]}-{c[1]:%m-%d}-{c[3]}-{c[4]}" for c in CASES])
def test_a_window_on_a_transition_day_opens_once_for_its_whole_span(zone, transition, days, start, end, expected):
    assert open_spans(days, start, end, zone, transition) == [(z(a, b), z(c, d)) for a, b, c, d in expected]


@pytest.mark.parametrize("zone,transition", [("Europe/Berlin", BERLIN_BACK), ("Europe/Berlin", BERLIN_FORWARD),
                                             ("America/New_York", NY_BACK), ("America/New_York", NY_FORWARD)])
@pytest.mark.parametrize("first,second", [(("22:00", "02:00"), ("02:00", "06:00")),
                                          (("01:00", "02:30"), ("02:30", "05:00")),
                                          (("00:00", "01:30"), ("01:30", "04:00"))])
def test_windows_that_meet_on_the_clock_leave_no_gap_across_a_transition(zone, transition, first, second):
    """One window ending where the next starts (the Tower's "evening" then "night" pattern): on a
    transition night the model they share is wanted without a break, so the beat never unloads it."""
    days = [SAT, SUN]
    t, closed = transition - dt.timedelta(hours=6), []
    while t <= transition + dt.timedelta(hours=6):
        if not (window_open(days, dt.time.fromisoformat(first[0]), dt.time.fromisoformat(first[1]), zone, t)
                or window_open(days, dt.time.fromisoformat(second[0]), dt.time.fromisoformat(second[1]), zone, t)):
            closed.append(t)
        t += MIN
    # closed only before the first window opens and after the second one closes: one open stretch
    runs = [b for a, b in zip(closed, closed[1:]) if b - a > MIN]
    assert len(runs) == 1, f"open stretches end at {runs}: closed in the middle"


def test_the_part_after_midnight_belongs_to_the_day_the_window_started():
    """'mon 22:00-09:00' is open on Tuesday morning, not on Monday morning."""
    mon = [0]
    s, e = dt.time(22), dt.time(9)
    assert window_open(mon, s, e, "Europe/Berlin", z("2026-11-24", "02:00"))  # Tue 03:00 in Berlin
    assert not window_open(mon, s, e, "Europe/Berlin", z("2026-11-23", "02:00"))  # Mon 03:00
    assert window_open(mon, s, e, "Europe/Berlin", z("2026-11-23", "21:30"))  # Mon 22:30
    assert not window_open(mon, s, e, "Europe/Berlin", z("2026-11-24", "08:00"))  # Tue 09:00: closed


def test_an_ordinary_day_is_plain_wall_clock_time():
    """Away from the transitions the rules change nothing: every minute of a week agrees with the
    plain local-time reading."""
    s, e, days = dt.time(8, 30), dt.time(1, 15), [0, 2, 4]
    t = z("2026-06-01", "00:00")
    while t < z("2026-06-08", "00:00"):
        local = t.astimezone(dt.timezone(dt.timedelta(hours=-4)))  # New York in June
        day, clock = local.weekday(), local.time()
        plain = (clock >= s and day in days) or (clock < e and (day - 1) % 7 in days)
        assert window_open(days, s, e, "America/New_York", t) is plain, t
        t += 7 * MIN
