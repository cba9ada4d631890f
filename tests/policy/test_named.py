"""select_named: a model the caller named is served as asked, placed by the same rule."""
from __future__ import annotations

import pytest

from models_registry.policy import PolicyInputError, SelectionRequest, select_named


def test_a_named_model_below_the_floor_is_served_not_substituted(tower):
    # llama3.2:3b scores 0.62 for code; select() would pick a coder. Named, it is served as asked.
    w = tower.world(tower.res("llama3.2:3b", tower.amd))
    d = select_named(w, SelectionRequest("code_generation", "interactive"), "llama3.2:3b")
    assert (d.model, d.action, d.endpoint) == ("llama3.2:3b", "use_loaded", tower.amd)
    assert d.quality == pytest.approx(0.62) and d.met_floor is False
    assert d.reason.startswith("llama3.2:3b asked for by name (quality 0.62 is below the code_generation floor 0.80)")
    assert [c.model for c in d.candidates] == ["llama3.2:3b"]


def test_the_least_busy_copy_is_used(tower):
    w = tower.world(tower.res("llama3.2:3b", tower.amd, busy_s=4.0),
                    tower.res("llama3.2:3b", tower.nvidia, busy_s=1.0))
    d = select_named(w, SelectionRequest("general", "interactive"), "llama3.2:3b")
    assert (d.endpoint, d.expected_wait_s) == (tower.nvidia, pytest.approx(1.0)) and d.met_floor


def test_a_named_model_loaded_nowhere_is_placed_like_any_load(tower):
    d = select_named(tower.world(), SelectionRequest("general", "batch"), "qwen2.5-coder:7b")
    assert d.action == "load" and d.endpoint in (tower.amd, tower.nvidia)
    assert "a 13.5 s load on" in d.reason


def test_a_model_that_cannot_be_served_says_why(tower):
    d = select_named(tower.world(), SelectionRequest("general", "batch"), "qwen2.5-coder:32b")
    assert d.model is None and "does not fit" in d.reason


def test_unknown_remote_or_disabled_names_are_refused(tower):
    with pytest.raises(PolicyInputError, match="unknown model 'nope'"):
        select_named(tower.world(), SelectionRequest("general", "batch"), "nope")


def test_a_named_load_that_evicts_a_recently_used_model_prices_it_and_keeps_pinned_models(tower):
    """It used to raise KeyError: the named request's world held the named model only, so the
    eviction's reload cost could not find the victim's load time (and a pinned victim was not pinned)."""
    from dataclasses import replace

    w = tower.world(tower.res("deepseek-coder-v2:16b", tower.amd, used_ago=10),
                    tower.res("mistral:7b", tower.amd, used_ago=10), down=(tower.nvidia,))
    d = select_named(w, SelectionRequest("code_generation", "background"), "qwen2.5-coder:7b")
    assert d.action == "load" and len(d.evictions) == 1 and [c.model for c in d.candidates] == ["qwen2.5-coder:7b"]

    pinned = replace(w, models=tuple(replace(m, pinned=True) if m.tag in ("deepseek-coder-v2:16b", "mistral:7b")
                                     else m for m in w.models))
    d = select_named(pinned, SelectionRequest("code_generation", "background"), "qwen2.5-coder:7b")
    assert d.model is None or d.action != "load" or d.evictions == ()
