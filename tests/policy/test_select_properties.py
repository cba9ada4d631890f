"""Properties of the decision core over random worlds (hypothesis)."""
from __future__ import annotations

from collections import defaultdict

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from models_registry.policy import (
    EndpointView,
    GpuView,
    ModelView,
    PolicyParams,
    ResidentView,
    SelectionRequest,
    TaskTypeView,
    UrgencyView,
    World,
    free_mib_by_gpu,
    place_many,
    select,
)

NOW = 1_000_000.0
TASKS = ("general", "code")
URGENCIES = (
    UrgencyView("critical", 2, 0.2, 0.0, True),
    UrgencyView("interactive", 5, 0.05, 0.02),
    UrgencyView("background", 120, 0.001, 0.05),
    UrgencyView("batch", 3600, 0.0001, 0.05),
)
STATES = ("requested", "loading", "loaded", "loaded", "loaded", "unloading")


@st.composite
def worlds(draw):
    n_eps = draw(st.integers(1, 3))
    gpus, endpoints = [], []
    for e in range(n_eps):
        keys = []
        for g in range(draw(st.integers(1, 3))):
            key = f"g{e}{g}"
            total = draw(st.integers(2000, 24000))
            measured = draw(st.one_of(st.none(), st.integers(0, total)))
            gpus.append(GpuView(key, key, total, draw(st.integers(0, 1500)), measured))
            keys.append(key)
        endpoints.append(EndpointView(f"ep{e}", tuple(keys), allow_split=draw(st.booleans()),
                                      up=draw(st.sampled_from((True, True, True, False))),
                                      num_ctx=draw(st.one_of(st.none(), st.integers(512, 8192)))))
    models = []
    for i in range(draw(st.integers(1, 8))):
        models.append(ModelView(
            tag=f"m{i}",
            vram_mib=draw(st.integers(500, 30000)),
            load_s=draw(st.floats(0.5, 60)),
            load_s_by_endpoint=tuple((f"ep{e}", draw(st.floats(0.5, 60)))
                                     for e in range(n_eps) if draw(st.booleans())),
            tokens_per_s=draw(st.floats(5, 300)),
            prefill_tokens_per_s=draw(st.one_of(st.just(0.0), st.floats(100, 6000))),
            quality={t: draw(st.floats(0, 1)) for t in TASKS if draw(st.integers(0, 5))},
            enabled=draw(st.integers(0, 6)) > 0,
            pinned=draw(st.integers(0, 6)) == 0,
        ))
    if draw(st.booleans()):
        models.append(ModelView("remote:api", kind="remote", remote_latency_s=draw(st.floats(0, 4)),
                                quality={t: draw(st.floats(0, 1)) for t in TASKS},
                                enabled=draw(st.integers(0, 4)) > 0))
    residents = []
    for _ in range(draw(st.integers(0, 6))):
        m = draw(st.sampled_from([m for m in models if m.kind == "local"]))
        ep = draw(st.sampled_from(endpoints))
        on = draw(st.lists(st.sampled_from(ep.gpus), min_size=1, max_size=len(ep.gpus),
                           unique=True))
        share = max(1, m.vram_mib // len(on))
        residents.append(ResidentView(
            model=m.tag, endpoint=ep.key, vram_by_gpu=tuple((g, share) for g in on),
            state=draw(st.sampled_from(STATES)),
            ready_at=draw(st.one_of(st.none(), st.floats(NOW - 30, NOW + 60))),
            last_used_at=draw(st.one_of(st.none(), st.floats(NOW - 5000, NOW))),
            in_flight=draw(st.sampled_from((0, 0, 0, 1, 3))),
            pinned=draw(st.integers(0, 5)) == 0,
            busy_s=draw(st.one_of(st.none(), st.floats(0, 90))),  # long queues: second copies
        ))
    params = PolicyParams(recent_use_window_s=draw(st.sampled_from((0.0, 900.0))))
    return World(NOW, tuple(gpus), tuple(endpoints), tuple(residents), tuple(models),
                 (TaskTypeView("general", 0.7, 64), TaskTypeView("code", 0.8, 256)),
                 URGENCIES, params)


requests = st.builds(
    SelectionRequest,
    task_type=st.sampled_from(TASKS),
    urgency=st.sampled_from([u.name for u in URGENCIES]),
    min_quality=st.one_of(st.none(), st.floats(0, 1)),
    max_wait_s=st.one_of(st.none(), st.floats(0, 100)),
    expected_output_tokens=st.one_of(st.none(), st.integers(0, 4000)),
    input_tokens=st.one_of(st.none(), st.integers(0, 20000)),
)

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _evictable(world, ev):
    models = {m.tag: m for m in world.models}
    up = {e.key for e in world.endpoints if e.up}
    return [r for r in world.residents
            if r.model == ev.model and r.endpoint == ev.endpoint and r.gpus == ev.gpus
            and r.state == "loaded" and r.in_flight == 0 and not r.pinned
            and not models[r.model].pinned and r.endpoint in up]


def _floor(world, request):
    floor = next(t.quality_floor for t in world.task_types if t.name == request.task_type)
    return max(floor, request.min_quality or 0.0)


@SETTINGS
@given(worlds(), requests)
def test_a_load_never_goes_beyond_free_vram(world, request):
    d = select(world, request)
    if d.action != "load":
        return
    free = free_mib_by_gpu(world)
    freed = defaultdict(int)
    for ev in d.evictions:
        r = _evictable(world, ev)[0]
        for g, mib in r.vram_by_gpu:
            freed[g] += mib
    model = next(m for m in world.models if m.tag == d.model)
    chosen = d.candidates[0]
    assert chosen.model == d.model and chosen.gpus == d.gpus
    endpoint = next(e for e in world.endpoints if e.key == d.endpoint)
    assert endpoint.up and set(d.gpus) <= set(endpoint.gpus)
    if len(d.gpus) == 1:
        g = d.gpus[0]
        assert model.vram_mib <= free[g] + freed[g]
    else:
        assert endpoint.allow_split
        total = sum(free[g] + freed[g] for g in d.gpus)
        assert model.vram_mib + world.params.split_overhead_mib * (len(d.gpus) - 1) <= total


@SETTINGS
@given(worlds(), requests)
def test_never_evicts_a_pinned_busy_or_unloaded_model(world, request):
    d = select(world, request)
    for c in d.candidates:
        for ev in c.evictions:
            assert _evictable(world, ev), f"{ev} is not an idle, unpinned, loaded model"


@SETTINGS
@given(worlds(), requests)
def test_fallback_only_when_no_local_candidate_meets_the_floor_and_fits(world, request):
    d = select(world, request)
    floor = _floor(world, request)
    local_ok = [c for c in d.candidates if c.action in ("use_loaded", "wait_for_load", "load")
                and c.quality >= floor
                and next(m for m in world.models if m.tag == c.model).quality.get(request.task_type)
                is not None]
    if d.action == "fallback" and local_ok:
        # Only a critical request falls back beside an acceptable local model: when no loaded one
        # answers within its patience and the remote (meeting the floor) answers soonest.
        urg = next(u for u in world.urgencies if u.name == request.urgency)
        assert urg.use_loaded_if_acceptable and d.met_floor
        assert d.expected_wait_s <= min(c.expected_wait_s for c in local_ok)
    elif d.action == "fallback" or d.model is None:
        assert not local_ok
    elif not d.met_floor:
        # Nothing meets the floor anywhere: a local model below it rather than a remote no better.
        assert not local_ok and d.action in ("use_loaded", "wait_for_load", "load")
        remotes = [c for c in d.candidates if c.action == "fallback" and c.quality >= floor]
        assert not remotes
        best_remote = max((c for c in d.candidates if c.action == "fallback"), key=lambda c: c.score)
        assert d.candidates[0].score > best_remote.score or d.quality >= best_remote.quality
    else:
        assert local_ok and d.met_floor
        assert d.action in ("use_loaded", "wait_for_load", "load")


@SETTINGS
@given(worlds(), requests)
def test_same_input_same_decision_and_it_is_among_the_candidates(world, request):
    d = select(world, request)
    assert d == select(world, request)
    tags = [c.model for c in d.candidates]
    assert len(tags) == len(set(tags)) == len(world.models)
    if d.model is not None:
        assert d.candidates[0].model == d.model and d.candidates[0].rejected_because is None
        assert all(c.rejected_because for c in d.candidates[1:])
        assert d.evictions == d.candidates[0].evictions
    else:
        assert all(c.rejected_because for c in d.candidates)
    assert d.reason


@SETTINGS
@given(worlds(), requests)
def test_patient_enough_choices_are_not_warned(world, request):
    d = select(world, request)
    if d.model is None or d.action == "fallback":
        return
    patience = request.max_wait_s if request.max_wait_s is not None else \
        next(u.patience_s for u in world.urgencies if u.name == request.urgency)
    assert d.warned == (d.expected_wait_s > patience)


@SETTINGS
@given(worlds(), st.lists(st.sampled_from([f"m{i}" for i in range(8)]), max_size=6))
def test_place_many_never_over_commits_nor_evicts_busy_or_wanted(world, tags):
    known = {m.tag for m in world.models}
    tags = [t for t in tags if t in known]
    out = place_many(world, tags)
    free = free_mib_by_gpu(world)
    freed: dict[str, int] = defaultdict(int)
    seen = set()
    used: dict[str, int] = defaultdict(int)
    for tag, p in out.items():
        if p is None:
            continue
        endpoint = next(e for e in world.endpoints if e.key == p.endpoint)
        assert endpoint.up and set(p.gpus) <= set(endpoint.gpus)
        for ev in p.evictions:
            assert ev.model not in tags
            matches = [r for r in _evictable(world, ev) if id(r) not in seen]
            assert matches
            seen.add(id(matches[0]))
            for g, mib in matches[0].vram_by_gpu:
                freed[g] += mib
        for g, mib in p.vram_by_gpu:
            used[g] += mib
    for g, mib in used.items():
        assert mib <= max(free[g], 0) + freed[g]


@SETTINGS
@given(worlds(), requests)
def test_the_prompt_is_part_of_the_wait_and_a_copy_goes_where_the_model_is_not(world, request):
    d = select(world, request)
    if d.action in ("use_loaded", "wait_for_load", "load"):
        m = next(x for x in world.models if x.tag == d.model)
        ep = next(e for e in world.endpoints if e.key == d.endpoint)
        prompt = min(request.input_tokens or 0, ep.num_ctx if ep.num_ctx is not None else 10**9)
        rate = m.prefill_tokens_per_s * (world.params.split_throughput_factor if len(d.gpus) > 1 else 1.0)
        assert d.expected_prefill_s == pytest.approx(prompt / rate if rate > 0 else 0.0)
        assert d.expected_wait_s >= d.expected_prefill_s - 1e-9
    else:
        assert d.expected_prefill_s == 0.0
    if d.action == "load":
        # Never a second load where the model already is (Ollama has one copy per server).
        assert not any(r.model == d.model and r.endpoint == d.endpoint and r.state != "unloading"
                       for r in world.residents)
