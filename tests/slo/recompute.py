"""The independent recomputation that tests/slo/test_recompute.py compares the API with: the five
SLOs, the fallback, thrash and quality reports and the /metrics counters, from the records a test
wrote (its `Ledger`, which keeps them after the database prunes them), by the README's definitions
("SLOs and reports") alone. It imports nothing from models_registry.slo. Where the README leaves a
detail open it follows the written definition in slo/metrics.py's docstring, not its code: the
latency buckets above 10 s (1 s to 60 s, 10 s to 600 s, 60 s to 3600 s) and a partial current hour
weighing its length. Histogram buckets of /metrics are checked at the `le` edges the exposition names.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import math
from collections import Counter, defaultdict

import pytest
from prometheus_client.parser import text_string_to_metric_families

from models_registry import models as m

UTC = dt.timezone.utc
HOUR = dt.timedelta(hours=1)
WINDOW_HOURS = {"24h": 24, "7d": 7 * 24, "30d": 30 * 24}
INTERACTIVE = ("critical", "interactive")
SERVING = ("use_loaded", "wait_for_load", "load")
# The README's seed targets.
TARGETS = {"interactive_p95_s": ("lt", 5.0), "loads_per_hour": ("lt", 10.0), "vram_efficiency": ("gt", 0.80),
           "quality_met": ("gt", 0.95), "fallback_rate": ("lt", 0.05)}
KINDS = {"load": "loads", "evict": "evictions", "unload": "unloads", "fail": "failures"}


# --------------------------------------------------------------------------- what the test wrote


@dataclasses.dataclass
class Dec:
    id: int
    at: dt.datetime
    urgency: str
    action: str
    met: bool
    wait_ms: int | None
    task: str
    model: str | None
    residency: int | None
    us: int
    response_ms: int | None = None
    first_token_ms: int | None = None
    rating: float | None = None


@dataclasses.dataclass
class Ev:
    at: dt.datetime
    kind: str
    model: str
    endpoint: str
    task: str | None
    duration: float | None


@dataclasses.dataclass
class Res:
    id: int
    start: dt.datetime
    end: dt.datetime | None
    mib: int


class Ledger:
    """Writes the history into the database (decisions and their outcomes as they are made, late
    outcomes through the API) and keeps its own copy, which pruning never touches."""

    def __init__(self, rig, client, select_key: str):
        self.rig, self.client, self.key = rig, client, select_key
        self.decisions: dict[int, Dec] = {}
        self.events: list[Ev] = []
        self.residencies: dict[int, Res] = {}
        self.usable_mib = sum(g.total_mib - g.reserved_mib for g in m.Gpu.objects.all())
        self.admin_scores = {(q.model.tag, q.task_type.name): q.score
                             for q in m.QualityScore.objects.select_related("model", "task_type")}

    def decide(self, at, *, urgency="interactive", action="use_loaded", met=True, wait_ms=1000, task="general",
               model="llama3.2:3b", residency: Res | None = None, us=100, response_ms=None, first_token_ms=None,
               rating=None) -> Dec:
        row = self.rig.decision(at, urgency=urgency, action=action, met=met,
                                wait=None if wait_ms is None else wait_ms / 1000, task=task, model=model,
                                residency=m.Residency.objects.get(pk=residency.id) if residency else None,
                                response_ms=response_ms, first_token_ms=first_token_ms, rating=rating,
                                decision_us=us)
        d = Dec(row.pk, at, urgency, action, met, wait_ms, task, model, residency.id if residency else None, us,
                response_ms, first_token_ms if response_ms is not None else None,
                rating if response_ms is not None else None)
        self.decisions[d.id] = d
        return d

    def late_outcome(self, d: Dec, response_ms: int, first_token_ms: int | None = None,
                     rating: float | None = None) -> int:
        """POST …/outcome; the ledger takes it only when the API says it was stored."""
        body = {"response_ms": response_ms, "success": True}
        if first_token_ms is not None:
            body["first_token_ms"] = first_token_ms
        if rating is not None:
            body["rating"] = rating
        r = self.client.post(f"/api/v1/decisions/{d.id}/outcome", body, content_type="application/json",
                             HTTP_AUTHORIZATION=f"Bearer {self.key}")
        if r.status_code == 200:
            d.response_ms, d.first_token_ms, d.rating = response_ms, first_token_ms, rating
        else:
            assert r.status_code in (404, 409), r.content  # refused, saying why: never a silent loss
        return r.status_code

    def load(self, at, kind="load", *, model="llama3.2:3b", endpoint="tower-nvidia", duration=3.0,
             decision: Dec | None = None) -> None:
        row = m.SelectionDecision.objects.get(pk=decision.id) if decision else None
        self.rig.load(at, kind, model=model, endpoint=endpoint, duration=duration, decision=row)
        self.events.append(Ev(at, kind, model, endpoint, decision.task if decision else None, duration))

    def residency(self, start, mib, *, model="llama3.2:3b", endpoint="tower-nvidia") -> Res:
        row = self.rig.residency(start, None, mib, model=model, endpoint=endpoint)
        r = Res(row.pk, start, None, mib)
        self.residencies[r.id] = r
        return r

    def end(self, r: Res, at) -> None:
        m.Residency.objects.filter(pk=r.id).update(state="unloaded", ended_at=at)
        r.end = at


# --------------------------------------------------------------------------- the README's definitions


def bucket_upper_ms(x_ms: float) -> int:
    """The upper edge of the right-closed latency bucket holding x: 10 ms wide to 1 s, 50 ms to
    10 s, 1 s to 60 s, 10 s to 600 s, 60 s to 3600 s; above that, 3600 s."""
    lo = 0
    for step, upto in ((10, 1000), (50, 10_000), (1000, 60_000), (10_000, 600_000), (60_000, 3_600_000)):
        if x_ms <= upto:
            return lo + max(1, math.ceil((x_ms - lo) / step)) * step
        lo = upto
    return 3_600_000


def ttft_ms(d: Dec) -> tuple[str, float] | None:
    """An interactive decision's time to first token and its source, or None (unknown)."""
    if d.first_token_ms is not None:
        return "first_token", d.first_token_ms
    if d.response_ms is not None:
        return "response", d.response_ms
    if d.wait_ms is not None:
        return "estimated", d.wait_ms
    return None


