"""The world the policy reads carries what the gateway learned: speeds per model and endpoint, and
load seconds only where a load was measured."""
from __future__ import annotations

from models_registry import models as m
from models_registry import timeutil
from models_registry.runtime.loads import learn_load_time
from models_registry.selection import world as state


def model_view(tag):
    state.invalidate_config()
    world, _, _ = state.read_world(timeutil.utcnow())
    return next(v for v in world.models if v.tag == tag)


def test_learned_speeds_reach_the_policy_and_a_speed_only_row_is_not_a_load_time(tower):
    llama = m.LlmModel.objects.get(tag="llama3.2:3b")
    amd, nvidia = m.Endpoint.objects.get(name="tower-amd"), m.Endpoint.objects.get(name="tower-nvidia")
    m.LoadTimeEstimate.objects.create(model=llama, endpoint=nvidia, seconds=llama.load_s, samples=0,
                                      tokens_per_s=42.0, prefill_tokens_per_s=None, speed_samples=3)
    view = model_view("llama3.2:3b")
    assert view.speeds_by_endpoint == (("tower-nvidia", 42.0, 0.0),)
    assert view.load_s_by_endpoint == ()  # the gateway's speeds alone: no load was measured there
    assert view.tokens_per_s_on("tower-nvidia") == 42.0 and view.tokens_per_s_on("tower-amd") == llama.tokens_per_s

    learn_load_time(llama.pk, nvidia.pk, 4.0)  # the first measured load replaces the catalog's seconds
    learn_load_time(llama.pk, amd.pk, 9.0)
    assert model_view("llama3.2:3b").load_s_by_endpoint == (("tower-amd", 9.0), ("tower-nvidia", 4.0))
