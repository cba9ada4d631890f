"""Simulated requests per second of the replay (towerops policy) on the Tower profile.

    .venv/bin/python bench/bench_replay.py [--repeat 3] [--policy towerops] [--no-clock]

The full Azure 2023 merged trace (28,185 requests, mapping azure2023, time scale 1) and a
5 % sample of it, on profiles/tower.yaml from the trace's own clock (2023-11-16 18:15:46 UTC,
so the preload windows run: a week of warm-up ticks before the first request, counted in
the time); the figure is the best of --repeat runs. Target: >= 20,000 requests/s.
"""
from __future__ import annotations

import argparse
import datetime as dt
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from models_registry.catalog.profile import load_profile_file  # noqa: E402
from models_registry.replay import (  # noqa: E402
    load_mapping,
    map_rows,
    read_trace,
    scale_and_sample,
    simulate,
)

MERGED_ORIGIN = dt.datetime(2023, 11, 16, 18, 15, 46, 680590, tzinfo=dt.timezone.utc)  # data/traces/README.md


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--policy", default="towerops")
    ap.add_argument("--no-clock", action="store_true", help="no --start: preload windows not simulated")
    args = ap.parse_args()
    start = None if args.no_clock else MERGED_ORIGIN
    profile = load_profile_file(ROOT / "profiles/tower.yaml")
    full = map_rows(read_trace(ROOT / "data/traces/azure2023_merged_by_service.csv"), load_mapping("azure2023"))
    for label, reqs in (("full trace", full),
                        ("5 % sample", scale_and_sample(full, sample=0.05, rng=random.Random(1)))):
        best = 0.0
        for _ in range(args.repeat):
            t = time.perf_counter()
            simulate(profile, reqs, args.policy, start=start)
            best = max(best, len(reqs) / (time.perf_counter() - t))
        print(f"{args.policy} {label}: {len(reqs)} requests, {best:,.0f} simulated requests/s "
              f"(best of {args.repeat}; {'no clock' if start is None else 'preload windows on'})")


if __name__ == "__main__":
    main()
