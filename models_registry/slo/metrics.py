"""The five SLO metrics of the seed, defined once, over plain records.

Pure Python (no Django, no I/O): the API, the Prometheus collector, the hourly rollups
and the replay simulator all compute the metrics with this module, so a simulated run
and the live tower report numbers that mean the same thing.

Shape of the computation
------------------------
Records (`DecisionRec`, `LoadRec`, `Span`) are reduced per clock hour (UTC; for the
simulator, multiples of 3600 s of its virtual clock) into a `Tally`: counts and sums that
recombine *exactly* by addition (`Tally.merge`). A metric over any window is `evaluate()`
of the merged tallies of its hours, so a 30-day figure read from hourly rollups equals
the figure computed from the raw rows of the same hours.

Time is float seconds (epoch seconds live, virtual seconds in the simulator).

The five metrics (names are also `SloTarget.name`)
--------------------------------------------------
``interactive_p95_s``
    95th percentile (nearest rank: the ceil(0.95·n)-th smallest) of the *time to first
    token* (TTFT) of *interactive* decisions — urgency in `INTERACTIVE_URGENCIES` (critical
    and interactive: a person is waiting). TTFT is the wait a person sees before the answer
    starts: queueing, a model load, and the prompt's prefill (Ollama streams by default;
    the seed's own figures — "responds in 0.8 s", "respond in 200 ms", the 13.5 s load
    warnings — are such waits, and LLM-serving SLOs are stated as TTFT plus time per output
    token: DistServe, OSDI '24; Mooncake, FAST '25). A decision's TTFT is, in this order:

    1. ``first_token_s``: the outcome's ``first_token_ms`` (an outcome with it): measured by
       the gateway for a request it forwarded, else reported by the caller;
    2. ``response_s``: the reported ``response_ms`` when the outcome has no first-token
       time — an *upper bound* of the TTFT (the whole answer was there by then);
    3. ``expected_wait_s``: the decision's expected wait until generation starts, when no
       outcome was reported (the live API has no prefill term: a selection does not say
       how long its prompt is; the replay reports its simulated TTFT, prefill included,
       as ``first_token_s``);

    a decision with none of these (nothing could serve it) is counted as `unknown` and
    left out. The result says how many values came from each source (``first_token``,
    ``response``, ``estimated``; of ``first_token``, ``first_token_gateway`` were measured at
    the gateway and ``first_token_caller`` reported by callers). The full response time is not this metric; the replay
    prints its p95 next to it. Percentiles do not add up, so each hour
    keeps a histogram with the fixed right-closed buckets `LATENCY_EDGES_S` (10 ms wide up
    to 1 s, 50 ms up to 10 s, 1 s up to 60 s, 10 s up to 600 s, 60 s up to 3600 s); the
    p95 is the upper edge of the bucket holding the nearest-rank value. It is therefore
    never below the exact p95 and at most one bucket width (50 ms around the 5 s target)
    above it; "p95 < 5 s met" implies the exact p95 is below 5 s. Values above 3600 s
    land in an overflow bucket reported as 3600 s.
``loads_per_hour``
    LoadEvents of kind ``load`` (completed loads; failures and unloads are counted apart)
    per *observed* hour of the window — thrash. An hour is observed when anything was
    recorded in it (a decision, a load event, a GPU snapshot, a resident model); hours in
    which TowerOps recorded nothing do not dilute the rate.
    A *thrash load* (``THRASH_WINDOW_S``, ``is_thrash_load``) is a load of a model that was
    evicted from the same endpoint less than 10 minutes before the load was asked for: the
    eviction bought nothing. Counted apart (``Tally.thrash_loads``, in this metric's detail);
    an eviction is TowerOps' own (LoadEvent kind ``evict``) or Ollama's (kind ``unload``,
    trigger ``external``: the state sync saw the model gone without anyone asking).
``vram_efficiency``
    Useful VRAM-seconds ÷ usable VRAM-seconds over the observed hours. Usable = Σ over
    GPUs of (total − reserved) MiB × observed seconds. Useful = for every residency (a
    model holding VRAM from its load request until it ended, or until now), its MiB ×
    the seconds it held them inside a clock hour *in which it served at least one request*
    (a decision of action use_loaded / wait_for_load / load pointing at that residency).
    Why: VRAM earns its keep only while it holds a model people are asking for. Empty
    VRAM and a model nobody asked for in a whole hour are both waste — capacity that could
    have held the model the next request wanted; a tower that keeps its GPUs full of the
    models in demand scores near 100 %. The hour is the granularity because it makes the
    figure additive (an hour's useful seconds never change once the hour is over), and it
    is longer than a keep_alive, so a model kept warm for a request every few minutes
    counts in full.
``quality_met``
    Share of decisions whose chosen model met the task's quality floor (`met_floor`);
    decisions that found no model count as not met.
``fallback_rate``
    Share of decisions whose action is ``fallback`` (sent to a remote API).

A metric over a window with nothing to measure (no interactive decision with a response
time; no decision; no observed hour) has value ``None`` — "no data" — and is neither met
nor failed (`check` returns None), never 0 % and never a pass.
"""
from __future__ import annotations