def p95(samples: list[float]) -> float | None:
    """Nearest rank (the ceil(0.95·n)-th smallest), reported as its bucket's upper edge, in s."""
    if not samples:
        return None
    rank = (95 * len(samples) + 99) // 100
    return bucket_upper_ms(sorted(samples)[rank - 1]) / 1000


def met(name: str, value: float | None) -> bool | None:
    if value is None:
        return None
    comparator, target = TARGETS[name]
    return value < target if comparator == "lt" else value > target


@dataclasses.dataclass
class Hour:
    start: dt.datetime
    seconds: float
    decisions: list[Dec]
    events: list[Ev]
    observed: bool
    useful_mib_s: float


_hours_kept: dict = {}


def _hours(ledger: Ledger, start: dt.datetime, now: dt.datetime) -> list[Hour]:
    """The clock hours from `start` to the current one, which ends at `now` (kept for the reports
    of one comparison: the ledger's state is part of the key)."""
    key = (id(ledger), start, now, repr(ledger.decisions), repr(ledger.events), repr(ledger.residencies))
    if key not in _hours_kept:
        _hours_kept.clear()
        _hours_kept[key] = _count_hours(ledger, start, now)
    return _hours_kept[key]


def _count_hours(ledger: Ledger, start: dt.datetime, now: dt.datetime) -> list[Hour]:
    by_hour_d: dict[dt.datetime, list[Dec]] = defaultdict(list)
    by_hour_e: dict[dt.datetime, list[Ev]] = defaultdict(list)
    for d in ledger.decisions.values():
        if d.at < now:
            by_hour_d[d.at.replace(minute=0, second=0, microsecond=0)].append(d)
    for e in ledger.events:
        if e.at < now:
            by_hour_e[e.at.replace(minute=0, second=0, microsecond=0)].append(e)
    out = []
    h = start
    while h < now:
        h1 = min(h + HOUR, now)
        ds, es = by_hour_d.get(h, []), by_hour_e.get(h, [])
        held = {}
        for r in ledger.residencies.values():
            overlap = (min(r.end or now, h1) - max(r.start, h)).total_seconds()
            if overlap > 0:
                held[r.id] = r.mib * overlap
        served = {d.residency for d in ds if d.action in SERVING and d.residency is not None}
        observed = bool(ds or es or held)
        out.append(Hour(h, (h1 - h).total_seconds(), ds, es, observed,
                        sum(v for k, v in held.items() if k in served)))
        h += HOUR
    return out


