"""Predicted preload windows: demand per task type × urgency × hour of week, and the windows it asks for.

Pure: standard library only, no Django, no clock; the caller passes the events, the span they
cover and the time zone. Used by ``learning.windows`` (the live suggestion) and
``bench/predictive_preload.py`` (the replay evaluation).

The estimator (``estimate_demand``)
-----------------------------------
Events are ``(when, task type, urgency)``; ``when`` is an aware datetime or epoch seconds. The
span ``[since, until)`` is cut into clock hours; each hour is a *slot* of the week (``hour of
week`` = local weekday × 24 + local hour in ``zone``: the demand of people follows their wall
clock, across clock changes too). Per series (task type, urgency):

* ``slot`` rate of a slot: the counts of its occurrences (one per week observed) — their
  **median** when the slot was seen at least 3 times, else their mean. The median ignores a
  holiday week (or a week of an outage, or a one-off batch) as long as most weeks were ordinary;
* ``hour-of-day`` rate: the same over every day's hour at that local time, days of the same kind
  (weekdays, weekend days) when any was observed, else all days (median from 3 days);
* ``overall`` rate: all the series' events ÷ all the hours observed.

The estimate shrinks the slot rate toward the hour-of-day rate, and that toward the overall rate,
by how much history there is (``n`` occurrences of the slot, ``d`` days of that hour)::

    rate = w·slot + (1 − w)·(v·hour_of_day + (1 − v)·overall),   w = n / (n + PRIOR_WEEKS),
                                                               v = d / (d + PRIOR_DAYS)

so with a day of history a weekday's hour leans on the same hour of the day seen (v = ½) and a
new deployment is not left with empty weeks; with months of history the slot's own median rules.
Rates are requests per hour.

The recommendation (``recommend_windows``)
------------------------------------------
For each hour of the week: the task types with a rate of at least ``min_rate`` requests per hour
(the rest are negligible: a model warm for an hour nobody asks it is VRAM wasted), weighted by
urgency (``URGENCY_WEIGHT``: a person waiting counts more than a batch job), ask for their warm set
by the one rule of ``policy.warmset.demand_warm_set`` (the replay's clairvoyant reference uses it
too): best quality meeting the floor, placed on the empty tower with no eviction, largest first,
so the set fits together by the placement rules (Ollama's 80 % pre-flight and loaded-model limit
included); a model that cannot fit the tower even alone is no task type's best. Each task type gets its best model, and a further one (the next best) for every
``k`` with ``λ·ρ^k ≥ 1``: λ its rate, ρ = λ·s / 3600 the share of time its best model is busy (s
its service seconds at the task's default tokens), so λ·ρ^k is how many requests an hour would find
the k models before busy; a copy that serves one an hour earns its VRAM (the SLO's VRAM efficiency
counts a model's hour as useful when it serves at least one request).

Hours with the same warm set are merged into spans within a day (a span ending at midnight joins
the next morning's when they make less than 24 h together, as "22:00–09:00" does); equal spans on
several days become one window with a day list. Deterministic: the same demand gives the same
windows, in the same order, with the same names.
"""
from __future__ import annotations

import datetime as dt
import math
import statistics
import zoneinfo
from dataclasses import dataclass, replace
from typing import Iterable, Mapping

from models_registry.policy.placement import place
from models_registry.policy.types import World
from models_registry.policy.warmset import demand_warm_set, empty_tower

HOURS_PER_WEEK = 168
DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
PRIOR_WEEKS = 1.0  # the slot's own rate counts as much as its pooled rate after one week
PRIOR_DAYS = 1.0  # the hour of day's rate counts as much as the overall rate after one day
MEDIAN_FROM = 3  # occurrences: below this a median is no more robust than the mean
MIN_RATE = 0.5  # requests per hour a task type needs for an hour to warm a model for it
# A person waiting (critical, interactive) counts more than a job that can wait.
URGENCY_WEIGHT = {"critical": 4.0, "interactive": 2.0, "background": 1.0, "batch": 0.5}


class ForecastError(ValueError):
    pass


@dataclass(frozen=True)
class Demand:
    """Requests per hour per (task type, urgency) per hour of week (0 = Monday 00:00 local)."""

    rates: Mapping[tuple[str, str], tuple[float, ...]]  # each 168 long
    zone: str
    hours_observed: int

    @property
    def weeks(self) -> float:
        return self.hours_observed / HOURS_PER_WEEK

    def at(self, hour_of_week: int) -> dict[tuple[str, str], float]:
        return {k: v[hour_of_week] for k, v in self.rates.items() if v[hour_of_week] > 0}

    def to_dict(self) -> dict:
        return {"zone": self.zone, "hours_observed": self.hours_observed,
                "rates": {f"{t}/{u}": [round(x, 4) for x in v] for (t, u), v in sorted(self.rates.items())}}


