"""The runtime with real components: Celery workers (subprocesses, prefork, not eager) on the real
Redis broker, the test database committed (transaction=True) so the workers see it, and the
simulated Tower serving in this process at 50x speed.
"""
from __future__ import annotations

import datetime as dt
import json
import signal

import pytest

from models_registry import models as m
from models_registry import timeutil
from models_registry.api.auth import create_key
from models_registry.catalog import importer
from models_registry.catalog.profile import parse_profile
from models_registry.fakes.ollama_server import SimulatedTower
from models_registry.policy import SelectionRequest
from models_registry.runtime import fleet, loads, reservations, tasks
from models_registry.runtime.ollama import normalize_model_name
from models_registry.selection import advisory, service
from tests.helpers import tower_profile_on_free_ports, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

SCALE = 50  # qwen2.5-coder:7b's 13.5 s load takes 0.27 s
LOAD_WAIT_S = 20.0


def two_hosts_profile():
    def host(name: str) -> dict:
        return {
            "name": name,
            "simulator": {"load_fixed_s": 1.0, "disk_gbps": 1.0, "cached_disk_gbps": 4.0},
            "gpus": [{"index": 0, "vendor": "nvidia", "name": f"GPU of {name}", "total_gb": 12}],
            "endpoints": [{"name": f"ep-{name}", "base_url": "http://127.0.0.1:0", "gpus": [0]}],
        }

    return parse_profile({
        "version": 1,
        "hosts": [host("a"), host("b")],
        "task_types": [{"name": "general", "quality_floor": 0.5}],
        "urgency_classes": [{"name": "interactive", "patience_s": 5, "wait_weight": 0.05}],
        "models": [
            {"tag": "tinyllama", "file_size_gb": 0.6, "vram_gb": 1.0, "context_length": 2048, "load_s": 1.6,
             "tokens_per_s": 300, "quality": {"general": 0.6}},
            {"tag": "llama3.2:3b", "file_size_gb": 2.0, "vram_gb": 2.5, "load_s": 3.0, "tokens_per_s": 80,
             "quality": {"general": 0.8}},
        ],
    })


def serve(profile) -> SimulatedTower:
    sim = SimulatedTower(profile, time_scale=SCALE).start()
    importer.import_profile(sim.profile_with_actual_urls())
    return sim


@pytest.fixture
def tower_sim():
    sim = serve(tower_profile_on_free_ports())
    try:
        yield sim
    finally:
        sim.shutdown()


def free_mib() -> dict[str, int]:
    return {g["key"]: g["free_mib"] for g in fleet.fleet_state()["gpus"]}