def _metrics(ledger: Ledger, hours: list[Hour]) -> dict[str, tuple[float | None, dict]]:
    ds = [d for h in hours for d in h.decisions]
    sources: Counter = Counter()
    samples = []
    unknown = 0
    for d in ds:
        if d.urgency in INTERACTIVE:
            t = ttft_ms(d)
            if t is None:
                unknown += 1
            else:
                sources[t[0]] += 1
                samples.append(t[1])
    observed_h = sum(h.seconds for h in hours if h.observed) / 3600
    usable = ledger.usable_mib * observed_h * 3600
    useful = sum(h.useful_mib_s for h in hours if h.observed)
    loads = sum(1 for h in hours for e in h.events if e.kind == "load")
    n, fb, ok = len(ds), sum(d.action == "fallback" for d in ds), sum(d.met for d in ds)
    return {
        "interactive_p95_s": (p95(samples), {"first_token": sources["first_token"], "response": sources["response"],
                                             "estimated": sources["estimated"], "unknown": unknown}),
        "loads_per_hour": (loads / observed_h if observed_h else None, {"loads": loads,
                                                                         "observed_hours": observed_h}),
        "vram_efficiency": (useful / usable if usable else None, {}),
        "quality_met": (ok / n if n else None, {"met_floor": ok, "decisions": n}),
        "fallback_rate": (fb / n if n else None, {"fallbacks": fb, "decisions": n}),
    }


def window_start(window: str, now: dt.datetime) -> dt.datetime:
    """That many complete clock hours (UTC) before the current hour."""
    return now.replace(minute=0, second=0, microsecond=0) - WINDOW_HOURS[window] * HOUR


def recompute_slo(ledger: Ledger, window: str, now: dt.datetime) -> dict:
    hours = _hours(ledger, window_start(window, now), now)
    total = _metrics(ledger, hours)
    per_hour = [(h.start, _metrics(ledger, [h])) for h in hours]
    return {name: {"value": v, "met": met(name, v), "detail": detail,
                   "series": [(start, ev[name][0], met(name, ev[name][0])) for start, ev in per_hour]}
            for name, (v, detail) in total.items()}


def _rate(a, b):
    return a / b if b else None


def recompute_fallbacks(ledger: Ledger, window: str, now: dt.datetime) -> dict:
    hours = _hours(ledger, window_start(window, now), now)
    ds = [d for h in hours for d in h.decisions]
    by_task, by_urgency = defaultdict(lambda: [0, 0]), defaultdict(lambda: [0, 0])
    for d in ds:
        for acc in (by_task[d.task], by_urgency[d.urgency]):
            acc[0] += 1
            acc[1] += d.action == "fallback"
    return {
        "decisions": len(ds), "fallbacks": sum(d.action == "fallback" for d in ds),
        "by_model": dict(Counter(d.model for d in ds if d.action == "fallback")),
        "by_task_type": {k: (n, f, _rate(f, n)) for k, (n, f) in by_task.items()},
        "by_urgency": {k: (n, f, _rate(f, n)) for k, (n, f) in by_urgency.items()},
        "by_hour": [(h.start, len(h.decisions), sum(d.action == "fallback" for d in h.decisions),
                     _rate(sum(d.action == "fallback" for d in h.decisions), len(h.decisions))) for h in hours],
    }