import bisect
import math
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field

HOUR_S = 3600.0

P95 = "interactive_p95_s"
LOADS_PER_HOUR = "loads_per_hour"
VRAM_EFFICIENCY = "vram_efficiency"
QUALITY_MET = "quality_met"
FALLBACK_RATE = "fallback_rate"
METRICS = (P95, LOADS_PER_HOUR, VRAM_EFFICIENCY, QUALITY_MET, FALLBACK_RATE)
UNITS = {P95: "s", LOADS_PER_HOUR: "loads/h", VRAM_EFFICIENCY: "fraction", QUALITY_MET: "fraction",
         FALLBACK_RATE: "fraction"}

THRASH_WINDOW_S = 600.0  # a load within this of the same model's eviction from the same endpoint

INTERACTIVE_URGENCIES = frozenset({"critical", "interactive"})
SERVING_ACTIONS = frozenset({"use_loaded", "wait_for_load", "load"})
COMPARATORS = {"lt": "<", "le": "≤", "gt": ">", "ge": "≥"}

# The seed's targets: the defaults a data migration writes into SloTarget.
DEFAULT_TARGETS = {
    P95: ("lt", 5.0),
    LOADS_PER_HOUR: ("lt", 10.0),
    VRAM_EFFICIENCY: ("gt", 0.80),
    QUALITY_MET: ("gt", 0.95),
    FALLBACK_RATE: ("lt", 0.05),
}


def _edges(*segments: tuple[float, float]) -> tuple[float, ...]:
    """Bucket edges from 0: each (step, up_to) segment adds edges every `step` up to `up_to`."""
    out: list[float] = []
    lo = 0.0
    for step, hi in segments:
        n = round((hi - lo) / step)
        out.extend(round(lo + step * (i + 1), 6) for i in range(n))
        lo = hi
    return tuple(out)


# Right-closed buckets: bucket i holds (edges[i-1], edges[i]]; bucket len(edges) is overflow.
LATENCY_EDGES_S = _edges((0.01, 1.0), (0.05, 10.0), (1.0, 60.0), (10.0, 600.0), (60.0, 3600.0))
LATENCY_BUCKETS = len(LATENCY_EDGES_S) + 1
# Prometheus histograms (`le` buckets) of the decision's own cost and of load durations.
DECISION_US_EDGES = (50, 100, 200, 500, 1000, 2000, 5000, 10_000, 20_000, 50_000, 100_000)
LOAD_DURATION_EDGES_S = (1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0)
# Labelled Prometheus histograms kept per hour (`observe`): time to first token from outcomes
# ("ttft"), the policy's expected wait ("wait"), load durations by model and endpoint ("load").
# 5.0 is an edge so an alert can count first tokens slower than the interactive target.
WAIT_EDGES_S = (0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0)
LABELLED_EDGES = {"ttft": WAIT_EDGES_S, "wait": WAIT_EDGES_S, "load": LOAD_DURATION_EDGES_S}


