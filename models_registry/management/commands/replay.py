"""manage.py replay: a trace through the policies on a profile's tower (and what-if variants
of it), in virtual time; a comparison table, result.json, PNG plots and a stored ReplayRun."""
from __future__ import annotations

import datetime as dt
import json
import random
import tempfile
import time
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from models_registry.catalog.profile import ProfileError
from models_registry.replay import (
    POLICIES,
    load_mapping,
    map_rows,
    read_trace,
    scale_and_sample,
    simulate,
)
from models_registry.replay.report import summarize, table
from models_registry.replay.sim import DEFAULT_POLICIES
from models_registry.replay.traces import IDENTITY, TraceError, trace_origin
from models_registry.replay.learning import learning_summary
from models_registry.replay.whatif import hidden_truth, load_base, load_what_if


def parse_start(text: str) -> dt.datetime:
    """An ISO 8601 datetime with a time zone (``2026-11-23T09:00Z``, ``…+01:00``)."""
    try:
        value = dt.datetime.fromisoformat(text.strip().replace("z", "Z"))
    except ValueError:
        value = None
    if value is None or value.tzinfo is None:
        raise CommandError(f"--start: {text!r} is not an ISO datetime with a time zone "
                           "(e.g. 2026-11-23T09:00Z or 2026-11-23T10:00+01:00)")
    return value


