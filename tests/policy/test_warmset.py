"""Preload windows' fit checks (policy.warmset): never fits on an empty tower vs fits now."""
from __future__ import annotations

from dataclasses import replace

from models_registry.policy import empty_tower, fit_warm_set, never_fits


def test_a_32b_model_never_fits_either_gpu_of_the_tower(tower):
    world = tower.world()
    assert never_fits(world, ["qwen2.5-coder:32b", "llama3.2:3b"]) == ("qwen2.5-coder:32b",)
    assert never_fits(world, ["deepseek-r1:32b"]) == ("deepseek-r1:32b",)


def test_every_7b_and_16b_model_fits_together_on_the_empty_tower(tower):
    # 8.5 + 5.1 on the 15 GB AMD, 4.5 + 2.5 + 1.0 on the 11 GB NVIDIA: bin packing, not just totals.
    tags = ["deepseek-coder-v2:16b", "mistral:7b", "qwen2.5-coder:7b", "llama3.2:3b", "tinyllama"]
    assert never_fits(tower.world(), tags) == ()
    fit = fit_warm_set(empty_tower(tower.world()), tags)
    per_gpu: dict[str, int] = {}
    for p in fit.placements.values():
        for key, mib in p.vram_by_gpu:
            per_gpu[key] = per_gpu.get(key, 0) + mib
    for g in tower.world().gpus:
        assert per_gpu[g.key] <= g.total_mib - g.reserved_mib


def test_a_set_that_fits_only_by_total_is_refused_when_no_gpu_can_hold_it(tower):
    # Two GPUs of 13 GB: two 8.5 GB models fit, three do not, although 25.5 GB < 26 GB in all.
    world = tower.world()
    small = replace(world, gpus=tuple(replace(g, total_mib=13 * 1024, reserved_mib=0) for g in world.gpus))
    big = next(m for m in world.models if m.tag == "deepseek-coder-v2:16b")
    models = world.models + (replace(big, tag="b2"), replace(big, tag="b3"))
    small = replace(small, models=models)
    assert never_fits(small, ["deepseek-coder-v2:16b", "b2"]) == ()
    assert len(never_fits(small, ["deepseek-coder-v2:16b", "b2", "b3"])) == 1


def test_the_live_check_sees_what_is_loaded_and_never_evicts_busy_models(tower):
    # A busy 16b model on the AMD GPU and a busy mistral on the NVIDIA GPU leave 6.5 and 5.9 GB.
    busy = tower.world(
        tower.res("deepseek-coder-v2:16b", tower.amd, in_flight=1),
        tower.res("mistral:7b", tower.nvidia, in_flight=1),
        tower.res("llama3.2:3b", tower.amd),
    )
    fit = fit_warm_set(busy, ["llama3.2:3b", "qwen2.5-coder:7b", "tinyllama"])
    assert fit.already_warm == ("llama3.2:3b",)
    assert fit.placements["qwen2.5-coder:7b"] is not None and fit.placements["tinyllama"] is not None
    assert all(e.model not in ("deepseek-coder-v2:16b", "mistral:7b")
               for p in fit.placements.values() for e in p.evictions)
    # On the empty tower the same set is never a problem; busy models only delay it.
    assert never_fits(busy, ["mistral:7b", "deepseek-coder-v2:16b", "qwen2.5-coder:7b"]) == ()
    crowded = fit_warm_set(busy, ["qwen2.5-coder:7b", "deepseek-r1:32b"])
    assert crowded.misfits == ("deepseek-r1:32b",)


def test_unknown_tags_are_misfits_not_errors(tower):
    assert never_fits(tower.world(), ["no-such-model"]) == ("no-such-model",)


def test_the_order_of_a_window_s_models_does_not_decide_whether_it_fits(tower):
    # Two 10 GB GPUs, one Ollama each, and models of 2, 3, 5 and 6 GB. Beside another runner Ollama
    # loads a model only within 80 % of what is free (ollama_rules.fits): 6 then 3 (3 <= 0.8 x 4) on
    # one GPU, 5 then 2 on the other. Placed in the order 2, 3, 5, 6 (each on the tightest GPU),
    # 2+3 take one GPU, 5 the other, and 6 has no room.
    world = tower.world()
    world = replace(world, gpus=tuple(replace(g, total_mib=10 * 1024, reserved_mib=0) for g in world.gpus))
    base = next(m for m in world.models if m.tag == "mistral:7b")
    sized = {f"x{gb}": gb * 1024 for gb in (2, 3, 5, 6)}
    world = replace(world, models=tuple(replace(base, tag=t, vram_mib=mib) for t, mib in sized.items()))
    order = ["x2", "x3", "x5", "x6"]
    assert fit_warm_set(empty_tower(world), order).misfits == ("x6",)  # the naive order fails
    assert never_fits(world, order) == ()
