"""POST /api/v1/select and the routes around it, on the seed's Tower, through Django's test client.

Every non-dry-run selection records one SelectionDecision (candidates, the live input
state, the ConfigSnapshot it used, the policy version, the decision's cost); a `load`
reserves VRAM (a Residency in state requested, with its GPU rows) and queues the load on
the host's Celery queue when the transaction commits; later selections share that load.
"""
from __future__ import annotations

import datetime as dt

import pytest

from models_registry import models as m
from models_registry import policy
from models_registry.policy import SelectionRequest
from models_registry.selection import records

from .conftest import SELECT, put_loaded

pytestmark = pytest.mark.django_db

NVIDIA_GPU = "tower/1"
NVIDIA_USABLE_MIB = 12 * 1024 - round(0.94 * 1024)  # profiles/tower.yaml: 12 GB, 0.94 GB reserved
TASKS = ("general", "troubleshooting", "code_generation", "analysis", "chat", "summarization")
URGENCIES = ("critical", "interactive", "background", "batch")


def _now():
    return dt.datetime.now(dt.timezone.utc)


def select(api, **body):
    r = api.post(SELECT, body)
    assert r.status_code == 200, r.content
    return r.json()


# --------------------------------------------------------------------------- recording


def test_use_loaded_decision_is_recorded_with_candidates_state_config_and_version(tower, api, captured_loads):
    res = put_loaded("llama3.2:3b", last_used_s_ago=3600)
    before = _now()
    out = select(api, task_type="general", urgency="critical", client="pager")

    assert (out["model"], out["action"], out["endpoint"], out["gpus"]) == (
        "llama3.2:3b", "use_loaded", "tower-nvidia", [NVIDIA_GPU])
    assert out["decision_id"] is not None
    assert out["policy_version"] == policy.POLICY_VERSION
    assert out["reason"]
    # every other model appears as an alternative, with why it lost
    alts = {a["model"]: a for a in out["alternatives"]}
    assert "llama3.2:3b" not in alts
    assert set(alts) == set(m.LlmModel.objects.exclude(tag="llama3.2:3b").values_list("tag", flat=True))
    assert all(a["rejected_because"] for a in alts.values())

    row = m.SelectionDecision.objects.get()
    assert row.pk == out["decision_id"]
    assert (row.task_type.name, row.urgency, row.client) == ("general", "critical", "pager")
    assert (row.model.tag, row.endpoint.name, row.action, row.gpu_keys) == (
        "llama3.2:3b", "tower-nvidia", "use_loaded", [NVIDIA_GPU])
    assert row.policy_version == policy.POLICY_VERSION
    assert row.decision_us > 0
    assert row.created_at >= before - dt.timedelta(seconds=1)
    assert row.reason == out["reason"]
    assert row.quality == pytest.approx(0.85)
    assert row.residency_id == res.pk

    # candidates: every model, best first, the chosen one without a rejection
    assert [c["model"] for c in row.candidates][0] == "llama3.2:3b"
    assert row.candidates[0]["rejected_because"] is None
    assert {c["model"] for c in row.candidates} == set(m.LlmModel.objects.values_list("tag", flat=True))
    for c in row.candidates:
        assert {"model", "quality", "endpoint", "gpus", "action", "expected_wait_s", "score",
                "rejected_because"} <= set(c)

    # the live input state, and the slowly-changing part behind a ConfigSnapshot FK
    state = row.input_state
    assert state["now"] == pytest.approx(row.created_at.timestamp(), abs=1e-3)
    assert [r[:3] for r in state["residents"]] == [["llama3.2:3b", "tower-nvidia", "loaded"]]
    assert state["residents"][0][3] == [[NVIDIA_GPU, 2560]]
    assert isinstance(row.config, m.ConfigSnapshot)
    body = row.config.body
    assert {x["tag"] for x in body["models"]} == set(m.LlmModel.objects.values_list("tag", flat=True))
    assert {x["name"] for x in body["task_types"]} == set(TASKS)
    assert {x["name"] for x in body["urgencies"]} == set(URGENCIES)
    assert {x["key"] for x in body["gpus"]} == {"tower/0", NVIDIA_GPU}
    assert captured_loads == []


