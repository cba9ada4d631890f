"""The simulated Tower against the official `ollama` client and raw HTTP (no database)."""
from __future__ import annotations

import datetime as dt
import threading
import time
from pathlib import Path

import httpx
import ollama
import pytest
import yaml

from models_registry.catalog.durations import parse_keep_alive
from models_registry.catalog.profile import parse_profile
from models_registry.fakes.ollama_server import GIB, SimulatedTower, main
from models_registry.policy.ollama_rules import normalize_model_name
from tests.helpers import wait_for

SCALE = 100  # 1 simulated second = 10 ms
ROOT = Path(__file__).resolve().parents[2]


def small_profile(**sim) -> dict:
    """One host, two GPUs (12 GiB and 8 GiB), one endpoint per GPU on free loopback ports."""
    return {
        "version": 1,
        "hosts": [{
            "name": "box",
            "simulator": {"load_fixed_s": 1.0, "disk_gbps": 1.0, "cached_disk_gbps": 4.0, **sim},
            "gpus": [
                {"index": 0, "vendor": "nvidia", "name": "Big GPU", "total_gb": 12},
                {"index": 1, "vendor": "amd", "name": "Small GPU", "total_gb": 9, "reserved_gb": 1},
            ],
            "endpoints": [
                {"name": "ep-a", "base_url": "http://127.0.0.1:0", "gpus": [0]},
                {"name": "ep-b", "base_url": "http://127.0.0.1:0", "gpus": [1]},
            ],
        }],
        "models": [
            {"tag": "small:1b", "parameters_b": 1.2, "quantization": "Q4_K_M", "file_size_gb": 2.0,
             "vram_gb": 2.0, "context_length": 8192, "tokens_per_s": 400},
            {"tag": "medium:4b", "parameters_b": 4.0, "file_size_gb": 4.0, "vram_gb": 4.0, "tokens_per_s": 200},
            {"tag": "big:7b", "parameters_b": 7.0, "file_size_gb": 5.0, "vram_gb": 6.0, "tokens_per_s": 100},
            {"tag": "slow", "parameters_b": 3.0, "file_size_gb": 1.0, "vram_gb": 3.0, "tokens_per_s": 5},
            {"tag": "huge:70b", "parameters_b": 70, "file_size_gb": 20.0, "vram_gb": 20.0},
            {"tag": "remote:api", "kind": "remote", "remote_latency_s": 1.0},
        ],
    }


@pytest.fixture
def tower():
    t = SimulatedTower(parse_profile(small_profile()), time_scale=SCALE).start()
    try:
        yield t
    finally:
        t.shutdown()


def client(t: SimulatedTower, ep: str = "ep-a") -> ollama.Client:
    return ollama.Client(host=t.url(ep), timeout=10)


def kinds(t: SimulatedTower, model: str, kind: str) -> list:
    return [e for e in t.events if e.model == model and e.kind == kind]


# --------------------------------------------------------------------------- the official client


def test_official_client_list_show_ps(tower):
    c = client(tower)
    names = [m.model for m in c.list().models]
    assert names == ["small:1b", "medium:4b", "big:7b", "slow:latest", "huge:70b"]  # no remote model
    small = c.list().models[0]
    assert small.size == 2 * GIB and small.details.quantization_level == "Q4_K_M"

    shown = c.show("small:1b")
    info = shown.modelinfo
    arch = info["general.architecture"]
    assert info[f"{arch}.context_length"] == 8192
    assert info[f"{arch}.block_count"] > 0 and info[f"{arch}.attention.head_count_kv"] > 0
    assert shown.capabilities == ["completion"]

    assert c.ps().models == []