def bucket_of(edges: tuple[float, ...], x: float) -> int:
    """Index of the right-closed bucket holding x (len(edges) for overflow)."""
    return bisect.bisect_left(edges, x)


def histogram(edges: tuple[float, ...], values: Iterable[float]) -> list[int]:
    h = [0] * (len(edges) + 1)
    for v in values:
        h[bisect.bisect_left(edges, v)] += 1
    return h


def observe(hists: dict, family: str, key: str, value: float) -> None:
    """Adds `value` to the labelled histogram hists[family][key]: {"h": right-closed bucket
    counts over LABELLED_EDGES[family] (+ overflow), "s": sum}. Plain dicts and lists, so an
    hour's histograms are stored as they are (SloHourlyRollup.labelled_hists) and add up."""
    body = hists.setdefault(family, {})
    h = body.get(key)
    if h is None:
        h = body[key] = {"h": [0] * (len(LABELLED_EDGES[family]) + 1), "s": 0.0}
    h["h"][bisect.bisect_left(LABELLED_EDGES[family], value)] += 1
    h["s"] += value


def merge_labelled(into: dict, other: dict) -> dict:
    """Adds the labelled histograms `other` into `into` (and returns it); `other` is not changed."""
    for family, body in other.items():
        dest = into.setdefault(family, {})
        for key, h in body.items():
            t = dest.get(key)
            if t is None:
                dest[key] = {"h": list(h["h"]), "s": h["s"]}
            else:
                t["h"] = [a + b for a, b in zip(t["h"], h["h"])]
                t["s"] += h["s"]
    return into


# --------------------------------------------------------------------------- records


@dataclass(frozen=True, slots=True)
class DecisionRec:
    at: float
    urgency: str
    action: str | None
    met_floor: bool
    expected_wait_s: float | None = None  # the decision's expected wait before generation starts
    response_s: float | None = None  # reported by the caller (outcome's response_ms), when it was
    residency: Hashable | None = None  # the residency that served it, for VRAM efficiency
    task_type: Hashable | None = None
    model: Hashable | None = None
    decision_us: int = 0
    rating: float | None = None
    first_token_s: float | None = None  # the outcome's first_token_ms, when it has one
    first_token_at_gateway: bool = False  # first_token_s was measured by the gateway (else reported by the caller)


@dataclass(frozen=True, slots=True)
class LoadRec:
    at: float
    kind: str  # load | unload | evict | fail
    model: Hashable | None = None
    endpoint: Hashable | None = None
    duration_s: float | None = None
    thrash: bool = False  # a load: is_thrash_load


def is_thrash_load(requested_at: float, evicted_at: float | None) -> bool:
    """Whether a load asked for at ``requested_at`` is a thrash load: the same model was evicted
    from the same endpoint at ``evicted_at`` (its latest eviction there; None: never), less than
    THRASH_WINDOW_S earlier."""
    return evicted_at is not None and requested_at - evicted_at < THRASH_WINDOW_S


@dataclass(frozen=True, slots=True)
class Span:
    """A residency: `vram_mib` held from `start` to `end` (None: still held)."""

    key: Hashable
    start: float
    end: float | None
    vram_mib: float


# --------------------------------------------------------------------------- tally


