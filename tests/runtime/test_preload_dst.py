"""The preload beat across the clock changes: a window's model is loaded once when the window opens
and cooled once after it closes, never unloaded and reloaded in between (catalog.profile.window_open's
rules), on endpoints with a finite keep_alive, where the beat cools an ended window's models."""
from __future__ import annotations

import datetime as dt

import pytest

from models_registry import models as m
from models_registry.runtime import tasks

from .test_tasks import clock  # noqa: F401  (a fixture; sim, fleet and ops come from conftest.py)

UTC = dt.timezone.utc
TICK = dt.timedelta(minutes=5)  # the beat runs every 60 s; every 5 minutes is enough to see a gap


def beat_log(ops, clock, start: dt.datetime, end: dt.datetime) -> list[tuple[str, str, dt.datetime]]:  # noqa: F811
    """Run the beat's preload task every TICK from start to end; what it loaded and unloaded, when."""
    log, t = [], start
    while t <= end:
        clock.set(t)
        ops.committed(tasks.apply_preload_windows)
        calls = ops.take()
        ops.run(calls)
        for task, args, _ in calls:
            tag = m.Residency.objects.get(pk=args[0]).model.tag
            log.append((task, tag, t))
        t += TICK
    return log


@pytest.fixture
def one_window(ops):  # noqa: F811
    m.Endpoint.objects.update(keep_alive="30m")
    m.PreloadWindow.objects.update(enabled=False)  # the Tower's own windows: UTC, not these nights

    def make(start: str, end: str, zone: str) -> None:
        w = m.PreloadWindow.objects.create(name=f"dst {zone}", days_of_week=[6], start_time=dt.time.fromisoformat(start),
                                           end_time=dt.time.fromisoformat(end), timezone=zone)
        w.models.add(m.LlmModel.objects.get(tag="tinyllama"))

    return make


def z(day: str, hhmm: str) -> dt.datetime:
    return dt.datetime.fromisoformat(f"{day}T{hhmm}:00+00:00")


def test_the_repeated_hour_never_unloads_and_reloads_a_windows_model(ops, clock, one_window):  # noqa: F811
    """Berlin 02:30-03:30 on 2026-10-25, the night the clocks go back: one load at 00:30 UTC, one
    unload once it closed at 02:30 UTC (by wall-clock time alone it closed 01:00-01:30 UTC)."""
    one_window("02:30", "03:30", "Europe/Berlin")
    log = beat_log(ops, clock, z("2026-10-24", "23:50"), z("2026-10-25", "03:00"))
    assert log == [("load", "tinyllama", z("2026-10-25", "00:30")), ("unload", "tinyllama", z("2026-10-25", "02:30"))]


def test_a_window_inside_the_skipped_hour_opens_at_the_transition(ops, clock, one_window):  # noqa: F811
    """New York 02:15-02:45 on 2026-03-08, the night the clocks go forward: 07:00-07:30 UTC
    (by wall-clock time alone it never opened)."""
    one_window("02:15", "02:45", "America/New_York")
    log = beat_log(ops, clock, z("2026-03-08", "06:00"), z("2026-03-08", "08:00"))
    assert log == [("load", "tinyllama", z("2026-03-08", "07:00")), ("unload", "tinyllama", z("2026-03-08", "07:30"))]
