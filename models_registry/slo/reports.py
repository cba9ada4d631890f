"""The SLO, fallback, thrash and quality reports over a window, read through the hourly rollups."""
from __future__ import annotations

import datetime as dt
from collections import Counter, defaultdict

from models_registry import models as m
from models_registry.slo import metrics, rollups
from models_registry.slo.rollups import HourData, hour_data, tally_total, window_bounds
from models_registry.timeutil import utcnow


def targets() -> dict[str, metrics.Target]:
    return {
        t.name: metrics.Target(t.name, t.comparator, t.target, t.enabled) for t in m.SloTarget.objects.all()
    }


def _notes(mv: metrics.MetricValue) -> str:
    d = mv.detail
    if mv.name == metrics.P95:
        if mv.value is None:
            return "no data: no interactive (critical or interactive) decision with a time to first token"
        return (f"time to first token: {d['first_token']} first-token times ({d['first_token_gateway']} measured "
                f"at the gateway, {d['first_token_caller']} reported by callers), {d['response']} reported "
                f"response times (an upper bound: no first-token time), {d['estimated']} expected waits (no "
                f"outcome reported); source {d['source']}; {d['unknown']} without any left out")
    if mv.value is None:
        return "no data"
    if mv.name == metrics.LOADS_PER_HOUR:
        return f"{d['loads']} loads over {d['observed_hours']:.2f} observed hours"
    if mv.name == metrics.VRAM_EFFICIENCY:
        return "useful VRAM-seconds (models that served a request in that hour) / usable VRAM-seconds"
    if mv.name == metrics.QUALITY_MET:
        return f"{d['met_floor']} of {d['decisions']} decisions met the task's quality floor"
    return f"{d['fallbacks']} of {d['decisions']} decisions fell back"


def slo_report(window: str, now: dt.datetime | None = None, data: list[HourData] | None = None) -> dict:
    """The five metrics over the window. `data`: the window's hour_data when the caller has it
    already (a page showing several reports of one window reads the hours once)."""
    now = now or utcnow()
    start, end = window_bounds(window, now)
    data = hour_data(start, now, labels=False) if data is None else data
    tg = targets()
    total = metrics.evaluate(tally_total(data))
    per_hour = [(x.hour, x.evaluated()) for x in data]
    out = []
    for name in metrics.METRICS:
        mv, t = total[name], tg.get(name)
        out.append({
            "name": name,
            "unit": mv.unit,
            "value": mv.value,
            "target": {"comparator": t.comparator, "value": t.value, "enabled": t.enabled} if t else None,
            "met": metrics.check(mv.value, t),
            "notes": _notes(mv),
            "detail": mv.detail,
            "series": [
                {"hour": h, "value": ev[name].value, "met": metrics.check(ev[name].value, t)} for h, ev in per_hour
            ],
        })
    return {
        "window": window, "start": start, "end": end,
        "hours_from_rollups": sum(1 for x in data if x.source == "rollup"),
        "hours_from_raw": sum(1 for x in data if x.source == "raw"),
        "metrics": out,
    }


def _names():
    return (
        dict(m.TaskType.objects.values_list("id", "name")),
        dict(m.LlmModel.objects.values_list("id", "tag")),
        dict(m.Endpoint.objects.values_list("id", "name")),
    )


def _name(names: dict, key: str) -> str | None:
    if key in ("", "None"):
        return None
    return names.get(int(key), f"#{key}")


def _add_counts(out: dict[str, int], counts) -> dict[str, int]:
    get = out.get
    for c in counts:
        for key, n in c.items():
            out[key] = get(key, 0) + n
    return out


# Sums of the labelled counts of the hours a window starts with that come from the rollup
# cache (a 30-day window adds up ~150 k counts), keyed by those hours' ids, which the entry
# holds on to (so no id is reused while it is a key). Integers: the same sums, in the same order.
_prefix_sums: dict[tuple, tuple[list, dict]] = {}


def _sum_counts(data: list[HourData], attr: str) -> dict[str, int]:
    """The window's labelled counts (`decision_counts` or `load_counts`) summed per label, in
    the order labels first appear (each label is then parsed once, not once an hour)."""
    n = 0
    while n < len(data) and (data[n].source == "rollup" or not getattr(data[n], attr)):
        n += 1
    prefix = [x for x in data[:n] if x.source == "rollup"]
    key = (attr, tuple(map(id, prefix)))
    hit = _prefix_sums.get(key)
    if hit is None:
        hit = (prefix, _add_counts({}, (getattr(x, attr) for x in prefix)))
        if len(_prefix_sums) >= 8:
            _prefix_sums.clear()
        _prefix_sums[key] = hit
    return _add_counts(dict(hit[1]), (getattr(x, attr) for x in data[n:]))


def _rate(n: int, d: int) -> float | None:
    return n / d if d else None


