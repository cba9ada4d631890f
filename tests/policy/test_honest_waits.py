"""Honest waits: a loading model's quote includes the queue already routed to it, a loaded model's
its queue per parallel slot (ollama_rules.take_slot / queue_of, the rule the replay serves by),
and in the replay every quote of a request served locally is what then happened."""
from __future__ import annotations

import pytest
import yaml

from models_registry.catalog.profile import parse_profile
from models_registry.policy import SelectionRequest, ollama_rules, select
from models_registry.replay import simulate
from models_registry.replay.report import summarize
from models_registry.replay.traces import Request

from .conftest import NOW, ROOT


def test_a_loading_models_quote_includes_what_is_already_routed_to_it(tower):
    """The issue's four chat requests on a cold tower: the three after the first were each quoted
    the load's 3.3 s, though each starts behind the ones before it."""
    req = SelectionRequest("chat", "interactive", expected_output_tokens=128, input_tokens=0)

    def loading(busy_s):  # (the other endpoint down: no second copy)
        return tower.world(tower.res("tinyllama", state="loading", ready_at=NOW + 3.3, used_ago=None, busy_s=busy_s),
                           down=(tower.amd,))

    empty, queued = select(loading(0.0), req), select(loading(1.6), req)
    assert (empty.model, empty.action, empty.expected_wait_s) == ("tinyllama", "wait_for_load", pytest.approx(3.3))
    tiny = next(c for c in queued.candidates if c.model == "tinyllama")
    assert (tiny.action, tiny.expected_wait_s) == ("wait_for_load", pytest.approx(3.3 + 1.6))


def test_the_queue_is_per_parallel_slot():
    booked = [(0.0, 4.0), (0.0, 4.0), (1.0, 4.0)]
    assert ollama_rules.queue_of(booked, 1, now=2.0, ready=None) == pytest.approx(10.0)  # 4+4+4 from 0
    assert ollama_rules.queue_of(booked, 2, now=2.0, ready=None) == pytest.approx(2.0)  # slots free at 4 and 8
    assert ollama_rules.queue_of(booked, 4, now=2.0, ready=None) == 0.0  # a slot is free now
    assert ollama_rules.queue_of(booked, 2, now=2.0, ready=6.0) == pytest.approx(4.0)  # after ready: 6+4, 6+4
    assert ollama_rules.take_slot([5.0, 3.0], arrival=1.0, ready=4.0) == (1, 4.0)


@pytest.mark.parametrize("parallel", [1, 2])
def test_in_the_replay_every_local_quote_is_what_happened(parallel):
    """A burst on a cold tower (loads, requests sharing a load in progress, queues on loaded
    models): the replay knows every queue, so the quoted wait to the first token is the one served."""
    data = yaml.safe_load((ROOT / "profiles" / "tower.yaml").read_text())
    for host in data["hosts"]:
        for e in host["endpoints"]:
            e["num_parallel"] = parallel
    profile = parse_profile(data)
    reqs = [Request(0.1 * i, task, "interactive", 200, 100)
            for i, task in enumerate(["chat", "chat", "chat", "chat", "code_generation", "general", "chat",
                                      "code_generation", "general", "chat"])]
    res = simulate(profile, reqs, "towerops")
    local = [s for s in res.served if s.action in ("use_loaded", "wait_for_load", "load")]
    assert {s.action for s in local} >= {"load", "wait_for_load"}
    for s in local:
        assert s.ttft_s == pytest.approx(s.expected_wait_s, abs=1e-6), (s.req, s.action)
    q = summarize(res)["quote_error_s"]
    assert q["n"] == len(local) and q["within_1s"] == 1.0
