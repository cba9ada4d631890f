"""The trace replay simulator: exact accounting (waits, first tokens, loads, preload windows,
keep-warm), policy invariants, determinism, what-if profiles, the command and its stored run, and
the regression on the shared Azure traces (the project's copy in data/traces/)."""
from __future__ import annotations

import copy
import datetime as dt
import random
from pathlib import Path

import pytest

from models_registry.catalog.profile import load_profile_file, parse_profile
from models_registry.replay import (
    load_mapping,
    map_rows,
    read_trace,
    scale_and_sample,
    simulate,
    trace_origin,
)
from models_registry.replay.report import summarize, table
from models_registry.replay.traces import Mapping, Request
from models_registry.replay.whatif import load_base, load_what_if
from models_registry.slo import metrics

ROOT = Path(__file__).resolve().parents[2]
MERGED = ROOT / "data/traces/azure2023_merged_by_service.csv"
# The merged file counts seconds from the conversation trace's first TIMESTAMP (data/traces/README.md).
MERGED_ORIGIN = dt.datetime(2023, 11, 16, 18, 15, 46, 680590, tzinfo=dt.timezone.utc)
TOWER = ROOT / "profiles/tower.yaml"
WHATIF = ROOT / "profiles/whatif"

# One 10 GiB GPU; A is the best and slow to load, B acceptable and quick. Prefill: 5 prompt
# tokens take 0.1 s on A, 0.01 s on B; 10 output tokens 1 s on A, 0.1 s on B.
SMALL = {
    "version": 1,
    "hosts": [{"name": "h", "gpus": [{"index": 0, "vendor": "nvidia", "name": "g", "total_gb": 10}],
               "endpoints": [{"name": "e0", "base_url": "http://127.0.0.1:1", "gpus": [0], "keep_alive": "30m"}]}],
    "task_types": [{"name": "chat", "quality_floor": 0.6, "default_output_tokens": 10}],
    "urgency_classes": [{"name": "interactive", "patience_s": 5, "wait_weight": 0.05},
                        {"name": "critical", "patience_s": 2, "wait_weight": 0.2, "use_loaded_if_acceptable": True}],
    "models": [
        {"tag": "a", "vram_gb": 4, "load_s": 10, "tokens_per_s": 10, "prefill_tokens_per_s": 50,
         "quality": {"chat": 0.9}},
        {"tag": "b", "vram_gb": 4, "load_s": 2, "tokens_per_s": 100, "prefill_tokens_per_s": 500,
         "quality": {"chat": 0.7}},
    ],
    # No moving up (policy/upgrade.py): these figures are the requests' own; test_moving_up adds it.
    "policy": {"upgrade_min_gain": 1.0},
}


def _small_trace(tmp_path) -> list:
    p = tmp_path / "t.csv"
    p.write_text("arrival_s,task_type,urgency,input_tokens,output_tokens\n"
                 "0,chat,interactive,5,10\n1,chat,interactive,5,10\n400,chat,interactive,5,10\n")
    return map_rows(read_trace(p))


