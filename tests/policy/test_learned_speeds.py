"""Speeds the gateway measured per model and endpoint override the catalog's there, in the waits and
response times select quotes (and so in the choice)."""
from __future__ import annotations

from dataclasses import replace

from models_registry.policy import SelectionRequest, select


def with_speeds(world, tag, *speeds):
    models = tuple(replace(m, speeds_by_endpoint=tuple(speeds)) if m.tag == tag else m for m in world.models)
    return replace(world, models=models)


def test_a_learned_generation_speed_sets_the_response_time_on_that_endpoint_only(tower):
    world = tower.world(tower.res("llama3.2:3b", tower.nvidia))
    req = SelectionRequest("chat", "interactive", expected_output_tokens=300, input_tokens=0)
    catalog = select(world, req)
    assert (catalog.model, catalog.endpoint, catalog.action) == ("llama3.2:3b", tower.nvidia, "use_loaded")
    tps = tower.models["llama3.2:3b"].tokens_per_s

    slow = select(with_speeds(world, "llama3.2:3b", (tower.nvidia, tps / 3, 0.0)), req)
    assert (slow.model, slow.endpoint) == ("llama3.2:3b", tower.nvidia)
    assert slow.expected_response_s - slow.expected_wait_s == 300 / (tps / 3)
    # learned on the other endpoint only: nothing changes here
    elsewhere = select(with_speeds(world, "llama3.2:3b", (tower.amd, tps / 3, 0.0)), req)
    assert elsewhere.expected_response_s == catalog.expected_response_s


def test_a_learned_prefill_speed_sets_the_prompts_share_of_the_wait(tower):
    world = tower.world(tower.res("llama3.2:3b", tower.nvidia))
    req = SelectionRequest("chat", "interactive", expected_output_tokens=10, input_tokens=2000)
    learned = select(with_speeds(world, "llama3.2:3b", (tower.nvidia, 0.0, 500.0)), req)
    assert learned.endpoint == tower.nvidia
    assert learned.expected_prefill_s == 2000 / 500.0
    catalog = select(world, req)
    assert catalog.expected_prefill_s == 2000 / tower.models["llama3.2:3b"].prefill_tokens_per_s
