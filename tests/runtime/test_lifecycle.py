"""The residency state machine (models_registry.runtime.lifecycle) and the QuerySet methods it leans on."""
from __future__ import annotations

import ast
import datetime as dt
from pathlib import Path

import pytest

from models_registry import models as m
from models_registry import timeutil
from models_registry.runtime import lifecycle
from models_registry.runtime.lifecycle import ORIGIN, Event, IllegalTransition

S = m.Residency.State
K = m.LoadEvent.Kind
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def booked(tower):
    """A residency of mistral:7b on the Tower's AMD endpoint, in state requested, with its decision."""
    now = timeutil.utcnow()
    gpu = m.Gpu.objects.get(host__name="tower", index=0)
    r = lifecycle.admit(
        state=S.REQUESTED, gpus=[(gpu.pk, 5222)], model=m.LlmModel.objects.get(tag="mistral:7b"),
        endpoint=m.Endpoint.objects.get(name="tower-amd"), trigger=m.LoadEvent.Trigger.SELECTION,
        vram_mib=5222, requested_at=now,
    )
    m.SelectionDecision.objects.create(created_at=now, task_type=m.TaskType.objects.first(), urgency="batch",
                                       reason="test", policy_version="t", residency=r, action="load")
    return r


def test_a_transition_moves_the_row_and_writes_its_event_once(booked):
    now = timeutil.utcnow()
    assert lifecycle.transition(booked.pk, S.REQUESTED, S.LOADING, loaded_at=now)
    event = Event(K.LOAD, started_at=now, finished_at=now, duration_s=1.5, decision_id=ORIGIN)
    assert lifecycle.transition(booked.pk, S.LOADING, S.LOADED, ready_at=now, event=event)
    assert not lifecycle.transition(booked.pk, S.LOADING, S.LOADED, ready_at=now, event=event)  # lost the race

    booked.refresh_from_db()
    assert (booked.state, booked.loaded_at, booked.ready_at) == (S.LOADED, now, now)
    (ev,) = m.LoadEvent.objects.filter(residency=booked)
    assert (ev.kind, ev.trigger, ev.gpu_keys, ev.vram_mib, ev.duration_s) == ("load", "selection", ["tower/0"], 5222, 1.5)
    assert ev.decision_id == booked.decisions.get().pk and ev.requested_at == booked.requested_at


def test_moves_outside_the_table_are_refused_and_change_nothing(booked):
    with pytest.raises(IllegalTransition, match="from requested to loaded"):
        lifecycle.transition(booked.pk, S.REQUESTED, S.LOADED, event=Event(K.LOAD))
    with pytest.raises(IllegalTransition, match="writes load event, not none"):
        lifecycle.transition(booked.pk, S.LOADING, S.LOADED)  # a load is always recorded
    with pytest.raises(IllegalTransition, match="from unloaded"):
        lifecycle.transition(booked.pk, [S.LOADED, S.UNLOADED], S.UNLOADING)
    with pytest.raises(IllegalTransition, match="says who asked"):
        lifecycle.transition(booked.pk, S.LOADED, S.UNLOADING)  # the event that ends it needs the trigger
    with pytest.raises(IllegalTransition, match="may not start as unloading"):
        lifecycle.admit(state=S.UNLOADING, model=booked.model, endpoint=booked.endpoint, vram_mib=1,
                        requested_at=timeutil.utcnow())
    booked.refresh_from_db()
    assert booked.state == S.REQUESTED and not m.LoadEvent.objects.exists()


def test_active_residencies_are_those_that_hold_vram(booked):
    other = lifecycle.admit(state=S.REQUESTED, model=booked.model, endpoint=m.Endpoint.objects.get(name="tower-nvidia"),
                            vram_mib=1, requested_at=timeutil.utcnow())
    assert set(m.Residency.objects.active()) == {booked, other}
    lifecycle.transition(other.pk, S.REQUESTED, S.FAILED, event=Event(K.FAIL))
    assert list(m.Residency.objects.active()) == [booked]


