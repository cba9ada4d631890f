"""Many parallel selections against a nearly full GPU never reserve more VRAM than it has,
and every request has exactly one decision row.

Real threads, real transactions (transaction=True): each thread has its own database
connection, as gunicorn workers would, and all of them start at the same instant.
"""
from __future__ import annotations

import datetime as dt
import threading
from collections import Counter

import pytest
from django.db import connection
from django.test import Client

from models_registry import models as m
from models_registry.catalog.importer import import_profile
from models_registry.catalog.profile import parse_profile

from .conftest import SELECT

GPU_GB = 8
TASKS = ("t0", "t1", "t2", "t3", "t4", "t5")

SMALL = {
    "hosts": [
        {
            "name": "box",
            "gpus": [{"index": 0, "vendor": "nvidia", "name": "Small GPU", "total_gb": GPU_GB, "reserved_gb": 0.5}],
            "endpoints": [{"name": "box-gpu", "base_url": "http://127.0.0.1:11599", "gpus": [0]}],
        }
    ],
    "task_types": [{"name": t, "quality_floor": 0.5, "default_output_tokens": 64} for t in TASKS],
    "urgency_classes": [
        {"name": "critical", "patience_s": 2, "wait_weight": 0.2, "use_loaded_if_acceptable": True},
        {"name": "interactive", "patience_s": 5, "wait_weight": 0.05, "eviction_penalty": 0.02},
        {"name": "background", "patience_s": 120, "wait_weight": 0.001, "eviction_penalty": 0.05},
        {"name": "batch", "patience_s": 3600, "wait_weight": 0.0001, "eviction_penalty": 0.05},
    ],
    "models": [
        # pinned and always loaded: 1.5 GB of the 7.5 usable
        {"tag": "base:1b", "vram_gb": 1.5, "load_s": 2, "tokens_per_s": 200, "pinned": True,
         "quality": {t: 0.55 for t in TASKS}},
        # one specialist per task; 4.5 GB each, so only one fits beside base:1b at a time
        *[
            {"tag": f"{t}-expert:7b", "vram_gb": 4.5, "load_s": 10 + i, "tokens_per_s": 40,
             "quality": {u: (0.9 if u == t else 0.6) for u in TASKS}}
            for i, t in enumerate(TASKS)
        ],
        {"tag": "remote:api", "kind": "remote", "remote_latency_s": 1.5, "tokens_per_s": 80,
         "quality": {t: 0.85 for t in TASKS}},
    ],
}
USABLE_MIB = int(round((GPU_GB - 0.5) * 1024))


@pytest.fixture
def small(transactional_db, make_key):
    import_profile(parse_profile(SMALL, "small"))
    now = dt.datetime.now(dt.timezone.utc)
    base = m.LlmModel.objects.get(tag="base:1b")
    r = m.Residency.objects.create(model=base, endpoint=m.Endpoint.objects.get(), state="loaded",
                                   trigger="admin", vram_mib=base.vram_mib, requested_at=now, ready_at=now)
    m.ResidencyGpu.objects.create(residency=r, gpu=m.Gpu.objects.get(), vram_mib=base.vram_mib)
    return make_key("select", "read")


def active_vram_on_the_gpu() -> int:
    return sum(
        m.ResidencyGpu.objects.filter(
            gpu=m.Gpu.objects.get(), residency__state__in=["requested", "loading", "loaded"]
        ).values_list("vram_mib", flat=True)
    )


