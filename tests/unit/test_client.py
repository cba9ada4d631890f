"""towerops_client against httpx.MockTransport: the requests it builds and how it parses."""
from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from towerops_client import (
    AsyncTowerOpsClient,
    Selection,
    TaskUrgency,
    TowerModelManager,
    TowerOpsClient,
    TowerOpsError,
)

SELECT_REPLY = {
    "decision_id": 42,
    "model": "qwen2.5-coder:7b",
    "endpoint": "tower-nvidia",
    "gpus": ["tower/1"],
    "action": "load",
    "expected_wait_s": 13.5,
    "quality": 0.88,
    "warned": True,
    "reason": "nothing met both the code_generation floor 0.80 and interactive patience 5 s",
    "evictions": [],
    "alternatives": [
        {"model": "deepseek-coder-v2:16b", "quality": 0.81, "expected_wait_s": 24.0,
         "score": -0.39, "rejected_because": "24.0 s load exceeds interactive patience 5 s"},
    ],
}
STATE_REPLY = {
    "gpus": [{"key": "tower/0", "name": "AMD Radeon RX 9070 XT", "total_mib": 16384,
              "free_mib": 15360}],
    "residents": [
        {"model": "llama3.2:3b", "endpoint": "tower-nvidia", "state": "loaded",
         "gpus": ["tower/1"], "last_used_at": "2026-11-25T09:00:00Z"},
        {"model": "tinyllama", "endpoint": "tower-amd", "state": "loaded", "gpus": ["tower/0"],
         "last_used_at": None},
        {"model": "qwen2.5-coder:7b", "endpoint": "tower-amd", "state": "loading",
         "gpus": ["tower/0"], "last_used_at": None},
    ],
}
MODELS_REPLY = [{"tag": "tinyllama", "tokens_per_s": 320}, {"tag": "llama3.2:3b", "tokens_per_s": 80},
                {"tag": "qwen2.5-coder:7b", "tokens_per_s": 45}]


class Recorder:
    """A MockTransport handler that records requests and answers from a route table."""

    def __init__(self, routes=None):
        self.requests: list[httpx.Request] = []
        self.routes = routes or {}

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        key = (request.method, request.url.path)
        answer = self.routes.get(key)
        if answer is None:
            return httpx.Response(404, json={"detail": "Not Found"})
        if callable(answer):
            return answer(request)
        status, body = answer
        return httpx.Response(status, json=body)

    @property
    def last_json(self):
        return json.loads(self.requests[-1].content)


def default_routes():
    return {
        ("POST", "/api/v1/select"): (200, SELECT_REPLY),
        ("GET", "/api/v1/state"): (200, STATE_REPLY),
        ("GET", "/api/v1/models"): (200, MODELS_REPLY),
        ("POST", "/api/v1/models/qwen2.5-coder:7b/preload"): (202, {"residency_id": 7,
                                                                  "state": "requested"}),
    }


@pytest.fixture
def rec():
    return Recorder(default_routes())


def test_seed_snippet_keywords(rec):
    manager = TowerModelManager(base_url="http://tower:8000/", api_key="k-123",
                                transport=httpx.MockTransport(rec))
    model_id, reason, wait_time = asyncio.run(manager.select_model(
        task_type="code_generation", urgency=TaskUrgency.INTERACTIVE))
    assert (model_id, wait_time) == ("qwen2.5-coder:7b", 13.5)
    assert reason.startswith("nothing met both")
    request = rec.requests[-1]
    assert request.method == "POST"
    assert str(request.url) == "http://tower:8000/api/v1/select"
    assert request.headers["Authorization"] == "Bearer k-123"
    assert request.headers["Content-Type"] == "application/json"
    assert rec.last_json == {"task_type": "code_generation", "urgency": "interactive",
                             "client": "towerops_client"}
    assert manager.last_selection.decision_id == 42


def test_seed_snippet_positional_and_options(rec):
    manager = TowerModelManager(api_key="k", transport=httpx.MockTransport(rec))
    asyncio.run(manager.select_model("analysis", TaskUrgency.BATCH, min_quality=0.8,
                                     max_wait_s=30, expected_output_tokens=512))
    assert rec.last_json == {"task_type": "analysis", "urgency": "batch", "min_quality": 0.8,
                             "max_wait_s": 30, "expected_output_tokens": 512,
                             "client": "towerops_client"}


