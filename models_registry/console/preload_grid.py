"""Preload windows seen as a week: which models each hour wants warm, and whether that fits.

The console's editor draws the week (day of week × hour, in the console's time zone) and,
for a window being edited, previews it before saving. Warm sets are the union of the
models of every enabled window open at an instant (as `policy.preload.warm_set` computes
them for the beat); whether a set fits is `policy.warmset`'s answer, i.e. the placement code's.
"""
from __future__ import annotations

import datetime as dt
import zoneinfo
from dataclasses import dataclass, field

from django.conf import settings

from models_registry import models as m
from models_registry.catalog.profile import window_open
from models_registry.policy import World, fit_warm_set, never_fits

DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
STEP = dt.timedelta(minutes=15)  # windows start and end on any minute; quarters are close enough to draw


@dataclass
class Slot:
    """One hour of the week: the windows open in it and the warm sets they want."""

    windows: list[str] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    misfits: list[str] = field(default_factory=list)  # models of a warm set here that never fit together
    edited: bool = False  # the window being edited is open in this hour
    now: bool = False  # the hour we are in


@dataclass
class DayRow:
    day: str
    slots: list[Slot]


@dataclass
class WindowSpec:
    """A window as the editor sees it: saved, or a proposal not saved yet."""

    window: m.PreloadWindow
    tags: list[str]


def display_tz() -> zoneinfo.ZoneInfo:
    return zoneinfo.ZoneInfo(settings.TIME_ZONE or "UTC")


def saved_specs(exclude_id: int | None = None) -> list[WindowSpec]:
    specs = []
    for w in m.PreloadWindow.objects.prefetch_related("models").order_by("name"):
        if w.pk != exclude_id:
            tags = sorted(mo.tag for mo in w.models.all() if mo.enabled and mo.kind == "local")
            specs.append(WindowSpec(w, tags))
    return specs


def week(specs: list[WindowSpec], world: World, edited: WindowSpec | None = None,
         today: dt.date | None = None, now: dt.datetime | None = None) -> list[DayRow]:
    """7 rows (Monday first) of 24 hourly slots for the current week in the display zone; the
    slot holding `now` (default: the clock) is marked when it falls in that week."""
    tz = display_tz()
    now = (now or dt.datetime.now(tz)).astimezone(tz)
    today = today or now.date()
    monday = dt.datetime.combine(today - dt.timedelta(days=today.weekday()), dt.time(), tzinfo=tz)
    everything = specs + ([edited] if edited else [])
    fit_cache: dict[frozenset, tuple[str, ...]] = {}
    rows = []
    for d in range(7):
        row = []
        for h in range(24):
            start = monday + dt.timedelta(days=d, hours=h)
            slot = Slot(now=start <= now < start + dt.timedelta(hours=1))
            for q in range(4):
                at = start + q * STEP
                tags: list[str] = []
                for s in everything:
                    if s.window.is_active(at):
                        if s.window.name not in slot.windows:
                            slot.windows.append(s.window.name)
                        slot.edited = slot.edited or s is edited
                        tags.extend(t for t in s.tags if t not in tags)
                key = frozenset(tags)
                if key not in fit_cache:
                    fit_cache[key] = never_fits(world, sorted(tags)) if tags else ()
                slot.tags.extend(t for t in tags if t not in slot.tags)
                slot.misfits.extend(t for t in fit_cache[key] if t not in slot.misfits)
            row.append(slot)
        rows.append(DayRow(DAYS[d], row))
    return rows


@dataclass
class Preview:
    """What saving a window would mean: refused if its own models never fit the tower."""

    own_misfits: tuple[str, ...]  # never fit, even alone on an empty tower: the window is refused
    overlap_misfits: list[tuple[str, str, list[str]]]  # (day, hour, models) where the union never fits
    now_placements: list[dict]  # if it were open now: each model's placement and evictions
    largest_usable_mib: int
    clock_changes: list[str] = field(default_factory=list)  # what the window does when its zone's clocks change

    @property
    def refused(self) -> bool:
        return bool(self.own_misfits)


