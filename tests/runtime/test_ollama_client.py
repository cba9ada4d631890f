"""The Ollama adapter (models_registry.runtime.ollama) against the simulated Tower (no database)."""
from __future__ import annotations

import asyncio
import datetime as dt
import time

import httpx
import pytest

from models_registry.catalog.profile import parse_profile
from models_registry.fakes.ollama_server import GIB, SimulatedTower
from models_registry.runtime.ollama import (
    AsyncOllamaClient,
    OllamaClient,
    OllamaError,
    OllamaTimeout,
    OllamaUnavailable,
    normalize_model_name,
    parse_timestamp,
    same_model,
)
from tests.helpers import free_port

SCALE = 100


def profile_dict() -> dict:
    return {
        "version": 1,
        "hosts": [{
            "name": "box",
            "simulator": {"load_fixed_s": 1.0, "disk_gbps": 1.0, "cached_disk_gbps": 5.0},
            "gpus": [{"index": 0, "vendor": "nvidia", "name": "GPU", "total_gb": 12}],
            "endpoints": [{"name": "ep", "base_url": "http://127.0.0.1:0", "gpus": [0]}],
        }],
        "models": [
            {"tag": "llama3.2:3b", "parameters_b": 3.2, "quantization": "Q4_K_M", "file_size_gb": 2.0,
             "vram_gb": 2.5, "context_length": 8192, "tokens_per_s": 80},
            {"tag": "tinyllama", "parameters_b": 1.1, "file_size_gb": 0.6, "vram_gb": 1.0,
             "context_length": 2048, "tokens_per_s": 320},
            {"tag": "huge:70b", "file_size_gb": 40, "vram_gb": 40},
        ],
    }


@pytest.fixture
def tower():
    t = SimulatedTower(parse_profile(profile_dict()), time_scale=SCALE).start()
    try:
        yield t
    finally:
        t.shutdown()


@pytest.fixture
def api(tower):
    with OllamaClient(tower.url("ep"), timeout=5, load_timeout=10) as c:
        yield c


def test_version_tags_show(api):
    assert api.version() == "0.30.0"
    assert api.is_up()
    tags = {m.name: m for m in api.tags()}
    assert set(tags) == {"llama3.2:3b", "tinyllama:latest", "huge:70b"}
    llama = tags["llama3.2:3b"]
    assert llama.size == 2 * GIB and llama.quantization_level == "Q4_K_M" and llama.family == "llama"
    assert llama.modified_at is not None and llama.modified_at.tzinfo is not None

    info = api.show("llama3.2:3b")
    assert info.architecture == "llama"
    assert (info.block_count, info.head_count, info.head_count_kv, info.embedding_length) == (28, 24, 8, 3072)
    assert info.context_length == 8192
    assert info.kv_bytes_per_token == 2 * 28 * 8 * 128 * 2  # 112 KiB per token, as the reference computes
    assert info.kv_cache_bytes(32768) == info.kv_bytes_per_token * 8192  # capped at the trained context
    assert "completion" in info.capabilities


def test_load_ps_unload(api, tower):
    before = dt.datetime.now(dt.timezone.utc)
    result = api.load("llama3.2:3b", keep_alive="30m", num_ctx=4096)
    assert result.done_reason == "load" and result.num_ctx == 4096
    # Cold: 1 s + 2 GB / 1 GB/s = 3 s simulated = 30 ms at x100, measured around the call.
    assert 0.03 <= result.duration_s < 1.0
    assert result.load_duration_s is None  # Ollama reports no metrics for a load-only call

    (running,) = api.ps()
    assert running.name == "llama3.2:3b" and running.size == running.size_vram == int(2.5 * GIB)
    assert running.gpu_fraction == 1.0 and running.context_length == 4096
    assert running.expires_at.tzinfo is not None
    assert 17 <= (running.expires_at - before).total_seconds() <= 19  # 30 min / 100
    assert not running.keeps_forever()
    assert api.running("llama3.2:3b") == running

    # Warm reload after an unload: the page cache makes it faster.
    api.unload("llama3.2:3b")
    assert api.wait_unloaded("llama3.2:3b", timeout=5, poll=0.01)
    assert api.ps() == []
    again = api.load("llama3.2:3b", keep_alive=-1, num_ctx=4096)
    assert again.duration_s < result.duration_s
    assert api.running("llama3.2:3b").keeps_forever()


def test_names_without_tag_match_latest(api):
    api.load("tinyllama", num_ctx=2048)
    (running,) = api.ps()
    assert running.name == "tinyllama:latest"
    assert api.running("tinyllama") is not None
    api.unload("tinyllama")
    assert api.wait_unloaded("tinyllama", timeout=5, poll=0.01)