@pytest.mark.parametrize("policy, waits, ttft, models, loads, unloads", [
    # load b (2 s, within patience) at 0: generation starts at 2, first token 2.01 (prefill),
    # end 2.11; at 1 share that load behind the first request (starts 2.11, first token 2.12);
    # b is still loaded at 400 (keep_alive 30 min).
    ("towerops", [2.0, 1.11, 0.0], [2.01, 1.12, 0.01], ["b", "b", "b"], 1, 0),
    # ask for the ideal a: load 10 s; first token 10.1, end 11.1; the second queues behind it
    # (starts 11.1); keep_alive 5 min expires at 12.2 + 300 = 312.2, so at 400 a loads again.
    ("ollama_default", [10.0, 10.1, 10.0], [10.1, 10.2, 10.1], ["a", "a", "a"], 2, 1),
    # the best, always waited for; kept 30 min.
    ("always_best", [10.0, 10.1, 0.0], [10.1, 10.2, 0.1], ["a", "a", "a"], 1, 0),
    # the trace is all chat: a and b (both meet the floor) are loaded before it starts (not
    # counted); each request takes the earliest first token: b, idle each time.
    ("clairvoyant", [0.0, 0.0, 0.0], [0.01, 0.01, 0.01], ["b", "b", "b"], 0, 0),
])
def test_accounting_on_a_hand_computed_trace(tmp_path, policy, waits, ttft, models, loads, unloads):
    res = simulate(parse_profile(SMALL), _small_trace(tmp_path), policy)
    assert [round(s.wait_s, 6) for s in res.served] == waits
    assert [round(s.ttft_s, 6) for s in res.served] == ttft
    assert [round(s.response_s - s.ttft_s, 6) for s in res.served] == [1.0 if m == "a" else 0.1 for m in models]
    assert [s.model for s in res.served] == models
    counted = [e for e in res.loads if 0 <= e.at]
    assert sum(e.kind == "load" for e in counted) == loads
    assert sum(e.kind == "unload" for e in counted) == unloads
    assert all(s.met_floor for s in res.served)
    summary = summarize(res)
    assert summary["ttft_s"]["max"] == pytest.approx(max(ttft))
    assert summary["slo"][metrics.P95]["detail"]["first_token"] == 3  # the simulated TTFT, not the response


def test_moving_up_loads_the_better_model_in_the_background_on_an_idle_tower(tmp_path):
    """The hand-computed trace with moving up on: every chat request took b (a's 10 s load is beyond
    the 5 s patience); at the first tick after them (60 s, the tower idle, room for both) a is
    loaded in the background, so the request at 400 gets the better model at once."""
    data = copy.deepcopy(SMALL)
    del data["policy"]
    res = simulate(parse_profile(data), _small_trace(tmp_path), "towerops")
    assert [s.model for s in res.served] == ["b", "b", "a"]
    assert [round(s.ttft_s, 6) for s in res.served] == [2.01, 1.12, 0.1]
    assert [(e.kind, e.model, round(e.at, 6), e.thrash) for e in res.loads] == [
        ("load", "b", 2.0, False), ("load", "a", 70.0, False)]
    s = summarize(res)
    assert s["mean_quality"] == pytest.approx((0.7 + 0.7 + 0.9) / 3)


def test_prefill_is_capped_at_the_context_and_counts_in_the_queue():
    data = copy.deepcopy(SMALL)
    data["hosts"][0]["endpoints"][0]["num_ctx"] = 300
    # b: 1000 prompt tokens, truncated to 300 -> 0.6 s prefill; the second request queues behind both
    reqs = [Request(0.0, "chat", "interactive", 1000, 10), Request(0.5, "chat", "interactive", 100, 10)]
    res = simulate(parse_profile(data), reqs, "towerops")
    a, b = res.served
    assert (a.model, round(a.wait_s, 6), round(a.ttft_s, 6), round(a.response_s, 6)) == ("b", 2.0, 2.6, 2.7)
    assert (round(b.wait_s, 6), round(b.ttft_s, 6), round(b.response_s, 6)) == (2.2, 2.4, 2.5)


def _windowed(keep_alive: str) -> dict:
    data = copy.deepcopy(SMALL)
    data["hosts"][0]["endpoints"][0]["keep_alive"] = keep_alive
    data["preload_windows"] = [{"name": "w", "days": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"],
                                "start": "09:00", "end": "09:02", "models": ["a"]}]
    return data


MONDAY_0859_30 = dt.datetime(2026, 11, 23, 8, 59, 30, tzinfo=dt.timezone.utc)


