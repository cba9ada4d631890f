"""What Open WebUI does with an Ollama connection, step by step (clients.md): version, tags, ps,
a streamed chat, then an unload with keep_alive 0."""
from __future__ import annotations

import json

import httpx
import pytest

from .conftest import put_loaded, recorded

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def test_open_webui_sequence(sim, gateway, key):
    put_loaded(sim, "llama3.2:3b", "tower-amd")
    h = {"Authorization": f"Bearer {key}", "X-OpenWebUI-User-Name": "alice", "X-OpenWebUI-Chat-Id": "c1"}
    with httpx.Client(base_url=gateway.url, headers=h, timeout=30) as c:
        assert c.get("/api/version").json()["version"]
        models = [x["model"] for x in c.get("/api/tags").json()["models"]]
        assert "auto:latest" in models
        ps = c.get("/api/ps").json()["models"]
        assert ps[0]["model"] == "llama3.2:3b" and ps[0]["expires_at"].startswith("2318")
        with c.stream("POST", "/api/chat", json={"model": "auto:latest", "stream": True,
                                                  "messages": [{"role": "user", "content": "hi there!"}]}) as r:
            assert r.status_code == 200 and r.headers["content-type"] == "application/x-ndjson"
            lines = [json.loads(x) for x in r.iter_lines() if x]
        assert lines[-1]["done"] is True and lines[-1]["done_reason"] == "stop" and "eval_duration" in lines[-1]
        unload = c.post("/api/generate", json={"model": "llama3.2:3b", "keep_alive": 0, "prompt": ""}).json()
        assert (unload["done"], unload["done_reason"]) == (True, "unload")
    (d,) = recorded(1)
    assert d.client == "gateway alice" and d.outcome.result == "ok"
    # The unload is answered, not obeyed: the model is shared and TowerOps decides evictions.
    assert sim.loaded("tower-amd") == {"llama3.2:3b": "loaded"}
