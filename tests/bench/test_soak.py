"""bench/soak.py's own arithmetic, on hand-made records: thrash loads, quote errors, the 15 %
comparison, the prompt sizing and the warm start's order (the soak itself runs the whole stack
and is not part of the suite)."""
from __future__ import annotations

import datetime as dt
import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("bench_soak", ROOT / "bench" / "soak.py")
soak = importlib.util.module_from_spec(_spec)
sys.modules["bench_soak"] = soak  # dataclasses look their module up there
_spec.loader.exec_module(soak)
Ev = soak.Ev


def test_a_load_within_ten_minutes_of_its_eviction_from_the_same_endpoint_is_thrash():
    events = [
        Ev(0.0, "load", "a", "amd"),
        Ev(100.0, "evict", "a", "amd"),
        Ev(100.0, "load", "b", "amd"),
        Ev(699.0, "load", "a", "amd"),  # 599 s after its eviction: thrash
        Ev(700.0, "load", "a", "nvidia"),  # another endpoint: not thrash
        Ev(800.0, "evict", "b", "amd"),
        Ev(1400.0, "load", "b", "amd"),  # exactly 600 s later: not thrash (less than 10 minutes asked)
    ]
    loads, thrash = soak.thrash_loads(events)
    assert len(loads) == 5
    assert [(e.at, e.model, e.endpoint) for e in thrash] == [(699.0, "a", "amd")]


def test_an_external_unload_is_an_eviction_an_expiry_or_a_preload_cooling_is_not():
    for trigger, thrash in (("external", 1), ("expiry", 0), ("preload", 0), ("admin", 0)):
        events = [Ev(10.0, "unload", "a", "amd", trigger), Ev(20.0, "load", "a", "amd", "selection")]
        assert len(soak.thrash_loads(events)[1]) == thrash, trigger


def test_only_loads_in_the_window_count_but_earlier_evictions_do():
    events = [Ev(-50.0, "load", "a", "amd"), Ev(-30.0, "evict", "a", "amd"), Ev(5.0, "load", "a", "amd"),
              Ev(100.0, "load", "b", "amd")]
    loads, thrash = soak.thrash_loads(events, 0.0, 100.0)
    assert [e.at for e in loads] == [5.0]
    assert [e.at for e in thrash] == [5.0]


def test_an_eviction_at_the_same_instant_as_the_load_comes_first():
    events = [Ev(50.0, "load", "a", "amd"), Ev(50.0, "evict", "a", "amd")]
    assert len(soak.thrash_loads(events)[1]) == 1


def test_quote_errors_are_actual_minus_quoted_nearest_rank():
    pairs = [(1.0, 1.0), (2.5, 1.0), (0.2, 0.5), (10.0, 2.0), (None, 1.0), (3.0, None)]
    q = soak.quote_errors(pairs)
    # errors: 0, 1.5, -0.3, 8 -> sorted -0.3, 0, 1.5, 8
    assert q["n"] == 4
    assert q["p50"] == 0.0
    assert q["p95"] == 8.0
    assert q["max"] == 8.0 and q["min"] == pytest.approx(-0.3)
    assert q["within_1s"] == 0.5


def test_quote_errors_of_nothing_are_no_data():
    assert soak.quote_errors([]) == {"n": 0, "p50": None, "p95": None, "max": None, "min": None, "within_1s": None}


def test_within_15_percent():
    assert soak.within(11.5, 10.0) is True
    assert soak.within(8.5, 10.0) is True
    assert soak.within(11.6, 10.0) is False
    assert soak.within(0.0, 0.0) is True
    assert soak.within(1.0, 0.0) is False  # a replay of no loads asks for none
    assert soak.within(None, 1.0) is None


def test_prompt_is_four_characters_a_token_as_the_gateway_counts():
    text = soak.prompt_text(7, 1000)
    assert len(text) == 4000
    assert soak.prompt_text(7, 1000) == text  # deterministic
    assert len(soak.prompt_text(1, 0)) == 4  # never empty


def test_warm_start_is_the_replays_week_of_windows_largest_first():
    at = dt.datetime(2026, 11, 19, 18, 30, tzinfo=dt.timezone.utc)  # a Thursday evening, as the regression
    warm = soak.warm_state(ROOT / "profiles" / "tower.yaml", at)
    tags = [t for t, _ in warm]
    # every model that fits one GPU, after a week of coding, evening and night windows
    assert sorted(tags) == sorted(["tinyllama", "llama3.2:3b", "qwen2.5-coder:7b", "mistral:7b",
                                   "deepseek-coder-v2:16b"])
    assert tags[0] == "deepseek-coder-v2:16b" and tags[-1] == "tinyllama"
