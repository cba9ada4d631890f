"""The runtime tasks (models_registry.runtime.tasks), their bodies called directly, against a simulated
Tower (the fixtures are in conftest.py)."""
from __future__ import annotations

import datetime as dt
import json
import time

import pytest

from models_registry import errors, timeutil
from models_registry import models as m
from models_registry.fakes.ollama_server import SimulatedTower
from models_registry.policy import SelectionRequest
from models_registry.runtime import collectors, loads, preload, reservations, tasks
from models_registry.runtime.collectors import GpuReading
from models_registry.runtime.fleet import fleet_state
from models_registry.runtime.ollama import OllamaClient
from models_registry.selection import advisory, service
from models_registry.selection import world as state
from models_registry.slo import tasks as slo_tasks
from tests.helpers import wait_for

from .conftest import AMD, MIB, NVIDIA

UTC = dt.UTC
WEDNESDAY_10 = dt.datetime(2025, 1, 8, 10, 0, tzinfo=UTC)  # inside "coding hours" (Mon-Fri 09-17 UTC)
WEDNESDAY_17_30 = dt.datetime(2025, 1, 8, 17, 30, tzinfo=UTC)  # after it, before "evening"


@pytest.fixture
def clock(monkeypatch):
    """Moves TowerOps' clock (timeutil.utcnow as the tasks and services read it) to a chosen time; it keeps running."""
    real = timeutil.utcnow

    class Clock:
        offset = dt.timedelta(0)

        def set(self, when: dt.datetime) -> None:
            self.offset = when - real()

    c = Clock()

    def shifted():
        return real() + c.offset

    monkeypatch.setattr(tasks, "utcnow", shifted)
    monkeypatch.setattr(reservations, "utcnow", shifted)
    monkeypatch.setattr(service, "utcnow", shifted)
    monkeypatch.setattr(timeutil, "utcnow", shifted)  # what the tests themselves read
    return c


def booked(now: dt.datetime, seconds: float) -> list:
    """A residency's advisory bookings for one request that keeps it busy `seconds` from `now`."""
    return json.loads(advisory.entry(0, now, seconds, seconds))


def put_resident(tag: str, endpoint: str, *, now: dt.datetime, busy_s: float = 0.0) -> m.Residency:
    """A loaded Residency in the bookkeeping only (the simulator does not know it)."""
    model = m.LlmModel.objects.get(tag=tag)
    ep = m.Endpoint.objects.get(name=endpoint)
    r = m.Residency.objects.create(
        model=model, endpoint=ep, state="loaded", trigger="external", vram_mib=model.vram_mib,
        requested_at=now, loaded_at=now, ready_at=now, last_used_at=now,
        busy_until=now + dt.timedelta(seconds=busy_s) if busy_s else None,
        advisory=booked(now, busy_s) if busy_s else [],
    )
    m.ResidencyGpu.objects.create(residency=r, gpu=ep.gpus.get(), vram_mib=model.vram_mib)
    return r


def allocated_mib() -> dict[str, int]:
    out: dict[str, int] = {}
    for p in m.ResidencyGpu.objects.filter(residency__state__in=m.Residency.ACTIVE_STATES).select_related("gpu__host"):
        out[p.gpu.key] = out.get(p.gpu.key, 0) + p.vram_mib
    return out


def assert_never_overcommitted(sim: SimulatedTower) -> None:
    used = allocated_mib()
    for gpu in m.Gpu.objects.select_related("host"):
        assert used.get(gpu.key, 0) <= gpu.usable_mib, (gpu.key, used)
    assert sim.gpu_free_bytes("tower", 0) >= 0 and sim.gpu_free_bytes("tower", 1) >= 0


# --------------------------------------------------------------------------- loads and unloads


def test_execute_load_moves_requested_to_loaded_records_the_event_and_learns_the_time(ops):
    rid = ops.reserve("llama3.2:3b", NVIDIA)
    assert m.Residency.objects.get(pk=rid).state == "requested"
    assert ops.sim.loaded(NVIDIA) == {}

    assert tasks.execute_load(rid).startswith("loaded llama3.2:3b on tower-nvidia")
    r = m.Residency.objects.get(pk=rid)
    assert r.state == "loaded" and r.loaded_at <= r.ready_at
    # the expiry comes from /api/ps: the Tower's endpoints keep models warm (keep_alive -1m),
    # which Ollama reports as ~292 years ahead
    assert r.expires_at is not None and (r.expires_at - timeutil.utcnow()) > dt.timedelta(days=365 * 100)
    assert ops.sim.loaded(NVIDIA) == {"llama3.2:3b": "loaded"}
    (first,) = m.LoadEvent.objects.filter(residency=r)
    assert (first.kind, first.trigger, first.gpu_keys, first.vram_mib) == ("load", "admin", ["tower/1"], 2560)
    assert first.started_at <= first.finished_at and first.error == ""
    # 1.8 s + 2.0 GB / 0.4 GB/s = 6.8 s of simulated time: about 68 ms here
    assert 0.05 < first.duration_s < 3
    est = m.LoadTimeEstimate.objects.get(model__tag="llama3.2:3b", endpoint__name=NVIDIA)
    assert est.samples == 1 and est.seconds == pytest.approx(first.duration_s)

    # A second load (after an unload) moves the estimate by the EWMA.
    assert ops.unload("llama3.2:3b", NVIDIA).state == "unloaded"
    r2 = ops.load("llama3.2:3b", NVIDIA)
    (second,) = m.LoadEvent.objects.filter(residency=r2, kind="load")
    est.refresh_from_db()
    assert est.samples == 2
    assert est.seconds == pytest.approx(loads.EWMA_ALPHA * second.duration_s + (1 - loads.EWMA_ALPHA) * first.duration_s)
    assert m.LoadTimeEstimate.objects.count() == 1

    # The policy reads the learned value, per endpoint.
    state.invalidate_config()
    world, _, _ = state.read_world(timeutil.utcnow())
    llama = next(x for x in world.models if x.tag == "llama3.2:3b")
    assert llama.load_s_on(NVIDIA) == pytest.approx(est.seconds)
    assert llama.load_s_on(AMD) == pytest.approx(6.8)  # the seed, where nothing was learned