def test_decisions_share_one_config_snapshot(tower, api):
    put_loaded("llama3.2:3b")
    select(api, task_type="general", urgency="critical")
    records._current_config.update(cfg=None, id=None)  # as another process would: same content, same row
    from models_registry.selection import world as state

    state.invalidate_config()
    select(api, task_type="chat", urgency="critical")
    assert m.SelectionDecision.objects.count() == 2
    assert m.ConfigSnapshot.objects.count() == 1
    assert len(set(m.SelectionDecision.objects.values_list("config_id", flat=True))) == 1


@pytest.mark.parametrize("task_type", TASKS)
@pytest.mark.parametrize("urgency", URGENCIES)
def test_every_non_dry_run_selection_records_exactly_one_decision(tower, api, captured_loads, task_type, urgency,
                                                                   django_capture_on_commit_callbacks):
    put_loaded("llama3.2:3b")
    for n in (1, 2):  # the second sees what the first reserved
        with django_capture_on_commit_callbacks(execute=True):
            out = select(api, task_type=task_type, urgency=urgency)
        assert m.SelectionDecision.objects.count() == n
        row = m.SelectionDecision.objects.get(pk=out["decision_id"])
        assert row.action == out["action"]
        assert (row.model.tag if row.model else None) == out["model"]
        assert row.candidates and row.config_id and row.input_state["now"]
    # never more than one load queued, and never two active residencies of one model on one endpoint
    assert len(captured_loads) == m.Residency.objects.filter(trigger="selection").count() <= 1