@dataclass(slots=True)
class Tally:
    """Additive sufficient statistics of the five metrics over some hours."""

    seconds: float = 0.0  # wall time covered
    observed_s: float = 0.0  # of which observed (see module docstring)
    decisions: int = 0
    fallbacks: int = 0
    met_floor: int = 0
    interactive_first_token: int = 0  # TTFT from an outcome's first_token_ms
    interactive_first_token_gateway: int = 0  # of which measured by the gateway (the rest: reported by callers)
    interactive_observed: int = 0  # from a reported response_ms (an upper bound of the TTFT)
    interactive_estimated: int = 0  # from expected_wait_s (no outcome reported)
    interactive_unknown: int = 0  # none of these
    latency_hist: list[int] = field(default_factory=lambda: [0] * LATENCY_BUCKETS)
    loads: int = 0
    thrash_loads: int = 0  # of loads, those of a model evicted from the same endpoint < 10 min before
    unloads: int = 0
    evictions: int = 0
    failures: int = 0
    vram_used_mib_s: float = 0.0
    vram_usable_mib_s: float = 0.0

    def merge(self, other: Tally) -> Tally:
        """Adds `other` into self (and returns self)."""
        for name in _SCALARS:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        h, o = self.latency_hist, other.latency_hist
        for i, v in enumerate(o):
            if v:
                h[i] += v
        return self

    @classmethod
    def total(cls, tallies: Iterable[Tally]) -> Tally:
        """The merge of all `tallies` (the same sums, in the same order, as merging one by one;
        column-wise, as a 30-day window merges 720 hours of 400-bucket histograms)."""
        t = cls()
        xs = list(tallies)
        if any(len(x.latency_hist) != LATENCY_BUCKETS for x in xs):
            for x in xs:
                t.merge(x)
            return t
        for name in _SCALARS:
            setattr(t, name, sum((getattr(x, name) for x in xs), getattr(t, name)))
        if xs:
            t.latency_hist = [sum(col) for col in zip(*(x.latency_hist for x in xs))]
        return t


_SCALARS = tuple(n for n in Tally.__slots__ if n != "latency_hist")


def tally_hour(start: float, end: float, decisions: Iterable[DecisionRec], loads: Iterable[LoadRec],
               spans: Iterable[Span], usable_mib: float, *, observed: bool = False) -> Tally:
    """The tally of one clock hour [start, end) (end < start + 1 h for the current hour).

    Records are taken as given (the caller selects those of the hour); spans are clipped
    to [start, end). `observed` forces the hour to count as observed (e.g. GPU snapshots
    were taken); otherwise it is observed when it has any record or resident model.
    """
    t = Tally(seconds=end - start)
    served: set = set()
    lat: list[float] = []
    for d in decisions:
        t.decisions += 1
        if d.action == "fallback":
            t.fallbacks += 1
        if d.met_floor:
            t.met_floor += 1
        if d.action in SERVING_ACTIONS and d.residency is not None:
            served.add(d.residency)
        if d.urgency in INTERACTIVE_URGENCIES:
            if d.first_token_s is not None:
                t.interactive_first_token += 1
                if d.first_token_at_gateway:
                    t.interactive_first_token_gateway += 1
                lat.append(d.first_token_s)
            elif d.response_s is not None:
                t.interactive_observed += 1
                lat.append(d.response_s)
            elif d.expected_wait_s is not None:
                t.interactive_estimated += 1
                lat.append(d.expected_wait_s)
            else:
                t.interactive_unknown += 1
    if lat:
        t.latency_hist = histogram(LATENCY_EDGES_S, lat)
    n_loads = 0
    for e in loads:
        n_loads += 1
        if e.kind == "load":
            t.loads += 1
            if e.thrash:
                t.thrash_loads += 1
        elif e.kind == "unload":
            t.unloads += 1
        elif e.kind == "evict":
            t.evictions += 1
        elif e.kind == "fail":
            t.failures += 1
    used = 0.0
    resident = False
    for s in spans:
        lo, hi = max(s.start, start), min(end if s.end is None else s.end, end)
        if hi <= lo:
            continue
        resident = True
        if s.key in served:
            used += s.vram_mib * (hi - lo)
    if observed or t.decisions or n_loads or resident:
        t.observed_s = t.seconds
        t.vram_used_mib_s = used
        t.vram_usable_mib_s = usable_mib * t.seconds
    return t


def hour_floor(ts: float) -> float:
    return math.floor(ts / HOUR_S) * HOUR_S


