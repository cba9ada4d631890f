"""Every residency in a transient state (requested, loading, unloading) reaches a stable one within
its bound, whatever was lost on the way (docs/failure-behaviour.md). Against the simulated Tower
(conftest.py); threads run a task while the test acts on the same residency, as two worker
processes would, each with its own database connection (tx_ops: committed data).
"""
from __future__ import annotations

import httpx
from django.db import connection

from models_registry import models as m
from models_registry.policy import SelectionRequest
from models_registry.runtime import loads, reservations, tasks
from models_registry.runtime.ollama import OllamaClient
from models_registry.selection import service

from .conftest import AMD, NVIDIA, in_thread, wait_for

TRANSIENT = ("requested", "loading", "unloading")
NVIDIA_USABLE_MIB = 11325


def load_started(sim, endpoint: str) -> bool:
    return any(e.kind == "load_start" and e.endpoint == endpoint for e in sim.events)


def test_the_victim_of_a_load_that_never_ran_is_unloaded_for_real_and_recorded(ops, monkeypatch):
    """Defect 1: the reservation marked deepseek `unloading` for qwen's load, the load task was lost;
    the load fails at its timeout and the sync finishes the eviction the load never did."""
    victim = ops.load("deepseek-coder-v2:16b", NVIDIA)
    result = ops.committed(reservations.request_load, "qwen2.5-coder:7b", trigger="admin", endpoint=NVIDIA)
    assert result["detail"] == "loading on tower-nvidia after evicting deepseek-coder-v2:16b"
    assert [task for task, _, _ in ops.take()] == ["load"]  # ... which the broker loses: it never runs
    victim.refresh_from_db()
    assert victim.state == "unloading"

    monkeypatch.setattr(tasks, "REQUESTED_TIMEOUT_S", 0.0)
    assert tasks.resolve_stale_loads() == 1
    assert m.Residency.objects.get(pk=result["residency_id"]).state == "failed"
    nvidia = m.Endpoint.objects.get(name=NVIDIA)

    def synced_until_unloaded():
        tasks.sync_endpoint(nvidia.pk)
        return m.Residency.objects.get(pk=victim.pk).state == "unloaded"

    wait_for(synced_until_unloaded, timeout=10, what="the sync to unload the orphaned victim")
    assert ops.sim.loaded(NVIDIA) == {}  # really unloaded, not only in the books
    ev = m.LoadEvent.objects.get(residency=victim, kind="unload")
    assert ev.trigger == "admin" and "state sync" in ev.error  # who asked for it, and who finished it
    assert not m.Residency.objects.filter(state__in=TRANSIENT).exists()
    assert ops.free()["tower/1"] == NVIDIA_USABLE_MIB


def test_an_unload_asked_again_for_a_model_stuck_unloading_is_queued_again(ops):
    """Defect 1: request_unload ignored `unloading` rows, so the admin API could not clear one."""
    r = ops.load("mistral:7b", AMD)
    ops.committed(reservations.request_unload, "mistral:7b", trigger="admin", endpoint=AMD)
    assert ops.take() == [("unload", (r.pk, "admin"), "host.tower")]  # ... lost

    again = ops.committed(reservations.request_unload, "mistral:7b", trigger="admin", endpoint=AMD)
    assert (again["residency_id"], again["state"]) == (r.pk, "unloading")
    calls = ops.take()
    assert calls == [("unload", (r.pk, "admin"), "host.tower")]
    assert ops.run(calls) == ["unloaded mistral:7b from tower-amd"]
    assert ops.sim.loaded(AMD) == {}


def test_an_unload_asked_before_the_load_started_cancels_it(ops):
    rid = ops.reserve("mistral:7b", AMD)
    out = ops.committed(reservations.request_unload, "mistral:7b", trigger="admin", endpoint=AMD)
    assert (out["residency_id"], out["state"]) == (rid, "unloaded") and ops.take() == []
    assert tasks.execute_load(rid) == "nothing to do (unloaded)"
    ev = m.LoadEvent.objects.get(residency_id=rid)
    assert (ev.kind, ev.trigger) == ("unload", "admin") and "before its load started" in ev.error
    assert ops.sim.loaded(AMD) == {} and ops.free()["tower/0"] == 15 * 1024


def test_an_admin_unload_during_a_load_wins(tx_ops):
    """Defect 5: the load, when it finishes, sees it was asked to unload, unloads and says so;
    the sync then has nothing to adopt."""
    ops = tx_ops
    ops.sim.hang_loads(AMD)
    rid = ops.reserve("tinyllama", AMD)
    t, out = in_thread(tasks.execute_load, rid)
    wait_for(lambda: load_started(ops.sim, AMD), what="the load to reach Ollama")
    assert m.Residency.objects.get(pk=rid).state == "loading"

    asked = ops.committed(reservations.request_unload, "tinyllama", trigger="admin", endpoint=AMD)
    assert (asked["residency_id"], asked["state"]) == (rid, "unloading")
    ops.run(ops.take())  # whatever it queued runs now, while the load is still going
    ops.sim.hang_loads(AMD, False)
    t.join(10)
    assert "error" not in out, out
    assert out["result"].startswith("unloaded tinyllama from tower-amd")

    wait_for(lambda: ops.sim.loaded(AMD) == {}, what="Ollama to drop the model")
    tasks.sync_endpoint(m.Endpoint.objects.get(name=AMD).pk)
    assert list(m.Residency.objects.filter(model__tag="tinyllama").values_list("pk", "state")) == [(rid, "unloaded")]
    ev = m.LoadEvent.objects.get(residency_id=rid)
    assert (ev.kind, ev.trigger) == ("unload", "admin") and "while it was loading" in ev.error
    assert ops.free()["tower/0"] == 15 * 1024


