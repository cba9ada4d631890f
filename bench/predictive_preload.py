"""Predicted preload windows learned on a trace's first week, evaluated on the rest: the issue's
"done when", printed.

    .venv/bin/python bench/predictive_preload.py [--days 15] [--sample 1.0] [--seed 1] [--json OUT]

The shipped trace (data/traces/azure2023_merged_by_service.csv, the azure2023 mapping: code is
code_generation, conversation is chat, both interactive; one hour of Azure's 2023 traffic) is
time-stretched to span ``--days`` days (default 15; at least 8: a week to learn from and a day to
evaluate on) on a clock starting Monday 2026-11-23 00:00 UTC, and subsampled by ``--sample``
(seed ``--seed``). The forecast (models_registry.learning.forecast: the code the weekly suggestion
runs) learns the demand of the first 7 days and recommends windows; the rest of the trace (day
7 on, re-based so the evaluation's clock starts on that Monday) is replayed with the towerops policy on
profiles/tower.yaml with (a) its hand-made windows, (b) the learned windows, (c) no windows. The
columns: VRAM efficiency, interactive TTFT p95 (the SLO's figure), loads/h, thrash loads, mean
quality. The checks: learned VRAM efficiency > 80 %; learned p95 no worse than hand-made; learned
loads/h no more than hand-made. Exit status 1 when a check fails (each is named). No database.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "towerops.settings")
os.environ.setdefault("SECRET_KEY", "predictive-preload")

import django  # noqa: E402

django.setup()

from models_registry.catalog.profile import PreloadWindowSpec, load_profile_file  # noqa: E402
from models_registry.learning.forecast import estimate_demand, recommend_windows  # noqa: E402
from models_registry.replay import load_mapping, map_rows, read_trace, scale_and_sample, simulate  # noqa: E402
from models_registry.replay.report import summarize  # noqa: E402
from models_registry.replay.traces import Request  # noqa: E402
from models_registry.slo import metrics  # noqa: E402

TRACE = ROOT / "data" / "traces" / "azure2023_merged_by_service.csv"
MONDAY = dt.datetime(2026, 11, 23, 0, 0, tzinfo=dt.timezone.utc)
WEEK_S = 7 * 86400.0
COLUMNS = ("hand-made", "learned", "none")


def stretched(trace: Path, mapping: str, days: float, sample: float, seed: int) -> list[Request]:
    """The trace's requests, time-stretched to span ``days`` days and subsampled (seeded)."""
    reqs = map_rows(read_trace(trace), load_mapping(mapping))
    span = reqs[-1].arrival_s - reqs[0].arrival_s
    if span <= 0:
        raise ValueError(f"{trace}: the trace spans no time")
    return scale_and_sample(reqs, time_scale=days * 86400.0 / span, sample=sample, rng=random.Random(seed))


def learned_windows(profile, learn: list[Request], start: dt.datetime, zone: str = "UTC") -> list[PreloadWindowSpec]:
    """The forecast's windows from the requests of the first week, as the profile's window specs."""
    events = ((start.timestamp() + r.arrival_s, r.task_type, r.urgency) for r in learn)
    demand = estimate_demand(events, start, start + dt.timedelta(seconds=WEEK_S), zone)
    specs = recommend_windows(profile.to_world(0.0), demand)
    return [PreloadWindowSpec(name=w.name, days=w.to_dict()["days"], start=w.start, end=w.end,
                              timezone=w.timezone, models=list(w.models)) for w in specs]


def figures(summary: dict) -> dict:
    slo = summary["slo"]
    return {"vram": slo[metrics.VRAM_EFFICIENCY]["value"], "p95": slo[metrics.P95]["value"],
            "loads_h": slo[metrics.LOADS_PER_HOUR]["value"], "thrash": summary["thrash_loads"],
            "quality": summary["mean_quality"], "requests": summary["requests"],
            "loads": sum(summary["loads_by_model"].values())}