def tally_window(start: float, end: float, decisions: Iterable[DecisionRec], loads: Iterable[LoadRec],
                 spans: Iterable[Span], usable_mib: float) -> list[tuple[float, Tally]]:
    """Per-hour tallies of [start, end) — the simulator's entry point (start on an hour boundary).

    Records outside the window are ignored; the last hour may be partial.
    """
    hours: dict[float, tuple[list, list]] = {}
    h = hour_floor(start)
    while h < end:
        hours[h] = ([], [])
        h += HOUR_S
    for d in decisions:
        if start <= d.at < end:
            hours[hour_floor(d.at)][0].append(d)
    for e in loads:
        if start <= e.at < end:
            hours[hour_floor(e.at)][1].append(e)
    spans = list(spans)
    out = []
    for h, (ds, ls) in hours.items():
        lo, hi = max(h, start), min(h + HOUR_S, end)
        out.append((h, tally_hour(lo, hi, ds, ls, spans, usable_mib)))
    return out


# --------------------------------------------------------------------------- metrics


@dataclass(frozen=True)
class MetricValue:
    name: str
    value: float | None  # None: no data
    unit: str
    detail: dict


def p95_from_histogram(hist: list[int]) -> float | None:
    n = sum(hist)
    if n == 0:
        return None
    rank = math.ceil(0.95 * n)
    seen = 0
    for i, c in enumerate(hist):
        seen += c
        if seen >= rank:
            return LATENCY_EDGES_S[min(i, len(LATENCY_EDGES_S) - 1)]
    raise AssertionError("unreachable")


def _ratio(num: float, den: float) -> float | None:
    return num / den if den else None


def evaluate(t: Tally) -> dict[str, MetricValue]:
    """The five metrics of a (merged) tally."""
    counts = {"first_token": t.interactive_first_token, "response": t.interactive_observed,
              "estimated": t.interactive_estimated}
    n_lat = sum(counts.values())
    present = [k for k, v in counts.items() if v]
    source = present[0] if len(present) == 1 else ("mixed" if present else "none")
    hours = t.observed_s / HOUR_S
    return {
        P95: MetricValue(P95, p95_from_histogram(t.latency_hist), UNITS[P95], {
            "source": source, **counts, "unknown": t.interactive_unknown, "samples": n_lat,
            "first_token_gateway": t.interactive_first_token_gateway,
            "first_token_caller": t.interactive_first_token - t.interactive_first_token_gateway,
        }),
        LOADS_PER_HOUR: MetricValue(LOADS_PER_HOUR, t.loads / hours if hours else None, UNITS[LOADS_PER_HOUR], {
            "loads": t.loads, "observed_hours": hours, "failures": t.failures, "evictions": t.evictions,
            "unloads": t.unloads, "thrash_loads": t.thrash_loads, "thrash_share": _ratio(t.thrash_loads, t.loads),
        }),
        VRAM_EFFICIENCY: MetricValue(VRAM_EFFICIENCY, _ratio(t.vram_used_mib_s, t.vram_usable_mib_s),
                                     UNITS[VRAM_EFFICIENCY], {
            "useful_mib_s": t.vram_used_mib_s, "usable_mib_s": t.vram_usable_mib_s, "observed_hours": hours,
        }),
        QUALITY_MET: MetricValue(QUALITY_MET, _ratio(t.met_floor, t.decisions), UNITS[QUALITY_MET], {
            "met_floor": t.met_floor, "decisions": t.decisions,
        }),
        FALLBACK_RATE: MetricValue(FALLBACK_RATE, _ratio(t.fallbacks, t.decisions), UNITS[FALLBACK_RATE], {
            "fallbacks": t.fallbacks, "decisions": t.decisions,
        }),
    }


@dataclass(frozen=True)
class Target:
    name: str
    comparator: str  # lt | le | gt | ge
    value: float
    enabled: bool = True


def default_targets() -> dict[str, Target]:
    return {n: Target(n, c, v) for n, (c, v) in DEFAULT_TARGETS.items()}


def check(value: float | None, target: Target | None) -> bool | None:
    """Met (True), missed (False), or None: no data, or no enabled target."""
    if value is None or target is None or not target.enabled:
        return None
    c = target.comparator
    if c == "lt":
        return value < target.value
    if c == "le":
        return value <= target.value
    if c == "gt":
        return value > target.value
    if c == "ge":
        return value >= target.value
    raise ValueError(f"unknown comparator {c!r}")