def test_dry_run_records_nothing_and_reserves_nothing(tower, api, captured_loads, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        out = select(api, task_type="code_generation", urgency="background", dry_run=True)
    assert out["decision_id"] is None
    assert (out["model"], out["action"]) == ("qwen2.5-coder:7b", "load")  # it would load...
    assert m.SelectionDecision.objects.count() == 0  # ...but records,
    assert m.Residency.objects.count() == 0  # reserves
    assert m.ConfigSnapshot.objects.count() == 0
    assert callbacks == [] and captured_loads == []  # and queues nothing


def test_dry_run_does_not_touch_a_loaded_residency(tower, api):
    res = put_loaded("llama3.2:3b", last_used_s_ago=3600)
    out = select(api, task_type="general", urgency="critical", dry_run=True)
    assert out["action"] == "use_loaded"
    res2 = m.Residency.objects.get(pk=res.pk)
    assert (res2.last_used_at, res2.busy_until) == (res.last_used_at, res.busy_until)


# --------------------------------------------------------------------------- loads


def test_load_reserves_vram_and_queues_the_load_on_commit(tower, api, captured_loads,
                                                         django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        out = select(api, task_type="code_generation", urgency="background")
        assert captured_loads == []  # nothing is sent before the reservation is committed
    assert (out["model"], out["action"], out["endpoint"], out["gpus"]) == (
        "qwen2.5-coder:7b", "load", "tower-nvidia", [NVIDIA_GPU])
    assert out["expected_wait_s"] == pytest.approx(13.5)

    res = m.Residency.objects.get()
    assert (res.model.tag, res.endpoint.name, res.state, res.trigger) == (
        "qwen2.5-coder:7b", "tower-nvidia", "requested", "selection")
    need = m.LlmModel.objects.get(tag="qwen2.5-coder:7b").vram_mib
    assert res.vram_mib == need
    placements = list(res.placements.select_related("gpu__host"))
    assert [(p.gpu.key, p.vram_mib) for p in placements] == [(NVIDIA_GPU, need)]
    assert res.ready_at > _now()
    row = m.SelectionDecision.objects.get(pk=out["decision_id"])
    assert row.residency_id == res.pk

    assert len(callbacks) == 1
    callbacks[0]()
    assert captured_loads == [((), {"args": [res.pk], "queue": "host.tower", "retry": False})]


def test_second_identical_selection_waits_for_the_same_load(tower, api, captured_loads,
                                                            django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        first = select(api, task_type="code_generation", urgency="background")
    with django_capture_on_commit_callbacks(execute=True):
        second = select(api, task_type="code_generation", urgency="background")
    assert first["action"] == "load"
    assert (second["model"], second["action"], second["endpoint"]) == (
        "qwen2.5-coder:7b", "wait_for_load", "tower-nvidia")
    # What is left of the same load, then the first request's turn (honest waits: it is served first).
    service = first["expected_response_s"] - first["expected_wait_s"]
    assert first["expected_wait_s"] + service - 1.0 < second["expected_wait_s"] <= first["expected_response_s"] + 5.0
    res = m.Residency.objects.get()  # no second residency
    assert m.SelectionDecision.objects.get(pk=second["decision_id"]).residency_id == res.pk
    assert len(captured_loads) == 1  # and no second load (the callback left is the busy_until update)
    assert res.busy_until > _now()


def test_use_loaded_updates_last_used_and_busy_until(tower, api, django_capture_on_commit_callbacks):
    res = put_loaded("llama3.2:3b", last_used_s_ago=3600)
    assert res.busy_until is None
    before = _now()
    # The update runs once the decision has committed (its own short transaction).
    with django_capture_on_commit_callbacks(execute=True):
        out = select(api, task_type="general", urgency="critical")
    assert out["action"] == "use_loaded"
    res.refresh_from_db()
    assert res.state == "loaded"
    assert res.last_used_at >= before - dt.timedelta(milliseconds=1)
    assert res.busy_until > res.last_used_at  # pushed out by the expected generation time
    first_busy = res.busy_until
    with django_capture_on_commit_callbacks(execute=True):
        select(api, task_type="general", urgency="critical")
    res.refresh_from_db()
    assert res.busy_until > first_busy  # a second request queues behind the first


def test_the_prompt_counts_in_the_wait_and_in_the_models_busy_time(tower, api, django_capture_on_commit_callbacks,
                                                                   time_machine):
    """llama3.2:3b reads 1,600 prompt tokens a second (20 x its 80 tokens/s) on an endpoint that
    loads models with num_ctx 4096: a 3,200-token prompt adds 2 s before the first token, and the
    model stays busy for the prompt and the answer."""
    import datetime as dt

    time_machine.move_to(dt.datetime.now(dt.timezone.utc), tick=False)  # the queue is not eaten by a slow machine
    res = put_loaded("llama3.2:3b", last_used_s_ago=3600)
    with django_capture_on_commit_callbacks(execute=True):
        out = select(api, task_type="general", urgency="critical", input_tokens=3200, expected_output_tokens=80)
    assert (out["model"], out["action"]) == ("llama3.2:3b", "use_loaded")
    assert out["expected_prefill_s"] == pytest.approx(2.0)
    assert out["expected_wait_s"] == pytest.approx(2.0)
    assert out["expected_response_s"] == pytest.approx(3.0)
    assert "first token in 2.0 s (the prompt takes 2.0 s)" in out["reason"]
    row = m.SelectionDecision.objects.get(pk=out["decision_id"])
    assert row.input_tokens == 3200
    assert api.get(f"/api/v1/decisions/{row.pk}").json()["input_tokens"] == 3200
    res.refresh_from_db()
    assert (res.busy_until - res.last_used_at).total_seconds() == pytest.approx(3.0, abs=0.05)
    # The next request queues behind those 3 s; its own 10,000-token prompt is cut to the context.
    # (Its patience allows that wait: a critical request beyond it would take the sooner remote.)
    with django_capture_on_commit_callbacks(execute=True):
        out = select(api, task_type="general", urgency="critical", input_tokens=10_000, expected_output_tokens=80,
                     max_wait_s=10)
    assert (out["model"], out["action"]) == ("llama3.2:3b", "use_loaded")
    assert out["expected_prefill_s"] == pytest.approx(4096 / 1600)
    assert out["expected_wait_s"] == pytest.approx(3.0 + 4096 / 1600)


def test_busy_until_grows_by_one_request_at_a_time(tower, api, django_capture_on_commit_callbacks):
    """Each selection routed to a loaded model queues one request's generation behind the
    others: the expected wait grows by about one queue slot per request, not geometrically
    (which would push busy_until past year 10,000 within ~40 requests: a 503 for ever after)."""
    res = put_loaded("llama3.2:3b", last_used_s_ago=3600)
    slot = 1.0  # PolicyParams.queue_slot_s
    gen = 64 / 80  # general's default 64 tokens at llama3.2:3b's 80 tokens/s
    waits, failed = [], None
    for n in range(45):
        with django_capture_on_commit_callbacks(execute=True):
            r = api.post(SELECT, {"task_type": "general", "urgency": "critical"})
        if r.status_code != 200:
            failed = (n, r.status_code, r.content)
            break
        waits.append(r.json()["expected_wait_s"])
    for n, wait in enumerate(waits):
        assert wait <= n * max(slot, gen) + slot, (n, waits[: n + 1])
    assert failed is None, failed
    res.refresh_from_db()
    assert res.busy_until - _now() <= dt.timedelta(seconds=45 * (slot + gen))


def test_load_that_evicts_an_idle_model_marks_it_unloading(tower, api, captured_loads,
                                                         django_capture_on_commit_callbacks):
    # Only the RTX 3060 is up (11,325 MiB usable), holding an idle deepseek-coder-v2:16b
    # (8,704 MiB): batch analysis wants mistral:7b (5,222 MiB), which fits only after evicting it.
    m.Endpoint.objects.filter(name="tower-amd").update(is_up=False)
    idle = put_loaded("deepseek-coder-v2:16b", last_used_s_ago=7200)
    with django_capture_on_commit_callbacks(execute=True):
        out = select(api, task_type="analysis", urgency="batch")
    assert (out["model"], out["action"], out["endpoint"]) == ("mistral:7b", "load", "tower-nvidia")
    assert [e["model"] for e in out["evictions"]] == ["deepseek-coder-v2:16b"]
    idle.refresh_from_db()
    assert idle.state == "unloading"
    new = m.Residency.objects.get(state="requested")
    assert new.model.tag == "mistral:7b"
    # what stays active on the GPU never exceeds it (the evicted one is on its way out)
    assert new.vram_mib <= NVIDIA_USABLE_MIB
    assert len(captured_loads) == 1


# --------------------------------------------------------------------------- decisions and outcomes


def test_get_decision_returns_it_with_candidates(tower, api):
    put_loaded("llama3.2:3b")
    out = select(api, task_type="troubleshooting", urgency="critical", client="oncall", max_wait_s=2)
    r = api.get(f"/api/v1/decisions/{out['decision_id']}")
    assert r.status_code == 200
    d = r.json()
    assert d["id"] == out["decision_id"]
    assert (d["task_type"], d["urgency"], d["client"], d["max_wait_s"]) == ("troubleshooting", "critical", "oncall", 2)
    assert (d["model"], d["action"], d["endpoint"], d["gpus"]) == (out["model"], out["action"], out["endpoint"],
                                                                    out["gpus"])
    assert d["reason"] == out["reason"] and d["policy_version"] == out["policy_version"]
    assert len(d["candidates"]) == m.LlmModel.objects.count()
    assert d["candidates"][0]["model"] == out["model"]
    assert d["outcome"] is None
    assert d["decision_us"] > 0


def test_get_unknown_decision_is_404_json(tower, api):
    r = api.get("/api/v1/decisions/987654321")
    assert r.status_code == 404
    assert r["Content-Type"].startswith("application/json")
    assert "detail" in r.json()


def test_outcome_is_stored_and_a_second_report_replaces_it(tower, api):
    put_loaded("llama3.2:3b")
    did = select(api, task_type="general", urgency="critical")["decision_id"]
    url = f"/api/v1/decisions/{did}/outcome"

    r = api.post(url, {"response_ms": 812, "first_token_ms": 95, "success": True, "rating": 0.9})
    assert r.status_code == 200, r.content
    assert r.json()["decision_id"] == did and r.json()["first_token_ms"] == 95
    o = m.DecisionOutcome.objects.get(decision_id=did)
    assert (o.response_ms, o.first_token_ms, o.success, o.rating) == (812, 95, True, 0.9)

    r = api.post(url, {"response_ms": 2000, "success": False})
    assert r.status_code == 200, r.content
    assert m.DecisionOutcome.objects.count() == 1
    o = m.DecisionOutcome.objects.get(decision_id=did)
    assert (o.response_ms, o.first_token_ms, o.success, o.rating) == (2000, None, False, None)

    got = api.get(f"/api/v1/decisions/{did}").json()["outcome"]
    assert (got["response_ms"], got["first_token_ms"], got["success"], got["rating"]) == (2000, None, False, None)


def test_outcome_for_unknown_decision_is_404(tower, api):
    r = api.post("/api/v1/decisions/987654321/outcome", {"response_ms": 10, "success": True})
    assert r.status_code == 404
    assert "987654321" in r.json()["detail"]
    assert m.DecisionOutcome.objects.count() == 0


# --------------------------------------------------------------------------- state and models


def test_state_shape(tower, api):
    put_loaded("llama3.2:3b")
    r = api.get("/api/v1/state")
    assert r.status_code == 200
    s = r.json()
    assert set(s) == {"gpus", "endpoints", "residents"}
    gpus = {g["key"]: g for g in s["gpus"]}
    assert set(gpus) == {"tower/0", NVIDIA_GPU}
    nv = gpus[NVIDIA_GPU]
    assert {"key", "name", "vendor", "total_mib", "reserved_mib", "allocated_mib", "free_mib", "measured_free_mib",
            "measured_at"} <= set(nv)
    assert (nv["vendor"], nv["total_mib"], nv["allocated_mib"]) == ("nvidia", 12288, 2560)
    assert nv["free_mib"] == nv["total_mib"] - nv["reserved_mib"] - 2560 == NVIDIA_USABLE_MIB - 2560
    amd = gpus["tower/0"]
    assert (amd["vendor"], amd["allocated_mib"], amd["free_mib"]) == ("amd", 0, 16384 - 1024)
    assert {e["name"] for e in s["endpoints"]} == {"tower-amd", "tower-nvidia"}
    assert {e["name"]: e["gpus"] for e in s["endpoints"]} == {"tower-amd": ["tower/0"], "tower-nvidia": [NVIDIA_GPU]}
    [res] = s["residents"]
    assert (res["model"], res["endpoint"], res["gpus"], res["state"], res["vram_mib"]) == (
        "llama3.2:3b", "tower-nvidia", [NVIDIA_GPU], "loaded", 2560)


def test_models_shape(tower, api):
    put_loaded("llama3.2:3b")
    r = api.get("/api/v1/models")
    assert r.status_code == 200
    rows = {x["tag"]: x for x in r.json()}
    assert set(rows) == set(m.LlmModel.objects.values_list("tag", flat=True))
    q = rows["qwen2.5-coder:7b"]
    assert (q["kind"], q["vram_mib"], q["load_s"], q["tokens_per_s"]) == ("local", 4608, 13.5, 45)
    assert q["quality"]["code_generation"] == pytest.approx(0.88)
    assert set(q["quality"]) == set(TASKS)
    assert q["loaded_on"] == []
    assert rows["llama3.2:3b"]["loaded_on"] == ["tower-nvidia:loaded"]
    assert rows["remote:gpt-4o-mini"]["kind"] == "remote"


# --------------------------------------------------------------------------- admin preload / unload


def test_preload_creates_an_admin_residency_once(tower, api, captured_loads, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        r = api.post("/api/v1/models/mistral:7b/preload")
    assert r.status_code == 200, r.content
    first = r.json()
    assert (first["model"], first["state"]) == ("mistral:7b", "requested")
    res = m.Residency.objects.get()
    assert (res.pk, res.trigger, res.state, res.model.tag) == (first["residency_id"], "admin", "requested",
                                                               "mistral:7b")
    assert res.endpoint.name == first["endpoint"]
    assert sum(res.placements.values_list("vram_mib", flat=True)) == res.vram_mib == 5222
    assert captured_loads == [((), {"args": [res.pk], "queue": "host.tower", "retry": False})]

    with django_capture_on_commit_callbacks(execute=True):
        again = api.post("/api/v1/models/mistral:7b/preload")
    assert again.status_code == 200
    assert again.json()["residency_id"] == res.pk
    assert m.Residency.objects.count() == 1 and len(captured_loads) == 1


def test_preload_on_a_named_endpoint(tower, api, captured_loads, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        r = api.post("/api/v1/models/tinyllama/preload", {"endpoint": "tower-amd"})
    assert r.status_code == 200, r.content
    assert r.json()["endpoint"] == "tower-amd"
    assert m.Residency.objects.get().endpoint.name == "tower-amd"


def test_preload_of_an_unknown_model_is_404(tower, api):
    r = api.post("/api/v1/models/nope:1b/preload")
    assert r.status_code == 404
    assert "nope:1b" in r.json()["detail"]
    assert m.Residency.objects.count() == 0


def test_preload_of_a_tag_with_slashes(tower, api, captured_loads, django_capture_on_commit_callbacks):
    """Ollama tags may contain '/' (hf.co/org/repo:quant, namespace/model); profiles allow them."""
    tag = "hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M"
    m.LlmModel.objects.create(tag=tag, vram_mib=1200, load_s=3.0, tokens_per_s=200)
    with django_capture_on_commit_callbacks(execute=True):
        r = api.post(f"/api/v1/models/{tag}/preload")
    assert r.status_code == 200, r.content
    assert r.json()["model"] == tag
    r = api.post(f"/api/v1/models/{tag}/unload")
    assert r.status_code == 200, r.content


def test_unload_marks_the_residency_unloading(tower, api, captured_loads, captured_unloads,
                                              django_capture_on_commit_callbacks):
    res = put_loaded("llama3.2:3b")
    with django_capture_on_commit_callbacks(execute=True):
        r = api.post("/api/v1/models/llama3.2:3b/unload")
    assert r.status_code == 200, r.content
    out = r.json()
    assert (out["residency_id"], out["state"], out["endpoint"]) == (res.pk, "unloading", "tower-nvidia")
    res.refresh_from_db()
    assert res.state == "unloading"
    assert len(captured_unloads) == 1
    assert captured_unloads[0][1]["queue"] == "host.tower"
    assert captured_unloads[0][1]["args"][0] == res.pk


def test_unload_of_a_model_that_is_not_loaded(tower, api):
    r = api.post("/api/v1/models/mistral:7b/unload")
    assert r.status_code == 200
    assert r.json()["state"] is None
    assert api.post("/api/v1/models/nope:1b/unload").status_code == 404


# --------------------------------------------------------------------------- replay


@pytest.mark.parametrize(
    "task_type,urgency,loaded",
    [
        ("general", "critical", ["llama3.2:3b"]),
        ("code_generation", "interactive", ["llama3.2:3b"]),
        ("analysis", "batch", []),
        ("general", "interactive", ["tinyllama"]),
        ("code_generation", "background", ["tinyllama", "llama3.2:3b"]),
    ],
)
def test_a_recorded_decision_replays_to_the_same_model(tower, api, captured_loads, task_type, urgency, loaded,
                                                       django_capture_on_commit_callbacks):
    for tag in loaded:
        put_loaded(tag, "tower-nvidia" if tag == loaded[0] else "tower-amd")
    with django_capture_on_commit_callbacks(execute=True):
        out = select(api, task_type=task_type, urgency=urgency, expected_output_tokens=100, input_tokens=5000)
    row = m.SelectionDecision.objects.select_related("config").get(pk=out["decision_id"])
    world = records.world_from_record(row.config.body, row.input_state)
    req = SelectionRequest(task_type=row.task_type.name, urgency=row.urgency, min_quality=row.min_quality,
                           max_wait_s=row.max_wait_s, expected_output_tokens=row.expected_output_tokens,
                           input_tokens=row.input_tokens)
    again = policy.select(world, req)
    assert (again.model, again.action, again.endpoint, list(again.gpus)) == (
        out["model"], out["action"], out["endpoint"], out["gpus"])
    assert again.expected_wait_s == pytest.approx(out["expected_wait_s"])
    assert [c.model for c in again.candidates] == [c["model"] for c in row.candidates]


def test_select_reply_matches_its_documented_schema(tower, api):
    """The select view serialises its reply directly; it must still be exactly SelectOut."""
    from models_registry.api.schemas import SelectOut

    out = select(api, task_type="code_generation", urgency="interactive", dry_run=True)
    assert SelectOut.model_validate(out).model_dump(mode="json") == out