def test_wait_unloaded_times_out_while_a_model_stays(api):
    api.load("tinyllama", keep_alive="1h")
    t0 = time.monotonic()
    assert api.wait_unloaded("tinyllama", timeout=0.1, poll=0.02) is False
    assert time.monotonic() - t0 < 1


def test_generate_reports_metrics(api):
    out = api.generate("tinyllama", "Say hi", num_ctx=2048, options={"num_predict": 5})
    assert out.eval_count == 5 and out.done_reason == "length" and out.response
    assert out.load_duration_s > 0 and out.total_duration_s >= out.load_duration_s
    assert out.tokens_per_s == pytest.approx(320 * SCALE, rel=0.01)


def test_unknown_model_is_an_ollama_error(api):
    with pytest.raises(OllamaError) as err:
        api.show("nope:1b")
    assert err.value.status == 404 and err.value.not_found
    assert err.value.message == "model 'nope:1b' not found"
    with pytest.raises(OllamaError) as err:
        api.load("nope:1b")
    assert err.value.status == 404 and "not found" in err.value.message


def test_a_model_that_does_not_fit_is_an_ollama_error(api):
    with pytest.raises(OllamaError) as err:
        api.load("huge:70b")
    assert err.value.status == 500 and "requires more system memory" in err.value.message


def test_closed_port_is_unavailable():
    with OllamaClient(f"http://127.0.0.1:{free_port()}", timeout=1) as c:
        with pytest.raises(OllamaUnavailable) as err:
            c.version()
        assert not isinstance(err.value, OllamaTimeout)
        assert not c.is_up()
        with pytest.raises(OllamaUnavailable):
            c.ps()


def test_endpoint_down_then_up(api, tower):
    assert api.is_up()
    tower.stop_endpoint("ep")
    with pytest.raises(OllamaUnavailable):
        api.ps()  # even over the pooled keep-alive connection
    tower.start_endpoint("ep")
    assert api.version() == "0.30.0"


def test_hung_load_times_out_and_is_aborted(tower):
    tower.hang_loads("ep", True)
    with OllamaClient(tower.url("ep"), timeout=2, load_timeout=0.2) as c:
        t0 = time.monotonic()
        with pytest.raises(OllamaTimeout):
            c.load("llama3.2:3b")
        assert time.monotonic() - t0 < 1.5
        assert c.is_up()  # the endpoint answers; only the load hangs
        tower.hang_loads("ep", False)
        assert c.load("llama3.2:3b").done_reason == "load"  # the aborted load freed the queue


def test_async_client(tower):
    async def scenario():
        async with AsyncOllamaClient(tower.url("ep"), timeout=5, load_timeout=10) as c:
            assert await c.version() == "0.30.0"
            assert {m.name for m in await c.tags()} >= {"tinyllama:latest"}
            assert (await c.show("tinyllama")).block_count == 22
            await c.load("tinyllama", keep_alive="5m", num_ctx=2048)
            assert [m.name for m in await c.ps()] == ["tinyllama:latest"]
            await c.unload("tinyllama")
            assert await c.wait_unloaded("tinyllama", timeout=5, poll=0.01)

    asyncio.run(scenario())


def test_errors_from_a_mocked_transport():
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/api/ps":
            return httpx.Response(503, json={"error": "server busy, please try again.  maximum pending requests exceeded"})
        if request.url.path == "/api/tags":
            return httpx.Response(502, text="Bad Gateway")
        raise httpx.ReadTimeout("slow", request=request)

    with OllamaClient("http://ollama.invalid", transport=httpx.MockTransport(handler)) as c:
        with pytest.raises(OllamaError) as err:
            c.ps()
        assert err.value.status == 503 and err.value.message.startswith("server busy")
        with pytest.raises(OllamaError) as err:
            c.tags()
        assert err.value.status == 502 and err.value.message == "Bad Gateway"
        with pytest.raises(OllamaTimeout):
            c.version()


def test_helpers():
    assert normalize_model_name("mistral") == "mistral:latest"
    assert same_model("mistral", "Mistral:latest") and not same_model("mistral:7b", "mistral")
    ts = parse_timestamp("2024-06-04T14:38:31.837530123-07:00")
    assert ts == dt.datetime(2024, 6, 4, 21, 38, 31, 837530, tzinfo=dt.timezone.utc)
    assert parse_timestamp("2318-01-01T00:00:00Z").year == 2318
    assert parse_timestamp("0001-01-01T00:00:00Z") is None
    assert parse_timestamp("garbage") is None