def test_official_client_generate_stream_and_chat(tower):
    c = client(tower)
    chunks = list(c.generate("small:1b", "Why is the sky blue?", stream=True))
    assert len(chunks) >= 2
    assert all(not ch.done and ch.response for ch in chunks[:-1])
    final = chunks[-1]
    assert final.done and final.done_reason == "stop"
    assert final.eval_count == len(chunks) - 1
    assert final.prompt_eval_count > 0
    # The cold load happened inside this request: load_duration covers it (1 + 2/1 s, scaled).
    assert final.load_duration >= 3.0 / SCALE * 1e9 * 0.9
    assert final.total_duration >= final.load_duration + final.eval_duration
    # Tokens are paced at the model's tokens/s (scaled by time_scale).
    assert final.eval_duration == pytest.approx(final.eval_count / 400 / SCALE * 1e9, rel=0.01)

    whole = c.generate("small:1b", "Why is the sky blue?", stream=False)
    assert whole.done and whole.response == "".join(ch.response for ch in chunks)
    assert whole.load_duration < final.load_duration  # warm now

    reply = c.chat("small:1b", messages=[{"role": "user", "content": "hello"}])
    assert reply.message.role == "assistant" and reply.message.content and reply.eval_count > 0
    parts = list(c.chat("small:1b", messages=[{"role": "user", "content": "hello"}], stream=True))
    assert parts[-1].done and "".join(p.message.content for p in parts) == reply.message.content

    limited = c.generate("small:1b", "count", options={"num_predict": 3})
    assert limited.eval_count == 3 and limited.done_reason == "length"
    assert len(kinds(tower, "small:1b", "load_start")) == 1  # one load for all of them


def test_load_then_ps_then_unload(tower):
    c = client(tower)
    before = dt.datetime.now(dt.timezone.utc)
    r = c.generate("medium:4b", "", keep_alive="10m")
    assert r.done and r.done_reason == "load" and r.load_duration is None  # no metrics on a load
    (m,) = c.ps().models
    assert m.name == "medium:4b" and m.size == 4 * GIB and m.size_vram == m.size
    assert m.context_length == 4096
    # keep_alive is scaled too: 10 minutes = 6 s of real time at x100.
    expected = before + dt.timedelta(seconds=600 / SCALE)
    assert abs((m.expires_at - expected).total_seconds()) < 0.5

    r = c.generate("medium:4b", "", keep_alive=0)
    assert r.done_reason == "unload"
    assert wait_for(lambda: c.ps().models == [])
    assert kinds(tower, "medium:4b", "unloaded")[0].detail["reason"] == "keep_alive"

    # Unloading a model that is not loaded is a no-op with the same answer.
    assert c.generate("medium:4b", "", keep_alive=0).done_reason == "unload"
    # The chat form of load and unload.
    loaded = c.chat("small:1b", messages=[])
    assert loaded.done_reason == "load" and loaded.message.content == ""
    assert c.chat("small:1b", messages=[], keep_alive=0).done_reason == "unload"
    assert wait_for(lambda: c.ps().models == [])


def test_keep_alive_expiry_and_forever(tower):
    c = client(tower)
    c.generate("small:1b", "", keep_alive="20s")  # 0.2 s real
    c.generate("medium:4b", "", keep_alive=-1)
    c.generate("slow", "", keep_alive=30)  # a number is seconds: 0.3 s real
    ps = {m.name: m for m in c.ps().models}
    assert set(ps) == {"small:1b", "medium:4b", "slow:latest"}
    assert ps["medium:4b"].expires_at.year > dt.datetime.now().year + 200  # "Forever"
    assert [m.name for m in c.ps().models][0] == "medium:4b"  # sorted by expires_at, latest first

    assert wait_for(lambda: {m.name for m in c.ps().models} == {"medium:4b"}, timeout=3)
    assert kinds(tower, "small:1b", "unload_start")[0].detail["reason"] == "expired"


def test_keep_alive_follows_an_injected_clock():
    now = [1_800_000_000.0]
    t = SimulatedTower(parse_profile(small_profile()), time_scale=SCALE, clock=lambda: now[0]).start()
    try:
        c = client(t)
        c.generate("small:1b", "")  # default keep_alive 5m -> 3 s at x100, on the fake clock
        (m,) = c.ps().models
        assert m.expires_at == dt.datetime.fromtimestamp(now[0] + 3.0, dt.timezone.utc)
        time.sleep(0.05)
        assert len(c.ps().models) == 1  # real time passing does not expire it
        now[0] += 2.9
        time.sleep(0.05)
        assert len(c.ps().models) == 1
        now[0] += 0.2
        assert wait_for(lambda: c.ps().models == [])
    finally:
        t.shutdown()


