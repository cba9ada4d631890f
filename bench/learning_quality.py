"""Observed quality in the replay: a hidden truth on the Tower, learned from ratings drawn from it.

    .venv/bin/python bench/learning_quality.py [--seeds 5] [--json OUT]

Each case wrongs two models' catalog scores for one task type by 0.1 in opposite directions (the
catalog ranks them the wrong way round), hidden from the policy; every local answer is rated 1
with the answering model's true quality, else 0 (replay/learning.py). Per case and seed it runs,
on the same requests, side by side:

* ``oracle``: the policy told the truth (the reference the regret is measured against);
* ``active``: TOWEROPS_LEARNING_MODE=active, exploration budget 0.02;
* ``active, no exploration``: the same with budget 0 (what exploration costs in loads);
* ``shadow``: the catalog decides; the estimates only produce the console's proposals.

and prints, for the task type: after how many of its requests the policy's estimates ranked the two
models rightly for good, the quality regret against the oracle after that, exploring decisions
(and loads among them), loads/h of each run, and what shadow mode proposes. Checks (the learning
issue's "done when"): converged within 500 requests, regret after convergence < 0.01 (the mean
over the seeds: per seed it is noisy by about as much), exploration adds at most 1 load per started
hour and no exploring decision loads, shadow's proposals rank the two rightly. Exit 1 when one fails. No database needed.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "towerops.settings")
os.environ.setdefault("SECRET_KEY", "learning-bench")

import django  # noqa: E402

django.setup()

from models_registry.catalog.profile import load_profile_file  # noqa: E402
from models_registry.replay import load_mapping, map_rows, read_trace, scale_and_sample, simulate  # noqa: E402
from models_registry.replay.learning import HiddenTruth, convergence  # noqa: E402
from models_registry.replay.report import summarize  # noqa: E402
from models_registry.replay.traces import trace_origin  # noqa: E402
from models_registry.slo import metrics  # noqa: E402

# (label, trace, sample, clock, task, (better, its catalog, its truth), (worse, its catalog, its truth))
CASES = [
    ("chat, evening (both loaded)", "azure2023_conv.csv", 0.05, True, "chat",
     ("mistral:7b", 0.83, 0.93), ("llama3.2:3b", 0.84, 0.74)),
    ("code, no windows", "azure2023_code.csv", 0.05, False, "code_generation",
     ("deepseek-coder-v2:16b", 0.81, 0.91), ("qwen2.5-coder:7b", 0.88, 0.78)),
]
CONVERGE_WITHIN = 500
MAX_REGRET_AFTER = 0.01
MAX_EXTRA_LOADS_PER_H = 1.0


def run(profile, reqs, start, truth, mode, regret, seed):
    r = simulate(profile, reqs, "towerops", start=start,
                 truth=HiddenTruth(truth, mode=mode, max_regret=regret, seed=seed))
    s = summarize(r)
    return r.learner, s["slo"][metrics.LOADS_PER_HOUR]["value"] or 0.0, s["slo"][metrics.P95]["value"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args()
    profile = load_profile_file(ROOT / "profiles" / "tower.yaml")
    t0 = time.perf_counter()
    failures, out = [], []
    print(f"{'case':32} {'seed':>4} {'conv. after':>11} {'regret after':>12} {'explored':>8} {'expl. loads':>11} "
          f"{'loads/h oracle|active|no expl.|shadow':>38} {'p95 s oracle|active|shadow':>28}  shadow proposes")
    for label, file, sample, clock, task, (better, _, q_better), (worse, _, q_worse) in CASES:
        path = ROOT / "data" / "traces" / file
        mapping = "azure2023"
        reqs = scale_and_sample(map_rows(read_trace(path), load_mapping(mapping)), sample=sample, rng=random.Random(1))
        start = trace_origin(path) if clock else None
        truth = {(better, task): q_better, (worse, task): q_worse}
        span_h = (reqs[-1].arrival_s - reqs[0].arrival_s) / 3600.0
        regrets = []
        for seed in range(1, args.seeds + 1):
            oracle, lh_o, p95_o = run(profile, reqs, start, truth, "oracle", 0.0, seed)
            active, lh_a, p95_a = run(profile, reqs, start, truth, "active", 0.02, seed)
            _, lh_n, _ = run(profile, reqs, start, truth, "active", 0.0, seed)
            shadow, lh_s, p95_s = run(profile, reqs, start, truth, "shadow", 0.0, seed)
            c = convergence(active.log, task, better, worse, oracle.log)
            proposed = shadow.proposals()
            after = {k: proposed.get((k, task), shadow.prior[(k, task)]) for k in (better, worse)}
            names_right = after[better] > after[worse]
            conv = c["converged_after"]
            regret = c["regret_after"]
            print(f"{label:32} {seed:>4} {'never' if conv is None else conv:>11} "
                  f"{'–' if regret is None else f'{regret:+.4f}':>12} {c['explored']:>8} {c['explored_loads']:>11} "
                  f"{f'{lh_o:.2f} | {lh_a:.2f} | {lh_n:.2f} | {lh_s:.2f}':>38} "
                  f"{f'{p95_o:.2f} | {p95_a:.2f} | {p95_s:.2f}':>28}  "
                  + ", ".join(f"{k} {shadow.prior[(k, task)]:.2f}→{after[k]:.2f}" for k in (better, worse)))
            name = f"{label}, seed {seed}"
            if conv is None or conv > CONVERGE_WITHIN:
                failures.append(f"{name}: not converged within {CONVERGE_WITHIN} requests ({conv})")
            if regret is None:
                failures.append(f"{name}: no requests after convergence")
            else:
                regrets.append(regret)
            hours = max(1, math.ceil(span_h))
            extra = round((lh_a - lh_n) * span_h)
            if extra > MAX_EXTRA_LOADS_PER_H * hours or c["explored_loads"]:
                failures.append(f"{name}: exploration added {extra} loads in {span_h:.2f} h "
                                f"({lh_a:.2f} vs {lh_n:.2f} loads/h; {c['explored_loads']} loads by exploring decisions)")
            if not names_right:
                failures.append(f"{name}: shadow's proposals do not rank {better} above {worse}")
            out.append({"case": label, "seed": seed, "requests": c["requests"], "convergence": c,
                        "loads_per_h": {"oracle": lh_o, "active": lh_a, "no_exploration": lh_n, "shadow": lh_s},
                        "p95_s": {"oracle": p95_o, "active": p95_a, "shadow": p95_s},
                        "shadow_proposals": {f"{k[0]} {k[1]}": v for k, v in proposed.items()}})
        if regrets:
            mean_regret = sum(regrets) / len(regrets)
            print(f"{label:32} mean regret after convergence over {len(regrets)} seeds: {mean_regret:+.4f}")
            if mean_regret >= MAX_REGRET_AFTER:
                failures.append(f"{label}: mean regret after convergence {mean_regret:+.4f} >= {MAX_REGRET_AFTER}")
    print(f"\n{len(out)} runs x 4 modes in {time.perf_counter() - t0:.0f} s; profiles/tower.yaml")
    if args.json:
        Path(args.json).write_text(json.dumps({"runs": out, "failures": failures}, indent=1, default=str))
    for f in failures:
        print("FAILED:", f)
    print("all checks passed" if not failures else f"{len(failures)} checks failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