def recompute_thrash(ledger: Ledger, window: str, now: dt.datetime) -> dict:
    hours = _hours(ledger, window_start(window, now), now)
    es = [e for h in hours for e in h.events]
    by = {"model": defaultdict(Counter), "endpoint": defaultdict(Counter), "task_type": defaultdict(Counter)}
    for e in es:
        by["model"][e.model][KINDS[e.kind]] += 1
        by["endpoint"][e.endpoint][KINDS[e.kind]] += 1
        by["task_type"][e.task][KINDS[e.kind]] += 1
    totals = Counter(KINDS[e.kind] for e in es)
    lph, detail = _metrics(ledger, hours)["loads_per_hour"]
    return {
        **{k: totals[k] for k in KINDS.values()}, "loads_per_hour": lph, "observed_hours": detail["observed_hours"],
        **{f"by_{label}": {k: {x: c[x] for x in KINDS.values()} for k, c in d.items()} for label, d in by.items()},
        "by_hour": [(h.start, *(sum(KINDS[e.kind] == x for e in h.events) for x in KINDS.values())) for h in hours],
    }


def recompute_quality(ledger: Ledger, window: str, now: dt.datetime) -> dict:
    start = window_start(window, now)
    acc = defaultdict(list)
    for d in ledger.decisions.values():
        if start <= d.at < now and d.rating is not None and d.model is not None:
            acc[(d.model, d.task)].append(d.rating)
    return {k: (ledger.admin_scores.get(k), sum(v) / len(v), len(v)) for k, v in acc.items()}


def recompute_counters(ledger: Ledger, le_decision: list[str], le_load: list[str]) -> dict:
    """All-time counters and histograms, keyed as `counters()` reads the exposition."""
    out: Counter = Counter()
    for d in ledger.decisions.values():
        out[("towerops_decisions_total", (("action", d.action), ("task_type", d.task), ("urgency", d.urgency)))] += 1
    names = {"load": "towerops_model_loads_total", "evict": "towerops_model_evictions_total",
             "unload": "towerops_model_unloads_total", "fail": "towerops_model_load_failures_total"}
    for e in ledger.events:
        out[(names[e.kind], (("endpoint", e.endpoint), ("model", e.model)))] += 1
    us = [d.us for d in ledger.decisions.values()]
    loads = [e.duration for e in ledger.events if e.kind == "load" and e.duration is not None]
    for name, values, scale, edges in (("towerops_decision_duration_seconds", us, 1e6, le_decision),
                                       ("towerops_model_load_duration_seconds", loads, 1.0, le_load)):
        out[(f"{name}_count", ())] = len(values)
        out[(f"{name}_sum", ())] = sum(values) / scale
        for le in edges:
            bound = math.inf if le == "+Inf" else round(float(le) * scale, 6)
            out[(f"{name}_bucket", (("le", le),))] = sum(1 for v in values if v <= bound)
    return dict(out)


# --------------------------------------------------------------------------- the comparison


def _hour(s: str) -> dt.datetime:
    return dt.datetime.fromisoformat(s)


def approx(x):
    return None if x is None else pytest.approx(x, rel=1e-9, abs=1e-12)


def compare_slo(api: dict, mine: dict) -> None:
    got = {x["name"]: x for x in api["metrics"]}
    assert set(got) == set(mine)
    for name, want in mine.items():
        g = got[name]
        assert g["value"] == approx(want["value"]), name
        assert g["met"] is want["met"], name
        for k, v in want["detail"].items():
            assert g["detail"][k] == approx(v), (name, k)
        series = [(_hour(p["hour"]), p["value"], p["met"]) for p in g["series"]]
        assert [(h, approx(v), ok) for h, v, ok in want["series"]] == series, name


