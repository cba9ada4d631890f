"""examples/morning_workflow.py as written, against a running tower: the live server, a real
Celery worker (the host's agent) on the real broker, and the simulated Tower at 50x speed."""
from __future__ import annotations

import importlib.util

import pytest

from models_registry import models as m
from models_registry.catalog import importer
from models_registry.fakes.ollama_server import SimulatedTower
from tests.integration.test_runtime import SCALE, tower_profile_on_free_ports

from .conftest import ROOT

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True),
              pytest.mark.usefixtures("slo_targets")]


def test_the_morning_workflow_example_runs_against_a_running_tower(live_server, keys, start_worker, monkeypatch,
                                                                     capsys):
    sim = SimulatedTower(tower_profile_on_free_ports(), time_scale=SCALE).start()
    try:
        importer.import_profile(sim.profile_with_actual_urls())
        start_worker("tower", "central,host.tower")
        monkeypatch.setenv("TOWEROPS_URL", live_server.url)
        monkeypatch.setenv("TOWEROPS_API_KEY", keys["select,read,admin"])  # it preloads: admin scope
        spec = importlib.util.spec_from_file_location("morning_workflow", ROOT / "examples" / "morning_workflow.py")
        example = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(example)
        assert example.main() == 0
    finally:
        sim.shutdown()
    out = capsys.readouterr().out
    cold, warm = m.SelectionDecision.objects.filter(client="towerops_client").order_by("created_at")
    assert (cold.model.tag, cold.action) == ("qwen2.5-coder:7b", "load")
    assert f"Cold start: qwen2.5-coder:7b ({cold.expected_wait_s:.1f}s)" in out and cold.expected_wait_s > 5
    # nothing else was loaded when it asked, so the seed's fallback had nothing faster to offer
    assert "faster alternative already loaded: none" in out
    assert m.Residency.objects.filter(model__tag="qwen2.5-coder:7b", state="loaded").exists()
    # warm: no load, only the queue behind the first request's (estimated) generation
    assert (warm.model.tag, warm.action) == ("qwen2.5-coder:7b", "use_loaded")
    assert f"Warmed up: qwen2.5-coder:7b ({warm.expected_wait_s:.1f}s)" in out
    assert warm.expected_wait_s < cold.expected_wait_s


def test_with_a_select_read_key_the_example_says_it_needs_admin(live_server, keys, monkeypatch, capsys, queued_loads):
    monkeypatch.setenv("TOWEROPS_URL", live_server.url)
    monkeypatch.setenv("TOWEROPS_API_KEY", keys["select,read"])
    spec = importlib.util.spec_from_file_location("morning_workflow", ROOT / "examples" / "morning_workflow.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    assert example.main() == 1
    assert "403" in capsys.readouterr().err and "admin" in example.__doc__