def test_latest_per_gpu_is_each_gpus_newest_snapshot(tower):
    now = timeutil.utcnow()
    amd, nvidia = m.Gpu.objects.order_by("index")
    for gpu, ages in ((amd, (30, 5, 90)), (nvidia, (300,))):
        m.GpuSnapshot.objects.bulk_create(
            m.GpuSnapshot(gpu=gpu, taken_at=now - dt.timedelta(seconds=age), total_mib=100, used_mib=age, free_mib=1)
            for age in ages)
    latest = {s.gpu_id: s.used_mib for s in m.GpuSnapshot.objects.latest_per_gpu()}
    assert latest == {amd.pk: 5, nvidia.pk: 300}
    assert {s.gpu_id: s.used_mib for s in m.GpuSnapshot.objects.latest_per_gpu(since=now - dt.timedelta(seconds=60))} \
        == {amd.pk: 5}  # nothing fresh for the NVIDIA GPU


def _raw_choice_strings(tree: ast.AST) -> list[tuple[int, str]]:
    """String constants given as a state, kind or trigger: `state="loaded"`, `x.state == "loaded"`, ..."""
    names = {"state", "kind", "trigger", "state__in", "kind__in", "trigger__in", "residency__state__in"}
    values = set(S.values) | set(K.values) | set(m.LoadEvent.Trigger.values)
    found = []

    def strings(node):
        elts = node.elts if isinstance(node, (ast.Tuple, ast.List, ast.Set)) else [node]
        return [e for e in elts if isinstance(e, ast.Constant) and e.value in values]

    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg in names:
            found += [(c.lineno, c.value) for c in strings(node.value)]
        elif isinstance(node, ast.Compare) and isinstance(node.left, ast.Attribute) and node.left.attr in names:
            for comparator in node.comparators:
                found += [(c.lineno, c.value) for c in strings(comparator)]
    return found


def test_the_shell_names_states_kinds_and_triggers_by_the_models_choices():
    # The pure policy, the simulator, the replay and the metric definitions have their own
    # vocabulary (no Django there).
    skip = {"policy", "fakes", "replay", "migrations", "metrics.py"}
    offenders = []
    for path in sorted((ROOT / "models_registry").rglob("*.py")):
        if skip & set(path.relative_to(ROOT).parts):
            continue
        offenders += [f"{path.relative_to(ROOT)}:{line}: {value!r}"
                      for line, value in _raw_choice_strings(ast.parse(path.read_text()))]
    assert offenders == []


@pytest.mark.parametrize("kind, trigger, minutes_ago, thrash", [
    (K.EVICT, m.Trigger.SELECTION, 5, True),  # TowerOps evicted it for another load, 5 min ago
    (K.UNLOAD, m.Trigger.EXTERNAL, 5, True),  # Ollama dropped it on its own
    (K.EVICT, m.Trigger.PRELOAD, 11, False),  # beyond the 10-minute window
    (K.UNLOAD, m.Trigger.ADMIN, 5, False),  # an admin's unload is not an eviction
])
def test_a_load_soon_after_its_eviction_from_the_same_endpoint_is_a_thrash_load(booked, kind, trigger, minutes_ago,
                                                                                thrash):
    now = timeutil.utcnow()
    gone = booked.requested_at - dt.timedelta(minutes=minutes_ago)
    m.LoadEvent.objects.create(model=booked.model, endpoint=booked.endpoint, kind=kind, trigger=trigger,
                               requested_at=gone, finished_at=gone)
    # The same model evicted from the other endpoint just now does not count here.
    m.LoadEvent.objects.create(model=booked.model, endpoint=m.Endpoint.objects.get(name="tower-nvidia"),
                               kind=K.EVICT, trigger=m.Trigger.SELECTION, requested_at=now, finished_at=now)
    lifecycle.transition(booked.pk, S.REQUESTED, S.LOADING, loaded_at=now)
    lifecycle.transition(booked.pk, S.LOADING, S.LOADED, ready_at=now, event=Event(K.LOAD, finished_at=now))
    assert m.LoadEvent.objects.get(residency=booked, kind=K.LOAD).thrash is thrash
