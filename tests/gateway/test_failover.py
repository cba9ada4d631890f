"""Faults: an endpoint that refuses before the first byte is failed over (each attempt recorded
and linked), one that breaks off mid-stream ends the stream with an error in the protocol's
shape, and a client that leaves cancels the request upstream."""
from __future__ import annotations

import json
import time

import httpx
import ollama
import pytest

from models_registry import models as m

from .conftest import put_loaded, recorded, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def sim_options():
    return {"default_eval_tokens": 20000}  # 250 s of answer at 80 tokens/s: 5 s at 50x


def test_an_endpoint_that_refuses_is_failed_over_and_both_attempts_are_recorded(sim, gateway, key):
    put_loaded(sim, "llama3.2:3b", "tower-amd")
    put_loaded(sim, "llama3.2:3b", "tower-nvidia")
    sim.stop_endpoint("tower-amd", unload=False)  # a network outage: TowerOps still thinks it is up
    r = httpx.post(f"{gateway.url}/api/generate", headers={"Authorization": f"Bearer {key}"}, timeout=30,
                   json={"model": "llama3.2:3b", "prompt": "hello", "stream": False, "options": {"num_predict": 4}})
    assert r.status_code == 200 and r.json()["done"] is True
    retry, first = recorded(2)
    assert (first.endpoint.name, first.outcome.result, first.outcome.success) == ("tower-amd", "error", False)
    assert "unreachable" in first.outcome.error
    assert (retry.endpoint.name, retry.retry_of_id, retry.outcome.result) == ("tower-nvidia", first.pk, "ok")
    assert r.headers["x-towerops-attempts"] == f"{first.pk},{retry.pk}"
    assert r.headers["x-towerops-endpoint"] == "tower-nvidia"


def test_an_endpoint_that_breaks_off_mid_stream_ends_it_with_an_ollama_error(sim, gateway, key):
    put_loaded(sim, "llama3.2:3b", "tower-amd")
    client = ollama.Client(host=gateway.url, headers={"Authorization": f"Bearer {key}"})
    stream = client.generate(model="llama3.2:3b", prompt="tell me everything", stream=True)
    assert next(stream).done is False
    sim.stop_endpoint("tower-amd")
    with pytest.raises(ollama.ResponseError, match="broke off"):
        for _ in stream:
            pass
    (d,) = recorded(1)
    assert d.outcome.result == "error" and "broke off" in d.outcome.error and d.outcome.first_token_ms is not None


def test_a_client_that_leaves_cancels_the_request_upstream(sim, gateway, key):
    put_loaded(sim, "llama3.2:3b", "tower-amd")
    runner = sim.endpoints["tower-amd"].runners["llama3.2:3b"]
    with httpx.stream("POST", f"{gateway.url}/api/chat", headers={"Authorization": f"Bearer {key}"}, timeout=30,
                      json={"model": "llama3.2:3b", "messages": [{"role": "user", "content": "go on"}]}) as r:
        first = json.loads(next(r.iter_lines()))
        assert first["done"] is False
        # The simulator counts the request on its runner from its own thread: wait for it, and say
        # where each llama runner stands if it never shows.
        wait_for(lambda: runner.ref_count == 1, 2, "the request to hold the runner: " + repr(
            {ep: (x.state, x.ref_count) for ep, e in sim.endpoints.items()
             for name, x in e.runners.items() if name == "llama3.2:3b"}))
        left = time.monotonic()
    wait_for(lambda: runner.ref_count == 0, 5, "Ollama to drop the request")
    assert time.monotonic() - left < 2.0  # well before its 5 s answer would have ended
    (d,) = recorded(1)
    assert d.outcome.result == "cancelled" and d.outcome.success is False
    assert not any(ev.kind == "unloaded" for ev in sim.events)  # the model stays


def test_every_endpoint_down_is_a_clear_503(sim, gateway, key):
    m.Endpoint.objects.update(is_up=False)
    r = httpx.post(f"{gateway.url}/api/chat", headers={"Authorization": f"Bearer {key}"}, timeout=30,
                   json={"model": "auto", "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 503 and "no local model can serve this request now" in r.json()["error"]
    assert r.headers["x-towerops-decision-id"]
    (d,) = recorded(1)
    assert d.outcome.result == "error"