def compare_fallbacks(api: dict, mine: dict) -> None:
    assert (api["decisions"], api["fallbacks"]) == (mine["decisions"], mine["fallbacks"])
    assert api["rate"] == approx(_rate(mine["fallbacks"], mine["decisions"]))
    assert {r["model"]: r["fallbacks"] for r in api["by_model"]} == mine["by_model"]
    assert {r["task_type"]: (r["decisions"], r["fallbacks"], r["rate"]) for r in api["by_task_type"]} \
        == mine["by_task_type"]
    assert {r["urgency"]: (r["decisions"], r["fallbacks"], r["rate"]) for r in api["by_urgency"]} \
        == mine["by_urgency"]
    assert [(_hour(r["hour"]), r["decisions"], r["fallbacks"], r["rate"]) for r in api["by_hour"]] == mine["by_hour"]


def compare_thrash(api: dict, mine: dict) -> None:
    for k in ("loads", "evictions", "unloads", "failures"):
        assert api[k] == mine[k], k
    assert api["loads_per_hour"] == approx(mine["loads_per_hour"])
    assert api["observed_hours"] == approx(mine["observed_hours"])
    for label in ("model", "endpoint", "task_type"):
        got = {r[label]: {x: r[x] for x in KINDS.values()} for r in api[f"by_{label}"]}
        assert got == mine[f"by_{label}"], label
    got = [(_hour(r["hour"]), r["loads"], r["evictions"], r["unloads"], r["failures"]) for r in api["by_hour"]]
    assert got == mine["by_hour"]


def compare_quality(api: dict, mine: dict) -> None:
    got = {(r["model"], r["task_type"]): (r["admin_score"], r["observed_mean"], r["ratings"]) for r in api["rows"]}
    assert set(got) == set(mine)
    for k, (score, mean, n) in mine.items():
        assert got[k] == (score, approx(mean), n), k


def counters(text: str) -> dict:
    out = {}
    for fam in text_string_to_metric_families(text):
        if fam.type in ("counter", "histogram"):
            for s in fam.samples:
                if not s.name.endswith("_created"):
                    out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def compare_counters(text: str, ledger: Ledger) -> None:
    got = counters(text)
    edges = {name: [dict(k)["le"] for (n, k) in got if n == f"{name}_bucket"]
             for name in ("towerops_decision_duration_seconds", "towerops_model_load_duration_seconds")}
    want = recompute_counters(ledger, edges["towerops_decision_duration_seconds"],
                              edges["towerops_model_load_duration_seconds"])
    # The families the README defines, at the labels it defines them by: a family /metrics breaks down
    # further (load durations by model and endpoint) is summed over the extra labels; families the
    # README does not define (the wait and first-token histograms) are checked by tests/slo/test_prometheus.py.
    labels_of = {}
    for name, key in want:
        labels_of.setdefault(name, {k for k, _ in key})
    projected: dict = {}
    for (name, key), v in got.items():
        if name in labels_of:
            k = (name, tuple((a, b) for a, b in key if a in labels_of[name]))
            projected[k] = projected.get(k, 0.0) + v
    assert {k: v for k, v in projected.items() if v} == {k: approx(v) for k, v in want.items() if v}


def compare_all(reader, client, ledger: Ledger, windows=("30d",)) -> None:
    """Every report of each window and every counter: the API against the recomputation."""
    now = dt.datetime.now(UTC)  # the test's clock (time-travelled): nothing moves it meanwhile
    for w in windows:
        compare_slo(reader(f"/api/v1/metrics/slo?window={w}").json(), recompute_slo(ledger, w, now))
        compare_fallbacks(reader(f"/api/v1/reports/fallbacks?window={w}").json(), recompute_fallbacks(ledger, w, now))
        compare_thrash(reader(f"/api/v1/reports/thrash?window={w}").json(), recompute_thrash(ledger, w, now))
        compare_quality(reader(f"/api/v1/reports/quality?window={w}").json(), recompute_quality(ledger, w, now))
    r = client.get("/metrics")
    assert r.status_code == 200
    compare_counters(r.content.decode(), ledger)
