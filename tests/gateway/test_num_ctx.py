"""A client that sends its own num_ctx (or keep_alive) causes no reload: the gateway sends the
endpoint's values, the ones TowerOps loaded the model with."""
from __future__ import annotations

import httpx
import ollama
import pytest

from .conftest import put_loaded, recorded

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def _loads(sim) -> int:
    return sum(1 for ev in sim.events if ev.kind == "load_start")


def test_a_clients_num_ctx_causes_no_reload(sim, gateway, key):
    put_loaded(sim, "llama3.2:3b", "tower-amd")
    before = _loads(sim)
    client = ollama.Client(host=gateway.url, headers={"Authorization": f"Bearer {key}"})
    out = client.chat(model="llama3.2:3b", messages=[{"role": "user", "content": "hi"}],
                      options={"num_ctx": 16384}, keep_alive="5m")
    assert out.done_reason == "stop"
    assert _loads(sim) == before  # no reload
    runner = sim.endpoints["tower-amd"].runners["llama3.2:3b"]
    assert (runner.num_ctx, runner.keep_alive) == (4096, float("inf"))
    r = httpx.post(f"{gateway.url}/api/generate", headers={"Authorization": f"Bearer {key}"}, timeout=30,
                   json={"model": "llama3.2:3b", "prompt": "hi", "stream": False, "options": {"num_ctx": 8192}})
    assert (r.headers["x-towerops-num-ctx"], r.headers["x-towerops-num-ctx-asked"]) == ("4096", "8192")
    assert _loads(sim) == before
    assert len(recorded(2)) == 2
    # Straight to Ollama the same request reloads the model (what the gateway prevents).
    ollama.Client(host=sim.url("tower-amd")).chat(model="llama3.2:3b", options={"num_ctx": 16384},
                                                 messages=[{"role": "user", "content": "hi"}])
    assert _loads(sim) == before + 1