def test_preload_windows_run_on_the_wall_clock_and_cool_with_a_finite_keep_alive():
    """Ticks every 60 s from a week before the first request (t = 0, 08:59:30): the window
    (09:00-09:02) opens at t = 30, so the tick at 60 loads a (ready 70); it closes at 150; a was
    last used at 100, so the first tick 5 min after that (420) cools it. Every earlier day's a was
    cooled the same way, so at 0 nothing is resident and the first request loads b."""
    reqs = [Request(t, "chat", "interactive", 5, 10) for t in (0.0, 100.0, 500.0)]
    res = simulate(parse_profile(_windowed("30m")), reqs, "towerops", start=MONDAY_0859_30)
    assert [s.model for s in res.served] == ["b", "a", "b"]
    assert [round(s.ttft_s, 6) for s in res.served] == [2.01, 0.1, 0.01]
    assert [(e.kind, e.model, round(e.at, 6)) for e in res.loads if e.at >= 0] == [
        ("load", "b", 2.0), ("load", "a", 70.0), ("unload", "a", 420.0)]
    # without a wall clock there are no preloads: a is never loaded
    res = simulate(parse_profile(_windowed("30m")), reqs, "towerops")
    assert [s.model for s in res.served] == ["b", "b", "b"]
    # With moving up, the tick that would cool a (420) keeps it: chat requests came within the
    # recent-use window, and a is what moving up would load straight back.
    data = _windowed("30m")
    del data["policy"]
    res = simulate(parse_profile(data), reqs, "towerops", start=MONDAY_0859_30)
    assert [s.model for s in res.served] == ["b", "a", "a"]
    assert [(e.kind, e.model) for e in res.loads if e.at >= 0] == [("load", "b"), ("load", "a")]


def test_keep_warm_keeps_a_windows_model_until_its_room_is_needed():
    """keep_alive -1m: last week's window loaded a and nothing ever needed its room, so a is
    resident when the trace starts and serves everything; nothing is loaded during the trace."""
    reqs = [Request(t, "chat", "interactive", 5, 10) for t in (0.0, 100.0, 500.0)]
    res = simulate(parse_profile(_windowed("-1m")), reqs, "towerops", start=MONDAY_0859_30)
    assert [s.model for s in res.served] == ["a", "a", "a"]
    assert [round(s.ttft_s, 6) for s in res.served] == [0.1, 0.1, 0.1]
    assert [e for e in res.loads if e.at >= 0] == []
    s = summarize(res)
    # a (4 GiB of the 10 GiB GPU) held the whole hour and served in it: 40 %
    assert s["slo"][metrics.VRAM_EFFICIENCY]["value"] == pytest.approx(0.4)
    assert s["slo"][metrics.LOADS_PER_HOUR]["value"] == 0.0
    # a model that needs the room evicts it: a third model, 8 GiB, for a task only it serves
    data = _windowed("-1m")
    data["task_types"].append({"name": "analysis", "quality_floor": 0.5})
    data["models"].append({"tag": "c", "vram_gb": 8, "load_s": 1, "tokens_per_s": 100, "quality": {"analysis": 0.8}})
    res = simulate(parse_profile(data), [Request(0.0, "analysis", "interactive", 5, 10)], "towerops",
                   start=MONDAY_0859_30)
    assert res.served[0].model == "c"
    assert [(e.kind, e.model) for e in res.loads if e.at >= 0] == [("evict", "a"), ("load", "c")]


def test_readers_and_mapping(tmp_path):
    rows = read_trace(ROOT / "data/traces/azure2023_code.csv")
    assert len(rows) == 8819 and rows[0].arrival_s == 0.0 and rows[0].labels == {"service": "code"}
    assert all(a.arrival_s <= b.arrival_s for a, b in zip(rows, rows[1:]))
    moon = tmp_path / "m.jsonl"
    moon.write_text('{"timestamp": 3000, "input_length": 1500, "output_length": 5, "hash_ids": []}\n'
                    '{"timestamp": 6000, "input_length": 7000, "output_length": 9, "hash_ids": [1]}\n')
    reqs = map_rows(read_trace(moon), load_mapping("mooncake"))
    assert [(r.arrival_s, r.task_type, r.urgency) for r in reqs] == [
        (0.0, "summarization", "background"), (3.0, "analysis", "background")]
    merged = map_rows(read_trace(MERGED), load_mapping("azure2023"))
    assert {(r.task_type, r.urgency) for r in merged} == {("code_generation", "interactive"), ("chat", "interactive")}
    scaled = scale_and_sample(merged[:10], time_scale=2.0)
    assert [r.arrival_s for r in scaled] == [2 * r.arrival_s for r in merged[:10]]
    # the Azure files carry their own clock; the merged file and TowerOps CSVs do not
    assert trace_origin(ROOT / "data/traces/azure2023_code.csv") == dt.datetime(
        2023, 11, 16, 18, 17, 3, 979960, tzinfo=dt.timezone.utc)
    assert trace_origin(MERGED) is None and trace_origin(moon) is None