def test_execute_load_twice_is_idempotent(ops):
    rid = ops.reserve("tinyllama", AMD)
    assert tasks.execute_load(rid).startswith("loaded")
    assert tasks.execute_load(rid) == "nothing to do (loaded)"
    assert tasks.execute_load(10**9) == "nothing to do (gone)"
    assert m.LoadEvent.objects.filter(residency_id=rid).count() == 1
    assert m.LoadTimeEstimate.objects.get().samples == 1
    assert [e.kind for e in ops.sim.events if e.kind == "load_start"] == ["load_start"]


def test_a_selection_is_loaded_by_its_task_and_then_used_loaded(ops):
    req = SelectionRequest("code_generation", "batch")
    first = ops.committed(service.select_and_record, req)
    assert first.decision.action == "load" and first.residency_id is not None
    assert ops.take() == [("load", (first.residency_id,), "host.tower")]

    tasks.execute_load(first.residency_id)
    r = m.Residency.objects.get(pk=first.residency_id)
    assert r.state == "loaded" and r.trigger == "selection"
    ev = m.LoadEvent.objects.get(residency=r)
    assert ev.decision_id == first.record.pk and ev.trigger == "selection"

    second = ops.committed(service.select_and_record, req)
    d = second.decision
    assert (d.action, d.model, d.endpoint) == ("use_loaded", first.decision.model, first.decision.endpoint)
    assert second.record.residency_id == r.pk
    assert ops.take() == []


def test_a_hung_load_times_out_as_failed_and_its_vram_is_released(ops, monkeypatch):
    monkeypatch.setattr(tasks, "LOAD_TIMEOUT_S", 0.5)  # the client's read timeout for a load
    ops.sim.hang_loads(NVIDIA)
    free_before = ops.free()["tower/1"]

    rid = ops.reserve("deepseek-coder-v2:16b", NVIDIA)
    assert ops.free()["tower/1"] == free_before - MIB["deepseek-coder-v2:16b"]
    with pytest.raises(errors.NoRoom):  # while reserved, its VRAM is taken
        ops.reserve("qwen2.5-coder:7b", NVIDIA)

    started = time.monotonic()
    out = tasks.execute_load(rid)
    assert out.startswith("failed") and 0.4 < time.monotonic() - started < 10
    r = m.Residency.objects.get(pk=rid)
    assert r.state == "failed" and r.ended_at is not None and "timeout" in r.error
    (ev,) = m.LoadEvent.objects.filter(residency=r)
    assert (ev.kind, ev.trigger, ev.gpu_keys) == ("fail", "admin", ["tower/1"])
    assert "timeout" in ev.error and 0 < ev.duration_s < 10
    # The timeout bounds the whole task from its start (the load gets what the evictions left of it).
    assert (r.ended_at - r.loaded_at).total_seconds() >= 0.5
    assert not m.LoadTimeEstimate.objects.exists()  # a failure teaches no load time

    assert ops.free()["tower/1"] == free_before
    wait_for(lambda: ops.sim.loaded(NVIDIA) == {}, what="the simulator to drop the abandoned load")
    # The next placement may use that VRAM again.
    ops.sim.hang_loads(NVIDIA, False)
    assert ops.load("qwen2.5-coder:7b", NVIDIA).state == "loaded"


def test_execute_unload_is_confirmed_through_ps(ops):
    ops.load("mistral:7b", AMD)
    ops.sim.unload_s = 50.0  # simulated runner teardown: 0.5 s here, so the wait shows
    result = ops.committed(reservations.request_unload, "mistral:7b", trigger="admin", endpoint=AMD)
    assert m.Residency.objects.get(pk=result["residency_id"]).state == "unloading"
    calls = ops.take()
    assert calls == [("unload", (result["residency_id"], "admin"), "host.tower")]

    started = time.monotonic()
    assert ops.run(calls) == ["unloaded mistral:7b from tower-amd"]
    assert time.monotonic() - started >= 0.4  # Ollama answered at once; /api/ps said when it was gone
    assert ops.sim.loaded(AMD) == {}
    with OllamaClient(ops.sim.url(AMD)) as c:
        assert c.ps() == []
    r = m.Residency.objects.get(pk=result["residency_id"])
    assert r.state == "unloaded" and r.ended_at is not None
    ev = m.LoadEvent.objects.get(residency=r, kind="unload")
    assert ev.trigger == "admin" and ev.duration_s >= 0.4 and ev.gpu_keys == ["tower/0"]
    assert ops.free()["tower/0"] == 15 * 1024
    assert tasks.execute_unload(r.pk, "admin") == "nothing to do (unloaded)"
    assert m.LoadEvent.objects.filter(residency=r, kind="unload").count() == 1


