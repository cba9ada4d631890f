"""A simulated run's figures: the five SLO metrics computed by ``models_registry.metrics``
(the same code as the live reports), plus mean quality, the wait distribution and loads
per model."""
from __future__ import annotations

from collections import Counter

from models_registry import metrics

from .sim import SimResult


def _pct(sorted_vals: list[float], p: float) -> float | None:
    if not sorted_vals:
        return None
    import math
    return sorted_vals[max(0, math.ceil(p * len(sorted_vals)) - 1)]


def summarize(res: SimResult) -> dict:
    decisions = [
        metrics.DecisionRec(at=s.req.arrival_s, urgency=s.req.urgency, action=s.action, met_floor=s.met_floor,
                            response_s=s.response_s if s.action is not None else None,
                            residency=s.residency, task_type=s.req.task_type, model=s.model)
        for s in res.served
    ]
    hours = metrics.tally_window(0.0, res.end, decisions, res.loads, res.spans, res.usable_mib)
    slo = metrics.evaluate(metrics.Tally.total(t for _, t in hours))
    targets = metrics.default_targets()
    waits = sorted(s.wait_s for s in res.served if s.action is not None)
    qualities = [s.quality for s in res.served if s.quality is not None]
    return {
        "policy": res.policy,
        "requests": len(res.served),
        "slo": {n: {"value": v.value, "target": f"{metrics.COMPARATORS[targets[n].comparator]} {targets[n].value:g}",
                    "met": metrics.check(v.value, targets[n]), "detail": v.detail} for n, v in slo.items()},
        "mean_quality": sum(qualities) / len(qualities) if qualities else None,
        "wait_s": {"p50": _pct(waits, 0.5), "p90": _pct(waits, 0.9), "p95": _pct(waits, 0.95),
                   "p99": _pct(waits, 0.99), "max": waits[-1] if waits else None,
                   "zero_share": sum(1 for w in waits if w <= 0) / len(waits) if waits else None},
        "actions": dict(Counter(s.action or "none" for s in res.served)),
        "loads_by_model": dict(Counter(e.model for e in res.loads if e.kind == "load")),
        "evictions": sum(1 for e in res.loads if e.kind == "evict"),
        "max_vram_mib_by_gpu": res.max_vram_by_gpu,
        "simulated_s": res.end,
    }


ROWS = [
    ("interactive p95 (s)", lambda s: s["slo"][metrics.P95]),
    ("loads / hour", lambda s: s["slo"][metrics.LOADS_PER_HOUR]),
    ("VRAM efficiency", lambda s: s["slo"][metrics.VRAM_EFFICIENCY]),
    ("quality met", lambda s: s["slo"][metrics.QUALITY_MET]),
    ("fallback rate", lambda s: s["slo"][metrics.FALLBACK_RATE]),
]


def _fmt(v, frac=False) -> str:
    if v is None:
        return "no data"
    return f"{v:.1%}" if frac else f"{v:.2f}"


def table(summaries: list[dict]) -> str:
    """The comparison table: one column per policy, ✓/✗ against the seed's targets."""
    names = [s["policy"] for s in summaries]
    width = max(16, *(len(n) + 2 for n in names))
    lines = ["metric (target)".ljust(30) + "".join(n.rjust(width) for n in names)]
    for label, get in ROWS:
        first = get(summaries[0])
        frac = label in ("VRAM efficiency", "quality met", "fallback rate")
        cells = []
        for s in summaries:
            m = get(s)
            mark = {True: " ✓", False: " ✗", None: "  "}[m["met"]]
            cells.append((_fmt(m["value"], frac) + mark).rjust(width))
        lines.append(f"{label} ({first['target']})".ljust(30) + "".join(cells))
    extra = [
        ("mean quality", lambda s: _fmt(s["mean_quality"])),
        ("wait p50 / p95 (s)", lambda s: f" {_fmt(s['wait_s']['p50'])} / {_fmt(s['wait_s']['p95'])}"),
        ("loads (evictions)", lambda s: f"{sum(s['loads_by_model'].values())} ({s['evictions']})"),
        ("requests", lambda s: str(s["requests"])),
    ]
    for label, get in extra:
        lines.append(label.ljust(30) + "".join(get(s).rjust(width) for s in summaries))
    return "\n".join(lines)