def _merged(sample=0.05, seed=1):
    reqs = map_rows(read_trace(MERGED), load_mapping("azure2023"))
    return scale_and_sample(reqs, sample=sample, rng=random.Random(seed))


def _critical_mapping():
    return Mapping("crit", (((("service", "code"),), "code_generation", "critical"),), ("chat", "interactive"))


@pytest.mark.parametrize("policy", ["towerops", "ollama_default", "always_best", "clairvoyant"])
def test_invariants(policy):
    profile = load_profile_file(TOWER)
    world = profile.to_world(0.0)
    usable = {g.key: g.total_mib - g.reserved_mib for g in world.gpus}
    reqs = scale_and_sample(map_rows(read_trace(MERGED), _critical_mapping()), sample=0.05, rng=random.Random(3))
    res = simulate(profile, reqs, policy, start=MERGED_ORIGIN)  # over-committing a GPU raises SimError
    assert all(res.max_vram_by_gpu[g] <= usable[g] for g in usable)
    for s in res.served:
        assert s.end >= s.first_token >= s.start >= s.req.arrival_s
    # requests on one residency are served one at a time, in arrival order
    by_res: dict = {}
    for s in res.served:
        if s.residency is not None:
            by_res.setdefault(s.residency, []).append(s)
    for lst in by_res.values():
        for a, b in zip(lst, lst[1:]):
            assert b.start >= a.end - 1e-9
    if policy == "towerops":
        floors = {t.name: t.quality_floor for t in world.task_types}
        quality = {m.tag: m.quality for m in world.models}
        spans = {sp.key: sp for sp in res.spans}
        for s in res.served:
            if s.req.urgency != "critical" or s.action not in ("load", "wait_for_load"):
                continue
            t = s.req.arrival_s
            for key, (model, _ep, ready) in res.residencies.items():
                sp = spans[key]
                loaded = ready <= t and (sp.end is None or sp.end > t)
                assert not (loaded and quality[model].get(s.req.task_type, 0) >= floors[s.req.task_type]), \
                    f"critical request at {t} waited for a load while {model} was loaded"


def test_deterministic_with_a_seed():
    profile = load_profile_file(TOWER)
    a = summarize(simulate(profile, _merged(seed=5), "towerops", start=MERGED_ORIGIN))
    b = summarize(simulate(profile, _merged(seed=5), "towerops", start=MERGED_ORIGIN))
    assert a == b
    assert len(_merged(seed=5)) != len(_merged(seed=6))


def test_a_naive_start_is_refused():
    with pytest.raises(ValueError, match="time zone"):
        simulate(load_profile_file(TOWER), [], "towerops", start=dt.datetime(2026, 11, 23, 9))


def test_what_if_patches_merge_by_key_and_are_validated(tmp_path):
    data, base = load_base(TOWER)
    label, gpu, desc = load_what_if(WHATIF / "add-24gb-gpu.yaml", data, str(TOWER))
    assert label == "+24 GB GPU" and desc["kind"] == "patch"
    assert [g.index for g in gpu.hosts[0].gpus] == [0, 1, 2]
    assert [e.name for e in gpu.hosts[0].endpoints] == ["tower-amd", "tower-nvidia", "tower-3090"]
    assert gpu.hosts[0].gpus[0] == base.hosts[0].gpus[0]  # merged into, not replaced
    _, floor, _ = load_what_if(WHATIF / "raise-code-floor.yaml", data, str(TOWER))
    assert {t.name: t.quality_floor for t in floor.task_types}["code_generation"] == 0.85
    assert {t.name: t.quality_floor for t in floor.task_types}["chat"] == 0.65
    _, off, _ = load_what_if(WHATIF / "no-mistral.yaml", data, str(TOWER))
    assert {m.tag: m.enabled for m in off.models}["mistral:7b"] is False
    assert len(off.models) == len(base.models)
    p = tmp_path / "drop.yaml"
    p.write_text("changes:\n  models:\n    - {tag: tinyllama, remove: true}\n  preload_windows: []\n")
    label, drop, _ = load_what_if(p, data, str(TOWER))
    assert label == "drop" and "tinyllama" not in {m.tag for m in drop.models} and drop.preload_windows == []
    assert data == load_base(TOWER)[0]  # the base is not changed by a patch
    whole = tmp_path / "whole.yaml"
    whole.write_text(TOWER.read_text())
    assert load_what_if(whole, data, str(TOWER))[1] == base