# --------------------------------------------------------------------------- state sync


def test_sync_adopts_a_model_loaded_behind_towerops_back(ops):
    with OllamaClient(ops.sim.url(AMD)) as c:
        c.load("mistral:7b", keep_alive="30m", num_ctx=4096)
    amd = m.Endpoint.objects.get(name=AMD)

    assert tasks.sync_endpoint(amd.pk) == "tower-amd up: 1 running"
    r = m.Residency.objects.get(endpoint=amd, model__tag="mistral:7b")
    assert (r.state, r.trigger, r.vram_mib) == ("loaded", "external", MIB["mistral:7b"])
    assert r.expires_at is not None and r.expires_at > timeutil.utcnow()
    assert [(p.gpu.key, p.vram_mib) for p in r.placements.select_related("gpu__host")] == [("tower/0", 5222)]
    ev = m.LoadEvent.objects.get(residency=r)
    assert (ev.kind, ev.trigger, ev.gpu_keys) == ("load", "external", ["tower/0"])
    amd.refresh_from_db()
    assert amd.is_up and amd.version == "0.30.0" and amd.last_checked_at is not None and amd.last_error == ""
    assert amd.host.last_seen_at is not None
    assert ops.free()["tower/0"] == 15 * 1024 - 5222  # the policy counts it

    tasks.sync_endpoint(amd.pk)  # a second sync changes nothing
    assert m.Residency.objects.filter(model__tag="mistral:7b").count() == 1
    assert m.LoadEvent.objects.count() == 1


def test_sync_pins_a_keep_warm_model_again_after_a_client_sent_its_own_keep_alive(ops):
    """The Tower's endpoints keep warm (-1m). A LangChain-style client sends keep_alive "5m" with
    its request (here "30m", 18 s at this speed), and Ollama would drop the model then; the next sync pins it again."""
    r = ops.load("tinyllama", NVIDIA)
    nvidia = m.Endpoint.objects.get(name=NVIDIA)
    with OllamaClient(ops.sim.url(NVIDIA)) as c:
        assert all(x.keeps_forever() for x in c.ps())
        c.generate("tinyllama", "hello", keep_alive="30m", num_ctx=4096)
        assert not any(x.keeps_forever() for x in c.ps())  # Ollama now expires it in 30 minutes (18 s here)

        assert tasks.sync_endpoint(nvidia.pk) == "tower-nvidia up: 1 running, 1 pinned again"
        assert [x.keeps_forever() for x in c.ps()] == [True]
    assert tasks.sync_endpoint(nvidia.pk) == "tower-nvidia up: 1 running"  # nothing to pin now
    r.refresh_from_db()
    assert r.state == "loaded" and m.LoadEvent.objects.filter(residency=r).count() == 1  # no reload, no event
    assert [e.kind for e in ops.sim.events if e.endpoint == NVIDIA].count("load_start") == 1

    # An endpoint with a finite keep_alive is left to it: the client's timer stands.
    m.Endpoint.objects.filter(name=AMD).update(keep_alive="30m")
    ops.load("llama3.2:3b", AMD)
    with OllamaClient(ops.sim.url(AMD)) as c:
        c.generate("llama3.2:3b", "hello", keep_alive="30m", num_ctx=4096)
        assert tasks.sync_endpoint(m.Endpoint.objects.get(name=AMD).pk) == "tower-amd up: 1 running"
        assert not any(x.keeps_forever() for x in c.ps())


def test_sync_leaves_a_reserved_load_to_its_task(ops):
    rid = ops.reserve("tinyllama", AMD)  # requested; its task has not run yet
    with OllamaClient(ops.sim.url(AMD)) as c:  # someone loads it in the meantime
        c.load("tinyllama", keep_alive="30m", num_ctx=4096)
    amd = m.Endpoint.objects.get(name=AMD)

    assert tasks.sync_endpoint(amd.pk) == "tower-amd up: 1 running"
    active = m.Residency.objects.filter(model__tag="tinyllama", state__in=m.Residency.ACTIVE_STATES)
    assert list(active.values_list("pk", "state")) == [(rid, "requested")]
    assert tasks.execute_load(rid).startswith("loaded")
    assert list(active.values_list("pk", "state")) == [(rid, "loaded")]


def test_sync_records_models_ollama_dropped_on_expiry_or_by_someone_else(ops):
    m.Endpoint.objects.filter(name=NVIDIA).update(keep_alive="120s")  # 1.2 s here
    r = ops.load("tinyllama", NVIDIA)
    assert r.expires_at is not None
    nvidia = m.Endpoint.objects.get(name=NVIDIA)
    wait_for(lambda: ops.sim.loaded(NVIDIA) == {}, timeout=10, what="the keep-alive to expire")

    assert tasks.sync_endpoint(nvidia.pk) == "tower-nvidia up: 0 running"
    r.refresh_from_db()
    assert r.state == "unloaded" and r.ended_at is not None
    ev = m.LoadEvent.objects.get(residency=r, kind="unload")
    assert ev.trigger == "expiry" and ev.gpu_keys == ["tower/1"]

    # Unloaded by someone else well before its keep-alive: external.
    r2 = ops.load("llama3.2:3b", AMD)
    with OllamaClient(ops.sim.url(AMD)) as c:
        c.unload("llama3.2:3b")
        assert c.wait_unloaded("llama3.2:3b", timeout=5)
    tasks.sync_endpoint(m.Endpoint.objects.get(name=AMD).pk)
    r2.refresh_from_db()
    assert r2.state == "unloaded"
    assert m.LoadEvent.objects.get(residency=r2, kind="unload").trigger == "external"
    assert ops.free() == {"tower/0": 15 * 1024, "tower/1": 12 * 1024 - 963}


