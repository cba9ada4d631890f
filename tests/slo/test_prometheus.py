"""GET /metrics: prometheus-client exposition read from the database, and its access rule."""
from __future__ import annotations

import datetime as dt

import pytest
from prometheus_client.parser import text_string_to_metric_families

from models_registry import models as m
from models_registry.slo import prometheus, reports, rollups

from .conftest import base_hour
from .test_reports import HOUR, MIN, history  # noqa: F401  (fixture)

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
    us = fams["towerops_decision_duration_seconds"]
    assert samples(us, "_count")[()] == 13 and samples(us, "_sum")[()] == pytest.approx(13 * 100e-6)
    used = samples(fams["towerops_gpu_vram_used_bytes"])
    assert used == {(("gpu", "1"), ("host", "tower"), ("name", "NVIDIA GeForce RTX 3060"),
                     ("vendor", "nvidia")): 6144 * 1024 * 1024}
    assert len(samples(fams["towerops_gpu_vram_reserved_bytes"])) == 2
    assert samples(fams["towerops_slo_interactive_ttft_p95_seconds"]) == {(): 6.0}
    assert samples(fams["towerops_slo_vram_efficiency_ratio"]) == {(): 0.125}
    assert samples(fams["towerops_slo_interactive_ttft_p95_target_seconds"]) == {(("comparator", "lt"),): 5.0}
    met = {dict(k)["slo"]: v for k, v in samples(fams["towerops_slo_met"]).items()}
    assert met == {"interactive_p95_s": 0, "loads_per_hour": 1, "vram_efficiency": 0, "quality_met": 0,
                   "fallback_rate": 0}
    # the same counters once every hour is rolled up
    rollups.rollup_range(history["h0"] - 2 * HOUR, history["h1"] + 2 * HOUR)
    again = scrape(client)
    for name in COUNTERS + ("towerops_slo_interactive_ttft_p95_seconds",):
        assert again[name].samples == fams[name].samples, name


COUNTERS = ("towerops_decisions", "towerops_model_loads", "towerops_decision_duration_seconds",
            "towerops_model_load_duration_seconds", "towerops_time_to_first_token_seconds",
            "towerops_expected_wait_seconds")


def by_labels(fam, suffix, **fixed):
    """{label tuple without `le`: value} of a histogram's samples with that suffix (and `le` when given)."""
    out = {}
    for s in fam.samples:
        if s.name != fam.name + suffix or any(s.labels.get(k) != v for k, v in fixed.items()):
            continue
        out[tuple(v for k, v in sorted(s.labels.items()) if k != "le")] = s.value
    return out


def test_time_to_first_token_and_wait_histograms_by_hand(history, client):  # noqa: F811
    fams = scrape(client)
    ttft = fams["towerops_time_to_first_token_seconds"]
    # labels sorted: model, source, task_type, urgency
    assert by_labels(ttft, "_count") == {
        ("qwen2.5-coder:7b", "first_token", "general", "interactive"): 1,  # 400 ms measured
        ("qwen2.5-coder:7b", "response", "general", "interactive"): 1,  # 2000 ms response, no first token
        ("llama3.2:3b", "first_token", "general", "interactive"): 1,  # 900 ms measured (response 3000 ms)
    }
    assert by_labels(ttft, "_sum") == pytest.approx({
        ("qwen2.5-coder:7b", "first_token", "general", "interactive"): 0.4,
        ("qwen2.5-coder:7b", "response", "general", "interactive"): 2.0,
        ("llama3.2:3b", "first_token", "general", "interactive"): 0.9,
    })
    assert by_labels(ttft, "_bucket", le="0.5") == {
        ("qwen2.5-coder:7b", "first_token", "general", "interactive"): 1,
        ("qwen2.5-coder:7b", "response", "general", "interactive"): 0,
        ("llama3.2:3b", "first_token", "general", "interactive"): 0,
    }
    assert set(by_labels(ttft, "_bucket", le="5.0").values()) == {1}
    wait = fams["towerops_expected_wait_seconds"]
    # every decision that chose a model, with the wait the policy expected (model, task_type, urgency)
    assert by_labels(wait, "_count") == {
        ("qwen2.5-coder:7b", "general", "interactive"): 2, ("llama3.2:3b", "general", "interactive"): 2,
        ("llama3.2:3b", "general", "critical"): 1, ("llama3.2:3b", "code_generation", "background"): 4,
        ("remote:gpt-4o-mini", "code_generation", "background"): 1, ("llama3.2:3b", "analysis", "batch"): 1,
        ("qwen2.5-coder:7b", "general", "background"): 2,
    }
    assert sum(by_labels(wait, "_count").values()) == 13
    assert by_labels(wait, "_sum")[("llama3.2:3b", "general", "interactive")] == 15.0
    assert by_labels(wait, "_bucket", le="5.0")[("llama3.2:3b", "general", "interactive")] == 0
    assert by_labels(wait, "_bucket", le="7.5")[("llama3.2:3b", "general", "interactive")] == 1
    assert by_labels(wait, "_bucket", le="1.0")[("llama3.2:3b", "general", "critical")] == 1
    load = fams["towerops_model_load_duration_seconds"]
    assert by_labels(load, "_count") == {("tower-nvidia", "llama3.2:3b"): 2}
    assert by_labels(load, "_sum") == {("tower-nvidia", "llama3.2:3b"): 16.0}
    buckets = {le: by_labels(load, "_bucket", le=le)[("tower-nvidia", "llama3.2:3b")] for le in ("5.0", "10.0", "20.0", "+Inf")}
    assert buckets == {"5.0": 1, "10.0": 1, "20.0": 2, "+Inf": 2}