@pytest.mark.parametrize("text, where", [
    ("changes:\n  models:\n    - {tag: tinyllama, vram_gb: -1}\n", "models[0].vram_gb"),
    ("changes:\n  modles: []\n", "changes.modles: not a profile section"),
    ("changes:\n  models:\n    - {enabled: false}\n", "changes.models[0]: a change to models names its item by 'tag'"),
    ("changes:\n  models:\n    - {tag: nope, remove: true}\n", "nothing to remove: no tag 'nope'"),
    ("name: x\nchanges: {}\ncolour: red\n", "colour: unknown field"),
])
def test_a_bad_what_if_names_the_file_and_the_field(tmp_path, text, where):
    from models_registry.catalog.profile import ProfileError

    p = tmp_path / "bad.yaml"
    p.write_text(text)
    with pytest.raises(ProfileError) as err:
        load_what_if(p, load_base(TOWER)[0], str(TOWER))
    assert str(p) in str(err.value) and where in str(err.value)


# The regression's scale: a 3 % sample of the Azure 2023 merged trace at time scale 1, about
# 870 requests in its hour (code peaks at 20 a minute). At 5 % (1,400+ requests, code peaks at 33
# a minute) the Tower's code capacity is exceeded: only two models that fit it meet the code floor
# and Ollama serves one request at a time per model, so even the clairvoyant reference (every queue
# known in advance) misses the p95 at two of three seeds. That load tests the hardware, not the
# policy; the test after this one shows it.
SCALE = dict(sample=0.03)
OVERLOAD = dict(sample=0.05)


def _regression(profile=None, policies=("towerops", "ollama_default", "always_best", "clairvoyant"), *,
                sample: float, seed: int):
    profile = profile or load_profile_file(TOWER)
    reqs = _merged(sample=sample, seed=seed)
    return reqs, {p: summarize(simulate(profile, reqs, p, start=MERGED_ORIGIN)) for p in policies}


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_regression_on_azure_traces(capsys, seed):
    """Azure 2023 merged (code + conversation), mapping azure2023, time scale 1, 3 % sample, on
    the Tower (profiles/tower.yaml) from the trace's own clock (Thu 2023-11-16 18:15:46 UTC):
    towerops meets the seed's five targets and beats Ollama's defaults on the interactive p95
    and on loads per hour, at each of three samples."""
    reqs, s = _regression(seed=seed, **SCALE)
    with capsys.disabled():
        print(f"\nAzure 2023 merged, mapping azure2023, time scale 1, sample {SCALE['sample']}, seed {seed}, "
              f"start {MERGED_ORIGIN.isoformat()}: {len(reqs)} requests")
        print(table(list(s.values())))
    t, o, c = s["towerops"]["slo"], s["ollama_default"]["slo"], s["clairvoyant"]["slo"]
    assert all(t[name]["met"] is True for name in metrics.METRICS), {n: t[n]["value"] for n in metrics.METRICS}
    assert t[metrics.P95]["value"] < o[metrics.P95]["value"]
    assert t[metrics.LOADS_PER_HOUR]["value"] < o[metrics.LOADS_PER_HOUR]["value"]
    assert t[metrics.P95]["detail"]["first_token"] == len(reqs)  # every request's simulated TTFT
    assert c[metrics.P95]["met"] is True  # the scale is one the Tower can serve at all


