"""The prompt classifier's accuracy on labelled prompts shipped here: classifier_labelled.jsonl
(96 prompts, the set its cues were tuned on) and classifier_heldout.jsonl (40 prompts written
before any tuning and never tuned on). Measured 2026-12: 95/96 and 37/40; the floors below catch a
regression. Its speed is measured by bench/bench_gateway.py, not here."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from models_registry.gateway.classifier import classify, prompt_text

DATA = Path(__file__).parent / "data"
TOWER_TASKS = ["general", "troubleshooting", "code_generation", "analysis", "chat", "summarization"]


def _rows(name: str) -> list[dict]:
    return [json.loads(line) for line in (DATA / name).read_text().splitlines() if line.strip()]


@pytest.mark.parametrize(("name", "floor"), [("classifier_labelled.jsonl", 0.95), ("classifier_heldout.jsonl", 0.85)])
def test_accuracy_on_the_labelled_prompts(name, floor):
    rows = _rows(name)
    assert Counter(r["task"] for r in rows).keys() == set(TOWER_TASKS)  # every class is represented
    misses = [(r["task"], classify(r["prompt"], TOWER_TASKS), r["prompt"][:60]) for r in rows]
    misses = [x for x in misses if x[0] != x[1]]
    accuracy = 1 - len(misses) / len(rows)
    print(f"{name}: {accuracy:.1%} ({len(rows) - len(misses)}/{len(rows)}); misses: {misses}")
    assert accuracy >= floor, misses


def test_a_task_type_the_profile_lacks_is_never_returned():
    assert classify("Write a Python function that sorts a list.", ["general", "chat"]) == "general"
    assert classify("hello!", ["chat", "general"]) == "chat"
    assert classify("Summarize this text please.", ["summarization"]) == "summarization"
    assert classify("anything", ["custom_task"]) == "custom_task"  # no cue, no fallback name: the only one


def test_the_prompt_is_the_last_user_message_or_the_prompt():
    body = {"messages": [{"role": "system", "content": "You are a coder."},
                         {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
                         {"role": "user", "content": "now fix this crash"}]}
    assert prompt_text(body) == ("now fix this crash", "You are a coder.")
    assert prompt_text({"prompt": "p", "system": "s"}) == ("p", "s")