class Command(BaseCommand):
    help = "Replay a request trace through policies on a simulated tower (and what-if profiles) and compare SLOs."

    def add_arguments(self, parser):
        parser.add_argument("--trace", required=True,
                            help="the request trace: a CSV such as data/traces/azure2023_code.csv (see --mapping)")
        parser.add_argument("--profile", required=True,
                            help="the tower to replay on: a profile YAML, e.g. profiles/tower.yaml")
        parser.add_argument("--policy", default=",".join(DEFAULT_POLICIES),
                            help=f"comma-separated, of: {', '.join(POLICIES)}")
        parser.add_argument("--mapping", help="YAML file, or a shipped mapping's name (azure2023, mooncake)")
        parser.add_argument("--time-scale", type=float, default=1.0,
                            help="stretch the trace's time axis (2 = half the rate)")
        parser.add_argument("--sample", type=float, default=1.0, help="keep this fraction of requests")
        parser.add_argument("--seed", type=int, default=1,
                            help="random seed for --sample and the mapping's draws (default 1: runs repeat exactly)")
        parser.add_argument("--start", help="wall-clock time of the trace's start, ISO with a zone "
                            "(2026-11-23T09:00Z): runs the profile's preload windows; default: the "
                            "trace's own clock when it has one (Azure's TIMESTAMP), else none")
        parser.add_argument("--what-if", action="append", default=[], metavar="FILE",
                            help="a changed profile, or a patch on --profile (repeatable): see "
                            "models_registry/replay/whatif.py")
        parser.add_argument("--out", help="directory for result.json and the plots (default: none written; "
                            "the run is still stored unless --no-store)")
        parser.add_argument("--no-progress", action="store_true", help="no progress bar on long traces")
        parser.add_argument("--no-plots", action="store_true", help="no PNG plots (in --out nor stored)")
        parser.add_argument("--no-store", action="store_true", help="do not store the run as a ReplayRun")

    def handle(self, *args, **o):
        started = time.perf_counter()
        policies = [p.strip() for p in o["policy"].split(",") if p.strip()]
        unknown = [p for p in policies if p not in POLICIES]
        if unknown or not policies:
            raise CommandError(f"--policy: unknown policy {unknown}; known: {', '.join(POLICIES)}")
        if not 0 < o["sample"] <= 1:
            raise CommandError(f"--sample: the fraction of requests to keep, in (0, 1]; got {o['sample']:g}")
        if not o["time_scale"] > 0:
            raise CommandError(f"--time-scale: must be > 0 (2 = half the rate); got {o['time_scale']:g}")
        start = parse_start(o["start"]) if o["start"] else None
        try:
            base_data, base = load_base(o["profile"])
            profiles = [("base", base, {"file": o["profile"], "kind": "base", "name": "base"})]
            for f in o["what_if"]:
                profiles.append(load_what_if(f, base_data, o["profile"]))
            mapping = load_mapping(o["mapping"]) if o["mapping"] else IDENTITY
            requests = map_rows(read_trace(o["trace"]), mapping)
            requests = scale_and_sample(requests, time_scale=o["time_scale"], sample=o["sample"],
                                        rng=random.Random(o["seed"]))
            if start is None:
                start = trace_origin(o["trace"])
        except (ProfileError, TraceError, ValueError, OSError) as e:
            raise CommandError(str(e)) from None
        labels = [p[0] for p in profiles]
        dupes = sorted({x for x in labels if labels.count(x) > 1})
        if dupes:
            raise CommandError(f"--what-if: more than one profile is labelled {', '.join(map(repr, dupes))} "
                               "(the base profile is 'base'); give each what-if file its own name:")
        clock = (f"starts {start.isoformat()} (preload windows simulated)" if start
                 else "no wall clock: preload windows not simulated (give --start)")
        self.stdout.write(
            f"trace {o['trace']}: {len(requests)} requests, mapping {mapping.name}, time scale "
            f"{o['time_scale']:g}, sample {o['sample']:g}, seed {o['seed']}; {clock}; profile {o['profile']}"
            + "".join(f"; what-if {label!r} ({desc['file']})" for label, _, desc in profiles[1:]))
        summaries, results = [], []
        for label, profile, desc in profiles:
            truth = hidden_truth(desc["truth"], profile, desc["file"]) if "truth" in desc else None
            for name in policies:
                t = time.perf_counter()
                bar = None
                if not o["no_progress"] and len(requests) >= 20_000:
                    from tqdm import tqdm
                    bar = tqdm(total=len(requests), desc=name if len(profiles) == 1 else f"{name} @ {label}",
                               unit="req", file=self.stderr._out)
                try:
                    res = simulate(profile, requests, name, start=start, progress=bar.update if bar else None,
                                   truth=truth if name == "towerops" else None)
                except ValueError as e:  # e.g. a trace's task type the profile does not define
                    raise CommandError(f"{name} on {label}: {e}") from None
                finally:
                    if bar:
                        bar.close()
                results.append((label if len(profiles) > 1 else "", res))
                s = summarize(res)
                s["profile"] = label
                if res.learner is not None:
                    s["learning"] = learning_summary(res.learner)
                s["wall_s"] = time.perf_counter() - t
                summaries.append(s)
        text = table(summaries, [s["profile"] for s in summaries] if len(profiles) > 1 else None)
        self.stdout.write(text)
        doc = {
            "trace": o["trace"], "profile": o["profile"], "mapping": mapping.name, "time_scale": o["time_scale"],
            "sample": o["sample"], "seed": o["seed"], "start": start.isoformat() if start else None,
            "requests": len(requests),
            "profiles": [dict(desc, label=label) for label, _, desc in profiles],
            "policies": [s for s in summaries if s["profile"] == "base"],
            "runs": summaries,
            "note": "task types and urgencies come from a synthetic mapping of the trace's labels",
        }
        pngs: dict[str, bytes] = {}
        if not o["no_plots"] and (o["out"] or not o["no_store"]):
            from models_registry.replay.plots import write_plots

            with tempfile.TemporaryDirectory() as tmp:
                for p in write_plots(results, Path(o["out"] or tmp)):
                    pngs[p.name] = p.read_bytes()
                    if o["out"]:
                        self.stdout.write(f"wrote {p}")
        if o["out"]:
            out = Path(o["out"])
            out.mkdir(parents=True, exist_ok=True)
            (out / "result.json").write_text(json.dumps(doc, indent=2, default=str))
            self.stdout.write(f"wrote {out / 'result.json'}")
        if not o["no_store"]:
            run = self._store(o, start, policies, profiles, requests, summaries, text, pngs, started)
            self.stdout.write(f"stored ReplayRun #{run.pk} (console: /replay/{run.pk}/)")

    def _store(self, o, start, policies, profiles, requests, summaries, text, pngs, started):
        from django.db import transaction

        from models_registry import models as m

        with transaction.atomic():
            run = m.ReplayRun.objects.create(
                trace=o["trace"], profile=o["profile"], mapping=o["mapping"] or "", time_scale=o["time_scale"],
                sample=o["sample"], seed=o["seed"], start=start, policies=policies,
                what_if=[desc for _, _, desc in profiles[1:]], requests=len(requests),
                summaries=json.loads(json.dumps(summaries, default=str)), table=text,
                wall_s=time.perf_counter() - started,
            )
            m.ReplayPlot.objects.bulk_create([m.ReplayPlot(run=run, name=k, png=v) for k, v in sorted(pngs.items())])
        return run