def fallbacks_report(window: str, now: dt.datetime | None = None, data: list[HourData] | None = None) -> dict:
    """Fallbacks by the model fallen back to, by task type, by urgency and by hour."""
    now = now or utcnow()
    start, end = window_bounds(window, now)
    data = hour_data(start, now) if data is None else data
    tasks, models_, _ = _names()
    by_model: Counter = Counter()
    by_task = defaultdict(lambda: [0, 0])
    by_urgency = defaultdict(lambda: [0, 0])
    for key, n in _sum_counts(data, "decision_counts").items():
        action, task, urgency, model = key.split("|")
        fb = n if action == "fallback" else 0
        t = by_task[_name(tasks, task)]
        t[0] += n
        t[1] += fb
        u = by_urgency[urgency]
        u[0] += n
        u[1] += fb
        if fb:
            by_model[_name(models_, model)] += fb
    hours = [{"hour": x.hour, "decisions": x.tally.decisions, "fallbacks": x.tally.fallbacks,
              "rate": _rate(x.tally.fallbacks, x.tally.decisions)} for x in data]
    total = tally_total(data)
    return {
        "window": window, "start": start, "end": end,
        "decisions": total.decisions, "fallbacks": total.fallbacks, "rate": _rate(total.fallbacks, total.decisions),
        "by_model": [{"model": k, "fallbacks": v} for k, v in sorted(by_model.items(), key=lambda kv: -kv[1])],
        "by_task_type": [{"task_type": k, "decisions": d, "fallbacks": f, "rate": _rate(f, d)}
                         for k, (d, f) in sorted(by_task.items(), key=lambda kv: str(kv[0]))],
        "by_urgency": [{"urgency": k, "decisions": d, "fallbacks": f, "rate": _rate(f, d)}
                       for k, (d, f) in sorted(by_urgency.items())],
        "by_hour": hours,
    }


def thrash_report(window: str, now: dt.datetime | None = None, data: list[HourData] | None = None) -> dict:
    """Loads, evictions, unloads and failures by model, endpoint, task type (of the decision that asked) and hour."""
    now = now or utcnow()
    start, end = window_bounds(window, now)
    data = hour_data(start, now) if data is None else data
    tasks, models_, endpoints = _names()
    K = m.LoadEvent.Kind
    kinds = (K.LOAD, K.EVICT, K.UNLOAD, K.FAIL)
    by_model = defaultdict(Counter)
    by_endpoint = defaultdict(Counter)
    by_task = defaultdict(Counter)
    for key, n in _sum_counts(data, "load_counts").items():
        kind, model, endpoint, task = key.split("|")
        by_model[_name(models_, model)][kind] += n
        by_endpoint[_name(endpoints, endpoint)][kind] += n
        by_task[_name(tasks, task)][kind] += n
    hours = [{"hour": x.hour, "loads": x.tally.loads, "thrash_loads": x.tally.thrash_loads,
              "evictions": x.tally.evictions, "unloads": x.tally.unloads, "failures": x.tally.failures} for x in data]
    total = tally_total(data)
    lph = metrics.evaluate(total)[metrics.LOADS_PER_HOUR]

    def rows(d: dict, label: str) -> list[dict]:
        return [
            {label: k, "loads": c[K.LOAD], "thrash_loads": c[rollups.THRASH], "evictions": c[K.EVICT],
             "unloads": c[K.UNLOAD], "failures": c[K.FAIL]}
            for k, c in sorted(d.items(), key=lambda kv: (-kv[1][K.LOAD], str(kv[0])))
        ]

    return {
        "window": window, "start": start, "end": end,
        "loads": total.loads, "thrash_loads": total.thrash_loads,
        "thrash_share": total.thrash_loads / total.loads if total.loads else None,
        "evictions": total.evictions, "unloads": total.unloads, "failures": total.failures,
        "loads_per_hour": lph.value, "observed_hours": lph.detail["observed_hours"],
        "by_model": rows(by_model, "model"), "by_endpoint": rows(by_endpoint, "endpoint"),
        "by_task_type": rows(by_task, "task_type"), "by_hour": hours,
        "kinds": list(kinds),
    }


def quality_report(window: str, now: dt.datetime | None = None) -> dict:
    """Observed quality (mean caller rating, 0..1) per model × task type next to the admin's score."""
    now = now or utcnow()
    start, end = window_bounds(window, now)
    data = hour_data(start, now)
    tasks, models_, _ = _names()
    acc = defaultdict(lambda: [0, 0.0])
    for x in data:
        for key, (n, s) in x.ratings.items():
            a = acc[key]
            a[0] += n
            a[1] += s
    scores = {(q.model_id, q.task_type_id): q.score for q in m.QualityScore.objects.all()}
    rows = []
    for key, (n, s) in acc.items():
        model, task = (int(k) for k in key.split("|"))
        rows.append({
            "model": models_.get(model, f"#{model}"), "task_type": tasks.get(task, f"#{task}"),
            "admin_score": scores.get((model, task)), "observed_mean": s / n if n else None, "ratings": n,
        })
    rows.sort(key=lambda r: (r["model"], r["task_type"]))
    return {"window": window, "start": start, "end": end, "rows": rows}
