"""A simulated run's figures: the five SLO metrics computed by ``models_registry.slo.metrics``
(the same code as the live reports; each request's simulated time to first token is
reported as its ``first_token_s``, its response time as ``response_s``), plus mean
quality, the full-response p95, the wait and TTFT distributions and loads per model."""
from __future__ import annotations

import math
from collections import Counter

from models_registry.policy import POLICY_VERSION
from models_registry.slo import metrics

from .sim import SimResult


def _pct(sorted_vals: list[float], p: float) -> float | None:
    """Nearest rank, as metrics.py (without its buckets)."""
    if not sorted_vals:
        return None
    return sorted_vals[max(0, math.ceil(p * len(sorted_vals)) - 1)]


def summarize(res: SimResult) -> dict:
    decisions = [
        metrics.DecisionRec(at=s.req.arrival_s, urgency=s.req.urgency, action=s.action, met_floor=s.met_floor,
                            expected_wait_s=s.expected_wait_s,
                            response_s=s.response_s if s.action is not None else None,
                            first_token_s=s.ttft_s if s.action is not None else None,
                            residency=s.residency, task_type=s.req.task_type, model=s.model)
        for s in res.served
    ]
    hours = metrics.tally_window(0.0, res.end, decisions, res.loads, res.spans, res.usable_mib)
    slo = metrics.evaluate(metrics.Tally.total(t for _, t in hours))
    targets = metrics.default_targets()
    ok = [s for s in res.served if s.action is not None]
    waits = sorted(s.wait_s for s in ok)
    interactive = [s for s in ok if s.req.urgency in metrics.INTERACTIVE_URGENCIES]
    ttft = sorted(s.ttft_s for s in interactive)
    response = sorted(s.response_s for s in interactive)
    qualities = [s.quality for s in res.served if s.quality is not None]
    # The quoted wait against the wait that came: first token − arrival − the decision's
    # expected_wait_s, for requests served locally with a quote (towerops).
    errors = sorted(s.ttft_s - s.expected_wait_s for s in ok
                    if s.expected_wait_s is not None and s.action != "fallback")
    loads = [e for e in res.loads if e.kind == "load" and 0.0 <= e.at < res.end]
    return {
        "policy": res.policy,
        # the decision core's version for towerops (it is the production policy), so stored runs
        # from before and after a policy change can be told apart
        "policy_version": POLICY_VERSION if res.policy == "towerops" else None,
        "requests": len(res.served),
        "slo": {n: {"value": v.value, "target": f"{metrics.COMPARATORS[targets[n].comparator]} {targets[n].value:g}",
                    "met": metrics.check(v.value, targets[n]), "detail": v.detail} for n, v in slo.items()},
        "mean_quality": sum(qualities) / len(qualities) if qualities else None,
        # exact nearest-rank figures of the interactive requests (the SLO's p95 is its bucket's edge)
        "ttft_s": {"p50": _pct(ttft, 0.5), "p95": _pct(ttft, 0.95), "p99": _pct(ttft, 0.99),
                   "max": ttft[-1] if ttft else None},
        "response_s": {"p50": _pct(response, 0.5), "p95": _pct(response, 0.95), "p99": _pct(response, 0.99),
                       "max": response[-1] if response else None},
        "wait_s": {"p50": _pct(waits, 0.5), "p90": _pct(waits, 0.9), "p95": _pct(waits, 0.95),
                   "p99": _pct(waits, 0.99), "max": waits[-1] if waits else None,
                   "zero_share": sum(1 for w in waits if w <= 0) / len(waits) if waits else None},
        "actions": dict(Counter(s.action or "none" for s in res.served)),
        "served_by_model": dict(Counter(s.model or "none" for s in res.served)),
        "loads_by_model": dict(Counter(e.model for e in loads)),
        "thrash_loads": sum(1 for e in loads if e.thrash),
        # actual − quoted wait to the first token, in seconds (positive: the quote was low)
        "quote_error_s": {"n": len(errors), "p5": _pct(errors, 0.05), "p50": _pct(errors, 0.5),
                          "p95": _pct(errors, 0.95), "max": errors[-1] if errors else None,
                          "within_1s": (sum(1 for e in errors if abs(e) <= 1.0) / len(errors)) if errors else None},
        "evictions": sum(1 for e in res.loads if e.kind == "evict" and 0.0 <= e.at < res.end),
        "max_vram_mib_by_gpu": res.max_vram_by_gpu,
        "simulated_s": res.end,
        "start": res.start.isoformat() if res.start else None,
    }


