"""Who may use the gateway: API keys with the infer scope; no key only from networks the operator
opened (none by default); the headers and key defaults that set task and urgency, checked."""
from __future__ import annotations

import httpx
import pytest

from models_registry import models as m
from models_registry.api.auth import create_key

from .conftest import put_loaded, recorded

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def test_no_key_or_a_key_without_the_infer_scope_is_refused(sim, gateway):
    assert httpx.get(f"{gateway.url}/").text == "Ollama is running"  # the connection check needs no key
    r = httpx.get(f"{gateway.url}/api/tags")
    assert r.status_code == 401 and "infer" in r.json()["error"]
    select_only = create_key("advisory", ["select", "read"])[1]
    r = httpx.get(f"{gateway.url}/v1/models", headers={"Authorization": f"Bearer {select_only}"})
    assert r.status_code == 403 and r.json()["error"]["message"] == "this API key lacks the 'infer' scope"


def test_an_open_network_needs_no_key(sim, settings, transactional_db):
    from models_registry.gateway.app import Gateway

    from .conftest import serve

    settings.TOWEROPS_GATEWAY_OPEN_NETWORKS = ["127.0.0.0/8"]
    settings.TOWEROPS_GATEWAY_REDIS_URL = ""  # admission in this process
    running, stop = serve(Gateway())
    try:
        r = httpx.get(f"{running.url}/api/tags", headers={"Authorization": "Bearer whatever-a-client-sends"})
        assert r.status_code == 200 and r.json()["models"][0]["name"] == "auto:latest"
    finally:
        stop()


def test_headers_and_key_defaults_set_task_and_urgency(sim, gateway):
    put_loaded(sim, "llama3.2:3b", "tower-amd")
    row, key = create_key("batch jobs", ["infer"])
    m.ApiKey.objects.filter(pk=row.pk).update(default_task="summarization", default_urgency="batch")
    h = {"Authorization": f"Bearer {key}"}
    body = {"model": "llama3.2:3b", "prompt": "hi", "stream": False}
    assert httpx.post(f"{gateway.url}/api/generate", headers=h, json=body, timeout=30).status_code == 200
    assert httpx.post(f"{gateway.url}/api/generate", headers={**h, "X-TowerOps-Task": "analysis",
                      "X-TowerOps-Urgency": "background", "X-TowerOps-Max-Wait": "30"}, json=body,
                      timeout=30).status_code == 200
    second, first = recorded(2)
    assert (first.task_type.name, first.urgency, first.client) == ("summarization", "batch", "gateway batch jobs")
    assert (second.task_type.name, second.urgency, second.max_wait_s) == ("analysis", "background", 30.0)
    bad = httpx.post(f"{gateway.url}/api/generate", headers={**h, "X-TowerOps-Urgency": "asap"}, json=body)
    assert bad.status_code == 400
    assert bad.json()["error"] == ("X-TowerOps-Urgency: unknown urgency 'asap'; "
                                   "allowed: critical, interactive, background, batch")