def test_counters_never_go_down_as_hours_roll_up_and_outcomes_come_late(history, client):  # noqa: F811
    from models_registry.selection import outcomes
    from models_registry.slo import counters

    def totals_of(fams):
        return {name: sum(s.value for s in fams[name].samples if not s.name.endswith("_created")) for name in COUNTERS}

    first = scrape(client)
    rollups.rollup_range(history["h0"] - 2 * HOUR, history["h1"] + 2 * HOUR)
    scrape(client)
    full = dict(counters._good.full_sums)
    rolled = scrape(client)  # nothing changed: the process's sum of the good rollups is reused as it is
    assert counters._good.full_sums == full
    assert totals_of(rolled) == totals_of(first)
    # An outcome for H0's decision without one: its hour is read raw again, then rolled up again.
    late = history["late"]
    outcomes.record_outcome(late.pk, 2500, True, None, first_token_ms=1200)
    rollups.mark_hour_dirty(late.created_at)
    dirty = scrape(client)
    # a row of the last two days left the good set: those rows are summed again, the older ones not
    assert counters._good.full_sums == {**full, "recent": full["recent"] + 1}
    rollups.rollup_range(history["h0"], history["h0"] + HOUR)
    again = scrape(client)
    for before, after in ((first, dirty), (dirty, again)):
        for name, n in totals_of(before).items():
            assert totals_of(after)[name] >= n, name
    ttft = by_labels(again["towerops_time_to_first_token_seconds"], "_count")
    assert ttft[("llama3.2:3b", "first_token", "general", "interactive")] == 2
    assert again["towerops_time_to_first_token_seconds"].samples == dirty["towerops_time_to_first_token_seconds"].samples


def test_a_new_process_starts_from_the_checkpoint_of_the_older_hours(rig, client):
    from models_registry.selection import outcomes
    from models_registry.slo import counters

    old = base_hour(80)  # older than two days: the frozen part
    rig.decision(old + 5 * MIN, response_ms=3000, first_token_ms=800, model="qwen2.5-coder:7b")
    late = rig.decision(old + 6 * MIN, wait=2.0)
    rig.load(old + 7 * MIN, "load", duration=7.0)
    rollups.rollup_range(old - HOUR, old + 2 * HOUR)
    counters._good = counters._GoodRollupSum()
    first = scrape(client)
    assert counters._good.full_sums["frozen"] == 1  # the older hours summed once (nothing checkpointed yet)
    assert m.CounterCheckpoint.objects.get().versions  # and saved for the next process
    counters._good = counters._GoodRollupSum()  # another gunicorn worker, or a restart
    second = scrape(client)
    assert counters._good.full_sums["frozen"] == 0  # it read the checkpoint
    for name in COUNTERS:
        assert second[name].samples == first[name].samples, name
    ttft = by_labels(second["towerops_time_to_first_token_seconds"], "_sum")
    assert ttft == {("qwen2.5-coder:7b", "first_token", "general", "interactive"): 0.8}
    # a late outcome for an old hour: that hour is read raw, the older part is summed again
    outcomes.record_outcome(late.pk, 1500, True, None, first_token_ms=600)
    rollups.mark_hour_dirty(late.created_at)
    counters._good = counters._GoodRollupSum()
    third = scrape(client)
    assert counters._good.full_sums["frozen"] == 1
    assert sum(by_labels(third["towerops_time_to_first_token_seconds"], "_count").values()) == 2