def test_keep_alive_parsing():
    assert parse_keep_alive(None) is None
    assert parse_keep_alive("30m") == 1800
    assert parse_keep_alive("1h30m") == 5400
    assert parse_keep_alive("250ms") == 0.25
    assert parse_keep_alive(90) == 90
    assert parse_keep_alive("0") == 0
    assert parse_keep_alive(-1) == float("inf")
    assert parse_keep_alive("-5m") == float("inf")
    with pytest.raises(ValueError, match="invalid duration"):
        parse_keep_alive("soon")
    assert normalize_model_name("tinyllama") == "tinyllama:latest"
    assert normalize_model_name("localhost:5000/ns/m") == "localhost:5000/ns/m:latest"
    assert normalize_model_name("qwen2.5:7b") == "qwen2.5:7b"


# --------------------------------------------------------------------------- scheduler behaviour


def test_eviction_when_a_load_does_not_fit(tower):
    c = client(tower)  # ep-a: one 12 GiB GPU
    c.generate("big:7b", "", keep_alive="10m")  # 6 GiB <= 80 % of 12
    c.generate("medium:4b", "", keep_alive="5m")  # 4 GiB <= 80 % of the 6 left
    c.generate("small:1b", "", keep_alive="20m")  # 2 GiB > 80 % of the 2 left: evict one
    # Ollama's victim: the shortest configured keep_alive (not LRU, not the biggest).
    assert sorted(m.name for m in c.ps().models) == ["big:7b", "small:1b"]
    (ev,) = kinds(tower, "medium:4b", "unload_start")
    assert ev.detail["reason"] == "evicted"
    assert tower.gpu_free_bytes("box", 0) == 4 * GIB
    assert tower.gpu_free_bytes("box", 1) == 8 * GIB  # the other endpoint's GPU is untouched


def test_eviction_waits_for_a_busy_victim(tower):
    c = client(tower, "ep-b")  # ep-b: 8 GiB usable (9 total, 1 reserved)
    c.generate("slow", "")  # 3 GiB; 32 tokens at 5 tokens/s = 6.4 s simulated = 64 ms
    done = {}

    def busy():
        done["reply"] = client(tower, "ep-b").generate("slow", "a long answer please")
        done["at"] = time.time()

    th = threading.Thread(target=busy)
    th.start()
    assert wait_for(lambda: tower.endpoints["ep-b"].runners["slow:latest"].active == 1)
    c.generate("big:7b", "")  # 6 GiB does not fit next to slow: waits for its request, then evicts
    th.join()
    assert done["reply"].done_reason == "stop" and done["reply"].eval_count == 32
    (unload,) = kinds(tower, "slow:latest", "unload_start")
    assert unload.at >= done["at"] - 0.01
    assert [m.name for m in c.ps().models] == ["big:7b"]


def test_model_bigger_than_the_endpoint_gpu_is_an_ollama_error(tower):
    c = client(tower, "ep-b")
    c.generate("small:1b", "")
    with pytest.raises(ollama.ResponseError) as err:
        c.generate("huge:70b", "")
    assert err.value.status_code == 500
    assert "requires more system memory" in err.value.error
    # Like Ollama, it evicted what was there before giving up.
    assert c.ps().models == []
    assert c.generate("big:7b", "").done_reason == "load"  # 6 GiB fits the 8 GiB GPU when alone


def test_concurrent_loads_of_one_model_share_one_load(tower):
    results, errors = [], []

    def load():
        try:
            results.append(client(tower).generate("big:7b", "", keep_alive="1m").done_reason)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=load) for _ in range(5)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == [] and results == ["load"] * 5
    assert len(kinds(tower, "big:7b", "load_start")) == 1


