"""The two baselines bench/bench_api.py measures select against, on the same server and settings.

Mounted at /bench/ by towerops/urls.py only when TOWEROPS_BENCH_ENDPOINTS=1 (never in production):

    POST /bench/const   constant JSON: the framework's ceiling (Django + ninja + gunicorn)
    POST /bench/insert  one durable INSERT, in its own transaction, of a row the same size as a
                        SelectionDecision: the ceiling for "every decision persisted"

The INSERT goes to the table bench_insert, which bench_api.py creates with the decision
table's columns (no foreign keys, only a primary key) and fills from bench_template: a copy
of a real decision row, read once per process, so each INSERT writes the same bytes.
"""
from __future__ import annotations

import json

from django.db import connection, transaction
from ninja import NinjaAPI, Router

router = Router()

CONSTANT = {"ok": True, "model": "llama3.2:3b", "action": "use_loaded", "expected_wait_s": 0.0}

_insert: dict = {}


def _statement() -> tuple[str, list]:
    """INSERT INTO bench_insert (...) VALUES (...) with the template row's values."""
    if not _insert:
        with connection.cursor() as cur:
            cur.execute("SELECT * FROM bench_template LIMIT 1")
            cols = [c.name for c in cur.description]
            row = cur.fetchone()
            cur.execute(
                "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = 'bench_insert'"
            )
            types = dict(cur.fetchall())
        names, marks, params = [], [], []
        for name, value in zip(cols, row):
            if name == "id":
                continue
            names.append(name)
            if types.get(name) == "jsonb":
                marks.append("%s::jsonb")
                params.append(json.dumps(value))
            else:
                marks.append("%s")
                params.append(value)
        _insert["sql"] = f"INSERT INTO bench_insert ({', '.join(names)}) VALUES ({', '.join(marks)})"
        _insert["params"] = params
    return _insert["sql"], _insert["params"]


@router.post("/const")
def const(request):
    return CONSTANT


@router.post("/insert")
def insert(request):
    sql, params = _statement()
    with transaction.atomic():
        with connection.cursor() as cur:
            cur.execute(sql, params)
    return CONSTANT


api = NinjaAPI(title="TowerOps bench baselines", version="bench", urls_namespace="bench", docs_url=None)
api.add_router("/", router)
