"""The simulated tower's GPUs reach TowerOps through the real collectors: the simulator writes
sysfs and NVML views (fakes/gpu_telemetry.py), collectors.read_host reads them, and the telemetry
task stores them as GPU snapshots."""
from __future__ import annotations

import threading

import ollama
import pytest

from models_registry.catalog.profile import load_profile_file, parse_profile
from models_registry.fakes import gpu_telemetry
from models_registry.fakes.ollama_server import GIB, SimulatedTower
from models_registry.runtime import collectors

from .test_ollama_server import SCALE, small_profile, wait_for

MIB = 1024 * 1024


@pytest.fixture
def sim():
    t = SimulatedTower(parse_profile(small_profile()), time_scale=SCALE).start()
    try:
        yield t
    finally:
        t.shutdown()


def by_vendor(readings):
    return {r.vendor: r for r in readings}


def test_without_the_variable_the_machines_own_gpus_are_read(monkeypatch, tmp_path):
    monkeypatch.delenv(gpu_telemetry.ENV, raising=False)
    called = []
    monkeypatch.setattr(collectors, "read_all", lambda *a, **k: called.append((a, k)) or [])
    assert collectors.read_host("box") == []
    assert called == [((), {})]


def test_the_collectors_read_what_the_simulated_gpus_hold(sim, monkeypatch, tmp_path):
    monkeypatch.setenv(gpu_telemetry.ENV, str(tmp_path))
    writer = gpu_telemetry.TelemetryWriter(sim, tmp_path)
    writer.write_once()
    idle = by_vendor(collectors.read_host("box"))
    assert (idle["nvidia"].name, idle["nvidia"].total_mib, idle["nvidia"].used_mib) == ("Big GPU", 12 * 1024, 0)
    assert (idle["amd"].name, idle["amd"].total_mib, idle["amd"].used_mib) == ("Small GPU", 9 * 1024, 0)
    assert idle["amd"].free_mib == 9 * 1024 and idle["amd"].util_pct == 0.0
    assert idle["nvidia"].temperature_c is None and idle["nvidia"].power_w is None  # "not supported"

    ollama.Client(host=sim.url("ep-a"), timeout=10).generate(model="big:7b", prompt="")
    writer.write_once()
    loaded = by_vendor(collectors.read_host("box"))
    held = 12 * GIB - sim.gpu_free_bytes("box", 0)
    assert held > 5 * GIB  # the model and its KV cache, as the simulator placed them
    assert loaded["nvidia"].used_mib == held // MIB
    assert loaded["nvidia"].free_mib == (12 * GIB - held) // MIB
    assert loaded["amd"].used_mib == 0
    assert loaded["nvidia"].uuid == "GPU-simulated-box-0"


def test_a_generating_model_shows_as_utilisation(sim, monkeypatch, tmp_path):
    monkeypatch.setenv(gpu_telemetry.ENV, str(tmp_path))
    writer = gpu_telemetry.TelemetryWriter(sim, tmp_path)
    client = ollama.Client(host=sim.url("ep-b"), timeout=30)
    client.generate(model="slow", prompt="")
    gen = threading.Thread(target=client.generate,
                           kwargs={"model": "slow", "prompt": "go", "options": {"num_predict": 3000}})
    gen.start()
    try:
        assert wait_for(lambda: sim.gpu_busy("box", 1), timeout=5)
        writer.write_once()
        assert by_vendor(collectors.read_host("box"))["amd"].util_pct == 100.0
    finally:
        gen.join(timeout=30)
    writer.write_once()
    assert by_vendor(collectors.read_host("box"))["amd"].util_pct == 0.0


def test_the_writer_thread_keeps_the_files_current_and_leaves_them_empty_on_stop(sim, tmp_path):
    writer = gpu_telemetry.TelemetryWriter(sim, tmp_path, interval_s=0.02).start()
    nvml = gpu_telemetry.FakeNvml(tmp_path / "box" / "nvml.json")
    try:
        ollama.Client(host=sim.url("ep-a"), timeout=10).generate(model="small:1b", prompt="")

        def used():
            nvml.nvmlInit()
            return nvml.nvmlDeviceGetMemoryInfo(nvml.nvmlDeviceGetHandleByIndex(0)).used

        assert wait_for(lambda: used() > GIB, timeout=3)
    finally:
        sim.shutdown()
        writer.stop()
    assert collectors.read_amd(tmp_path / "box" / "drm")[0].used_mib == 0
    nvml.nvmlInit()
    assert nvml.nvmlDeviceGetMemoryInfo(0).used == 0


def test_a_missing_view_reads_as_no_gpus(tmp_path, monkeypatch):
    monkeypatch.setenv(gpu_telemetry.ENV, str(tmp_path))
    assert collectors.read_host("nowhere") == []


@pytest.mark.django_db
def test_the_telemetry_task_stores_the_simulated_gpus_and_the_vram_page_draws_them(tower, monkeypatch, tmp_path,
                                                                                     admin_client):
    from models_registry import models as m
    from models_registry.runtime import tasks
    from tests.conftest import TOWER_PROFILE

    profile = load_profile_file(TOWER_PROFILE)
    # the Tower's endpoints on free ports (11434/11435 may be a real Ollama's)
    profile = profile.model_copy(update={"hosts": [
        h.model_copy(update={"endpoints": [e.model_copy(update={"base_url": "http://127.0.0.1:0"}) for e in h.endpoints]})
        for h in profile.hosts]})
    monkeypatch.setenv(gpu_telemetry.ENV, str(tmp_path))
    assert "No telemetry" in admin_client.get("/vram/?gpu=tower/1").content.decode()
    with SimulatedTower(profile, time_scale=SCALE) as t:
        ollama.Client(host=t.url("tower-nvidia"), timeout=10).generate(model="llama3.2:3b", prompt="")
        gpu_telemetry.TelemetryWriter(t, tmp_path).write_once()
        held_mib = gpu_telemetry.gpu_view(t)["tower"][1]["used"] // MIB  # the RTX 3060
    host = m.Host.objects.get(name="tower")
    assert tasks.record_gpu_snapshots(host.pk) == 2
    snaps = {s.gpu.index: s for s in m.GpuSnapshot.objects.select_related("gpu")}
    assert (snaps[0].total_mib, snaps[0].used_mib) == (16 * 1024, 0)
    assert snaps[1].total_mib == 12 * 1024 and abs(snaps[1].used_mib - held_mib) <= 1 and held_mib > 2000
    page = admin_client.get("/vram/?gpu=tower/1").content.decode()
    assert 'id="vram-chart"' in page and "No telemetry" not in page
