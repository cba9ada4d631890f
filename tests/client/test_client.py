"""towerops_client against the real server (a live server on the test database)."""
from __future__ import annotations

import asyncio

import pytest

from models_registry import models as m
from tests.api.conftest import put_loaded
from towerops_client import (
    AsyncTowerOpsClient,
    Selection,
    TaskUrgency,
    TowerModelManager,
    TowerOpsClient,
    TowerOpsError,
)

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("slo_targets")]


def test_select_and_report_an_outcome_in_fractional_milliseconds_with_a_rating(server):
    put_loaded("llama3.2:3b", "tower-nvidia")
    with TowerOpsClient() as tower:
        sel = tower.select("chat", TaskUrgency.INTERACTIVE, input_tokens=300)
        assert isinstance(sel, Selection) and sel.model == "llama3.2:3b" and sel.action == "use_loaded"
        assert sel.endpoint == "tower-nvidia" and sel.gpus == ("tower/1",) and sel.alternatives
        out = tower.report_outcome(sel.decision_id, response_ms=(1.9 - 1.0) * 1000 + 0.4, success=True,
                                   first_token_ms=95.6, rating=0.85)
    assert (out["response_ms"], out["first_token_ms"], out["rating"]) == (900, 96, 0.85)
    o = m.DecisionOutcome.objects.get(decision_id=sel.decision_id)
    assert (o.response_ms, o.first_token_ms, o.rating, o.success) == (900, 96, 0.85, True)
    d = m.SelectionDecision.objects.get(pk=sel.decision_id)
    assert (d.client, d.input_tokens, d.task_type.name) == ("", 300, "chat")


def test_the_seed_snippet_as_written(server, queued_loads):
    manager = TowerModelManager()
    model_id, reason, wait_time = asyncio.run(manager.select_model(
        task_type="code_generation", urgency=TaskUrgency.INTERACTIVE))
    d = m.SelectionDecision.objects.get(pk=manager.last_selection.decision_id)
    assert (model_id, wait_time) == (d.model.tag, pytest.approx(d.expected_wait_s))
    assert reason == d.reason and d.client == "towerops_client" and d.urgency == "interactive"
    assert d.action == "load" and len(queued_loads) == 1  # nothing was loaded: it asked for a load


def test_the_fastest_loaded_model_meets_the_tasks_floor(server, queued_loads):
    put_loaded("tinyllama", "tower-amd")  # 320 tokens/s, but 0.10 for code (floor 0.80)
    put_loaded("qwen2.5-coder:7b", "tower-nvidia")  # 45 tokens/s, 0.88 for code
    manager = TowerModelManager()
    assert manager.get_fastest_loaded_model() == "tinyllama"  # no task: any loaded model
    assert manager.get_fastest_loaded_model("code_generation") == "qwen2.5-coder:7b"
    assert manager.get_fastest_loaded_model("code_generation", min_quality=0.05) == "tinyllama"
    assert manager.get_fastest_loaded_model("chat") == "tinyllama"  # 0.66 meets chat's 0.65
    asyncio.run(manager.select_model("code_generation", "interactive", dry_run=True))
    assert manager.get_fastest_loaded_model() == "qwen2.5-coder:7b"  # the last selection's task
    m.LlmModel.objects.filter(tag="qwen2.5-coder:7b").update(enabled=True)
    m.QualityScore.objects.filter(model__tag="qwen2.5-coder:7b", task_type__name="code_generation").update(score=0.5)
    assert manager.get_fastest_loaded_model("code_generation") is None
    with pytest.raises(ValueError, match="'coding' is not one of TowerOps' task types: analysis, chat, code_generation"):
        manager.get_fastest_loaded_model("coding")


def test_the_async_client_and_the_read_calls(server, queued_loads):
    put_loaded("mistral:7b", "tower-amd")

    async def go():
        async with AsyncTowerOpsClient() as tower:
            return (await tower.select("analysis", "background", dry_run=True), await tower.state(),
                    await tower.models(), await tower.task_types())

    sel, state, models, task_types = asyncio.run(go())
    assert sel.decision_id is None and sel.model == "mistral:7b"  # a dry run records nothing
    assert not m.SelectionDecision.objects.exists()
    assert [(r["model"], r["endpoint"], r["state"]) for r in state["residents"]] == [("mistral:7b", "tower-amd", "loaded")]
    mistral = next(x for x in models if x["tag"] == "mistral:7b")
    assert mistral["quality"]["analysis"] == 0.86 and mistral["loaded_on"] == ["tower-amd:loaded"]
    floors = {t["name"]: t["quality_floor"] for t in task_types}
    assert floors["code_generation"] == 0.80 and len(floors) == 6
    with TowerOpsClient(client_name="notebook") as tower:
        sel = tower.select("chat", "batch")
        got = tower.decision(sel.decision_id)
    assert (got["task_type"], got["urgency"], got["client"], got["model"]) == ("chat", "batch", "notebook", sel.model)


def test_errors_carry_the_servers_status_and_detail(server, keys, live_server, queued_loads):
    with TowerOpsClient() as tower:
        with pytest.raises(TowerOpsError) as bad:
            tower.select("code_generation", "whenever")
        assert bad.value.status == 422 and bad.value.method == "POST"
        assert "urgency" in str(bad.value.detail) and "interactive" in str(bad.value.detail)
        with pytest.raises(TowerOpsError) as missing:
            tower.report_outcome(987654321, 10, True)
        assert missing.value.status == 404
        with pytest.raises(TowerOpsError) as forbidden:
            tower.preload("qwen2.5-coder:7b")
        assert forbidden.value.status == 403 and "admin" in forbidden.value.detail
    with TowerOpsClient(api_key="tow_not-a-key") as tower, pytest.raises(TowerOpsError) as unknown:
        tower.state()
    assert unknown.value.status == 401
    with TowerOpsClient(api_key=keys["read"]) as reader, pytest.raises(TowerOpsError) as scope:
        reader.select("chat")
    assert scope.value.status == 403 and "select" in scope.value.detail
    assert queued_loads == []


def test_preload_and_unload_with_an_admin_key(server, keys, queued_loads):
    manager = TowerModelManager(api_key=keys["select,read,admin"])
    out = asyncio.run(manager.preload_model("qwen2.5-coder:7b"))
    assert out["state"] == "requested" and out["model"] == "qwen2.5-coder:7b"
    (args, kwargs), = queued_loads
    assert kwargs["queue"] == "host.tower"
    r = m.Residency.objects.get(pk=out["residency_id"])
    assert (r.model.tag, r.state, r.trigger) == ("qwen2.5-coder:7b", "requested", "admin")
