"""A named model that is loaded nowhere is loaded through TowerOps' placement (a reservation, the
host's agent on Celery, the simulated Ollama) while the request is held; a client that leaves
during the hold cancels only its own request."""
from __future__ import annotations


import httpx
import pytest

from models_registry import models as m

from .conftest import recorded

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def test_a_named_model_loaded_nowhere_is_loaded_then_served(sim, gateway, key, start_worker):
    start_worker("tower", "central,host.tower")
    r = httpx.post(f"{gateway.url}/api/chat", headers={"Authorization": f"Bearer {key}"}, timeout=60,
                   json={"model": "qwen2.5-coder:7b", "stream": False,
                         "messages": [{"role": "user", "content": "write a python function that adds"}]})
    assert r.status_code == 200, r.text
    assert r.json()["model"] == "qwen2.5-coder:7b" and r.headers["x-towerops-action"] == "load"
    (d,) = recorded(1)
    assert (d.action, d.task_type.name, d.outcome.result) == ("load", "code_generation", "ok")
    ev = m.LoadEvent.objects.get(decision=d, kind="load")
    assert ev.trigger == "selection" and ev.endpoint_id == d.endpoint_id
    # The wait the caller saw includes the load (13.5 s at 50x: 0.27 s), measured at the gateway.
    assert d.outcome.first_token_ms >= 200
    assert sim.loaded(d.endpoint.name).get("qwen2.5-coder:7b") == "loaded"


def test_a_client_that_leaves_during_the_hold_cancels_its_request(sim, gateway, key, broker_url):
    for name in sim.endpoints:
        sim.hang_loads(name)
    # No agent picks the load up: the request waits in the gateway until its client gives up.
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{gateway.url}/api/generate", headers={"Authorization": f"Bearer {key}"}, timeout=1.0,
                   json={"model": "mistral:7b", "prompt": "hi"})
    (d,) = recorded(1)
    assert d.action == "load" and d.outcome.result == "cancelled"
    assert m.Residency.objects.get(pk=d.residency_id).state == "requested"  # the load itself is not undone


def test_a_critical_auto_request_is_answered_locally_the_remote_is_no_answer_for_the_gateway(sim, gateway, key,
                                                                                           start_worker):
    """Critical takes the soonest acceptable answer; through the gateway only local models are answers
    (it forwards to Ollama), so a cold tower loads the fastest acceptable model instead of a 503."""
    start_worker("tower", "central,host.tower")
    r = httpx.post(f"{gateway.url}/api/chat", timeout=60,
                   headers={"Authorization": f"Bearer {key}", "X-TowerOps-Urgency": "critical"},
                   json={"model": "auto:general", "stream": False,
                         "messages": [{"role": "user", "content": "the web server is down, what now"}]})
    assert r.status_code == 200, r.text
    (d,) = recorded(1)
    assert d.action == "load" and d.model.kind == "local" and d.outcome.result == "ok"