def test_defaults_come_from_the_environment(rec, monkeypatch):
    monkeypatch.setenv("TOWEROPS_URL", "http://env-host:9000")
    monkeypatch.setenv("TOWEROPS_API_KEY", "env-key")
    manager = TowerModelManager(transport=httpx.MockTransport(rec))
    asyncio.run(manager.select_model("code_generation", "INTERACTIVE"))
    assert str(rec.requests[-1].url) == "http://env-host:9000/api/v1/select"
    assert rec.requests[-1].headers["Authorization"] == "Bearer env-key"
    assert rec.last_json["urgency"] == "interactive"


def test_without_a_key_no_authorization_header(rec, monkeypatch):
    monkeypatch.delenv("TOWEROPS_API_KEY", raising=False)
    monkeypatch.delenv("TOWEROPS_URL", raising=False)
    client = TowerOpsClient(transport=httpx.MockTransport(rec))
    client.state()
    assert "Authorization" not in rec.requests[-1].headers
    assert str(rec.requests[-1].url) == "http://127.0.0.1:8000/api/v1/state"


def test_fastest_loaded_model_is_sync_and_uses_state(rec):
    manager = TowerModelManager(api_key="k", transport=httpx.MockTransport(rec))
    assert manager.get_fastest_loaded_model() == "tinyllama"  # 320 tok/s beats 80; qwen is loading
    assert [(r.method, r.url.path) for r in rec.requests] == [("GET", "/api/v1/state"),
                                                             ("GET", "/api/v1/models")]


def test_fastest_loaded_model_none_when_nothing_loaded():
    rec = Recorder({("GET", "/api/v1/state"): (200, {"gpus": [], "residents": []})})
    manager = TowerModelManager(api_key="k", transport=httpx.MockTransport(rec))
    assert manager.get_fastest_loaded_model() is None


def test_preload(rec):
    manager = TowerModelManager(api_key="admin", transport=httpx.MockTransport(rec))
    out = asyncio.run(manager.preload_model("qwen2.5-coder:7b"))
    assert out == {"residency_id": 7, "state": "requested"}
    assert rec.requests[-1].method == "POST"
    assert rec.requests[-1].url.path == "/api/v1/models/qwen2.5-coder:7b/preload"


def test_sync_client_select_returns_a_dataclass(rec):
    with TowerOpsClient("http://t", "k", transport=httpx.MockTransport(rec)) as client:
        sel = client.select("code_generation", TaskUrgency.INTERACTIVE, dry_run=True)
    assert isinstance(sel, Selection)
    assert (sel.model, sel.action, sel.gpus, sel.warned) == ("qwen2.5-coder:7b", "load",
                                                             ("tower/1",), True)
    assert sel.alternatives[0].model == "deepseek-coder-v2:16b"
    assert sel.alternatives[0].rejected_because.endswith("patience 5 s")
    assert sel.raw == SELECT_REPLY
    assert rec.last_json == {"task_type": "code_generation", "urgency": "interactive",
                             "dry_run": True}


def test_async_client(rec):
    async def go():
        async with AsyncTowerOpsClient("http://t", "k", transport=httpx.MockTransport(rec)) as c:
            sel = await c.select("code_generation", "background")
            state = await c.state()
        return sel, state

    sel, state = asyncio.run(go())
    assert sel.decision_id == 42 and state["gpus"][0]["free_mib"] == 15360


def test_outcome(rec):
    rec.routes[("POST", "/api/v1/decisions/42/outcome")] = (200, {"ok": True})
    with TowerOpsClient("http://t", "k", transport=httpx.MockTransport(rec)) as client:
        assert client.report_outcome(42, 812.5, True, rating=5) == {"ok": True}
        assert rec.last_json == {"response_ms": 812.5, "success": True, "rating": 5}
        client.report_outcome(42, 900, True, first_token_ms=120)
    assert rec.last_json == {"response_ms": 900, "first_token_ms": 120, "success": True}