@dataclass(frozen=True)
class WindowSpec:
    """A recommended preload window (PreloadWindow's fields) and where its models would go."""

    name: str
    days: tuple[int, ...]  # 0 = Monday
    start: dt.time
    end: dt.time  # before start: runs past midnight (catalog.profile.window_open)
    timezone: str
    models: tuple[str, ...]  # by tag
    endpoints: tuple[tuple[str, str], ...] = ()  # (tag, endpoint) on the empty tower

    def to_dict(self) -> dict:
        return {"name": self.name, "days": [DAY_NAMES[d] for d in self.days], "start": self.start.strftime("%H:%M"),
                "end": self.end.strftime("%H:%M"), "timezone": self.timezone, "models": list(self.models),
                "endpoints": dict(self.endpoints)}


def _zone(zone: str) -> zoneinfo.ZoneInfo:
    try:
        return zoneinfo.ZoneInfo(zone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ForecastError(f"zone: unknown time zone {zone!r}") from None


def _epoch(value, field: str) -> float:
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            raise ForecastError(f"{field}: a datetime needs a time zone")
        return value.timestamp()
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    raise ForecastError(f"{field}: an aware datetime or epoch seconds, got {value!r}")


def hour_of_week(epoch_s: float, tz: zoneinfo.ZoneInfo) -> int:
    local = dt.datetime.fromtimestamp(epoch_s, tz)
    return local.weekday() * 24 + local.hour


def _typical(values: list[int]) -> float:
    return float(statistics.median(values)) if len(values) >= MEDIAN_FROM else sum(values) / len(values)


def estimate_demand(events: Iterable[tuple], since, until, zone: str = "UTC") -> Demand:
    """The seasonal demand of ``events`` ((when, task type, urgency), ...) observed over [since, until)
    (the module docstring's estimator). Events outside the span are ignored."""
    tz = _zone(zone)
    lo, hi = _epoch(since, "since"), _epoch(until, "until")
    if hi <= lo:
        raise ForecastError("until: must be after since")
    base = math.floor(lo / 3600.0) * 3600.0
    n_hours = math.ceil((hi - base) / 3600.0)
    slot_of = [hour_of_week(base + 3600.0 * i, tz) for i in range(n_hours)]
    counts: dict[tuple[str, str], dict[int, int]] = {}
    for i, event in enumerate(events):
        try:
            when, task, urgency = event
        except (TypeError, ValueError):
            raise ForecastError(f"events[{i}]: a (when, task type, urgency) triple, got {event!r}") from None
        t = _epoch(when, f"events[{i}].when")
        if not lo <= t < hi:
            continue
        if not task or not urgency:
            raise ForecastError(f"events[{i}]: task type and urgency must be named")
        series = counts.setdefault((str(task), str(urgency)), {})
        idx = int((t - base) // 3600.0)
        series[idx] = series.get(idx, 0) + 1
    occurrences: list[list[int]] = [[] for _ in range(HOURS_PER_WEEK)]
    for i, slot in enumerate(slot_of):
        occurrences[slot].append(i)
    # The hours of each local hour of day, per kind of day (weekday, weekend): people keep other
    # hours on Saturdays, so a weekend hour is pooled with weekend days when there are any.
    days_of: dict[tuple[bool, int], list[int]] = {}
    for i, slot in enumerate(slot_of):
        days_of.setdefault((slot >= 5 * 24, slot % 24), []).append(i)
    rates = {}
    for key, series in sorted(counts.items()):
        overall = sum(series.values()) / n_hours
        by_hour = {}
        for weekend in (False, True):
            for hd in range(24):
                idxs = days_of.get((weekend, hd)) or days_of.get((not weekend, hd), [])
                d = len(idxs)
                pooled = _typical([series.get(i, 0) for i in idxs]) if d else overall
                v = d / (d + PRIOR_DAYS)
                by_hour[weekend, hd] = v * pooled + (1 - v) * overall
        out = []
        for slot in range(HOURS_PER_WEEK):
            idxs = occurrences[slot]
            n = len(idxs)
            own = _typical([series.get(i, 0) for i in idxs]) if n else 0.0
            w = n / (n + PRIOR_WEEKS)
            out.append(w * own + (1 - w) * by_hour[slot >= 5 * 24, slot % 24])
        rates[key] = tuple(out)
    return Demand(rates, zone, n_hours)


def _service_s(world: World, task: str, tag: str) -> float:
    """Seconds the model is busy with a request of the task at its default tokens."""
    t = next(t for t in world.task_types if t.name == task)
    m = next(m for m in world.models if m.tag == tag)
    s = t.default_output_tokens / m.tokens_per_s if m.tokens_per_s > 0 else 0.0
    if t.default_input_tokens and m.prefill_tokens_per_s > 0:
        s += t.default_input_tokens / m.prefill_tokens_per_s
    return s


def copies_wanted(rate: float, service_s: float, most: int = 4) -> int:
    """How many of a task type's best models earn their VRAM: 1, and one more for each k with
    rate·ρ^k >= 1 (requests an hour finding the k before busy), ρ = rate·service_s / 3600."""
    rho = min(rate * service_s / 3600.0, 1.0)
    n = 1
    while n < most and rate * rho ** n >= 1.0:
        n += 1
    return n


def warm_set_for(world: World, rates: Mapping[tuple[str, str], float], *, min_rate: float = MIN_RATE,
                 weights: Mapping[str, float] = URGENCY_WEIGHT) -> dict:
    """The warm set one hour's rates ask for on ``world`` (an empty tower): tag -> Placement."""
    per_task_rate: dict[str, float] = {}
    weighted: dict[str, float] = {}
    for (task, urgency), rate in rates.items():
        per_task_rate[task] = per_task_rate.get(task, 0.0) + rate
        weighted[task] = weighted.get(task, 0.0) + rate * weights.get(urgency, 1.0)
    demand = {t: weighted[t] for t, r in per_task_rate.items() if r >= min_rate}
    if not demand:
        return {}
    floors = {t.name: t.quality_floor for t in world.task_types}
    per_task = {}
    for task in demand:
        if task not in floors:
            raise ForecastError(f"demand: unknown task type {task!r}")
        best = max((m for m in world.models if m.kind == "local" and m.enabled
                    and m.quality.get(task, 0.0) >= floors[task]),
                   key=lambda m: (m.quality.get(task, 0.0), [-ord(c) for c in m.tag]), default=None)
        per_task[task] = copies_wanted(per_task_rate[task], _service_s(world, task, best.tag)) if best else 1
    return demand_warm_set(world, demand, per_task)


def _label(days: tuple[int, ...]) -> str:
    if len(days) == 7:
        return "every day"
    if days == (0, 1, 2, 3, 4):
        return "mon-fri"
    if days == (5, 6):
        return "weekend"
    return ",".join(DAY_NAMES[d] for d in days)


def recommend_windows(world: World, demand: Demand, *, min_rate: float = MIN_RATE,
                      weights: Mapping[str, float] = URGENCY_WEIGHT, name: str = "predicted") -> list[WindowSpec]:
    """The preload windows ``demand`` asks for (module docstring), in the demand's time zone."""
    if min_rate <= 0:
        raise ForecastError("min_rate: must be > 0")
    tower = empty_tower(world)
    # A task type's best models are those that fit the tower at all (a 20 GB model on 16 GB GPUs is
    # no one's best here): the others are left out before the warm sets are chosen.
    fits = {mo.tag for mo in tower.models if mo.kind == "local" and mo.enabled
            and place(tower, mo.tag, allow_evictions=False) is not None}
    tower = replace(tower, models=tuple(mo for mo in tower.models if mo.kind != "local" or mo.tag in fits))
    sets: list[tuple[str, ...]] = []
    where: list[dict[str, str]] = []
    cache: dict = {}
    for h in range(HOURS_PER_WEEK):
        key = tuple(sorted((k, round(v, 6)) for k, v in demand.at(h).items()))
        hit = cache.get(key)
        if hit is None:
            placed = warm_set_for(tower, dict(key), min_rate=min_rate, weights=weights)
            hit = cache[key] = (tuple(sorted(placed)), {t: p.endpoint for t, p in placed.items()})
        sets.append(hit[0])
        where.append(hit[1])
    # Spans within each day: (day, start hour, end hour 1..24, models).
    spans: list[list] = []
    for day in range(7):
        h = 0
        while h < 24:
            models = sets[day * 24 + h]
            e = h + 1
            while e < 24 and sets[day * 24 + e] == models:
                e += 1
            if models:
                spans.append([day, h, e, models])
            h = e
    # A span ending at midnight takes the next morning's span of the same models when they make
    # less than 24 h together (first pass: who takes whom, the week being circular; second: emit).
    by_start = {(s[0], s[1]): i for i, s in enumerate(spans)}
    takes: dict[int, int] = {}
    for i, (day, start, end, models) in enumerate(spans):
        j = by_start.get(((day + 1) % 7, 0))
        if end == 24 and start > 0 and j is not None and j != i and spans[j][3] == models and spans[j][2] < start:
            takes[i] = j
    taken = set(takes.values())  # mornings (they start at 00:00): never takers themselves
    pieces = []
    for i, (day, start, end, models) in enumerate(spans):
        if i in taken:  # the evening before runs on through it
            continue
        if i in takes:
            end = spans[takes[i]][2]
        end %= 24
        if start == 0 and end == 0:  # a whole day: a window cannot start and end at the same time
            pieces += [(day, 0, 12, models), (day, 12, 0, models)]
        else:
            pieces.append((day, start, end, models))
    groups: dict[tuple, list[int]] = {}
    for day, start, end, models in pieces:
        groups.setdefault((start, end, models), []).append(day)
    out = []
    for (start, end, models), days in groups.items():
        days_t = tuple(sorted(set(days)))
        first = days_t[0] * 24 + start
        endpoints = tuple(sorted((t, where[first].get(t, "")) for t in models))
        out.append(WindowSpec(f"{name} {start:02d}:00-{end:02d}:00 {_label(days_t)}", days_t,
                              dt.time(start), dt.time(end), demand.zone, models, endpoints))
    out.sort(key=lambda w: (w.days[0], w.start, w.models))
    return out