def test_an_endpoint_goes_down_and_comes_back(ops):
    ops.load("llama3.2:3b", NVIDIA)
    nvidia = m.Endpoint.objects.get(name=NVIDIA)
    req = SelectionRequest("general", "critical")  # critical: a loaded model that is good enough

    def pick():
        state.invalidate_config()
        return service.select_and_record(req, dry_run=True).decision

    d = pick()
    assert (d.action, d.model, d.endpoint) == ("use_loaded", "llama3.2:3b", NVIDIA)

    ops.sim.stop_endpoint(NVIDIA, unload=False)  # a network outage: the runners stay
    assert tasks.sync_endpoint(nvidia.pk).startswith("tower-nvidia down")
    nvidia.refresh_from_db()
    assert not nvidia.is_up and nvidia.last_error
    d = pick()
    assert d.endpoint != NVIDIA and d.action != "use_loaded"
    assert all(c.endpoint != NVIDIA for c in d.candidates)
    assert any("down" in (c.rejected_because or "") for c in d.candidates)
    assert m.Residency.objects.get(model__tag="llama3.2:3b").state == "loaded"  # not forgotten

    ops.sim.start_endpoint(NVIDIA)
    assert tasks.sync_endpoint(nvidia.pk) == "tower-nvidia up: 1 running"
    nvidia.refresh_from_db()
    assert nvidia.is_up and nvidia.last_error == ""
    d = pick()
    assert (d.action, d.model, d.endpoint) == ("use_loaded", "llama3.2:3b", NVIDIA)

    # `ollama serve` restarted: its models are gone, and the sync says so.
    ops.sim.stop_endpoint(NVIDIA)
    assert tasks.sync_endpoint(nvidia.pk).startswith("tower-nvidia down")
    ops.sim.start_endpoint(NVIDIA)
    assert tasks.sync_endpoint(nvidia.pk) == "tower-nvidia up: 0 running"
    r = m.Residency.objects.get(model__tag="llama3.2:3b")
    assert r.state == "unloaded"
    assert m.LoadEvent.objects.get(residency=r, kind="unload").trigger == "external"


def test_sync_all_endpoints_fans_out_on_each_hosts_queue(ops, monkeypatch):
    sent = []
    monkeypatch.setattr(tasks.sync_endpoint, "apply_async", lambda args=None, queue=None, **kw: sent.append((args, queue)))
    assert tasks.sync_all_endpoints() == 2
    ids = dict(m.Endpoint.objects.values_list("name", "pk"))
    assert sorted(sent) == sorted([([ids[AMD]], "host.tower"), ([ids[NVIDIA]], "host.tower")])


# --------------------------------------------------------------------------- stale loads


def test_resolve_stale_loads_fails_what_is_stuck_and_releases_its_vram(ops, monkeypatch):
    monkeypatch.setattr(tasks, "LOAD_TIMEOUT_S", 30.0)
    monkeypatch.setattr(tasks, "REQUESTED_TIMEOUT_S", 20.0)
    now = timeutil.utcnow()
    stuck = ops.reserve("qwen2.5-coder:7b", AMD)
    # Past the load timeout and the grace the sweep gives a task that is about to report.
    m.Residency.objects.filter(pk=stuck).update(state="loading", loaded_at=now - dt.timedelta(seconds=31 + loads.STALE_GRACE_S))
    fresh = ops.reserve("tinyllama", AMD)
    m.Residency.objects.filter(pk=fresh).update(state="loading", loaded_at=now - dt.timedelta(seconds=5))
    never_started = ops.reserve("llama3.2:3b", NVIDIA)
    m.Residency.objects.filter(pk=never_started).update(requested_at=now - dt.timedelta(seconds=22),
                                                        dispatched_at=now - dt.timedelta(seconds=21))
    queued_now = ops.reserve("mistral:7b", NVIDIA)
    free_before = ops.free()

    assert tasks.resolve_stale_loads() == 2
    states = dict(m.Residency.objects.values_list("pk", "state"))
    assert states == {stuck: "failed", fresh: "loading", never_started: "failed", queued_now: "requested"}
    for rid, was in ((stuck, "loading"), (never_started, "requested")):
        r = m.Residency.objects.get(pk=rid)
        assert r.error == f"timed out in state {was}" and r.ended_at is not None
        ev = m.LoadEvent.objects.get(residency=r)
        assert (ev.kind, ev.trigger, ev.error) == ("fail", "admin", f"timed out in state {was}")
    assert ops.free() == {"tower/0": free_before["tower/0"] + MIB["qwen2.5-coder:7b"],
                          "tower/1": free_before["tower/1"] + MIB["llama3.2:3b"]}
    assert tasks.resolve_stale_loads() == 0
    # A task that finally runs for a resolved residency does nothing.
    assert tasks.execute_load(never_started) == "nothing to do (failed)"


