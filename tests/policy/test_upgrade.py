"""Moving up (policy/upgrade.py), on the pure core: the policy-realism issue's flaw 5 — with free VRAM
and an idle tower, llama3.2:3b (the best chat model, 6.8 s to load) was never loaded in 14 simulated
days, because every chat request was interactive (5 s of patience) and took what was loaded."""
from __future__ import annotations

from dataclasses import replace

from models_registry.policy import SelectionRequest, select
from models_registry.policy.preload import Cooling, PreloadPlan
from models_registry.policy.upgrade import after_windows, plan_upgrade

from .conftest import NOW

CHAT = {"chat": 12}


def test_interactive_chat_alone_never_loads_the_better_model_moving_up_does(tower):
    world = tower.world(tower.res("tinyllama", tower.nvidia, used_ago=30))
    d = select(world, SelectionRequest("chat", "interactive"))
    assert (d.model, d.action) == ("tinyllama", "use_loaded")  # the flaw: the better model is a 6.8 s load
    up = plan_upgrade(world, CHAT)
    assert up is not None and (up.model, up.evictions) == ("llama3.2:3b", ())


def test_no_upgrade_while_anything_waits_or_loads_or_without_demand(tower):
    busy = tower.world(tower.res("tinyllama", tower.nvidia, used_ago=1, in_flight=1, busy_s=2.0))
    loading = tower.world(tower.res("tinyllama", tower.nvidia, used_ago=30),
                          tower.res("mistral:7b", tower.amd, state="loading", ready_at=NOW + 5, used_ago=None))
    idle = tower.world(tower.res("tinyllama", tower.nvidia, used_ago=30))
    assert plan_upgrade(busy, CHAT) is None and plan_upgrade(loading, CHAT) is None
    assert plan_upgrade(idle, {}) is None
    off = replace(idle, params=replace(idle.params, upgrade_min_gain=1.0))
    assert plan_upgrade(off, CHAT) is None


def test_an_upgrade_never_evicts_what_was_used_lately(tower):
    """Both cards full: the better chat model waits for room while the residents served a minute
    ago, and takes the room of one of them once they have been idle for an hour."""
    def full(used_ago):
        world = tower.world(tower.res("tinyllama", tower.nvidia, used_ago=used_ago, ready_at=NOW - 7200),
                            tower.res("mistral:7b", tower.amd, used_ago=used_ago, ready_at=NOW - 7200))
        usable = {tower.gpu_of(tower.nvidia): 3_000, tower.gpu_of(tower.amd): 5_500}
        return replace(world, gpus=tuple(replace(g, reserved_mib=g.total_mib - usable[g.key]) for g in world.gpus))

    assert plan_upgrade(full(60), {"chat": 12, "general": 3}) is None
    up = plan_upgrade(full(3600), {"chat": 12, "general": 3})
    assert up is not None and up.model == "llama3.2:3b" and len(up.evictions) == 1


def test_a_windows_model_to_be_cooled_that_moving_up_would_load_back_is_kept(tower):
    world = tower.world(tower.res("llama3.2:3b", tower.nvidia, used_ago=600))
    plan = PreloadPlan(wanted=(), loads=(), skipped=(), cool=(Cooling("llama3.2:3b", tower.nvidia),),
                       kept_warm=(), cool_later=())
    cool, up = after_windows(world, plan, CHAT)
    assert cool == () and up is None
    cool, up = after_windows(world, plan, {})  # nobody chats: cooled as the window's plan says
    assert cool == plan.cool and up is None


def test_a_model_an_admin_just_unloaded_is_not_loaded_back(tower):
    """An admin unloaded llama3.2:3b: moving up takes the next best chat model instead, and nothing
    when that is all there is to gain."""
    world = tower.world(tower.res("tinyllama", tower.nvidia, used_ago=30))
    up = plan_upgrade(world, CHAT, held_off=frozenset({"llama3.2:3b"}))
    assert up is not None and up.model == "mistral:7b"
    assert plan_upgrade(world, CHAT, held_off=frozenset({"llama3.2:3b", "mistral:7b", "qwen2.5-coder:7b",
                                                         "deepseek-coder-v2:16b"})) is None
    plan = PreloadPlan((), (), (), (), (), ())
    assert after_windows(world, plan, CHAT, frozenset({"llama3.2:3b"}))[1].model == "mistral:7b"
