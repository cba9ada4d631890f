"""The lifecycle's bounds with real processes: a host agent, a central worker and celery beat on the
real broker, their settings from the environment as in production, the simulated Tower over HTTP.

Short timeouts (TOWEROPS_LOAD_TIMEOUT_S=3, TOWEROPS_REQUESTED_TIMEOUT_S=2) so that the bounds of
docs/failure-behaviour.md are seconds here: what is checked is the time TowerOps itself recorded.
"""
from __future__ import annotations

import signal

import pytest

from models_registry import models as m
from models_registry.runtime import dispatch, loads, reservations
from models_registry.runtime.ollama import normalize_model_name

from .conftest import wait_for
from .test_runtime import LOAD_WAIT_S, serve, tower_profile_on_free_ports

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

LOAD_TIMEOUT_S, REQUESTED_TIMEOUT_S = 3, 2
SWEEP_PERIOD_S = 5.0  # the beat schedule's "stale-loads"
SETTINGS = {"TOWEROPS_LOAD_TIMEOUT_S": str(LOAD_TIMEOUT_S), "TOWEROPS_REQUESTED_TIMEOUT_S": str(REQUESTED_TIMEOUT_S),
            "TOWEROPS_SYNC_INTERVAL_S": "1"}
SLACK_S = 3.0  # a task's own latency on a busy machine
TRANSIENT = ("requested", "loading", "unloading")
NVIDIA = "tower-nvidia"


@pytest.fixture
def tower_sim(transactional_db):
    sim = serve(tower_profile_on_free_ports())
    try:
        yield sim
    finally:
        sim.shutdown()


@pytest.fixture
def tower_agents(tower_sim, start_worker, start_beat):
    """The Tower's agent, a central worker and beat, all started (no preload window interferes)."""
    m.PreloadWindow.objects.update(enabled=False)
    host = start_worker("tower", "host.tower", env=SETTINGS, wait=False)
    central = start_worker("central", "central", env=SETTINGS, wait=False)
    host.wait_ready()
    central.wait_ready()
    start_beat(env=SETTINGS)
    return {"host": host, "central": central}


def books_match_ollama(sim, endpoint: str) -> bool:
    booked = {normalize_model_name(t) for t in m.Residency.objects.active().filter(endpoint__name=endpoint)
              .values_list("model__tag", flat=True)}
    return booked == set(sim.loaded(endpoint))


def test_a_load_whose_task_is_lost_fails_on_time_and_its_victim_is_unloaded_for_real(
        tower_sim, tower_agents, monkeypatch):
    """Defects 1, 6 and 8: the reservation evicts deepseek for qwen, and the broker loses qwen's task."""
    victim = reservations.request_load("deepseek-coder-v2:16b", trigger="admin", endpoint=NVIDIA)["residency_id"]
    wait_for(lambda: m.Residency.objects.filter(pk=victim, state="loaded").exists(), LOAD_WAIT_S, "deepseek to load")

    monkeypatch.setattr(dispatch, "send", lambda *args, **kwargs: True)  # the broker took the task and lost it
    lost = reservations.request_load("qwen2.5-coder:7b", trigger="admin", endpoint=NVIDIA)
    assert lost["detail"] == "loading on tower-nvidia after evicting deepseek-coder-v2:16b"

    bound = REQUESTED_TIMEOUT_S + SWEEP_PERIOD_S + SLACK_S
    wait_for(lambda: not m.Residency.objects.filter(state__in=TRANSIENT).exists(), 3 * bound,
             "every residency to reach a stable state")
    r = m.Residency.objects.get(pk=lost["residency_id"])
    assert r.state == "failed" and r.error == "timed out in state requested"
    assert (r.ended_at - r.requested_at).total_seconds() <= bound
    v = m.Residency.objects.get(pk=victim)
    assert v.state == "unloaded"
    assert m.LoadEvent.objects.get(residency=v, kind="unload").trigger == "admin"
    assert books_match_ollama(tower_sim, NVIDIA) and tower_sim.loaded(NVIDIA) == {}


def test_a_load_whose_worker_dies_is_failed_within_its_timeout_and_a_few_seconds(tower_sim, tower_agents):
    """Defect 6: only the central sweep is left (the host agent is dead); it used to run every 30 s."""
    tower_sim.hang_loads(NVIDIA)
    rid = reservations.request_load("tinyllama", trigger="admin", endpoint=NVIDIA)["residency_id"]
    wait_for(lambda: any(e.kind == "load_start" and e.endpoint == NVIDIA for e in tower_sim.events), LOAD_WAIT_S,
             "the load to reach Ollama")
    tower_agents["host"].kill(signal.SIGKILL)

    bound = LOAD_TIMEOUT_S + loads.STALE_GRACE_S + SWEEP_PERIOD_S + SLACK_S
    wait_for(lambda: m.Residency.objects.filter(pk=rid, state="failed").exists(), 3 * bound, "the load to be failed")
    r = m.Residency.objects.get(pk=rid)
    assert (r.ended_at - r.loaded_at).total_seconds() <= bound
    assert m.LoadEvent.objects.get(residency=r).kind == "fail"
