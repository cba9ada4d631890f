"""manage.py replay: a trace through the policies on a profile's tower, in virtual time."""
from __future__ import annotations

import json
import random
import time
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from models_registry.profile import ProfileError, load_profile_file
from models_registry.replay import POLICIES, load_mapping, map_rows, read_trace, scale_and_sample, simulate
from models_registry.replay.report import summarize, table
from models_registry.replay.traces import IDENTITY, TraceError


class Command(BaseCommand):
    help = "Replay a request trace through policies on a simulated tower and compare SLOs."

    def add_arguments(self, parser):
        parser.add_argument("--trace", required=True)
        parser.add_argument("--profile", required=True)
        parser.add_argument("--policy", default="towerops,ollama_default,always_best")
        parser.add_argument("--mapping", help="YAML file, or a shipped mapping's name (azure2023, mooncake)")
        parser.add_argument("--time-scale", type=float, default=1.0,
                            help="stretch the trace's time axis (2 = half the rate)")
        parser.add_argument("--sample", type=float, default=1.0, help="keep this fraction of requests")
        parser.add_argument("--seed", type=int, default=1)
        parser.add_argument("--out", help="directory for result.json")
        parser.add_argument("--no-progress", action="store_true")
        parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots in --out")

    def handle(self, *args, **o):
        policies = [p.strip() for p in o["policy"].split(",") if p.strip()]
        unknown = [p for p in policies if p not in POLICIES]
        if unknown:
            raise CommandError(f"unknown policy {unknown}; known: {', '.join(POLICIES)}")
        try:
            profile = load_profile_file(o["profile"])
            mapping = load_mapping(o["mapping"]) if o["mapping"] else IDENTITY
            requests = map_rows(read_trace(o["trace"]), mapping)
            requests = scale_and_sample(requests, time_scale=o["time_scale"], sample=o["sample"],
                                        rng=random.Random(o["seed"]))
        except (ProfileError, TraceError, ValueError, OSError) as e:
            raise CommandError(str(e)) from None
        header = (f"trace {o['trace']}: {len(requests)} requests, mapping {mapping.name}, "
                  f"time scale {o['time_scale']:g}, sample {o['sample']:g}, seed {o['seed']}; "
                  f"profile {o['profile']}")
        self.stdout.write(header)
        summaries, results = [], []
        for name in policies:
            started = time.perf_counter()
            bar = None
            if not o["no_progress"] and len(requests) >= 20_000:
                from tqdm import tqdm
                bar = tqdm(total=len(requests), desc=name, unit="req", file=self.stderr._out)
            res = simulate(profile, requests, name, progress=bar.update if bar else None)
            if bar:
                bar.close()
            results.append(res)
            s = summarize(res)
            s["wall_s"] = time.perf_counter() - started
            summaries.append(s)
        self.stdout.write(table(summaries))
        if o["out"]:
            out = Path(o["out"])
            out.mkdir(parents=True, exist_ok=True)
            doc = {"trace": o["trace"], "profile": o["profile"], "mapping": mapping.name,
                   "time_scale": o["time_scale"], "sample": o["sample"], "seed": o["seed"],
                   "requests": len(requests), "policies": summaries,
                   "note": "task types and urgencies come from a synthetic mapping of the trace's labels"}
            (out / "result.json").write_text(json.dumps(doc, indent=2, default=str))
            self.stdout.write(f"wrote {out / 'result.json'}")
            if not o["no_plots"]:
                from models_registry.replay.plots import write_plots
                for p in write_plots(results, out):
                    self.stdout.write(f"wrote {p}")