def test_a_load_whose_eviction_hangs_still_ends_within_its_timeout(tx_ops, monkeypatch):
    """Defect 6: the load task bounds its whole wait (evictions included) by the load timeout;
    before, an eviction Ollama could not finish (its model busy) held it for 60 s more."""
    ops = tx_ops
    monkeypatch.setattr(tasks, "LOAD_TIMEOUT_S", 1.0)
    ops.load("deepseek-coder-v2:16b", NVIDIA)
    ops.sim.default_eval_tokens = 10**6  # a generation of minutes: Ollama unloads a model once it is idle
    in_thread(lambda: httpx.post(ops.sim.url(NVIDIA) + "/api/generate", timeout=120,
                                 json={"model": "deepseek-coder-v2:16b", "prompt": "go", "stream": False}))
    rid = ops.reserve("qwen2.5-coder:7b", NVIDIA)  # evicts deepseek, which TowerOps does not know is busy

    t, out = in_thread(tasks.execute_load, rid)
    t.join(1.0 + loads.STALE_GRACE_S + 3)
    assert not t.is_alive(), "the load task outlived its timeout"
    assert out["result"].startswith("failed")
    r = m.Residency.objects.get(pk=rid)
    # Ended by its own task, before the sweep's bound (it waited 60 s more for the eviction before)
    assert r.state == "failed" and (r.ended_at - r.loaded_at).total_seconds() < 1.0 + loads.STALE_GRACE_S
    assert m.LoadEvent.objects.get(residency=r).kind == "fail"


def test_a_selection_load_failed_by_the_sweep_keeps_its_decision(ops, monkeypatch):
    """Defect 8: `fail` events from the stale-load sweep had no decision link."""
    sel = ops.committed(service.select_and_record, SelectionRequest("code_generation", "batch"))
    assert sel.decision.action == "load"
    ops.take()  # lost
    monkeypatch.setattr(tasks, "REQUESTED_TIMEOUT_S", 0.0)
    assert tasks.resolve_stale_loads() == 1
    ev = m.LoadEvent.objects.get(residency_id=sel.residency_id)
    assert (ev.kind, ev.decision_id, ev.error) == ("fail", sel.record.pk, "timed out in state requested")


def test_a_load_that_finishes_while_its_database_connection_is_gone_is_recorded_when_it_is_back(tx_ops):
    """Defect 8: a load that finished while the database was unreachable was lost (then failed by the
    sweep and adopted as `external`). The task's connection is killed mid-load (its own session only)."""
    ops = tx_ops
    ops.sim.hang_loads(NVIDIA)
    rid = ops.reserve("llama3.2:3b", NVIDIA)
    with connection.cursor() as cur:
        cur.execute("SELECT pg_backend_pid()")
        (pid,) = cur.fetchone()

    def kill_the_tasks_connection_then_finish_the_load():
        wait_for(lambda: load_started(ops.sim, NVIDIA), what="the load to reach Ollama")
        with connection.cursor() as cur:
            cur.execute("SELECT pg_terminate_backend(%s)", [pid])
        ops.sim.hang_loads(NVIDIA, False)

    killer, killed = in_thread(kill_the_tasks_connection_then_finish_the_load)
    result = tasks.execute_load(rid)  # this thread's connection is the one killed
    killer.join(10)
    assert "error" not in killed, killed
    assert result.startswith("loaded llama3.2:3b on tower-nvidia")
    r = m.Residency.objects.get(pk=rid)
    assert r.state == "loaded"
    assert m.LoadEvent.objects.get(residency=r).kind == "load"


def test_a_stale_load_found_in_ollama_by_the_sync_is_booked_loaded_not_failed(ops, monkeypatch):
    """The sync is the source of truth: a load whose task stopped reporting but which Ollama has is loaded."""
    rid = ops.reserve("tinyllama", NVIDIA)
    ops.take()
    m.Residency.objects.filter(pk=rid).update(state="loading", loaded_at=m.Residency.objects.get(pk=rid).requested_at)
    with OllamaClient(ops.sim.url(NVIDIA)) as c:  # the load happened; its task died before saying so
        c.load("tinyllama", keep_alive="-1m", num_ctx=4096)
    monkeypatch.setattr(tasks, "LOAD_TIMEOUT_S", 0.0)
    monkeypatch.setattr(loads, "STALE_GRACE_S", 0.0)
    tasks.sync_endpoint(m.Endpoint.objects.get(name=NVIDIA).pk)
    r = m.Residency.objects.get(pk=rid)
    assert r.state == "loaded"
    ev = m.LoadEvent.objects.get(residency=r)
    assert ev.kind == "load" and "state sync" in ev.error
    assert m.Residency.objects.filter(model__tag="tinyllama").count() == 1  # not adopted a second time