def fire(key: str, bodies: list[dict], threads: int = 8) -> list[tuple[int, dict]]:
    """Send `bodies` from `threads` threads that all start together; return (status, json) per body."""
    results: list[tuple[int, dict] | None] = [None] * len(bodies)
    start = threading.Barrier(threads)
    errors: list[BaseException] = []

    def worker(w: int):
        try:
            client = Client()
            start.wait()
            for i in range(w, len(bodies), threads):
                r = client.post(SELECT, bodies[i], content_type="application/json",
                                HTTP_AUTHORIZATION=f"Bearer {key}")
                results[i] = (r.status_code, r.json())
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            connection.close()

    pool = [threading.Thread(target=worker, args=(w,)) for w in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join(timeout=120)
    assert not errors, errors
    assert all(r is not None for r in results)
    return results


def check_invariants(results, captured_loads, n_requests):
    assert [s for s, _ in results] == [200] * n_requests, [b for s, b in results if s != 200]
    # exactly one decision row per request, each one a distinct row
    assert m.SelectionDecision.objects.count() == n_requests
    assert len({b["decision_id"] for _, b in results}) == n_requests
    # never more VRAM reserved than the GPU has
    assert active_vram_on_the_gpu() <= USABLE_MIB
    for res in m.Residency.objects.filter(state__in=["requested", "loading", "loaded"]):
        assert sum(res.placements.values_list("vram_mib", flat=True)) == res.vram_mib
    # at most one active residency per model and endpoint (also a DB constraint)
    active = m.Residency.objects.filter(state__in=m.Residency.ACTIVE_STATES)
    assert len(set(active.values_list("model_id", "endpoint_id"))) == active.count()
    # every load queued exactly once for its residency, and only for selection residencies
    queued = Counter(kw["args"][0] for _, kw in captured_loads)
    assert all(n == 1 for n in queued.values()), queued
    selection_residencies = set(m.Residency.objects.filter(trigger="selection").values_list("pk", flat=True))
    assert set(queued) == selection_residencies
    assert all(kw["queue"] == "host.box" for _, kw in captured_loads)
    # each decision that loads points at its own residency; waits point at an existing one
    loads = [b for _, b in results if b["action"] == "load"]
    assert len(loads) == len(selection_residencies)
    for _, b in results:
        row = m.SelectionDecision.objects.get(pk=b["decision_id"])
        assert row.action == b["action"]
        if b["action"] in ("load", "wait_for_load", "use_loaded"):
            assert row.residency_id is not None


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("urgency", ["background", "batch"])
def test_parallel_loads_never_overcommit_the_gpu(small, captured_loads, urgency):
    bodies = [{"task_type": TASKS[i % len(TASKS)], "urgency": urgency, "client": f"c{i}"} for i in range(24)]
    results = fire(small, bodies)
    check_invariants(results, captured_loads, len(bodies))
    # the patient callers all wanted a load; only one specialist fits, the rest share it or fall back
    assert m.Residency.objects.filter(trigger="selection").count() == 1
    assert Counter(b["action"] for _, b in results)["load"] == 1


@pytest.mark.django_db(transaction=True)
def test_parallel_mixed_urgencies(small, captured_loads):
    urgencies = ["critical", "interactive", "background", "batch"]
    bodies = [{"task_type": TASKS[i % len(TASKS)], "urgency": urgencies[(i // 2) % 4]} for i in range(32)]
    results = fire(small, bodies)
    check_invariants(results, captured_loads, len(bodies))


@pytest.mark.django_db(transaction=True)
def test_parallel_selections_with_an_idle_model_to_evict(small, captured_loads):
    """An idle specialist fills the GPU; many callers want other specialists: at most one evicts it."""
    now = dt.datetime.now(dt.timezone.utc)
    idle_model = m.LlmModel.objects.get(tag="t5-expert:7b")
    idle = m.Residency.objects.create(model=idle_model, endpoint=m.Endpoint.objects.get(), state="loaded",
                                      trigger="admin", vram_mib=idle_model.vram_mib, requested_at=now,
                                      ready_at=now, last_used_at=now - dt.timedelta(hours=3))
    m.ResidencyGpu.objects.create(residency=idle, gpu=m.Gpu.objects.get(), vram_mib=idle_model.vram_mib)
    assert active_vram_on_the_gpu() == m.LlmModel.objects.get(tag="base:1b").vram_mib + idle_model.vram_mib

    bodies = [{"task_type": TASKS[i % 5], "urgency": "batch"} for i in range(24)]
    results = fire(small, bodies)
    check_invariants(results, captured_loads, len(bodies))
    idle.refresh_from_db()
    loads = [b for _, b in results if b["action"] == "load"]
    assert len(loads) <= 1
    if loads:
        assert idle.state == "unloading"
        assert [e["model"] for e in loads[0]["evictions"]] == ["t5-expert:7b"]
