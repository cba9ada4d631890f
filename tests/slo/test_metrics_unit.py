"""models_registry/metrics.py on plain records: no database."""
from __future__ import annotations

import math

import pytest

from models_registry.slo import metrics as M
from models_registry.slo.metrics import DecisionRec as D
from models_registry.slo.metrics import LoadRec as L
from models_registry.slo.metrics import Span as S

H = 3600.0


def test_latency_buckets_are_right_closed_with_5s_an_edge():
    assert 5.0 in M.LATENCY_EDGES_S
    assert M.LATENCY_EDGES_S[M.bucket_of(M.LATENCY_EDGES_S, 5.0)] == 5.0
    assert M.LATENCY_EDGES_S[M.bucket_of(M.LATENCY_EDGES_S, 5.001)] == 5.05
    assert M.LATENCY_EDGES_S[M.bucket_of(M.LATENCY_EDGES_S, 0.004)] == 0.01
    assert M.bucket_of(M.LATENCY_EDGES_S, 99999.0) == len(M.LATENCY_EDGES_S)  # overflow


def test_p95_nearest_rank_on_bucket_edges():
    h = M.histogram(M.LATENCY_EDGES_S, [float(i) for i in range(1, 21)])  # 1..20 s
    assert M.p95_from_histogram(h) == 19.0  # ceil(0.95·20) = 19th value
    assert M.p95_from_histogram(M.histogram(M.LATENCY_EDGES_S, [4.97])) == 5.0  # never below the exact value
    assert M.p95_from_histogram(M.histogram(M.LATENCY_EDGES_S, [7200.0])) == 3600.0  # overflow reported at the top
    assert M.p95_from_histogram([0] * M.LATENCY_BUCKETS) is None


def _hour():
    decisions = [
        # first token 0.3 s of a 1.0 s answer, measured by the gateway; the expected wait (9.0) is not used
        D(10, "interactive", "use_loaded", True, expected_wait_s=9.0, response_s=1.0, first_token_s=0.3,
          residency="a", first_token_at_gateway=True),
        # reported response 2.5 s, no first-token time: the upper bound 2.5
        D(15, "critical", "use_loaded", True, expected_wait_s=0.1, response_s=2.5, residency="a"),
        D(20, "interactive", "load", True, expected_wait_s=2.0, residency="b"),  # no outcome: the expected wait
        D(30, "critical", "fallback", False, expected_wait_s=3.0),
        D(40, "interactive", None, False),  # nothing could serve it: no time at all
        D(50, "batch", "wait_for_load", True, expected_wait_s=500.0, residency="a"),  # not interactive
    ]
    loads = [L(5, "load"), L(6, "load"), L(7, "evict"), L(8, "fail"), L(9, "unload")]
    spans = [S("a", -100.0, None, 1000.0), S("b", 1800.0, 2700.0, 2000.0), S("c", 0.0, H, 500.0)]
    return M.tally_hour(0.0, H, decisions, loads, spans, 4000.0)


def test_one_hour_by_hand():
    t = _hour()
    assert (t.decisions, t.fallbacks, t.met_floor) == (6, 1, 4)
    assert (t.interactive_first_token, t.interactive_observed, t.interactive_estimated,
            t.interactive_unknown) == (1, 1, 2, 1)
    assert t.interactive_first_token_gateway == 1
    assert (t.loads, t.evictions, t.failures, t.unloads) == (2, 1, 1, 1)
    # a: 1000 MiB all hour, served; b: 2000 MiB for 900 s, served; c: never served -> waste
    assert t.vram_used_mib_s == 1000 * H + 2000 * 900
    assert t.vram_usable_mib_s == 4000 * H
    ev = M.evaluate(t)
    assert ev[M.P95].value == 3.0  # time to first token 0.3, 2.0, 2.5, 3.0 -> rank ceil(3.8) = 4th
    assert ev[M.P95].detail == {"source": "mixed", "first_token": 1, "response": 1, "estimated": 2,
                                "unknown": 1, "samples": 4, "first_token_gateway": 1, "first_token_caller": 0}
    assert ev[M.LOADS_PER_HOUR].value == 2.0
    assert ev[M.VRAM_EFFICIENCY].value == pytest.approx((1000 * H + 2000 * 900) / (4000 * H))  # 0.375
    assert ev[M.QUALITY_MET].value == 4 / 6
    assert ev[M.FALLBACK_RATE].value == 1 / 6


def test_time_to_first_token_sources_in_order():
    def p95(*decisions):
        ev = M.evaluate(M.tally_hour(0.0, H, list(decisions), [], [], 100.0))[M.P95]
        return ev.value, ev.detail["source"]

    both = dict(expected_wait_s=4.0, response_s=7.0, first_token_s=0.2)
    assert p95(D(1, "interactive", "use_loaded", True, **both)) == (0.2, "first_token")
    assert p95(D(1, "interactive", "use_loaded", True, expected_wait_s=4.0, response_s=7.0)) == (7.0, "response")
    assert p95(D(1, "interactive", "use_loaded", True, expected_wait_s=4.0)) == (4.0, "estimated")
    assert p95(D(1, "interactive", "use_loaded", True)) == (None, "none")