# --------------------------------------------------------------------------- GPU telemetry


def reading(index, uuid, vendor, total, used, **kw):
    values = {"util_pct": None, "temperature_c": None, "power_w": None, **kw}
    return GpuReading(index=index, uuid=uuid, vendor=vendor, name=f"{vendor} {index}", total_mib=total,
                      used_mib=used, free_mib=total - used, **values)


def test_record_gpu_snapshots_maps_readings_to_the_hosts_gpus(fleet, monkeypatch):
    readings = [
        # NVML counts NVIDIA GPUs only: its GPU 0 is the Tower's GPU 1 (the profile counts all GPUs).
        reading(0, "GPU-8f2c5d1e", "nvidia", 12288, 2600, util_pct=3.0, temperature_c=41.0, power_w=17.5),
        reading(0, "", "amd", 16304, 900, util_pct=0.0, temperature_c=38.0),
        reading(1, "GPU-elsewhere", "nvidia", 8192, 0),  # not in the profile: ignored
    ]
    monkeypatch.setattr(collectors, "read_all", lambda *a, **k: list(readings))
    host = m.Host.objects.get(name="tower")

    assert tasks.record_gpu_snapshots(host.pk) == 2
    snaps = {s.gpu.key: s for s in m.GpuSnapshot.objects.select_related("gpu__host")}
    assert set(snaps) == {"tower/0", "tower/1"}
    nv, amd = snaps["tower/1"], snaps["tower/0"]
    assert (nv.total_mib, nv.used_mib, nv.free_mib, nv.util_pct, nv.temperature_c, nv.power_w) == (
        12288, 2600, 9688, 3.0, 41.0, 17.5)
    assert (amd.total_mib, amd.used_mib, amd.free_mib, amd.temperature_c, amd.power_w) == (16304, 900, 15404, 38.0, None)
    host.refresh_from_db()
    assert host.last_seen_at is not None
    # The fresh measurement is what the state (and so the policy) sees.
    measured = {g["key"]: g["measured_free_mib"] for g in fleet_state()["gpus"]}
    assert measured == {"tower/0": 15404, "tower/1": 9688}

    # A uuid in the profile wins over the index.
    m.Gpu.objects.filter(host=host, index=1).update(uuid="GPU-8f2c5d1e")
    readings[:] = [reading(3, "GPU-8f2c5d1e", "nvidia", 12288, 4000)]
    assert tasks.record_gpu_snapshots(host.pk) == 1
    assert m.GpuSnapshot.objects.filter(gpu__index=1, used_mib=4000).count() == 1
    # ... and a card with another uuid is not taken for it by its index.
    readings[:] = [reading(0, "GPU-elsewhere", "nvidia", 8192, 0)]
    assert tasks.record_gpu_snapshots(host.pk) == 0

    # A host without GPUs (or drivers) reports none and does not fail.
    readings[:] = []
    assert tasks.record_gpu_snapshots(host.pk) == 0
    assert m.GpuSnapshot.objects.count() == 3


def test_prune_snapshots_thins_old_rows_only(fleet):
    now = timeutil.utcnow()
    old_hour = (now - dt.timedelta(days=3)).replace(minute=0, second=0, microsecond=0)
    recent = now - dt.timedelta(hours=1)
    gpus = list(m.Gpu.objects.all())
    rows = []
    for g in gpus:
        for i in range(15):  # three 5-minute buckets, one row a minute
            rows.append(m.GpuSnapshot(gpu=g, taken_at=old_hour + dt.timedelta(minutes=i), total_mib=1000,
                                      used_mib=i, free_mib=1000 - i))
        for i in range(10):  # within the raw retention: kept as they are
            rows.append(m.GpuSnapshot(gpu=g, taken_at=recent + dt.timedelta(minutes=i), total_mib=1000,
                                      used_mib=i, free_mib=1000 - i))
    m.GpuSnapshot.objects.bulk_create(rows)

    assert slo_tasks.prune_snapshots() == 2 * 12
    for g in gpus:
        left = m.GpuSnapshot.objects.filter(gpu=g).order_by("taken_at")
        old = [s.taken_at for s in left if s.taken_at < now - dt.timedelta(days=2)]
        assert old == [old_hour + dt.timedelta(minutes=i) for i in (0, 5, 10)]  # the first of each bucket
        assert left.filter(taken_at__gte=recent).count() == 10
    assert slo_tasks.prune_snapshots() == 0


# --------------------------------------------------------------------------- preload windows