def evaluate(days: float = 15.0, sample: float = 1.0, seed: int = 1, trace: Path = TRACE,
             mapping: str = "azure2023") -> dict:
    """Learn on the first week, replay the rest three ways; the figures, the windows and the checks."""
    if days < 8:
        raise ValueError("days: at least 8 (a week to learn from, a day to evaluate on)")
    profile = load_profile_file(ROOT / "profiles" / "tower.yaml")
    reqs = stretched(trace, mapping, days, sample, seed)
    learn = [r for r in reqs if r.arrival_s < WEEK_S]
    rest = [Request(r.arrival_s - WEEK_S, r.task_type, r.urgency, r.input_tokens, r.output_tokens)
            for r in reqs if r.arrival_s >= WEEK_S]
    windows = learned_windows(profile, learn, MONDAY)
    evaluated_from = MONDAY + dt.timedelta(seconds=WEEK_S)
    profiles = {"hand-made": profile, "learned": profile.model_copy(update={"preload_windows": windows}),
                "none": profile.model_copy(update={"preload_windows": []})}
    cols = {name: figures(summarize(simulate(p, rest, "towerops", start=evaluated_from)))
            for name, p in profiles.items()}
    return {"days": days, "sample": sample, "seed": seed, "learned_requests": len(learn),
            "evaluated_requests": len(rest), "windows": [w.model_dump(mode="json") for w in windows],
            "columns": cols, "failures": checks(cols)}


def checks(cols: dict) -> list[str]:
    hand, learned = cols["hand-made"], cols["learned"]
    out = []
    if learned["vram"] is None or learned["vram"] <= 0.8:
        out.append(f"learned VRAM efficiency {fmt(learned['vram'], True)} is not above 80 %")
    if learned["p95"] is not None and hand["p95"] is not None and learned["p95"] > hand["p95"]:
        out.append(f"learned interactive p95 {learned['p95']:.2f} s is worse than hand-made {hand['p95']:.2f} s")
    if (learned["loads_h"] or 0.0) > (hand["loads_h"] or 0.0):
        out.append(f"learned loads/h {learned['loads_h']:.3f} is more than hand-made {hand['loads_h']:.3f}")
    return out


def fmt(v, pct=False, nd=2) -> str:
    if v is None:
        return "-"
    return f"{v:.1%}" if pct else f"{v:.{nd}f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--days", type=float, default=15.0, help="span of the stretched trace (>= 8)")
    ap.add_argument("--sample", type=float, default=1.0, help="share of requests kept (0-1]")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args()
    t0 = time.perf_counter()
    r = evaluate(args.days, args.sample, args.seed)
    print(f"{TRACE.name} stretched to {args.days:g} days, sample {args.sample:g}, seed {args.seed}: "
          f"learned on {r['learned_requests']} requests (days 0-7), evaluated on {r['evaluated_requests']}")
    print("learned windows:")
    for w in r["windows"]:
        print(f"  {w['name']}: {', '.join(w['models'])}")
    rows = [("VRAM efficiency", lambda c: fmt(c["vram"], True)), ("interactive p95 s", lambda c: fmt(c["p95"])),
            ("loads/h", lambda c: fmt(c["loads_h"], nd=3)), ("thrash loads", lambda c: str(c["thrash"])),
            ("loads", lambda c: str(c["loads"])), ("mean quality", lambda c: fmt(c["quality"], nd=3))]
    print("".ljust(20) + "".join(name.rjust(12) for name in COLUMNS))
    for label, get in rows:
        print(label.ljust(20) + "".join(get(r["columns"][name]).rjust(12) for name in COLUMNS))
    print(f"\n{time.perf_counter() - t0:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=1, default=str))
    for f in r["failures"]:
        print("FAILED:", f)
    print("all checks passed" if not r["failures"] else f"{len(r['failures'])} checks failed")
    return 1 if r["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