ROWS = [
    ("interactive TTFT p95 (s)", metrics.P95),
    ("loads / hour", metrics.LOADS_PER_HOUR),
    ("VRAM efficiency", metrics.VRAM_EFFICIENCY),
    ("quality met", metrics.QUALITY_MET),
    ("fallback rate", metrics.FALLBACK_RATE),
]
_FRACTIONS = {metrics.VRAM_EFFICIENCY, metrics.QUALITY_MET, metrics.FALLBACK_RATE}


def _fmt(v, frac=False) -> str:
    if v is None:
        return "no data"
    return f"{v:.1%}" if frac else f"{v:.2f}"


def table(summaries: list[dict], labels: list[str] | None = None) -> str:
    """The comparison table: one column per summary, ✓/✗ against the seed's targets.

    ``labels`` (what-if runs) add a first header line naming each column's profile."""
    names = [s["policy"] for s in summaries]
    width = max(16, *(len(n) + 2 for n in names), *((len(x) + 2 for x in labels) if labels else [0]))
    lines = []
    if labels:
        lines.append("profile".ljust(32) + "".join(x.rjust(width) for x in labels))
    lines.append("metric (target)".ljust(32) + "".join(n.rjust(width) for n in names))
    for label, name in ROWS:
        first = summaries[0]["slo"][name]
        cells = []
        for s in summaries:
            m = s["slo"][name]
            mark = {True: " ✓", False: " ✗", None: "  "}[m["met"]]
            cells.append((_fmt(m["value"], name in _FRACTIONS) + mark).rjust(width))
        lines.append(f"{label} ({first['target']})".ljust(32) + "".join(cells))
    extra = [
        ("full response p95 (s)", lambda s: _fmt(s["response_s"]["p95"])),
        ("TTFT p50 / p99 (s)", lambda s: f"{_fmt(s['ttft_s']['p50'])} / {_fmt(s['ttft_s']['p99'])}"),
        ("mean quality", lambda s: _fmt(s["mean_quality"])),
        ("loads (evictions)", lambda s: f"{sum(s['loads_by_model'].values())} ({s['evictions']})"),
        ("thrash loads", lambda s: str(s["thrash_loads"])),
        ("quote error p50 / p95 (s)", lambda s: (f"{_fmt(s['quote_error_s']['p50'])} / {_fmt(s['quote_error_s']['p95'])}"
                                                 if s["quote_error_s"]["n"] else "-")),
        ("requests", lambda s: str(s["requests"])),
    ]
    for label, get in extra:
        lines.append(label.ljust(32) + "".join((get(s) + "  ").rjust(width) for s in summaries))
    for s in summaries:
        learned = s.get("learning")
        if not learned:
            continue
        where = f"{s['policy']} @ {s['profile']}" if s.get("profile") else s["policy"]
        lines.append(f"learned ({where}, {learned['mode']}; {learned['explored']} exploring decisions, "
                     f"{learned['explored_loads']} of them loads):")
        for p in learned["pairs"]:
            proposal = f", proposes {p['proposal']:.2f}" if p["proposal"] is not None else ""
            lines.append(f"  {p['model']} × {p['task_type']}: catalog {p['catalog']:.2f}, true {p['true_quality']:.2f}"
                         f" -> estimate {p['estimate']:.3f} [{p['low']:.2f}-{p['high']:.2f}] from {p['signals']} "
                         f"ratings, served {p['served']}{proposal}")
    return "\n".join(lines)