def test_empty_window_is_no_data_not_zero_and_not_a_pass():
    t = M.tally_hour(0.0, H, [], [], [], 4000.0)
    ev = M.evaluate(t)
    assert all(v.value is None for v in ev.values())
    targets = M.default_targets()
    assert all(M.check(ev[n].value, targets[n]) is None for n in M.METRICS)


def test_hour_without_interactive_requests_has_no_p95_but_other_metrics():
    t = M.tally_hour(0.0, H, [D(1, "batch", "use_loaded", True, expected_wait_s=2.0)], [], [], 100.0)
    ev = M.evaluate(t)
    assert ev[M.P95].value is None and ev[M.P95].detail["source"] == "none"
    assert ev[M.QUALITY_MET].value == 1.0
    assert ev[M.LOADS_PER_HOUR].value == 0.0  # observed hour without loads: a real zero


def test_snapshot_only_hour_is_observed_and_all_waste():
    t = M.tally_hour(0.0, H, [], [], [], 100.0, observed=True)
    assert M.evaluate(t)[M.VRAM_EFFICIENCY].value == 0.0


def test_merge_is_exact_and_window_splits_hours():
    decisions = [D(100, "interactive", "use_loaded", True, expected_wait_s=1.0),
                 D(H + 100, "interactive", "use_loaded", True, expected_wait_s=4.0),
                 D(H + 200, "interactive", "fallback", False, expected_wait_s=2.0)]
    loads = [L(50, "load"), L(H + 50, "load"), L(H + 60, "load")]
    per_hour = M.tally_window(0.0, 2 * H, decisions, loads, [], 10.0)
    assert [h for h, _ in per_hour] == [0.0, H]
    assert [t.decisions for _, t in per_hour] == [1, 2]
    total = M.Tally.total(t for _, t in per_hour)
    ev = M.evaluate(total)
    assert ev[M.P95].value == 4.0  # 1, 2, 4 -> 3rd
    assert ev[M.LOADS_PER_HOUR].value == 1.5
    assert ev[M.FALLBACK_RATE].value == pytest.approx(1 / 3)


def test_total_merges_column_wise_as_one_by_one():
    import random

    rnd = random.Random(7)
    tallies = []
    for _ in range(50):
        t = M.Tally(seconds=rnd.uniform(0, H), observed_s=rnd.uniform(0, H), decisions=rnd.randrange(100),
                    fallbacks=rnd.randrange(5), vram_used_mib_s=rnd.uniform(0, 1e9),
                    vram_usable_mib_s=rnd.uniform(0, 1e9))
        t.latency_hist[rnd.randrange(M.LATENCY_BUCKETS)] += rnd.randrange(1, 9)
        tallies.append(t)
    one_by_one = M.Tally()
    for t in tallies:
        one_by_one.merge(t)
    assert M.Tally.total(tallies) == one_by_one  # floats summed in the same order: equal, not approx
    assert M.Tally.total([]) == M.Tally()
    short = M.Tally(decisions=1, latency_hist=[1, 2])  # not the standard length: merged one by one
    assert M.Tally.total([tallies[0], short]).decisions == tallies[0].decisions + 1


def test_vram_counts_only_in_hours_where_the_model_served():
    span = S("a", 0.0, 2 * H, 1000.0)
    served_in_first = [D(10, "interactive", "use_loaded", True, expected_wait_s=1.0, residency="a")]
    per_hour = M.tally_window(0.0, 2 * H, served_in_first, [], [span], 1000.0)
    assert [t.vram_used_mib_s for _, t in per_hour] == [1000 * H, 0.0]
    assert M.evaluate(M.Tally.total(t for _, t in per_hour))[M.VRAM_EFFICIENCY].value == 0.5


@pytest.mark.parametrize("comparator,value,expected", [
    ("lt", 4.99, True), ("lt", 5.0, False), ("le", 5.0, True), ("gt", 5.0, False), ("ge", 5.0, True),
])
def test_check(comparator, value, expected):
    assert M.check(value, M.Target("x", comparator, 5.0)) is expected
    assert M.check(value, M.Target("x", comparator, 5.0, enabled=False)) is None


def test_default_targets_are_the_seeds():
    t = M.default_targets()
    assert (t[M.P95].comparator, t[M.P95].value) == ("lt", 5.0)
    assert (t[M.LOADS_PER_HOUR].comparator, t[M.LOADS_PER_HOUR].value) == ("lt", 10.0)
    assert (t[M.VRAM_EFFICIENCY].comparator, t[M.VRAM_EFFICIENCY].value) == ("gt", 0.8)
    assert (t[M.QUALITY_MET].comparator, t[M.QUALITY_MET].value) == ("gt", 0.95)
    assert (t[M.FALLBACK_RATE].comparator, t[M.FALLBACK_RATE].value) == ("lt", 0.05)


def test_module_is_pure():
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(M))
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert imported <= {"__future__", "bisect", "math", "collections", "dataclasses"}, imported
    assert not math.isnan(0.0)
