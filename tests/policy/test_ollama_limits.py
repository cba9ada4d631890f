"""Ollama's loaded-model limit in the policy's picture of the tower (ollama_rules.max_loaded_models):
at the limit a load names the eviction Ollama would otherwise make behind TowerOps' back."""
from __future__ import annotations

from dataclasses import replace

from models_registry.policy import SelectionRequest, place, select


def limited(world, endpoint, n):
    return replace(world, endpoints=tuple(replace(e, max_loaded=n) if e.key == endpoint else e
                                          for e in world.endpoints))


def test_the_profiles_default_is_ollamas_three_per_gpu(tower):
    assert {e.key: e.max_loaded for e in tower.base.endpoints} == {tower.amd: 3, tower.nvidia: 3}


def test_at_the_limit_a_load_evicts_the_least_recently_used_runner_though_vram_is_free(tower):
    world = tower.world(tower.res("tinyllama", tower.nvidia, used_ago=600),
                        tower.res("llama3.2:3b", tower.nvidia, used_ago=60), down=(tower.amd,))
    req = SelectionRequest("code_generation", "batch")
    free = select(world, req)
    assert (free.action, free.endpoint, free.evictions) == ("load", tower.nvidia, ())  # room for a third runner

    at_limit = select(limited(world, tower.nvidia, 2), req)
    assert (at_limit.model, at_limit.action, at_limit.endpoint) == (free.model, "load", tower.nvidia)
    assert [e.model for e in at_limit.evictions] == ["tinyllama"]  # LRU, as placement evicts for VRAM
    p = place(limited(world, tower.nvidia, 2), free.model)
    assert [e.model for e in p.evictions] == ["tinyllama"]


def test_at_the_limit_with_every_runner_busy_nothing_is_loaded_there(tower):
    world = limited(tower.world(tower.res("tinyllama", tower.nvidia, in_flight=1),
                                tower.res("llama3.2:3b", tower.nvidia, in_flight=1), down=(tower.amd,)),
                    tower.nvidia, 2)
    d = select(world, SelectionRequest("code_generation", "batch"))
    assert not (d.action == "load" and d.endpoint == tower.nvidia), d
    assert place(world, "qwen2.5-coder:7b") is None


def test_below_the_limit_nothing_changes(tower):
    world = tower.world(tower.res("tinyllama", tower.nvidia, used_ago=600), down=(tower.amd,))
    req = SelectionRequest("code_generation", "batch")
    assert select(limited(world, tower.nvidia, 2), req) == select(world, req)
