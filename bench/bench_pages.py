
"""Console pages at scale: server time and SQL queries of every page on the SLO bench's data set.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres \\
        .venv/bin/python bench/bench_pages.py [--calls 7] [--minute M] [--only SUBSTRING ...]
                                              [--no-top-up] [--rebuild-rollups] [--show-urls]

1. Uses the database towerops_slo_bench on DATABASE_URL's server (bench/bench_slo.py's
   10 M decisions, 1 M outcomes, 1 M load events, 5 M GPU snapshots over 30 days); builds
   it with bench_slo's functions (default sizes, ~5 min) when it is missing, and migrates
   it (new indexes). Then tops it up to now: decisions, outcomes, load events and
   snapshots at the density of its last day, from its newest row to this moment (so the
   current hour, which every SLO view reads raw, holds as many rows as it would live),
   and rolls up the hours the beat would have (rollups.rollup_due). --no-top-up skips that;
   --rebuild-rollups recomputes every hour (after a migration that adds to the rollups).
2. Logs in a staff user (`bench-pages`) with Django's test client, in this process.
3. Times every entry of PAGES below: a warm-up call (its SQL queries counted with
   CaptureQueriesContext), then --calls timed calls; the median and the max of the
   server time (the whole Django request through the test client: middleware, session,
   views, templates; no network, no browser). A page whose URL does not resolve prints
   "not present" (pages not built yet); any other status than 200 is an error.
4. Prints the table; "OVER" marks a median above the 300 ms target (issue #6, item 10).

--minute M runs the pages at minute M (and 30 s) of the last complete hour, the clock stopped
there (time_machine; the timings use time.perf_counter, which it leaves alone): --minute 59
is the worst case of an hour (the current hour, read raw, holds a full hour of rows). The
rows after that moment are still there (the logs list them first).

A page is added with a line in PAGES: (name, url, headers). The URL may use the
placeholders of `placeholders()` (a decision id, a deep keyset cursor, a time range,
a rare model, a GPU key...), filled from the bench data. HTMX fragments are the same URL
with HX (the HX-Request header). The current hour is always read from raw rows, and
in the first 11 minutes of an hour the previous one too (its rollup is not settled):
the minute of the hour is printed with the figures.
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import random
import statistics
import sys
import time
from pathlib import Path
from urllib.parse import urlencode

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import bench_slo  # noqa: E402

TARGET_MS = 300.0
HX = {"HX-Request": "true"}

# (name, url, headers): url placeholders are filled by placeholders().
PAGES: list[tuple[str, str, dict]] = [
    ("dashboard", "/", {}),
    ("dashboard #live (poll)", "/", HX),
    ("decisions", "/decisions/", {}),
    ("decisions #table", "/decisions/", HX),
    ("decisions #table task_type", "/decisions/?task_type={task_type}", HX),
    ("decisions #table urgency=critical", "/decisions/?urgency=critical", HX),
    ("decisions #table action=fallback", "/decisions/?action=fallback", HX),
    ("decisions #table action=load", "/decisions/?action=load", HX),
    ("decisions #table action=wait_for_load (none)", "/decisions/?action=wait_for_load", HX),
    ("decisions #table model (most used)", "/decisions/?model={model_common}", HX),
    ("decisions #table model (least used)", "/decisions/?model={model_rare}", HX),
    ("decisions #table model (never chosen)", "/decisions/?model={model_unused}", HX),
    ("decisions #table since+until (1 day, 7 d ago)", "/decisions/?since={since}&until={until}", HX),
    ("decisions #table since (7 d ago)", "/decisions/?since={since}", HX),
    ("decisions #table until (7 d ago)", "/decisions/?until={until}", HX),
    ("decisions #table model+urgency", "/decisions/?model={model_common}&urgency=batch", HX),
    ("decisions #table model+action (none: no index)", "/decisions/?model={model_rare}&action=use_loaded", HX),
    ("decisions #table deep page (25 d back)", "/decisions/?{decision_deep}", HX),
    ("decisions deep page, full", "/decisions/?{decision_deep}", {}),
    ("decision detail", "/decisions/{decision_id}/", {}),
    ("load-events", "/load-events/", {}),
    ("load-events #table", "/load-events/", HX),
    ("load-events #table model (least used)", "/load-events/?model={load_model_rare}", HX),
    ("load-events #table model (never loaded)", "/load-events/?model={model_unused}", HX),
    ("load-events #table kind=fail", "/load-events/?kind=fail", HX),
    ("load-events #table trigger=selection", "/load-events/?trigger=selection", HX),
    ("load-events #table trigger=preload (none)", "/load-events/?trigger=preload", HX),
    ("load-events #table endpoint", "/load-events/?endpoint={endpoint}", HX),
    ("load-events #table since+until (1 day, 7 d ago)", "/load-events/?since={since}&until={until}", HX),
    ("load-events #table model+kind", "/load-events/?model={load_model_rare}&kind=fail", HX),
    ("load-events #table deep page (25 d back)", "/load-events/?{load_deep}", HX),
    ("catalog", "/catalog/", {}),
    ("catalog #history", "/catalog/", HX),
    ("slo window=1h", "/slo/?window=1h", {}),
    ("slo #body window=1h", "/slo/?window=1h", HX),
    ("slo window=24h", "/slo/?window=24h", {}),
    ("slo #body window=24h", "/slo/?window=24h", HX),
    ("slo window=7d", "/slo/?window=7d", {}),
    ("slo #body window=7d", "/slo/?window=7d", HX),
    ("slo window=30d", "/slo/?window=30d", {}),
    ("slo #body window=30d", "/slo/?window=30d", HX),
    # Newer pages: a URL that does not resolve prints "not present" (a branch without them).
    ("vram window=1h", "/vram/?gpu={gpu}&window=1h", {}),
    ("vram window=24h", "/vram/?gpu={gpu}&window=24h", {}),
    ("vram window=7d", "/vram/?gpu={gpu}&window=7d", {}),
    ("vram window=30d", "/vram/?gpu={gpu}&window=30d", {}),
    ("vram #fragment window=30d", "/vram/?gpu={gpu}&window=30d", HX),
    ("preload", "/preload/", {}),
    ("preload #fragment", "/preload/", HX),
]


# --------------------------------------------------------------------------- data


def ts(x: float) -> str:
    return bench_slo.ts(x)


def top_up(url: str, now: float) -> dict:
    """Rows from the newest bench row to `now`, at the density of the last day before it
    (same mix as bench_slo.generate: urgencies, tasks, 4 % fallbacks, outcomes for 10 %...)."""
    import psycopg

    rnd = random.Random(int(now))
    NULL = bench_slo.NULL
    counts: dict = {}
    with psycopg.connect(url) as conn, conn.cursor() as cur:
        last = cur.execute("SELECT extract(epoch FROM max(created_at)), max(id) FROM models_registry_selectiondecision"
                           ).fetchone()
        if last[0] is None:
            return counts
        t0, next_id = float(last[0]), last[1] + 1
        gap = now - t0
        if gap < 1:
            return counts
        per_s = cur.execute("SELECT count(*) / 86400.0 FROM models_registry_selectiondecision WHERE created_at > "
                            "to_timestamp(%s) - interval '1 day'", [t0]).fetchone()[0]
        loads_per_s = cur.execute("SELECT count(*) / 86400.0 FROM models_registry_loadevent WHERE requested_at > "
                                  "to_timestamp(%s) - interval '1 day'", [t0]).fetchone()[0]
        snaps_per_s = cur.execute("SELECT count(*) / 86400.0 FROM models_registry_gpusnapshot WHERE taken_at > "
                                  "to_timestamp(%s) - interval '1 day'", [t0]).fetchone()[0]
        tasks, local, remote, eps, gpus = bench_slo.catalog_ids(cur)
        active: dict[int, list] = {e: [] for e in eps}
        for rid, model, e in cur.execute(
                "SELECT id, model_id, endpoint_id FROM models_registry_residency"
                " WHERE state IN ('requested','loading','loaded','unloading')"):
            active[e].append((rid, model))
        urgencies = ["interactive"] * 40 + ["critical"] * 10 + ["background"] * 30 + ["batch"] * 20
        n = int(gap * float(per_s))
        step = gap / max(1, n)

        def decisions():
            for k in range(n):
                i = next_id + k
                at = t0 + (k + 0.5) * step
                e = eps[i % len(eps)]
                if rnd.random() < 0.04 or not active[e]:
                    action, model, endpoint, res = "fallback", remote[0], NULL, NULL
                else:
                    rid, model = active[e][i % len(active[e])]
                    action, endpoint, res = "use_loaded", e, rid
                met = "t" if rnd.random() < 0.96 else "f"
                wait = 0.0 if action == "use_loaded" else rnd.uniform(2, 15)
                resp = wait + rnd.lognormvariate(0.3, 0.6)
                us = int(rnd.lognormvariate(4.5, 0.5))
                yield (f"{i}\t{ts(at)}\tbench\t{tasks[(i * 7) % len(tasks)]}\t{urgencies[i % 100]}\t{model}\t"
                       f"{endpoint}\t{{}}\t{action}\t{wait:.3f}\t{resp:.3f}\t0.8\t{met}\tf\t\t[]\t[]\t{{}}\tbench\t"
                       f"{us}\t{res}\n")

        counts["decisions"] = bench_slo.copy_lines(
            cur,
            "COPY models_registry_selectiondecision (id, created_at, client, task_type_id, urgency, model_id,"
            " endpoint_id, gpu_keys, action, expected_wait_s, expected_response_s, quality, met_floor, warned,"
            " reason, evictions, candidates, input_state, policy_version, decision_us, residency_id) FROM STDIN",
            decisions(),
        )

        def outcomes():
            for k in range(0, n, 10):
                at = t0 + (k + 0.5) * step
                if at + 5 > now:
                    continue
                rating = f"{rnd.random():.3f}" if k % 20 == 0 else NULL
                yield f"{next_id + k}\t{ts(at + 5)}\t{int(rnd.lognormvariate(7.5, 0.7))}\tt\t{rating}\n"

        counts["outcomes"] = bench_slo.copy_lines(
            cur, "COPY models_registry_decisionoutcome (decision_id, reported_at, response_ms, success, rating)"
            " FROM STDIN", outcomes())

        kinds = ["load"] * 70 + ["evict"] * 15 + ["unload"] * 10 + ["fail"] * 5
        nl = int(gap * float(loads_per_s))

        def loads():
            lstep = gap / max(1, nl)
            for i in range(nl):
                at = t0 + (i + 0.5) * lstep
                model, vram = local[i % len(local)]
                dur = rnd.uniform(1, 40)
                dec = next_id + min(n - 1, int((at - t0) / step)) if i % 2 == 0 and n else NULL
                kind = kinds[i % 100]
                dec = dec if kind == "load" else NULL
                yield (f"{model}\t{eps[i % len(eps)]}\t{{}}\t{kind}\tselection\t{ts(at)}\t{ts(at)}\t"
                       f"{ts(at + dur)}\t{dur:.3f}\t{vram}\t\t\\N\t{dec}\n")

        counts["load_events"] = bench_slo.copy_lines(
            cur,
            "COPY models_registry_loadevent (model_id, endpoint_id, gpu_keys, kind, trigger, requested_at,"
            " started_at, finished_at, duration_s, vram_mib, error, residency_id, decision_id) FROM STDIN",
            loads(),
        )
        ns = int(gap * float(snaps_per_s))

        def snapshots():
            sstep = gap / max(1, ns)
            for i in range(ns):
                gid, total = gpus[i % len(gpus)]
                used = rnd.randrange(total // 4, total)
                yield (f"{gid}\t{ts(t0 + (i + 0.5) * sstep)}\t{total}\t{used}\t{total - used}\t"
                       f"{rnd.uniform(0, 100):.1f}\t60\t150\n")

        counts["snapshots"] = bench_slo.copy_lines(
            cur,
            "COPY models_registry_gpusnapshot (gpu_id, taken_at, total_mib, used_mib, free_mib, util_pct,"
            " temperature_c, power_w) FROM STDIN",
            snapshots(),
        )
        cur.execute("SELECT setval(pg_get_serial_sequence('models_registry_selectiondecision', 'id'),"
                    " (SELECT max(id) FROM models_registry_selectiondecision))")
        conn.commit()
    counts["hours"] = gap / 3600
    return counts


def placeholders(now: dt.datetime) -> dict[str, str]:
    """Values for the URLs in PAGES, read from the bench data."""
    from django.db import connection

    from models_registry import models as m

    def usage(field: str) -> dict[str, int]:
        # per model id, from the rollups' labelled counts (cheap: one row per hour)
        pos = {"decision_counts": 4, "load_counts": 2}[field]
        with connection.cursor() as cur:
            cur.execute(f"SELECT split_part(k, '|', {pos}), sum(v::bigint) FROM models_registry_slohourlyrollup,"
                        f" jsonb_each_text({field}) AS e(k, v) GROUP BY 1")
            return {k: int(v) for k, v in cur.fetchall() if k}

    tags = dict(m.LlmModel.objects.values_list("id", "tag"))
    used = {tags[int(k)]: v for k, v in usage("decision_counts").items()}
    loaded = {tags[int(k)]: v for k, v in usage("load_counts").items()}
    by_use = sorted(used, key=used.get)
    unused = sorted(set(tags.values()) - set(used) - set(loaded)) or sorted(set(tags.values()) - set(used))

    def deep(model, field: str, back: dt.timedelta) -> str:
        row = (model.objects.filter(**{f"{field}__lt": now - back}).order_by(f"-{field}", "-id")
               .values_list(field, "id").first())
        return urlencode({"after": f"{row[0].isoformat()}_{row[1]}"}) if row else ""

    week = now - dt.timedelta(days=7)
    detail = (m.LoadEvent.objects.filter(decision__isnull=False).order_by("-requested_at")
              .values_list("decision_id", flat=True).first()) or m.SelectionDecision.objects.order_by("-id")[0].id
    gpu = m.Gpu.objects.select_related("host").first()
    return {
        "task_type": "analysis",
        "model_common": by_use[-1] if by_use else "",
        "model_rare": by_use[0] if by_use else "",
        "model_unused": unused[0] if unused else "none",
        "load_model_rare": min(loaded, key=loaded.get) if loaded else "",
        "endpoint": m.Endpoint.objects.order_by("name").values_list("name", flat=True).last(),
        "since": week.strftime("%Y-%m-%dT%H:%M"),
        "until": (week + dt.timedelta(days=1)).strftime("%Y-%m-%dT%H:%M"),
        "decision_deep": deep(m.SelectionDecision, "created_at", dt.timedelta(days=25)),
        "load_deep": deep(m.LoadEvent, "requested_at", dt.timedelta(days=25)),
        "decision_id": str(detail),
        "gpu": gpu.key if gpu else "",
    }


# --------------------------------------------------------------------------- timing


def time_page(client, url: str, headers: dict, calls: int):
    """(median ms, max ms, queries, bytes) or a string saying why not."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext
    from django.urls import Resolver404, resolve

    try:
        resolve(url.split("?")[0])
    except Resolver404:
        return "not present"
    with CaptureQueriesContext(connection) as q:  # the warm-up call
        r = client.get(url, headers=headers)
    queries = len(q.captured_queries)  # now: the next request resets the connection's log
    if r.status_code == 404:
        return "not present (404)"
    if r.status_code != 200:
        return f"ERROR: HTTP {r.status_code}"
    xs = []
    for _ in range(calls):
        t = time.perf_counter()
        client.get(url, headers=headers)
        xs.append((time.perf_counter() - t) * 1000)
    return statistics.median(xs), max(xs), queries, len(r.content)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--calls", type=int, default=7)
    p.add_argument("--only", nargs="*", default=[], help="time only the pages whose name contains one of these")
    p.add_argument("--no-top-up", action="store_true", help="do not add rows up to now")
    p.add_argument("--rebuild-rollups", action="store_true",
                   help="recompute every hour's rollup (after a migration that adds to them; ~2 s per 10 hours)")
    p.add_argument("--minute", type=int, metavar="M",
                   help="run at minute M of the last complete hour, the clock stopped (time_machine; 59: the "
                        "current hour full, the worst case of an hour) instead of now")
    p.add_argument("--show-urls", action="store_true")
    args = p.parse_args()

    base = os.environ.get("DATABASE_URL")
    if not base:
        sys.exit("set DATABASE_URL to a PostgreSQL server (the bench uses towerops_slo_bench there)")
    url = bench_slo.db_url(base, bench_slo.BENCH_DB)
    built = False
    if not bench_slo.db_exists(base):
        t = time.perf_counter()
        bench_slo.create_db(base, url)
        gen = argparse.Namespace(decisions=10_000_000, loads=1_000_000, snapshots=5_000_000, days=30)
        counts = bench_slo.generate(url, gen)
        built = True
        print(f"built {bench_slo.BENCH_DB} in {time.perf_counter() - t:.0f} s: {counts}", flush=True)
    else:
        print(f"reusing {bench_slo.BENCH_DB}", flush=True)

    os.environ["DATABASE_URL"] = url
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "towerops.settings")
    os.environ["SECURE_SSL_REDIRECT"] = "0"
    os.environ["SESSION_COOKIE_SECURE"] = "0"
    os.environ["DEBUG"] = "0"
    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from django.db import connection
    from django.test import Client
    from django.test.utils import setup_test_environment

    from models_registry import timeutil
    from models_registry.slo import rollups

    call_command("migrate", verbosity=0)  # new indexes
    if not built and not args.no_top_up:
        t = time.perf_counter()
        counts = top_up(url, time.time())
        if counts:
            with bench_slo.admin_connect(url) as c:
                c.execute("ANALYZE")
            print(f"topped up {counts.get('hours', 0):.2f} h in {time.perf_counter() - t:.1f} s: {counts}", flush=True)
    t = time.perf_counter()
    if built or args.rebuild_rollups:
        n = rollups.rollup_range(rollups.data_start(), rollups.floor_hour(timeutil.utcnow()))
    else:
        n = len(rollups.rollup_due(limit=10_000))
    print(f"rolled up {n} hours in {time.perf_counter() - t:.1f} s", flush=True)

    if args.minute is not None:
        import time_machine

        at = rollups.floor_hour(timeutil.utcnow()) - rollups.HOUR + dt.timedelta(minutes=args.minute, seconds=30)
        time_machine.travel(at, tick=False).start()  # stopped there: a long run must not cross the hour
    setup_test_environment()
    user, _ = get_user_model().objects.get_or_create(username="bench-pages", defaults={"is_staff": True})
    client = Client()
    client.force_login(user)
    now = timeutil.utcnow()
    values = placeholders(now)

    start = time.perf_counter()
    results = []
    for name, page, headers in PAGES:
        if args.only and not any(s in name for s in args.only):
            continue
        path = page.format(**values)
        res = time_page(client, path, headers, args.calls)
        results.append((name, path, res))
        if args.show_urls:
            print(f"  {name}: {path}", flush=True)
    with connection.cursor() as cur:
        cur.execute("SELECT pg_size_pretty(pg_database_size(current_database())),"
                    " (SELECT reltuples::bigint FROM pg_class WHERE relname = 'models_registry_selectiondecision')")
        size, approx = cur.fetchone()

    print()
    print(f"{bench_slo.BENCH_DB}: ~{approx:,} decisions, {size}; {now:%Y-%m-%d %H:%M} UTC "
          f"({now.minute} min into the hour); median and max of {args.calls} calls after a warm-up "
          f"({time.perf_counter() - start:.0f} s in all)")
    print(f"{'page':<50} {'median ms':>9} {'max ms':>8} {'queries':>7} {'KiB':>6}  target {TARGET_MS:.0f} ms")
    over = []
    for name, path, res in results:
        if isinstance(res, str):
            print(f"{name:<50} {res}")
            continue
        med, mx, nq, size_b = res
        flag = "OVER" if med > TARGET_MS else ""
        if flag:
            over.append(name)
        print(f"{name:<50} {med:>9.1f} {mx:>8.1f} {nq:>7} {size_b / 1024:>6.0f}  {flag}")
    print(f"{len(over)} page(s) over {TARGET_MS:.0f} ms" + (f": {', '.join(over)}" if over else ""))


if __name__ == "__main__":
    main()
