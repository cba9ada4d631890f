"""GET /metrics: prometheus-client exposition read from the database, and its access rule."""
from __future__ import annotations

import datetime as dt

import pytest
from prometheus_client.parser import text_string_to_metric_families

from models_registry import models as m
from models_registry import reports

from .test_reports import HOUR, history  # noqa: F401  (fixture)

pytestmark = pytest.mark.django_db


def scrape(client, **extra) -> dict:
    r = client.get("/metrics", **extra)
    assert r.status_code == 200, r.content
    assert r["Content-Type"].startswith("text/plain")
    return {f.name: f for f in text_string_to_metric_families(r.content.decode())}


def samples(fam, suffix=""):
    return {tuple(sorted(s.labels.items())): s.value for s in fam.samples if s.name == fam.name + suffix}


def test_exposition_from_raw_rows_and_from_rollups_is_the_same(history, client):  # noqa: F811
    # taken in H1 (already observed), so the VRAM figure stays the hand-computed one
    m.GpuSnapshot.objects.create(gpu=m.Gpu.objects.get(index=1), taken_at=history["h1"] + dt.timedelta(minutes=9),
                                 total_mib=12288, used_mib=6144, free_mib=6144, util_pct=50.0)
    fams = scrape(client)
    decisions = samples(fams["towerops_decisions"], "_total")
    assert sum(decisions.values()) == 13
    assert decisions[(("action", "fallback"), ("task_type", "code_generation"), ("urgency", "background"))] == 1
    assert decisions[(("action", "use_loaded"), ("task_type", "general"), ("urgency", "interactive"))] == 4
    loads = samples(fams["towerops_model_loads"], "_total")
    assert loads == {(("endpoint", "tower-nvidia"), ("model", "llama3.2:3b")): 2}
    assert sum(samples(fams["towerops_model_evictions"], "_total").values()) == 1
    assert sum(samples(fams["towerops_model_load_failures"], "_total").values()) == 1
    dur = fams["towerops_model_load_duration_seconds"]
    assert samples(dur, "_count")[()] == 2 and samples(dur, "_sum")[()] == 16.0
    buckets = {dict(k)["le"]: v for k, v in samples(dur, "_bucket").items()}
    assert (buckets["5.0"], buckets["10.0"], buckets["20.0"], buckets["+Inf"]) == (1, 1, 2, 2)
    us = fams["towerops_decision_duration_seconds"]
    assert samples(us, "_count")[()] == 13 and samples(us, "_sum")[()] == pytest.approx(13 * 100e-6)
    used = samples(fams["towerops_gpu_vram_used_bytes"])
    assert used == {(("gpu", "1"), ("host", "tower"), ("name", "NVIDIA GeForce RTX 3060"),
                     ("vendor", "nvidia")): 6144 * 1024 * 1024}
    assert len(samples(fams["towerops_gpu_vram_reserved_bytes"])) == 2
    slo = {dict(k)["slo"]: v for k, v in samples(fams["towerops_slo_value"]).items()}
    assert slo["interactive_p95_s"] == 6.0 and slo["vram_efficiency"] == 0.125
    met = {dict(k)["slo"]: v for k, v in samples(fams["towerops_slo_met"]).items()}
    assert met == {"interactive_p95_s": 0, "loads_per_hour": 1, "vram_efficiency": 0, "quality_met": 0,
                   "fallback_rate": 0}
    # the same counters once every hour is rolled up
    reports.rollup_range(history["h0"] - 2 * HOUR, history["h1"] + 2 * HOUR)
    again = scrape(client)
    for name in ("towerops_decisions", "towerops_model_loads", "towerops_decision_duration_seconds",
                 "towerops_model_load_duration_seconds", "towerops_slo_value"):
        assert again[name].samples == fams[name].samples, name


def test_empty_database_exposes_no_slo_values(rig, client):
    fams = scrape(client)
    assert samples(fams["towerops_slo_value"]) == {}
    assert samples(fams["towerops_slo_met"]) == {}
    assert set(v for v in samples(fams["towerops_slo_has_data"]).values()) == {0}
    assert len(samples(fams["towerops_slo_target"])) == 5


def test_access_rule(rig, client, make_key, settings):
    far = {"REMOTE_ADDR": "10.1.2.3"}
    assert client.get("/metrics").status_code == 200  # the test client is 127.0.0.1: allowed by default
    assert client.get("/metrics", **far).status_code == 403
    assert client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {make_key('read')}", **far).status_code == 200
    assert client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {make_key('select')}", **far).status_code == 403
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer tow_nonsense", **far).status_code == 401
    settings.TOWEROPS_METRICS_ALLOW_IPS = ["10.1.0.0/16"]
    assert client.get("/metrics", **far).status_code == 200
    assert client.get("/metrics").status_code == 403
    settings.TOWEROPS_METRICS_ALLOW_IPS = []
    assert client.get("/metrics").status_code == 403
    assert client.post("/metrics").status_code in (403, 405)
