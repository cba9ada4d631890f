"""Learning in the replay (replay/learning.py): a hidden truth on the Tower, outcomes drawn from
it, what active, shadow and oracle modes make of it, and the what-if file's ``truth:`` section."""
from __future__ import annotations

import random
from pathlib import Path

import pytest
import yaml

from models_registry.catalog.profile import ProfileError, load_profile_file
from models_registry.replay import load_mapping, map_rows, read_trace, scale_and_sample, simulate, trace_origin
from models_registry.replay.learning import HiddenTruth, convergence, learning_summary
from models_registry.replay.whatif import hidden_truth, load_base, load_what_if

ROOT = Path(__file__).resolve().parents[2]
TOWER = ROOT / "profiles/tower.yaml"
CONV = ROOT / "data/traces/azure2023_conv.csv"
TRUTH = {("llama3.2:3b", "chat"): 0.74, ("mistral:7b", "chat"): 0.93}  # the catalog: 0.84, 0.83


@pytest.fixture(scope="module")
def evening_chat():
    """400 chat requests of the Azure conversation trace, on its own clock (the evening window:
    llama3.2:3b and mistral:7b both loaded)."""
    reqs = map_rows(read_trace(CONV), load_mapping("azure2023"))
    return load_profile_file(TOWER), scale_and_sample(reqs, sample=0.02, rng=random.Random(1)), trace_origin(CONV)


def _run(evening_chat, mode, **kw):
    profile, reqs, start = evening_chat
    return simulate(profile, reqs, "towerops", start=start, truth=HiddenTruth(TRUTH, mode=mode, **kw)).learner


def test_active_mode_learns_the_truly_better_model_without_loading_to_explore(evening_chat):
    oracle = _run(evening_chat, "oracle")
    active = _run(evening_chat, "active")
    c = convergence(active.log, "chat", "mistral:7b", "llama3.2:3b", oracle.log)
    assert c["converged_after"] is not None and c["converged_after"] <= 100
    assert c["explored"] > 0 and c["explored_loads"] == 0
    est = active.estimates
    assert est[("mistral:7b", "chat")].mean > est[("llama3.2:3b", "chat")].mean
    assert abs(est[("llama3.2:3b", "chat")].mean - 0.74) < 0.06
    # The same seed, the same run: the replay is deterministic with learning too.
    again = _run(evening_chat, "active")
    assert [(c.model, c.explored) for c in again.log] == [(c.model, c.explored) for c in active.log]


def test_shadow_mode_decides_by_the_catalog_and_proposes_the_truth(evening_chat):
    profile, reqs, start = evening_chat
    plain = simulate(profile, reqs, "towerops", start=start)
    shadow = _run(evening_chat, "shadow")
    assert [c.model for c in shadow.log] == [s.model for s in plain.served]  # learning changed no choice
    proposals = shadow.proposals()
    assert proposals[("llama3.2:3b", "chat")] < 0.80  # the catalog's 0.84 was too high
    summary = learning_summary(shadow)
    llama = next(p for p in summary["pairs"] if p["model"] == "llama3.2:3b")
    assert llama["true_quality"] == 0.74 and llama["catalog"] == 0.84
    assert 0 < llama["signals"] <= llama["served"]  # rated when its answer ends: the last ones are still out


def test_exploration_budget_zero_never_explores(evening_chat):
    greedy = _run(evening_chat, "active", max_regret=0.0)
    assert not any(c.explored for c in greedy.log)


def test_a_truth_is_checked_field_by_field():
    with pytest.raises(ValueError, match=r"quality\[0\]\.quality: a number within 0..1"):
        HiddenTruth.parse({"quality": [{"model": "a", "task_type": "chat", "quality": 1.3}]})
    with pytest.raises(ValueError, match="mode must be one of"):
        HiddenTruth.parse({"mode": "eager", "quality": [{"model": "a", "task_type": "chat", "quality": 0.3}]})
    with pytest.raises(ValueError, match=r"truth\.speed: unknown field"):
        HiddenTruth.parse({"speed": 1, "quality": [{"model": "a", "task_type": "chat", "quality": 0.3}]})
    profile = load_profile_file(TOWER)
    with pytest.raises(ProfileError, match=r"truth\.quality\[0\]\.model.*no model 'gpt-9'"):
        hidden_truth({"quality": [{"model": "gpt-9", "task_type": "chat", "quality": 0.3}]}, profile, "f.yaml")


def test_the_shipped_what_if_carries_its_truth(tmp_path):
    base_data, _ = load_base(TOWER)
    label, profile, desc = load_what_if(ROOT / "profiles/whatif/chat-scores-wrong.yaml", base_data, str(TOWER))
    assert label == "chat scores wrong" and desc["truth"]["mode"] == "active"
    assert hidden_truth(desc["truth"], profile, desc["file"]).quality == TRUTH
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"name": "bad", "truth": {"quality": [
        {"model": "mistral:7b", "task_type": "poetry", "quality": 0.5}]}}))
    with pytest.raises(ProfileError, match=r"truth\.quality\[0\]\.task_type"):
        load_what_if(bad, base_data, str(TOWER))