def test_at_5_percent_the_towers_code_capacity_is_exceeded(capsys):
    """At a 5 % sample the clairvoyant reference itself misses the p95 at some seeds, so the load
    is past what the Tower's two code models can serve within 5 s. towerops still beats Ollama's
    defaults by far on the p95, and stays within 1.5 s of the clairvoyant's. (Its loads are now
    those of second copies of the code model, about as many as Ollama's; both are under 10.)"""
    clairvoyant_missed = 0
    for seed in (1, 2, 3):
        reqs, s = _regression(policies=("towerops", "ollama_default", "clairvoyant"), seed=seed, **OVERLOAD)
        with capsys.disabled():
            print(f"\nthe same at sample {OVERLOAD['sample']}, seed {seed}: {len(reqs)} requests")
            print(table(list(s.values())))
        t, o, c = s["towerops"]["slo"], s["ollama_default"]["slo"], s["clairvoyant"]["slo"]
        assert t[metrics.P95]["value"] < o[metrics.P95]["value"] / 2
        assert t[metrics.P95]["value"] <= c[metrics.P95]["value"] + 1.5
        for name in (metrics.LOADS_PER_HOUR, metrics.QUALITY_MET, metrics.FALLBACK_RATE):
            assert t[name]["met"] is True, (name, t[name]["value"])
        clairvoyant_missed += c[metrics.P95]["met"] is False
    assert clairvoyant_missed >= 2


def test_regression_what_if_the_prefill_is_35x_generation(capsys):
    """The overload above hinges on the prefill speed: with the what-if that sets every model's
    prefill to 35x its generation speed, towerops meets all five targets at the 5 % sample."""
    data, _ = load_base(TOWER)
    label, fast, _ = load_what_if(WHATIF / "fast-prefill.yaml", data, str(TOWER))
    _, s = _regression(fast, ("towerops",), seed=1, **OVERLOAD)
    with capsys.disabled():
        print(f"\nsample {OVERLOAD['sample']}, seed 1, what-if {label!r}:")
        print(table(list(s.values())))
    t = s["towerops"]["slo"]
    assert all(t[name]["met"] is True for name in metrics.METRICS), {n: t[n]["value"] for n in metrics.METRICS}