@pytest.mark.parametrize("status, body, detail", [
    (401, {"detail": "missing or invalid API key"}, "missing or invalid API key"),
    (403, {"detail": "this key lacks the select scope"}, "this key lacks the select scope"),
    (422, {"detail": [{"loc": ["body", "urgency"], "msg": "must be one of ..."}]},
     [{"loc": ["body", "urgency"], "msg": "must be one of ..."}]),
    (503, {"detail": "database unavailable"}, "database unavailable"),
])
def test_errors_raise_with_status_and_detail(status, body, detail):
    rec = Recorder({("POST", "/api/v1/select"): (status, body)})
    manager = TowerModelManager(api_key="k", transport=httpx.MockTransport(rec))
    with pytest.raises(TowerOpsError) as exc:
        asyncio.run(manager.select_model("code_generation", TaskUrgency.INTERACTIVE))
    assert exc.value.status == status
    assert exc.value.detail == detail
    with TowerOpsClient("http://t", "k", transport=httpx.MockTransport(rec)) as client:
        with pytest.raises(TowerOpsError) as exc:
            client.select("code_generation")
    assert exc.value.status == status and exc.value.method == "POST"


def test_non_json_error_body():
    rec = Recorder({("GET", "/api/v1/state"): lambda r: httpx.Response(502, text="Bad Gateway")})
    with TowerOpsClient("http://t", "k", transport=httpx.MockTransport(rec)) as client:
        with pytest.raises(TowerOpsError) as exc:
            client.state()
    assert (exc.value.status, exc.value.detail) == (502, "Bad Gateway")


def test_unreachable_server_is_a_towerops_error():
    def refuse(request):
        raise httpx.ConnectError("connection refused", request=request)

    with TowerOpsClient("http://t", "k", transport=httpx.MockTransport(refuse)) as client:
        with pytest.raises(TowerOpsError) as exc:
            client.state()
    assert exc.value.status == 0 and "cannot reach TowerOps" in str(exc.value)


def test_unknown_urgency_string_is_passed_through_for_the_server_to_refuse(rec):
    with TowerOpsClient("http://t", "k", transport=httpx.MockTransport(rec)) as client:
        client.select("general", "whenever")
    assert rec.last_json["urgency"] == "whenever"


def test_task_urgency_values():
    assert [u.value for u in TaskUrgency] == ["critical", "interactive", "background", "batch"]
    assert TaskUrgency.INTERACTIVE == "interactive"


def test_morning_workflow_example_runs_against_a_fake_server(monkeypatch, capsys):
    import importlib.util
    from pathlib import Path

    loaded = {"qwen": False}

    def select(request):
        if loaded["qwen"]:
            body = dict(SELECT_REPLY, action="use_loaded", expected_wait_s=0.0, warned=False,
                        reason="qwen2.5-coder:7b is loaded on tower-nvidia")
        else:
            body = SELECT_REPLY
        return httpx.Response(200, json=body)

    def preload(request):
        loaded["qwen"] = True
        return httpx.Response(202, json={"residency_id": 1, "state": "requested"})

    def state(request):
        residents = list(STATE_REPLY["residents"])
        if loaded["qwen"]:
            residents.append({"model": "qwen2.5-coder:7b", "endpoint": "tower-nvidia",
                              "state": "loaded", "gpus": ["tower/1"], "last_used_at": None})
        return httpx.Response(200, json={"gpus": [], "residents": residents})

    rec = Recorder({("POST", "/api/v1/select"): select, ("GET", "/api/v1/state"): state,
                    ("GET", "/api/v1/models"): (200, MODELS_REPLY),
                    ("POST", "/api/v1/models/qwen2.5-coder:7b/preload"): preload})
    transport = httpx.MockTransport(rec)
    path = Path(__file__).resolve().parents[2] / "examples" / "morning_workflow.py"
    spec = importlib.util.spec_from_file_location("morning_workflow", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    real = module.TowerModelManager
    monkeypatch.setattr(module, "TowerModelManager",
                        lambda *a, **kw: real(*a, transport=transport, **kw))
    assert module.main() == 0
    out = capsys.readouterr().out
    assert "Cold start: qwen2.5-coder:7b (13.5s)" in out
    assert "faster alternative already loaded: tinyllama" in out
    assert "Warmed up: qwen2.5-coder:7b (0.0s)" in out