def test_a_preload_window_warms_its_models_and_cools_them_once_idle(ops, clock):
    # Cooling is for endpoints with a finite keep_alive (the Tower's keep warm: next test).
    m.Endpoint.objects.update(keep_alive="30m")
    clock.set(WEDNESDAY_10)
    wanted = ["deepseek-coder-v2:16b", "qwen2.5-coder:7b"]
    assert preload.desired_warm_set(timeutil.utcnow()) == wanted

    out = ops.committed(tasks.apply_preload_windows)
    assert out["wanted"] == wanted and sorted(out["loading"]) == wanted
    assert out["skipped"] == [] and out["cooling"] == []
    calls = ops.take()
    assert [(task, queue) for task, _, queue in calls] == [("load", "host.tower")] * 2
    ops.run(calls)
    warm = {r.model.tag: r for r in m.Residency.objects.filter(state="loaded").select_related("model", "endpoint")}
    assert sorted(warm) == wanted and all(r.trigger == "preload" for r in warm.values())
    for tag, r in warm.items():
        assert ops.sim.loaded(r.endpoint.name).get(tag) == "loaded"
    assert sorted(m.LoadEvent.objects.filter(kind="load", trigger="preload").values_list("model__tag", flat=True)) == wanted
    assert_never_overcommitted(ops.sim)

    # Still inside the window: nothing to do.
    out = ops.committed(tasks.apply_preload_windows)
    assert out["loading"] == [] and out["cooling"] == [] and ops.take() == []

    # The window has ended; qwen is still serving a request, deepseek is idle.
    clock.set(WEDNESDAY_17_30)
    qwen = warm["qwen2.5-coder:7b"]
    m.Residency.objects.filter(pk=qwen.pk).update(busy_until=timeutil.utcnow() + dt.timedelta(seconds=60),
                                                 advisory=booked(timeutil.utcnow(), 60))
    out = ops.committed(tasks.apply_preload_windows)
    assert out["wanted"] == [] and out["cooling"] == ["deepseek-coder-v2:16b"]
    calls = ops.take()
    assert calls == [("unload", (warm["deepseek-coder-v2:16b"].pk, "preload"), "host.tower")]
    ops.run(calls)
    deepseek = m.Residency.objects.get(pk=warm["deepseek-coder-v2:16b"].pk)
    assert deepseek.state == "unloaded"
    assert m.LoadEvent.objects.get(residency=deepseek, kind="unload").trigger == "preload"
    assert "deepseek-coder-v2:16b" not in ops.sim.loaded(deepseek.endpoint.name)
    assert m.Residency.objects.get(pk=qwen.pk).state == "loaded"

    # Done serving but used a minute ago: still kept; idle for long enough: cooled.
    m.Residency.objects.filter(pk=qwen.pk).update(busy_until=None, advisory=[], last_used_at=timeutil.utcnow() - dt.timedelta(minutes=1))
    assert ops.committed(tasks.apply_preload_windows)["cooling"] == []
    m.Residency.objects.filter(pk=qwen.pk).update(last_used_at=timeutil.utcnow() - dt.timedelta(minutes=10))
    assert ops.committed(tasks.apply_preload_windows)["cooling"] == ["qwen2.5-coder:7b"]
    ops.run(ops.take())
    assert m.Residency.objects.get(pk=qwen.pk).state == "unloaded"
    assert ops.sim.loaded(AMD) == {} and ops.sim.loaded(NVIDIA) == {}


def test_on_keep_warm_endpoints_an_ended_windows_models_stay_until_a_load_needs_their_room(ops, clock):
    assert set(m.Endpoint.objects.values_list("keep_alive", flat=True)) == {"-1m"}  # the Tower's
    clock.set(WEDNESDAY_10)
    ops.committed(tasks.apply_preload_windows)
    ops.run(ops.take())
    # best fit: deepseek (8704 MiB) on the NVIDIA GPU (11325 usable), qwen (4608) on the AMD one
    warm = {r.model.tag: r for r in m.Residency.objects.filter(state="loaded").select_related("model", "endpoint")}
    assert {t: r.endpoint.name for t, r in warm.items()} == {"deepseek-coder-v2:16b": NVIDIA,
                                                             "qwen2.5-coder:7b": AMD}

    # The window has ended and both are idle for long: kept, nothing queued, still in Ollama.
    clock.set(WEDNESDAY_17_30)
    m.Residency.objects.update(last_used_at=timeutil.utcnow() - dt.timedelta(minutes=30))
    out = ops.committed(tasks.apply_preload_windows)
    assert out["wanted"] == [] and out["cooling"] == []
    assert sorted(out["kept_warm"]) == ["deepseek-coder-v2:16b", "qwen2.5-coder:7b"]
    assert ops.take() == []
    assert ops.sim.loaded(NVIDIA) == {"deepseek-coder-v2:16b": "loaded"}
    assert ops.sim.loaded(AMD) == {"qwen2.5-coder:7b": "loaded"}

    # A load that needs the NVIDIA GPU's room (mistral, 5222 MiB; 2621 free) evicts deepseek then.
    result = ops.committed(reservations.request_load, "mistral:7b", trigger="admin", endpoint=NVIDIA)
    assert result["detail"] == "loading on tower-nvidia after evicting deepseek-coder-v2:16b"
    ops.run(ops.take())
    assert ops.sim.loaded(NVIDIA) == {"mistral:7b": "loaded"}
    assert m.Residency.objects.get(pk=warm["deepseek-coder-v2:16b"].pk).state == "unloaded"
    assert m.Residency.objects.get(pk=warm["qwen2.5-coder:7b"].pk).state == "loaded"
    assert_never_overcommitted(ops.sim)