def test_page_cache_makes_the_second_load_faster(tower):
    c = client(tower)

    def timed_load():
        t0 = time.monotonic()
        c.generate("big:7b", "")
        return time.monotonic() - t0

    cold = timed_load()  # 1 + 5/1 = 6 s simulated
    c.generate("big:7b", "", keep_alive=0)
    assert wait_for(lambda: c.ps().models == [])
    warm = timed_load()  # 1 + 5/4 = 2.25 s simulated
    starts = kinds(tower, "big:7b", "load_start")
    assert [e.detail["cached"] for e in starts] == [False, True]
    assert [e.detail["load_s"] for e in starts] == [6.0, 2.25]
    assert cold >= 0.06 and warm < cold
    # The page cache is per host: the other endpoint on this host loads warm as well.
    client(tower, "ep-b").generate("big:7b", "")
    assert kinds(tower, "big:7b", "load_start")[-1].detail["cached"] is True


def test_a_different_num_ctx_reloads_the_model(tower):
    c = client(tower)
    c.generate("small:1b", "", options={"num_ctx": 4096})
    (before,) = c.ps().models
    c.generate("small:1b", "hi", options={"num_ctx": 4096})  # same options: no reload
    assert len(kinds(tower, "small:1b", "load_start")) == 1
    c.generate("small:1b", "hi", options={"num_ctx": 8192})
    (after,) = c.ps().models
    assert len(kinds(tower, "small:1b", "load_start")) == 2
    assert kinds(tower, "small:1b", "unload_start")[0].detail["reason"] == "reload"
    assert after.context_length == 8192 and after.size > before.size  # the KV cache grew
    c.generate("small:1b", "", options={"num_ctx": 100000})
    assert c.ps().models[0].context_length == 8192  # capped at the model's context length


def test_max_loaded_models_evicts_by_count():
    t = SimulatedTower(parse_profile(small_profile()), time_scale=SCALE, max_loaded_models=2).start()
    try:
        c = client(t)
        c.generate("small:1b", "")
        c.generate("slow", "")
        c.generate("medium:4b", "")  # fits by memory, but two runners is the limit
        # Same keep_alive (the 5m default): the tie goes to the name, "slow:latest" < "small:1b".
        assert sorted(m.name for m in c.ps().models) == ["medium:4b", "small:1b"]
        assert [e.model for e in t.events if e.kind == "unload_start"] == ["slow:latest"]
    finally:
        t.shutdown()


# --------------------------------------------------------------------------- errors and HTTP shapes


def test_unknown_and_remote_models_are_404(tower):
    c = client(tower)
    for call in (lambda: c.show("nope:1b"), lambda: c.generate("nope:1b", "hi"),
                 lambda: c.chat("nope:1b", messages=[]), lambda: c.show("remote:api")):
        with pytest.raises(ollama.ResponseError) as err:
            call()
        assert err.value.status_code == 404 and "not found" in err.value.error
    r = httpx.post(tower.url("ep-a") + "/api/show", json={"model": "nope"})
    assert r.status_code == 404 and r.json() == {"error": "model 'nope' not found"}


def test_raw_http_shapes(tower):
    base = tower.url("ep-a")
    assert httpx.get(base + "/").text == "Ollama is running"
    assert httpx.get(base + "/api/version").json()["version"]
    assert httpx.head(base + "/api/version").status_code == 200
    assert httpx.post(base + "/api/generate", content=b"").json() == {"error": "missing request body"}
    r = httpx.post(base + "/api/generate", json={"prompt": "x"})
    assert r.status_code == 400 and r.json() == {"error": "model is required"}
    r = httpx.post(base + "/api/generate", json={"model": "small:1b", "keep_alive": "soon"})
    assert r.status_code == 400 and "invalid duration" in r.json()["error"]
    r = httpx.get(base + "/api/nothing")
    assert r.status_code == 404 and r.text == "404 page not found"
    # Streaming answers are NDJSON.
    with httpx.stream("POST", base + "/api/generate", json={"model": "small:1b", "prompt": "hi"}) as r:
        assert r.headers["content-type"] == "application/x-ndjson"
        lines = list(r.iter_lines())
    assert lines[-1].startswith("{") and '"done": true' in lines[-1]


