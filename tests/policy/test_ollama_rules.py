"""policy.ollama_rules: Ollama's scheduler rules (shared/reference/ollama.md §1), the one model of
them the simulator and the replay's ollama_default both use. Plain values."""
from __future__ import annotations

import math
from dataclasses import dataclass

import pytest

from models_registry.policy import ollama_rules as rules


@pytest.mark.parametrize("name, canonical", [
    ("tinyllama", "tinyllama:latest"),
    ("qwen2.5:7b", "qwen2.5:7b"),
    ("  mistral ", "mistral:latest"),
    ("localhost:5000/ns/model", "localhost:5000/ns/model:latest"),  # a registry's port is not a tag
    ("localhost:5000/ns/model:q4", "localhost:5000/ns/model:q4"),
])
def test_a_name_without_a_tag_is_the_latest_one(name, canonical):
    assert rules.normalize_model_name(name) == canonical


def test_names_are_the_same_model_whatever_the_case_or_the_implied_tag():
    assert rules.same_model("llama3", "llama3:latest") and rules.same_model("Mistral", "mistral:LATEST")
    assert not rules.same_model("mistral:7b", "mistral")
    assert rules.model_key("Llama3") == rules.model_key("llama3:latest") == "llama3:latest"


def test_settings_default_to_three_models_per_gpu_and_one_request_at_a_time():
    assert rules.max_loaded_models(0, 2) == 6 and rules.max_loaded_models(None, 0) == 3
    assert rules.max_loaded_models(4, 2) == 4
    assert rules.num_parallel() == 1 and rules.num_parallel(0) == 1 and rules.num_parallel(4) == 4


def test_the_context_defaults_by_vram_tier_and_is_capped_at_the_trained_length():
    assert [rules.default_num_ctx(g) for g in (12, 23, 24, 47, 80)] == [4096, 32768, 32768, 262144, 262144]
    assert rules.slot_context(32768, 8192) == 8192 and rules.slot_context(4096, None) == 4096


def test_a_runner_takes_the_roomiest_gpu_it_fits_within_80_percent_else_all_of_them():
    assert rules.runner_gpus(8, {0: 10, 1: 12}) == (1,)
    assert rules.runner_gpus(8, {0: 10, 1: 10}) == (0,)  # a tie: the first listed
    assert rules.runner_gpus(9, {0: 10, 1: 10}) == (0, 1)  # 90 % of either: split over both


def test_the_first_model_may_take_a_whole_gpu_later_ones_only_80_percent():
    assert rules.place_runner(10, {0: 10}, first=True) == {0: 10}
    assert rules.place_runner(10, {0: 10}, first=False) is None  # evict something first
    assert rules.place_runner(8, {0: 10}, first=False) == {0: 8}
    assert rules.place_runner(11, {0: 10}, first=True) is None  # does not fit at all
    assert rules.place_runner(1, {}, first=True) is None


def test_a_split_is_spread_in_proportion_to_what_each_gpu_has():
    assert rules.place_runner(12, {0: 10, 1: 5}, first=True) == {0: 8, 1: 4}
    assert rules.place_runner(12, {0: 10, 1: 5}, first=False) == {0: 8, 1: 4}  # 12 <= 80 % of 15
    assert rules.place_runner(13, {0: 10, 1: 5}, first=False) is None
    assert rules.split_shares(10, {1: 1, 0: 2}) == {0: 6, 1: 4}  # key order, the last takes the rounding
    assert sum(rules.split_shares(1001, {"a": 3, "b": 3, "c": 3}).values()) == 1001


@dataclass
class Runner:
    name: str
    keep_alive_s: float
    busy: bool = False


def victim(*runners: Runner) -> str | None:
    r = rules.runner_to_unload(runners, keep_alive_s=lambda r: r.keep_alive_s, name=lambda r: r.name,
                               idle=lambda r: not r.busy)
    return r.name if r else None


def test_the_runner_to_unload_has_the_shortest_keep_alive_then_the_first_name_and_is_idle_if_one_is():
    assert victim(Runner("b", 300), Runner("a", 300), Runner("c", 60)) == "c"
    assert victim(Runner("b", 300), Runner("a", 300)) == "a"  # not LRU, not by size: by name
    assert victim(Runner("a", math.inf), Runner("z", 3600)) == "z"  # forever sorts last
    assert victim(Runner("a", -1), Runner("z", 3600)) == "z"  # so does any negative keep_alive
    assert victim(Runner("a", 60, busy=True), Runner("b", 300)) == "b"  # the first idle one
    assert victim(Runner("b", 300, busy=True), Runner("a", 600, busy=True)) == "b"  # else the first
    assert victim() is None
