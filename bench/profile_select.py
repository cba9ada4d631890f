"""Where a POST /api/v1/select spends its time: queries per request and a cProfile of the whole
request (auth, ninja parsing, read_world, the policy, the INSERT, the response), in-process.

    .venv/bin/python bench/bench_api.py --keep-db --duration 1     # prepares towerops_bench
    DATABASE_URL=postgres://postgres@127.0.0.1:5432/towerops_bench \\
        .venv/bin/python bench/profile_select.py [--requests 2000] [--top 30] [--fallback]

Figures, not assertions. Uses the database of DATABASE_URL as bench_api.py leaves it (the
Tower profile, a loaded llama3.2:3b, an API key named bench); creates its own key.
"""
from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "towerops.settings")
os.environ.setdefault("DEBUG", "0")
os.environ.setdefault("SECURE_SSL_REDIRECT", "0")
os.environ.setdefault("ALLOWED_HOSTS", "testserver,127.0.0.1")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--top", type=int, default=30)
    ap.add_argument("--fallback", action="store_true", help="every endpoint down: the fallback path")
    args = ap.parse_args()

    import django

    django.setup()
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    from models_registry import models as m
    from models_registry.api.auth import create_key

    m.Endpoint.objects.update(is_up=not args.fallback)
    key = create_key("profile", ["select", "read"])[1]
    client = Client()
    body = json.dumps({"task_type": "general", "urgency": "critical", "client": "profile", "expected_output_tokens": 0})
    headers = {"HTTP_AUTHORIZATION": f"Bearer {key}"}

    def one():
        r = client.post("/api/v1/select", body, content_type="application/json", **headers)
        if r.status_code != 200:
            sys.exit(f"select answered {r.status_code}: {r.content[:300]!r}")
        return r

    for _ in range(50):  # warm: caches, connection
        one()
    with CaptureQueriesContext(connection) as q:
        out = one().json()
    print(f"one selection ({out['action']} {out['model']}): {len(q.captured_queries)} queries")
    kinds = Counter(x["sql"].split()[0].upper() for x in q.captured_queries)
    print("  " + ", ".join(f"{k} {v}" for k, v in kinds.most_common()))
    for x in q.captured_queries:
        print(f"  {float(x['time']) * 1e3:6.2f} ms  {x['sql'][:150]}")

    t0 = time.perf_counter()
    for _ in range(200):
        one()
    per = (time.perf_counter() - t0) / 200
    print(f"\nin-process, one at a time: {per * 1e3:.2f} ms per selection ({1 / per:.0f}/s on one core)")

    prof = cProfile.Profile()
    prof.enable()
    for _ in range(args.requests):
        one()
    prof.disable()
    for order in ("tottime", "cumulative"):
        s = io.StringIO()
        pstats.Stats(prof, stream=s).strip_dirs().sort_stats(order).print_stats(args.top)
        print(f"\n--- by {order} ---")
        print("\n".join(line for line in s.getvalue().splitlines() if line.strip())[:8000])
    m.Endpoint.objects.update(is_up=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