def test_a_preload_window_never_overcommits_nor_evicts_a_busy_model(ops, clock):
    clock.set(WEDNESDAY_10)
    now = timeutil.utcnow()
    # Busy models leave 6554 MiB on the AMD GPU and 7741 MiB on the NVIDIA one:
    # qwen2.5-coder:7b (4608) fits, deepseek-coder-v2:16b (8704) fits nowhere without evicting them.
    busy = [put_resident(tag, ep, now=now, busy_s=600) for tag, ep in (
        ("mistral:7b", AMD), ("tinyllama", AMD), ("llama3.2:3b", AMD), ("llama3.2:3b", NVIDIA), ("tinyllama", NVIDIA))]

    out = ops.committed(tasks.apply_preload_windows)
    assert out["loading"] == ["qwen2.5-coder:7b"]
    assert len(out["skipped"]) == 1 and out["skipped"][0].startswith("deepseek-coder-v2:16b: ")
    calls = ops.take()
    assert [task for task, _, _ in calls] == ["load"]
    assert all(r.state == "loaded" for r in m.Residency.objects.filter(pk__in=[b.pk for b in busy]))
    assert_never_overcommitted(ops.sim)
    ops.run(calls)
    assert m.Residency.objects.get(model__tag="qwen2.5-coder:7b").state == "loaded"
    assert_never_overcommitted(ops.sim)


def test_a_load_evicts_what_its_reservation_marked_first(ops):
    ops.load("deepseek-coder-v2:16b", NVIDIA)  # 8704 of 11325 MiB, idle
    result = ops.committed(reservations.request_load, "qwen2.5-coder:7b", trigger="admin", endpoint=NVIDIA)
    assert result["detail"] == "loading on tower-nvidia after evicting deepseek-coder-v2:16b"
    victim = m.Residency.objects.get(model__tag="deepseek-coder-v2:16b")
    assert victim.state == "unloading"
    ops.run(ops.take())
    victim.refresh_from_db()
    assert victim.state == "unloaded"
    assert m.LoadEvent.objects.get(residency=victim, kind="evict").trigger == "admin"
    assert m.Residency.objects.get(pk=result["residency_id"]).state == "loaded"
    assert ops.sim.loaded(NVIDIA) == {"qwen2.5-coder:7b": "loaded"}


def test_a_load_whose_eviction_cannot_reach_the_endpoint_fails_at_once(ops):
    ops.load("deepseek-coder-v2:16b", NVIDIA)
    result = ops.committed(reservations.request_load, "qwen2.5-coder:7b", trigger="admin", endpoint=NVIDIA)
    ops.sim.stop_endpoint(NVIDIA)
    assert ops.run(ops.take())[0].startswith("failed")
    r = m.Residency.objects.get(pk=result["residency_id"])
    assert r.state == "failed"  # not left `loading` until resolve_stale_loads
    assert m.LoadEvent.objects.get(residency=r).kind == "fail"


def test_a_load_that_finishes_early_moves_the_queue_behind_it_earlier(ops):
    """busy_until was estimated from the predicted ready_at; the real finish shifts it."""
    rid = ops.reserve("llama3.2:3b", NVIDIA)
    r = m.Residency.objects.get(pk=rid)
    predicted_ready = r.requested_at + dt.timedelta(seconds=60)  # far later than the simulator takes
    m.Residency.objects.filter(pk=rid).update(ready_at=predicted_ready, busy_until=predicted_ready + dt.timedelta(seconds=5))
    assert tasks.execute_load(rid).startswith("loaded llama3.2:3b")
    r.refresh_from_db()
    assert r.busy_until - r.ready_at == dt.timedelta(seconds=5)  # the same 5 s of queue, after the real finish
    assert r.ready_at < predicted_ready


def test_an_unload_ollama_has_not_finished_is_retried_not_booked_as_free(ops, monkeypatch):
    ops.load("mistral:7b", AMD)
    result = ops.committed(reservations.request_unload, "mistral:7b", trigger="admin", endpoint=AMD)
    ops.take()
    monkeypatch.setattr(OllamaClient, "wait_unloaded", lambda self, model, timeout=30.0, poll=0.25: False)
    retried = []

    def fake_retry(*args, **kwargs):
        retried.append(kwargs)
        return RuntimeError("retry")

    monkeypatch.setattr(tasks.execute_unload, "retry", fake_retry)
    with pytest.raises(RuntimeError, match="retry"):
        tasks.execute_unload(result["residency_id"], "admin")
    assert retried and m.Residency.objects.get(pk=result["residency_id"]).state == "unloading"


def test_sync_confirms_an_unload_whose_task_never_finished(ops):
    r = ops.load("mistral:7b", AMD)
    m.Residency.objects.filter(pk=r.pk).update(state="unloading")  # its unload task died
    with OllamaClient(ops.sim.url(AMD)) as c:
        c.unload("mistral:7b")
        assert c.wait_unloaded("mistral:7b", timeout=5)
    assert tasks.sync_endpoint(m.Endpoint.objects.get(name=AMD).pk).startswith(f"{AMD} up")
    r.refresh_from_db()
    assert r.state == "unloaded"
    ev = m.LoadEvent.objects.get(residency=r, kind="unload")
    assert ev.trigger == "external" and "state sync" in ev.error
    assert ops.free()["tower/0"] == 15 * 1024