@pytest.mark.django_db
def test_replay_command_writes_result_and_plots_and_stores_the_run(tmp_path):
    import json
    from io import StringIO

    from django.core.management import call_command

    from models_registry import models as m

    out = StringIO()
    call_command("replay", trace=str(MERGED), profile=str(TOWER), mapping="azure2023", sample=0.01, seed=2,
                 start="2023-11-16T18:15:46Z", what_if=[str(WHATIF / "no-mistral.yaml")], policy="towerops,clairvoyant",
                 out=str(tmp_path), stdout=out)
    text = out.getvalue()
    assert "time scale 1, sample 0.01, seed 2; starts 2023-11-16T18:15:46+00:00 (preload windows simulated)" in text
    assert "what-if 'no mistral'" in text and "interactive TTFT p95" in text and "full response p95" in text
    doc = json.loads((tmp_path / "result.json").read_text())
    assert [(r["profile"], r["policy"]) for r in doc["runs"]] == [
        ("base", "towerops"), ("base", "clairvoyant"), ("no mistral", "towerops"), ("no mistral", "clairvoyant")]
    assert [p["policy"] for p in doc["policies"]] == ["towerops", "clairvoyant"]  # the base profile's
    assert doc["sample"] == 0.01 and doc["start"] == "2023-11-16T18:15:46+00:00"
    assert [p["label"] for p in doc["profiles"]] == ["base", "no mistral"]
    off = next(r for r in doc["runs"] if r["profile"] == "no mistral" and r["policy"] == "towerops")
    assert "mistral:7b" not in off["served_by_model"]
    for name in ("wait_cdf.png", "loads_per_hour.png", "vram.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
    run = m.ReplayRun.objects.get()
    assert f"stored ReplayRun #{run.pk}" in text
    assert (run.requests, run.sample, run.seed, run.policies) == (doc["requests"], 0.01, 2, ["towerops", "clairvoyant"])
    assert run.start == dt.datetime(2023, 11, 16, 18, 15, 46, tzinfo=dt.timezone.utc)
    assert [w["name"] for w in run.what_if] == ["no mistral"] and run.table in text
    assert [x["policy"] for x in run.summaries] == ["towerops", "clairvoyant"] * 2
    assert {p.name: bytes(p.png) for p in run.plots.all()} == {
        n: (tmp_path / n).read_bytes() for n in ("loads_per_hour.png", "vram.png", "wait_cdf.png")}


@pytest.mark.django_db
def test_replay_command_without_storing_or_out_writes_nothing(tmp_path):
    from io import StringIO

    from django.core.management import call_command

    from models_registry import models as m

    out = StringIO()
    call_command("replay", trace=str(MERGED), profile=str(TOWER), mapping="azure2023", sample=0.01, no_store=True,
                 policy="towerops", stdout=out)
    assert m.ReplayRun.objects.count() == 0 and "stored" not in out.getvalue()
    assert "no wall clock: preload windows not simulated" in out.getvalue()


@pytest.mark.parametrize("options, message", [
    ({"start": "monday"}, "--start: 'monday' is not an ISO datetime with a time zone"),
    ({"start": "2026-11-23T09:00"}, "--start: '2026-11-23T09:00' is not an ISO datetime with a time zone"),
    ({"policy": "towerops,oracle"}, "--policy: unknown policy ['oracle']"),
    ({"what_if": ["/nonexistent/x.yaml"]}, "/nonexistent/x.yaml: cannot read the what-if file"),
    ({"sample": 0}, "--sample: the fraction of requests to keep, in (0, 1]; got 0"),
    ({"time_scale": -2}, "--time-scale: must be > 0"),
    ({"mapping": None}, "mapping identity: no rule matches {'service': 'conversation'}"),
    ({"mapping": str(ROOT / "models_registry/replay/mappings/mooncake.yaml")},
     "mapping mooncake: no rule matches {'service': 'conversation'}"),
])
def test_replay_command_bad_input_names_the_option(options, message):
    from io import StringIO

    from django.core.management import call_command
    from django.core.management.base import CommandError

    kwargs = dict(trace=str(MERGED), profile=str(TOWER), mapping="azure2023", sample=0.01, no_store=True,
                  no_plots=True, policy="towerops", stdout=StringIO())
    kwargs.update(options)
    if kwargs["mapping"] is None:
        del kwargs["mapping"]
    with pytest.raises(CommandError) as err:
        call_command("replay", **kwargs)
    assert message in str(err.value)


@pytest.mark.parametrize("keep_alive", ["-1m", "10m"])
def test_warm_up_jumps_give_the_same_run_as_a_tick_a_minute(monkeypatch, keep_alive):
    """Before the trace the preload ticks jump to the next window edge or expiry; a tick every
    minute must give the same loads and outcomes (a Berlin window crosses the 2026-03-29 DST change)."""
    from models_registry.replay import policies

    data, _ = load_base(TOWER)
    for e in data["hosts"][0]["endpoints"]:
        e["keep_alive"] = keep_alive
    data["preload_windows"].append({"name": "lunch", "days": ["mon", "sun"], "start": "12:30", "end": "13:10",
                                    "timezone": "Europe/Berlin", "models": ["mistral:7b", "tinyllama"]})
    profile = parse_profile(data)
    reqs = _merged(sample=0.005, seed=4)
    start = dt.datetime(2026, 3, 30, 0, 30, tzinfo=dt.timezone.utc)

    def run():
        res = simulate(profile, reqs, "towerops", start=start)
        return [(e.kind, e.model, round(e.at, 6)) for e in res.loads], [(s.model, s.first_token) for s in res.served]

    jumped = run()
    monkeypatch.setattr(policies.TowerOpsPolicy, "_next_edge", lambda self, t: t)
    assert run() == jumped