def test_endpoints_and_residents(history, client):  # noqa: F811
    import django.utils.timezone as tz

    rig = history["rig"]
    now = tz.now()
    rig.residency(now - dt.timedelta(hours=1), None, 2048, model="llama3.2:3b", endpoint="tower-amd")
    stuck = rig.residency(now - dt.timedelta(minutes=15), None, 4096, model="mistral:7b", endpoint="tower-amd")
    m.Residency.objects.filter(pk=stuck.pk).update(state="loading", loaded_at=None)
    m.Endpoint.objects.filter(name="tower-nvidia").update(is_up=False, last_checked_at=now)
    fams = scrape(client)
    up = {dict(k)["endpoint"]: v for k, v in samples(fams["towerops_endpoint_up"]).items()}
    assert up == {"tower-amd": 1, "tower-nvidia": 0}
    loaded = {dict(k)["endpoint"]: v for k, v in samples(fams["towerops_endpoint_loaded_models"]).items()}
    assert loaded == {"tower-amd": 1, "tower-nvidia": 0}
    loading = {dict(k)["endpoint"]: v for k, v in samples(fams["towerops_endpoint_loading_models"]).items()}
    assert loading == {"tower-amd": 1, "tower-nvidia": 0}
    age = {dict(k)["endpoint"]: v for k, v in samples(fams["towerops_endpoint_oldest_load_age_seconds"]).items()}
    assert 899 <= age["tower-amd"] <= 960 and age["tower-nvidia"] == 0
    checked = samples(fams["towerops_endpoint_last_check_timestamp_seconds"])
    assert list(checked.values()) == [pytest.approx(now.timestamp())]
    assert samples(fams["towerops_load_timeout_seconds"]) == {(): 600.0}


def test_every_family_has_one_unit(history, client):  # noqa: F811
    r = client.get("/metrics")
    types = dict(line.split()[2:4] for line in r.content.decode().splitlines() if line.startswith("# TYPE"))
    assert "towerops_slo_value" not in types and "towerops_slo_target" not in types
    for name, kind in types.items():
        if name.startswith("towerops_") and kind in ("gauge", "histogram") and not name.endswith(
                ("_seconds", "_bytes", "_ratio", "_per_hour", "_models", "_up", "_met", "_has_data")):
            raise AssertionError(f"{name} ({kind}) names no unit")


def test_empty_database_exposes_no_slo_values(rig, client):
    fams = scrape(client)
    for value_family, target_family, _ in prometheus.SLO_FAMILIES.values():
        assert samples(fams[value_family]) == {}
        assert len(samples(fams[target_family])) == 1
    assert samples(fams["towerops_slo_met"]) == {}
    assert set(v for v in samples(fams["towerops_slo_has_data"]).values()) == {0}
    assert samples(fams["towerops_time_to_first_token_seconds"], "_count") == {}


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


def test_thrash_loads_are_counted_in_the_report_the_slo_detail_and_metrics(rig, client):
    """A load marked thrash (lifecycle._record: metrics.is_thrash_load) is a load counted again
    as thrash, by model and endpoint, from raw rows and from the rollups alike."""
    h = base_hour() - 3 * HOUR
    rig.load(h + 5 * MIN, "evict", model="mistral:7b", endpoint="tower-amd")
    rig.load(h + 6 * MIN, model="llama3.2:3b")
    again = rig.load(h + 9 * MIN, model="mistral:7b", endpoint="tower-amd")
    m.LoadEvent.objects.filter(pk=again.pk).update(thrash=True)
    for rolled in (False, True):
        if rolled:
            rollups.rollup_range(h - HOUR, h + 2 * HOUR)
        report = reports.thrash_report("24h")
        assert (report["loads"], report["thrash_loads"], report["thrash_share"]) == (2, 1, 0.5)
        by_model = {r["model"]: (r["loads"], r["thrash_loads"]) for r in report["by_model"]}
        assert by_model == {"mistral:7b": (1, 1), "llama3.2:3b": (1, 0)}
        detail = next(x for x in reports.slo_report("24h")["metrics"] if x["name"] == "loads_per_hour")["detail"]
        assert (detail["thrash_loads"], detail["thrash_share"]) == (1, 0.5)
        thrash = samples(scrape(client)["towerops_model_thrash_loads"], "_total")
        assert thrash == {(("endpoint", "tower-amd"), ("model", "mistral:7b")): 1}