def test_a_load_the_broker_never_took_waits_for_the_outbox_relay_then_fails_after_its_own_bound(ops, monkeypatch, settings):
    """Defect 3: a load whose task could not be sent (broker down) is not failed by the requested
    bound (its task never reached a queue); the relay sends it when the broker is back, and only
    TOWEROPS_OUTBOX_MAX_AGE_S ends it."""
    monkeypatch.setattr(tasks, "REQUESTED_TIMEOUT_S", 20.0)
    settings.TOWEROPS_OUTBOX_MAX_AGE_S = 300.0
    now = timeutil.utcnow()
    held = ops.reserve("llama3.2:3b", NVIDIA)
    m.Residency.objects.filter(pk=held).update(requested_at=now - dt.timedelta(seconds=60), dispatched_at=None)
    given_up = ops.reserve("mistral:7b", NVIDIA)
    m.Residency.objects.filter(pk=given_up).update(requested_at=now - dt.timedelta(seconds=301), dispatched_at=None)

    assert tasks.resolve_stale_loads() == 1  # (the send failed: dispatched_at stayed NULL)
    assert m.Residency.objects.get(pk=held).state == "requested"
    r = m.Residency.objects.get(pk=given_up)
    assert (r.state, r.error) == ("failed", "the broker was unreachable: its load task was never sent")

    sent = []
    monkeypatch.setattr(tasks.execute_load, "apply_async", lambda args=None, queue=None, **kw: sent.append((args, queue)))
    assert tasks.relay_outbox() == 1
    assert sent == [([held], "host.tower")]
    assert m.Residency.objects.get(pk=held).dispatched_at is not None
    assert tasks.relay_outbox() == 0  # sent once


# --------------------------------------------------------------------------- moving up


def test_an_idle_tower_moves_up_to_the_best_model_for_its_busy_task_types(ops, clock):
    """Chat requests were served by tinyllama (chat 0.66) because nothing better was loaded; with the
    tower idle and room free, the beat loads the best chat model (llama3.2:3b, 0.84) in the
    background (trigger upgrade), evicting nothing, once; then the tower is at its best."""
    clock.set(WEDNESDAY_17_30)  # no window open
    tiny = ops.load("tinyllama", NVIDIA)
    now = timeutil.utcnow()
    m.Residency.objects.filter(pk=tiny.pk).update(last_used_at=now - dt.timedelta(minutes=1))
    chat = m.TaskType.objects.get(name="chat")
    for i in range(3):
        m.SelectionDecision.objects.create(created_at=now - dt.timedelta(minutes=i + 1), task_type=chat,
                                           urgency="interactive", action="use_loaded", model=tiny.model,
                                           residency=tiny, reason="t", policy_version="t")
    out = ops.committed(tasks.apply_preload_windows)
    assert out["upgrade"] == "llama3.2:3b" and out["loading"] == []
    ops.run(ops.take())
    up = m.Residency.objects.get(model__tag="llama3.2:3b")
    assert (up.state, up.trigger) == ("loaded", "upgrade")
    assert m.Residency.objects.get(pk=tiny.pk).state == "loaded"  # nothing evicted
    # Then, tick by tick, more chat queues in the VRAM still free (best first), evicting nothing,
    # until none fits: each model loaded once.
    more = []
    while (name := ops.committed(tasks.apply_preload_windows)["upgrade"]) is not None:
        more.append(name)
        ops.run(ops.take())
        assert len(more) < 6
    assert more[0] == "mistral:7b" and len(more) == len(set(more))
    assert not m.LoadEvent.objects.filter(kind="evict").exists()
    assert_never_overcommitted(ops.sim)
    assert ops.take() == []

    # While a request is on its way (a queue booked), the tower is not idle: no upgrade either.
    m.Residency.objects.filter(pk=up.pk).delete()
    m.Residency.objects.filter(pk=tiny.pk).update(busy_until=now + dt.timedelta(seconds=60),
                                                 advisory=booked(now, 60))
    assert ops.committed(tasks.apply_preload_windows)["upgrade"] is None


def test_moving_up_leaves_a_model_an_admin_just_unloaded(ops, clock):
    """The admin unloaded llama3.2:3b (the best chat model): the beat moves up to the next best chat
    model instead of loading it straight back; once the recent-use window (15 min) has passed, it may."""
    clock.set(WEDNESDAY_17_30)
    tiny = ops.load("tinyllama", NVIDIA)
    llama = ops.load("llama3.2:3b", NVIDIA)
    chat = m.TaskType.objects.get(name="chat")

    def chat_requests():
        now = timeutil.utcnow()
        m.Residency.objects.filter(pk=tiny.pk).update(last_used_at=now - dt.timedelta(minutes=1))
        for i in range(3):
            m.SelectionDecision.objects.create(created_at=now - dt.timedelta(minutes=i + 1), task_type=chat,
                                               urgency="interactive", action="use_loaded", model=tiny.model,
                                               residency=tiny, reason="t", policy_version="t")

    chat_requests()
    ops.committed(reservations.request_unload, "llama3.2:3b", trigger="admin", endpoint=NVIDIA)
    ops.run(ops.take())
    assert m.Residency.objects.get(pk=llama.pk).state == "unloaded"
    assert ops.committed(tasks.apply_preload_windows)["upgrade"] == "mistral:7b"
    ops.run(ops.take())
    clock.set(WEDNESDAY_17_30 + dt.timedelta(minutes=16))
    chat_requests()
    assert ops.committed(tasks.apply_preload_windows)["upgrade"] == "llama3.2:3b"
