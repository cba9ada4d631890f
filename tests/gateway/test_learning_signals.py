"""Observed quality's implicit signals as the gateway sees them, through the `ollama` package
unchanged: an answer taken, one cut at the length limit, the same conversation asked again (to
TowerOps' choice: regenerated; naming a bigger model: escalated), and the caller's rating sent
with the decision id from the gateway's headers."""
from __future__ import annotations

import httpx
import ollama
import pytest

from models_registry import models as m
from tests.helpers import wait_for

from .conftest import put_loaded, recorded

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def client(gateway, key):
    return ollama.Client(host=gateway.url, headers={"Authorization": f"Bearer {key}", "X-TowerOps-Task": "chat"})


def _signals(decision_id: int) -> dict[str, tuple[float, float]]:
    return {s.kind: (s.value, s.weight) for s in m.QualitySignal.objects.filter(decision_id=decision_id)}


def _wait_signal(decision_id: int, kind: str):
    return wait_for(lambda: _signals(decision_id).get(kind), 10.0, f"a {kind} signal on decision {decision_id}")


def test_answers_taken_cut_off_asked_again_and_escalated(sim, client):
    put_loaded(sim, "llama3.2:3b", "tower-amd")
    put_loaded(sim, "mistral:7b", "tower-nvidia")
    talk = [{"role": "user", "content": "tell me about the moon"}]
    client.chat(model="llama3.2:3b", messages=talk)
    (first,) = recorded(1)
    assert _wait_signal(first.pk, "answered") == (1.0, 0.25)
    assert first.outcome.done_reason == "stop" and len(first.outcome.conversation) == 32

    cut = client.chat(model="llama3.2:3b", messages=[{"role": "user", "content": "another thing"}],
                      options={"num_predict": 3})
    assert cut.done_reason == "length"
    (second,) = recorded(1)
    assert _wait_signal(second.pk, "truncated") == (0.0, 0.25)

    # The same conversation again, to TowerOps' choice: the first answer was not taken.
    client.chat(model="auto", messages=talk)
    recorded(1)
    assert _wait_signal(first.pk, "regenerated") == (0.0, 1.0)
    assert "answered" not in _signals(first.pk)  # withdrawn: it was asked again

    # A conversation answered by llama3.2:3b, then sent naming a bigger model (mistral: 7.25 B > 3.21 B).
    other = [{"role": "user", "content": "explain tides"}]
    client.chat(model="llama3.2:3b", messages=other)
    (small,) = recorded(1)
    client.chat(model="mistral:7b", messages=other)
    (big,) = recorded(1)
    assert big.model.tag == "mistral:7b"
    assert _wait_signal(small.pk, "escalated") == (0.0, 1.0)
    assert _wait_signal(big.pk, "answered") == (1.0, 0.25)
    # Naming a smaller model again is asking again, not escalating.
    client.chat(model="llama3.2:3b", messages=other)
    recorded(1)
    assert _wait_signal(big.pk, "regenerated") == (0.0, 1.0)


def test_a_rating_sent_with_the_decision_id_from_the_headers(sim, gateway, key, make_key):
    put_loaded(sim, "llama3.2:3b", "tower-amd")
    with httpx.Client(base_url=gateway.url, headers={"Authorization": f"Bearer {key}"}) as http:
        r = http.post("/api/chat", json={"model": "auto:chat", "stream": False,
                                         "messages": [{"role": "user", "content": "hi"}]})
        assert r.status_code == 200
        decision_id = int(r.headers["X-TowerOps-Decision-Id"])
    recorded(1)
    from django.test import Client

    web = Client()
    for rating, expect in ((0.2, 200), (1.5, 422)):
        resp = web.post(f"/api/v1/decisions/{decision_id}/feedback", {"rating": rating},
                        content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {key}")
        assert resp.status_code == expect, resp.content
    assert _signals(decision_id)["rating"] == (0.2, 1.0)  # the bad rating changed nothing
    assert "rating" in resp.json()["detail"][0]["loc"]
    read_only = make_key("read")
    denied = web.post(f"/api/v1/decisions/{decision_id}/feedback", {"rating": 0.9},
                      content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {read_only}")
    assert denied.status_code == 403 and _signals(decision_id)["rating"] == (0.2, 1.0)


def test_a_rating_sent_to_the_gateway_itself(sim, gateway, key, make_key):
    """The same feedback call on the gateway's own address (the caller already has it and its key)."""
    put_loaded(sim, "llama3.2:3b", "tower-amd")
    with httpx.Client(base_url=gateway.url, headers={"Authorization": f"Bearer {key}"}) as http:
        r = http.post("/api/chat", json={"model": "auto:chat", "stream": False,
                                         "messages": [{"role": "user", "content": "hi"}]})
        decision_id = int(r.headers["X-TowerOps-Decision-Id"])
        recorded(1)
        ok = http.post(f"/towerops/v1/decisions/{decision_id}/feedback", json={"rating": 0.7})
        assert ok.status_code == 200 and ok.json() == {"decision_id": decision_id, "model": "llama3.2:3b",
                                                        "task_type": "chat", "rating": 0.7}
        for body, status, says in (({"rating": True}, 400, "rating"), ({"rating": "good"}, 400, "rating"),
                                   ({}, 400, "rating")):
            bad = http.post(f"/towerops/v1/decisions/{decision_id}/feedback", json=body)
            assert bad.status_code == status and says in bad.json()["error"], bad.text
        gone = http.post("/towerops/v1/decisions/999999/feedback", json={"rating": 0.5})
        assert gone.status_code == 404 and "no decision 999999" in gone.json()["error"]
        assert http.post(f"/towerops/v1/decisions/{decision_id}/other", json={}).status_code == 404
    assert _signals(decision_id)["rating"] == (0.7, 1.0)  # the bad ones changed nothing
    no_infer = make_key("read")
    denied = httpx.post(f"{gateway.url}/towerops/v1/decisions/{decision_id}/feedback", json={"rating": 0.1},
                        headers={"Authorization": f"Bearer {no_infer}"})
    assert denied.status_code == 403 and _signals(decision_id)["rating"] == (0.7, 1.0)