def test_a_selection_is_loaded_by_the_worker_and_the_next_one_uses_it(tower_sim, start_worker, client):
    worker = start_worker("tower", "central,host.tower")
    key = create_key("integration", ["select", "read"])[1]

    def select() -> dict:
        r = client.post("/api/v1/select", json.dumps({"task_type": "code_generation", "urgency": "batch"}),
                        content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {key}")
        assert r.status_code == 200, r.content
        return r.json()

    first = select()
    assert first["action"] == "load"
    rid = m.SelectionDecision.objects.get(pk=first["decision_id"]).residency_id
    r = wait_for(lambda: m.Residency.objects.filter(pk=rid, state="loaded").first(), LOAD_WAIT_S,
                 "the worker to load the selected model")
    assert r.endpoint.name == first["endpoint"] and r.model.tag == first["model"]
    assert tower_sim.loaded(first["endpoint"]) == {normalize_model_name(first["model"]): "loaded"}
    ev = m.LoadEvent.objects.get(residency=r, kind="load")
    assert ev.decision_id == first["decision_id"] and ev.duration_s > 0
    wait_for(lambda: f"loaded {first['model']} on {first['endpoint']}" in worker.log(), 10, "the worker's log")

    second = select()
    assert (second["action"], second["model"], second["endpoint"]) == ("use_loaded", first["model"], first["endpoint"])
    assert m.Residency.objects.filter(state__in=m.Residency.ACTIVE_STATES).count() == 1


def test_a_worker_killed_mid_load_is_resolved_as_failed_and_its_vram_released(tower_sim, start_worker, monkeypatch):
    for name in tower_sim.endpoints:
        tower_sim.hang_loads(name)  # the load never finishes: the worker dies inside it
    worker = start_worker("doomed", "central,host.tower")
    req = SelectionRequest("code_generation", "batch")
    free_before = free_mib()

    sel = service.select_and_record(req)  # autocommit: queued as the decision commits
    d = sel.decision
    assert d.action == "load"
    gpu, need = d.gpus[0], m.LlmModel.objects.get(tag=d.model).vram_mib
    wait_for(lambda: m.Residency.objects.filter(pk=sel.residency_id, state="loading").exists(), LOAD_WAIT_S,
             "the worker to start the load")
    wait_for(lambda: any(e.kind == "load_start" and e.endpoint == d.endpoint for e in tower_sim.events), 10,
             "the load to reach Ollama")
    assert free_mib()[gpu] == free_before[gpu] - need

    worker.kill(signal.SIGKILL)
    wait_for(lambda: not worker.group_alive(), 10, "the worker to die")
    # Ollama drops a load whose client went away; TowerOps still thinks it is loading.
    wait_for(lambda: tower_sim.loaded(d.endpoint) == {}, 10, "the simulator to drop the orphaned load")
    r = m.Residency.objects.get(pk=sel.residency_id)
    assert r.state == "loading"

    monkeypatch.setattr(tasks, "LOAD_TIMEOUT_S", 1.0)
    assert wait_for(tasks.resolve_stale_loads, 10, "the stale load to be resolved") == 1
    r.refresh_from_db()
    assert r.state == "failed" and r.error == "timed out in state loading"
    # resolved once its timeout (and the grace a task about to report gets) passed
    assert 1.0 + loads.STALE_GRACE_S <= (r.ended_at - r.loaded_at).total_seconds() < 1.0 + loads.STALE_GRACE_S + 2
    ev = m.LoadEvent.objects.get(residency=r)
    assert (ev.kind, ev.trigger, ev.error) == ("fail", "selection", "timed out in state loading")
    assert free_mib() == free_before
    # The next selection may place a load there again.
    again = service.select_and_record(req, dry_run=True).decision
    assert (again.action, again.model, again.endpoint) == ("load", d.model, d.endpoint)


def test_two_hosts_each_load_runs_on_its_own_hosts_worker(start_worker):
    sim = serve(two_hosts_profile())
    try:
        assert dict(m.Host.objects.values_list("name", "queue")) == {"a": "host.a", "b": "host.b"}
        workers = {h: start_worker(h, f"host.{h}", wait=False) for h in ("a", "b")}
        for w in workers.values():
            w.wait_ready()

        rids = {}
        for ep in ("ep-a", "ep-b"):
            for tag in ("tinyllama", "llama3.2:3b"):
                result = reservations.request_load(tag, trigger="admin", endpoint=ep)
                assert result["endpoint"] == ep
                rids[(tag, ep)] = result["residency_id"]
        wait_for(lambda: m.Residency.objects.filter(pk__in=rids.values(), state="loaded").count() == 4,
                 LOAD_WAIT_S, "the four loads")

        started = {(e.endpoint, e.model) for e in sim.events if e.kind == "load_start"}
        assert started == {(ep, normalize_model_name(tag)) for tag, ep in rids}
        for host, other in (("a", "b"), ("b", "a")):
            w = workers[host]
            # (a load that found its endpoint busy with the other is sent again: one at a time per endpoint)
            log = wait_for(lambda w=w, host=host: all(f"loaded {t} on ep-{host}" in (text := w.log())
                                                      for t in ("tinyllama", "llama3.2:3b")) and text,
                           10, f"worker {host}'s log")
            assert f"on ep-{other}" not in log
        assert m.LoadEvent.objects.filter(kind="load", trigger="admin").count() == 4
    finally:
        sim.shutdown()


def test_a_queue_longer_than_a_load_gets_a_second_copy_on_the_other_host(start_worker, client):
    """llama3.2:3b is loaded on host a with a minute of requests queued: the next selection loads a
    second copy on host b (3 s), through host b's worker and its Ollama, and later selections take
    the copy with the shorter queue."""
    sim = serve(two_hosts_profile())
    try:
        workers = {h: start_worker(h, f"host.{h}", wait=False) for h in ("a", "b")}
        for w in workers.values():
            w.wait_ready()
        first = reservations.request_load("llama3.2:3b", trigger="admin", endpoint="ep-a")["residency_id"]
        wait_for(lambda: m.Residency.objects.filter(pk=first, state="loaded").exists(), LOAD_WAIT_S, "the first copy")
        now = timeutil.utcnow()  # a 60 s queue, booked as selections book it (selection/advisory.py)
        m.Residency.objects.filter(pk=first).update(busy_until=now + dt.timedelta(seconds=60),
                                                    advisory=json.loads(advisory.entry(0, now, 60.0, 60.0)))
        key = create_key("integration", ["select"])[1]
        body = json.dumps({"task_type": "general", "urgency": "interactive", "input_tokens": 800})
        r = client.post("/api/v1/select", body, content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {key}")
        assert r.status_code == 200, r.content
        out = r.json()
        assert (out["model"], out["action"], out["endpoint"]) == ("llama3.2:3b", "load", "ep-b"), out["reason"]
        assert "its copy on ep-a has a 59." in out["reason"] or "its copy on ep-a has a 60.0 s" in out["reason"]
        assert out["expected_prefill_s"] == pytest.approx(800 / 1600)
        copy = m.SelectionDecision.objects.get(pk=out["decision_id"]).residency_id
        wait_for(lambda: m.Residency.objects.filter(pk=copy, state="loaded").exists(), LOAD_WAIT_S, "the second copy")
        assert {(x.endpoint, x.model) for x in sim.events if x.kind == "load_start"} == {
            ("ep-a", "llama3.2:3b"), ("ep-b", "llama3.2:3b")}
        assert sorted(m.Residency.objects.filter(model__tag="llama3.2:3b", state="loaded")
                      .values_list("endpoint__name", flat=True)) == ["ep-a", "ep-b"]
        wait_for(lambda: "loaded llama3.2:3b on ep-b" in workers["b"].log(), 10, "worker b's log")
        r = client.post("/api/v1/select", body, content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {key}")
        assert (r.json()["action"], r.json()["endpoint"]) == ("use_loaded", "ep-b")
    finally:
        sim.shutdown()
