
"""SLO reports at scale: bulk history with COPY, rollups for the whole range, the SLO API timed.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres \\
        .venv/bin/python bench/bench_slo.py [--decisions 10000000] [--loads 1000000] [--snapshots 5000000]
                                            [--days 30] [--calls 7] [--reuse] [--drop]

1. Creates the database towerops_slo_bench on DATABASE_URL's server (dropped and re-created
   unless --reuse finds it already filled), migrates it and imports profiles/tower.yaml.
2. Generates, with COPY (psycopg `cursor.copy`), over the last --days days up to now:
   decisions (uniform in time; 40 % interactive, 10 % critical; 4 % fallbacks; 96 % met
   the floor; decision_us log-normal; each served decision points at the residency its
   endpoint held then), outcomes for 10 % of them (with a rating for half, a first-token time for the other half), load events
   (70 % load, 15 % evict, 10 % unload, 5 % fail), back-to-back residencies per endpoint
   (5–120 min each) and GPU snapshots. Decision rows are narrow: no candidates/input_state
   JSON (the reports never read it; production rows are wider on disk).
3. Builds the rollups for every complete hour (timed), then times (median of --calls
   calls, after one warm-up, through Django's test client in this process):
   GET /api/v1/metrics/slo?window=24h and 30d, the three reports over 30d, GET /metrics (and,
   where the process keeps its sum of the good rollups, a process's first scrape), and the rollup
   task for one hour. Target: <= 300 ms per API call.
4. Prints the figures. The database is kept for --reuse; --drop drops it and exits.
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlparse, urlunparse

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
PYTHON = str(ROOT / ".venv" / "bin" / "python") if (ROOT / ".venv" / "bin" / "python").exists() else sys.executable
BENCH_DB = "towerops_slo_bench"
CHUNK = 50_000
NULL = "\\N"


def db_url(base: str, name: str) -> str:
    u = urlparse(base)
    return urlunparse(u._replace(path="/" + name))


def admin_connect(base: str):
    import psycopg

    return psycopg.connect(base, autocommit=True)


def db_exists(base: str) -> bool:
    with admin_connect(base) as c:
        return c.execute("SELECT 1 FROM pg_database WHERE datname = %s", [BENCH_DB]).fetchone() is not None


def drop_db(base: str) -> None:
    with admin_connect(base) as c:
        c.execute(f'DROP DATABASE IF EXISTS "{BENCH_DB}" WITH (FORCE)')


def create_db(base: str, url: str) -> None:
    drop_db(base)
    with admin_connect(base) as c:
        c.execute(f'CREATE DATABASE "{BENCH_DB}"')
    env = {**os.environ, "DATABASE_URL": url}
    for cmd in (["migrate", "-v0"], ["load_profile", str(ROOT / "profiles" / "tower.yaml")]):
        subprocess.run([PYTHON, str(ROOT / "manage.py"), *cmd], env=env, check=True, cwd=ROOT,
                       stdout=subprocess.DEVNULL)


def ts(x: float) -> str:
    return dt.datetime.fromtimestamp(x, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f+00")


def copy_lines(cur, sql: str, lines) -> int:
    n = 0
    buf: list[str] = []
    with cur.copy(sql) as cp:
        for line in lines:
            buf.append(line)
            if len(buf) >= CHUNK:
                cp.write("".join(buf))
                n += len(buf)
                buf.clear()
        if buf:
            cp.write("".join(buf))
            n += len(buf)
    return n


def catalog_ids(cur):
    """The imported profile's ids the generated rows point at: task types, local models that fit
    the smaller GPU (id, MiB), remote models, endpoints and GPUs (id, total MiB)."""
    tasks = [r[0] for r in cur.execute("SELECT id FROM models_registry_tasktype ORDER BY id")]
    models = cur.execute("SELECT id, kind, vram_mib FROM models_registry_llmmodel ORDER BY id").fetchall()
    local = [(i, v) for i, k, v in models if k == "local" and v <= 11000]
    remote = [i for i, k, v in models if k == "remote"] or [models[0][0]]
    eps = [r[0] for r in cur.execute("SELECT id FROM models_registry_endpoint ORDER BY id")]
    gpus = cur.execute("SELECT id, total_mib FROM models_registry_gpu ORDER BY id").fetchall()
    return tasks, local, remote, eps, gpus


def generate(url: str, args) -> dict:
    import psycopg

    rnd = random.Random(42)
    now = time.time()
    t0 = now - args.days * 86400
    span = now - t0
    counts = {}
    with psycopg.connect(url) as conn, conn.cursor() as cur:
        tasks, local, remote, eps, gpus = catalog_ids(cur)

        # residencies: back-to-back per endpoint, two lanes each (a small and a large model)
        res_rows, timeline = [], {e: [] for e in eps}
        rid = 0
        for e in eps:
            for lane in range(2):
                t = t0 - rnd.uniform(0, 3600)
                while t < now:
                    dur = rnd.uniform(300, 7200)
                    pool = local[lane::2] or local  # lanes never hold the same model at once
                    model, vram = pool[rnd.randrange(len(pool))]
                    rid += 1
                    end = t + dur
                    active = end >= now
                    ended = NULL if active else ts(end)
                    res_rows.append(
                        f"{rid}\t{model}\t{e}\t{'loaded' if active else 'unloaded'}\tselection\t{vram}\t"
                        f"{ts(t)}\t{ts(t)}\t{ts(t + 10)}\t{ts(t)}\t\\N\t{ended}\t\\N\t\n"
                    )
                    timeline[e].append((t, end, rid, model))
                    t = end + rnd.uniform(0, 600)
        counts["residencies"] = copy_lines(
            cur,
            "COPY models_registry_residency (id, model_id, endpoint_id, state, trigger, vram_mib, requested_at,"
            " loaded_at, ready_at, last_used_at, expires_at, ended_at, busy_until, error) FROM STDIN",
            res_rows,
        )
        starts = {e: [x[0] for x in timeline[e]] for e in eps}

        import bisect

        urgencies = ["interactive"] * 40 + ["critical"] * 10 + ["background"] * 30 + ["batch"] * 20
        step = span / args.decisions

        def decisions():
            for i in range(1, args.decisions + 1):
                at = t0 + (i - 0.5) * step
                urg = urgencies[i % 100]
                task = tasks[(i * 7) % len(tasks)]
                e = eps[i % len(eps)]
                r = rnd.random()
                if r < 0.04:
                    action, model, endpoint, res = "fallback", remote[0], "\\N", "\\N"
                else:
                    lanes = timeline[e]
                    k = bisect.bisect_right(starts[e], at) - 1
                    cand = [x for x in lanes[max(0, k - 3):k + 1] if x[0] <= at < x[1]]
                    if cand:
                        s = cand[i % len(cand)]
                        action, model, endpoint, res = "use_loaded", s[3], e, s[2]
                    else:
                        action, model, endpoint, res = "load", local[i % len(local)][0], e, "\\N"
                met = "t" if rnd.random() < 0.96 else "f"
                wait = 0.0 if action == "use_loaded" else rnd.uniform(2, 15)
                resp = wait + rnd.lognormvariate(0.3, 0.6)
                us = int(rnd.lognormvariate(4.5, 0.5))
                yield (f"{i}\t{ts(at)}\tbench\t{task}\t{urg}\t{model}\t{endpoint}\t{{}}\t{action}\t{wait:.3f}\t"
                       f"{resp:.3f}\t0.8\t{met}\tf\t\t[]\t[]\t{{}}\tbench\t{us}\t{res}\n")

        t = time.perf_counter()
        counts["decisions"] = copy_lines(
            cur,
            "COPY models_registry_selectiondecision (id, created_at, client, task_type_id, urgency, model_id,"
            " endpoint_id, gpu_keys, action, expected_wait_s, expected_response_s, quality, met_floor, warned,"
            " reason, evictions, candidates, input_state, policy_version, decision_us, residency_id) FROM STDIN",
            decisions(),
        )
        counts["decisions_s"] = time.perf_counter() - t

        def outcomes():
            for i in range(1, args.decisions + 1, 10):
                at = t0 + (i - 0.5) * step
                rating = f"{rnd.random():.3f}" if i % 20 == 1 else "\\N"
                response_ms = int(rnd.lognormvariate(7.5, 0.7))
                first = str(int(response_ms * rnd.random())) if i % 20 == 11 else "\\N"  # half stream
                yield f"{i}\t{ts(at + 5)}\t{response_ms}\t{first}\tt\t{rating}\n"

        counts["outcomes"] = copy_lines(
            cur, "COPY models_registry_decisionoutcome (decision_id, reported_at, response_ms, first_token_ms,"
            " success, rating) FROM STDIN", outcomes())

        kinds = ["load"] * 70 + ["evict"] * 15 + ["unload"] * 10 + ["fail"] * 5
        lstep = span / args.loads

        def loads():
            for i in range(args.loads):
                at = t0 + (i + 0.5) * lstep
                kind = kinds[i % 100]
                model, vram = local[i % len(local)]
                dur = rnd.uniform(1, 40)
                dec = (int((at - t0) / step) + 1) if kind == "load" and i % 2 == 0 else "\\N"
                yield (f"{model}\t{eps[i % len(eps)]}\t{{}}\t{kind}\tselection\t{ts(at)}\t{ts(at)}\t"
                       f"{ts(at + dur)}\t{dur:.3f}\t{vram}\t\t\\N\t{dec}\n")

        t = time.perf_counter()
        counts["load_events"] = copy_lines(
            cur,
            "COPY models_registry_loadevent (model_id, endpoint_id, gpu_keys, kind, trigger, requested_at,"
            " started_at, finished_at, duration_s, vram_mib, error, residency_id, decision_id) FROM STDIN",
            loads(),
        )
        counts["load_events_s"] = time.perf_counter() - t
        sstep = span / args.snapshots

        def snapshots():
            for i in range(args.snapshots):
                gid, total = gpus[i % len(gpus)]
                used = rnd.randrange(total // 4, total)
                yield (f"{gid}\t{ts(t0 + (i + 0.5) * sstep)}\t{total}\t{used}\t{total - used}\t"
                       f"{rnd.uniform(0, 100):.1f}\t60\t150\n")

        t = time.perf_counter()
        counts["snapshots"] = copy_lines(
            cur,
            "COPY models_registry_gpusnapshot (gpu_id, taken_at, total_mib, used_mib, free_mib, util_pct,"
            " temperature_c, power_w) FROM STDIN",
            snapshots(),
        )
        counts["snapshots_s"] = time.perf_counter() - t
        for table in ("selectiondecision", "residency"):
            cur.execute(f"SELECT setval(pg_get_serial_sequence('models_registry_{table}', 'id'),"
                        f" (SELECT max(id) FROM models_registry_{table}))")
        conn.commit()
    with admin_connect(url) as c:
        c.execute("VACUUM ANALYZE")
    return counts


def median_ms(fn, calls: int) -> tuple[float, float]:
    fn()  # warm-up
    xs = []
    for _ in range(calls):
        t = time.perf_counter()
        fn()
        xs.append((time.perf_counter() - t) * 1000)
    return statistics.median(xs), max(xs)


def main() -> None:
    global BENCH_DB
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--decisions", type=int, default=10_000_000)
    p.add_argument("--loads", type=int, default=1_000_000)
    p.add_argument("--snapshots", type=int, default=5_000_000)
    p.add_argument("--days", type=int, default=30)
    p.add_argument("--calls", type=int, default=7)
    p.add_argument("--reuse", action="store_true", help="keep the filled database if it exists")
    p.add_argument("--drop", action="store_true", help="drop the bench database and exit")
    p.add_argument("--db", default=BENCH_DB, help=f"the bench database's name (default {BENCH_DB})")
    args = p.parse_args()
    if not args.db.replace("_", "").isalnum():
        sys.exit("--db: letters, digits and _ only")
    BENCH_DB = args.db

    base = os.environ.get("DATABASE_URL")
    if not base:
        sys.exit("set DATABASE_URL to a PostgreSQL server (the bench creates its own database there)")
    url = db_url(base, BENCH_DB)
    if args.drop:
        drop_db(base)
        print(f"dropped {BENCH_DB}")
        return

    counts: dict = {}
    if args.reuse and db_exists(base):
        print(f"reusing {BENCH_DB}")
    else:
        t = time.perf_counter()
        create_db(base, url)
        print(f"created {BENCH_DB} (migrated, profile loaded) in {time.perf_counter() - t:.1f} s", flush=True)
        t = time.perf_counter()
        counts = generate(url, args)
        counts["total_s"] = time.perf_counter() - t
        print(f"generated in {counts['total_s']:.0f} s: {counts}", flush=True)

    os.environ["DATABASE_URL"] = url
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "towerops.settings")
    os.environ["SECURE_SSL_REDIRECT"] = "0"
    os.environ["DEBUG"] = "0"
    import django

    django.setup()
    from django.db import connection
    from django.test import Client
    from django.test.utils import setup_test_environment

    from models_registry import models as m
    from models_registry import timeutil
    from models_registry.slo import rollups
    from models_registry.api.auth import create_key

    setup_test_environment()
    rows = {
        name: m_.objects.count()
        for name, m_ in (("decisions", m.SelectionDecision), ("outcomes", m.DecisionOutcome),
                         ("load_events", m.LoadEvent), ("snapshots", m.GpuSnapshot), ("residencies", m.Residency))
    }
    start = rollups.data_start()
    now = timeutil.utcnow()
    m.SloHourlyRollup.objects.all().delete()
    t = time.perf_counter()
    n_hours = rollups.rollup_range(start, rollups.floor_hour(now))
    rollup_s = time.perf_counter() - t

    client = Client()
    key = create_key("bench-slo", ["read"])[1]
    auth = {"HTTP_AUTHORIZATION": f"Bearer {key}"}

    def get(path):
        def call():
            r = client.get(path, **auth)
            assert r.status_code == 200, (path, r.status_code, r.content[:300])
        return call

    figures = {}
    for label, path in (
        ("GET /api/v1/metrics/slo?window=24h", "/api/v1/metrics/slo?window=24h"),
        ("GET /api/v1/metrics/slo?window=30d", "/api/v1/metrics/slo?window=30d"),
        ("GET /api/v1/reports/fallbacks?window=30d", "/api/v1/reports/fallbacks?window=30d"),
        ("GET /api/v1/reports/thrash?window=30d", "/api/v1/reports/thrash?window=30d"),
        ("GET /api/v1/reports/quality?window=30d", "/api/v1/reports/quality?window=30d"),
        ("GET /metrics (Prometheus)", "/metrics"),
    ):
        figures[label] = median_ms(get(path), args.calls)
    try:  # first scrapes (slo/counters.py keeps the good rollups' sum per process and checkpoints it)
        from models_registry.slo import counters

        def first_scrape(checkpoint: bool):
            def call():
                counters._good = counters._GoodRollupSum()
                if not checkpoint:
                    m.CounterCheckpoint.objects.all().delete()
                get("/metrics")()
            return call

        figures["GET /metrics, a new process (from the checkpoint)"] = median_ms(first_scrape(True), args.calls)
        figures["GET /metrics, no checkpoint (every rollup summed)"] = median_ms(first_scrape(False), args.calls)
    except ImportError:  # the code before: every scrape sums every rollup
        pass
    one = rollups.floor_hour(now) - dt.timedelta(hours=3)
    figures["rollup_hour (one hour, recompute + upsert)"] = median_ms(lambda: rollups.rollup_hour(one), args.calls)
    figures["compute_hour (current partial hour, raw)"] = median_ms(
        lambda: rollups.compute_hour(rollups.floor_hour(now), now, now), args.calls)
    per_hour = rows["decisions"] / max(1, n_hours)
    with connection.cursor() as cur:
        cur.execute("SELECT pg_size_pretty(pg_database_size(current_database()))")
        size = cur.fetchone()[0]

    print()
    print(f"rows: {', '.join(f'{v:,} {k}' for k, v in rows.items())}; database {size}")
    print(f"history: {start:%Y-%m-%d %H:%M} .. {now:%Y-%m-%d %H:%M} UTC, ~{per_hour:,.0f} decisions per hour")
    print(f"rollups: {n_hours} hours in {rollup_s:.1f} s ({rollup_s / max(1, n_hours) * 1000:.0f} ms per hour)")
    print(f"{'call':<50} {'median ms':>10} {'max ms':>8}  target 300 ms")
    for label, (med, mx) in figures.items():
        ok = "" if not label.startswith("GET") else ("met" if med <= 300 else "NOT MET")
        print(f"{label:<50} {med:>10.1f} {mx:>8.1f}  {ok}")
    print(f"(kept {BENCH_DB}: rerun with --reuse, remove with --drop)")


if __name__ == "__main__":
    main()