def zone_transitions(zone: str, start: dt.datetime, end: dt.datetime) -> list[dt.datetime]:
    """The instants in [start, end) at which the zone's UTC offset changes (to the second)."""
    tz = zoneinfo.ZoneInfo(zone)
    out = []
    t = start.astimezone(dt.timezone.utc).replace(minute=0, second=0, microsecond=0)
    before = t.astimezone(tz).utcoffset()
    while t < end:
        nxt = t + dt.timedelta(hours=1)
        after = nxt.astimezone(tz).utcoffset()
        if after != before:
            lo, hi = int(t.timestamp()), int(nxt.timestamp())
            while hi - lo > 1:
                mid = (lo + hi) // 2
                if dt.datetime.fromtimestamp(mid, dt.timezone.utc).astimezone(tz).utcoffset() == after:
                    hi = mid
                else:
                    lo = mid
            at = dt.datetime.fromtimestamp(hi, dt.timezone.utc)
            if start <= at:
                out.append(at)
            before = after
        t = nxt
    return out


def clock_change_notes(window: m.PreloadWindow, now: dt.datetime, days: int = 366) -> list[str]:
    """One sentence per clock change of the window's zone in the coming year that the window spans
    (open at the change, or opening or closing there): when it is open that night, in UTC and in
    local readings — read from window_open minute by minute, so it shows what the beat will do."""
    tz = zoneinfo.ZoneInfo(window.timezone)
    notes = []
    for change in zone_transitions(window.timezone, now, now + dt.timedelta(days=days)):
        spans, t, lo = [], change - dt.timedelta(hours=26), None
        while t <= change + dt.timedelta(hours=26):
            is_open = window_open(window.days_of_week, window.start_time, window.end_time, window.timezone, t)
            if is_open and lo is None:
                lo = t
            elif not is_open and lo is not None:
                spans.append((lo, t))
                lo = None
            t += dt.timedelta(minutes=1)
        before, after = (change - dt.timedelta(seconds=1)).astimezone(tz), change.astimezone(tz)
        went = "back" if after.utcoffset() < before.utcoffset() else "forward"
        what = (f"{after:%a %Y-%m-%d}, clocks go {went} at {before + dt.timedelta(seconds=1):%H:%M} "
                f"{before.tzname()} to {after:%H:%M} {after.tzname()}")
        for a, b in spans:
            if a <= change <= b:
                la, lb = a.astimezone(tz), b.astimezone(tz)
                fmt = "%H:%M" if a.date() == b.date() else "%a %H:%M"
                notes.append(f"on {what}: this window is open {a:{fmt}}–{b:{fmt}} UTC continuously "
                             f"({_length(b - a)}; {la:{fmt}} {la.tzname()} → {lb:{fmt}} {lb.tzname()})")
    return notes


def _length(d: dt.timedelta) -> str:
    h, rest = divmod(int(d.total_seconds()) // 60, 60)
    return " ".join(p for p in (f"{h} h" if h else "", f"{rest} min" if rest else "") if p) or "0 min"


def preview(spec: WindowSpec, world: World, grid: list[DayRow], now: dt.datetime | None = None) -> Preview:
    own = never_fits(world, spec.tags)
    overlaps = [
        (row.day, f"{h:02d}:00", slot.misfits)
        for row in grid for h, slot in enumerate(row.slots)
        if slot.edited and slot.misfits and len(slot.windows) > 1
    ]
    live = fit_warm_set(world, spec.tags)
    now_rows = [{"model": t, "placement": None, "warm": True} for t in live.already_warm]
    for tag, p in live.placements.items():
        now_rows.append({"model": tag, "placement": p, "warm": False})
    largest = max((g.total_mib - g.reserved_mib for g in world.gpus), default=0)
    changes = clock_change_notes(spec.window, now or dt.datetime.now(dt.timezone.utc))
    return Preview(own, overlaps, now_rows, largest, changes)