def test_endpoint_goes_down_and_comes_back(tower):
    c = client(tower)
    c.generate("small:1b", "")
    url = tower.url("ep-a")
    tower.stop_endpoint("ep-a")
    with pytest.raises(ConnectionError):
        c.list()
    with pytest.raises(httpx.ConnectError):
        httpx.get(url + "/api/version")
    assert client(tower, "ep-b").list().models  # the other endpoint is still up
    assert tower.start_endpoint("ep-a") == url
    assert c.list().models
    assert c.ps().models == []  # a stopped Ollama lost its runners


def test_hung_load_blocks_until_released(tower):
    tower.hang_loads("ep-a", True)
    c = ollama.Client(host=tower.url("ep-a"), timeout=0.2)
    with pytest.raises(httpx.ReadTimeout):
        c.generate("small:1b", "")
    # The client gave up; like Ollama, the simulator aborts that load and frees its VRAM.
    assert wait_for(lambda: tower.loaded("ep-a") == {})
    assert tower.gpu_free_bytes("box", 0) == 12 * GIB
    tower.hang_loads("ep-a", False)
    assert client(tower).generate("small:1b", "").done_reason == "load"


def test_hung_load_times_out_like_ollama():
    t = SimulatedTower(parse_profile(small_profile()), time_scale=SCALE, load_timeout="10s").start()
    try:
        t.hang_loads("ep-a", True)
        with pytest.raises(ollama.ResponseError) as err:
            client(t).generate("small:1b", "")
        assert err.value.status_code == 500 and "timed out waiting for llama runner" in err.value.error
    finally:
        t.shutdown()


def test_cpu_offload_when_host_ram_is_given():
    t = SimulatedTower(parse_profile(small_profile()), time_scale=SCALE, cpu_ram_gb=16).start()
    try:
        c = client(t, "ep-b")  # 8 GiB GPU
        c.generate("huge:70b", "")
        (m,) = c.ps().models
        assert m.size == 20 * GIB and m.size_vram == 8 * GIB  # partially offloaded ("60%/40% CPU/GPU")
    finally:
        t.shutdown()


def test_the_tower_profile_serves_with_rewritten_ports():
    data = yaml.safe_load((ROOT / "profiles" / "tower.yaml").read_text())
    for host in data["hosts"]:
        for ep in host["endpoints"]:
            ep["base_url"] = "http://127.0.0.1:0"
    t = SimulatedTower(parse_profile(data), time_scale=1000).start()
    try:
        actual = t.profile_with_actual_urls()
        urls = [ep.base_url for h in actual.hosts for ep in h.endpoints]
        assert urls == [t.url("tower-amd"), t.url("tower-nvidia")]
        c = ollama.Client(host=t.url("tower-nvidia"))
        assert "tinyllama:latest" in [m.model for m in c.list().models]
        assert "remote:gpt-4o-mini" not in [m.model for m in c.list().models]
        c.generate("qwen2.5-coder:7b", "")
        (m,) = c.ps().models
        assert m.size_vram == int(4.5 * GIB)
        (ev,) = kinds(t, "qwen2.5-coder:7b", "load_start")
        assert ev.detail["load_s"] == pytest.approx(13.55)  # 1.8 s + 4.7 GB / 0.4 GB/s, as the seed measured
    finally:
        t.shutdown()


def test_non_loopback_urls_are_refused():
    data = small_profile()
    data["hosts"][0]["endpoints"][0]["base_url"] = "http://10.1.2.3:11434"
    with pytest.raises(ValueError, match="loopback"):
        SimulatedTower(parse_profile(data))


def test_main_serves_until_shutdown(tmp_path, monkeypatch):
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(small_profile()))
    started = {}
    real_start = SimulatedTower.start

    def spy(self):
        started["tower"] = self
        return real_start(self)

    monkeypatch.setattr(SimulatedTower, "start", spy)
    th = threading.Thread(target=main, args=(["--profile", str(path), "--time-scale", "50"],), daemon=True)
    th.start()
    assert wait_for(lambda: "tower" in started)
    t = started["tower"]
    assert wait_for(lambda: t.endpoints["ep-a"].server is not None)
    assert ollama.Client(host=t.url("ep-a")).list().models
    t.shutdown()
    th.join(timeout=5)
    assert not th.is_alive()
