"""The simulator's /api/embed and /api/embeddings (fakes/ollama_embed.py), in Ollama's shapes,
through the real `ollama` client."""
from __future__ import annotations

import math

import httpx
import ollama
import pytest

from models_registry.catalog.profile import parse_profile
from models_registry.fakes.ollama_server import SimulatedTower

from .test_ollama_server import SCALE, client, kinds, small_profile


@pytest.fixture
def tower():
    t = SimulatedTower(parse_profile(small_profile()), time_scale=SCALE).start()
    try:
        yield t
    finally:
        t.shutdown()


def test_embed_answers_normalised_vectors_of_the_models_width(tower):
    out = client(tower).embed(model="small:1b", input=["first", "second"])
    assert len(out.embeddings) == 2 and len(out.embeddings[0]) == 2048  # small:1b's embedding length
    assert math.isclose(sum(v * v for v in out.embeddings[0]), 1.0, rel_tol=1e-4)
    assert out.embeddings[0] != out.embeddings[1]
    assert out.embeddings[0] == client(tower).embed(model="small:1b", input="first").embeddings[0]  # deterministic
    assert out.prompt_eval_count > 0 and out.total_duration >= out.load_duration > 0  # it loaded the model
    assert tower.loaded("ep-a") == {"small:1b": "loaded"}


def test_embed_with_no_input_loads_the_model_and_answers_empty(tower):
    r = httpx.post(tower.url("ep-a") + "/api/embed", json={"model": "medium:4b"}).json()
    assert r == {"model": "medium:4b", "embeddings": []}
    assert tower.loaded("ep-a") == {"medium:4b": "loaded"}
    r = httpx.post(tower.url("ep-a") + "/api/embed", json={"model": "medium:4b", "input": "x", "dimensions": 8}).json()
    assert len(r["embeddings"][0]) == 8


def test_the_older_embeddings_route(tower):
    out = client(tower).embeddings(model="small:1b", prompt="first")
    assert len(out.embedding) == 2048
    assert httpx.post(tower.url("ep-a") + "/api/embeddings", json={"model": "small:1b", "prompt": ""}).json() \
        == {"embedding": []}


def test_a_different_num_ctx_reloads_the_model_as_a_generation_would(tower):
    c = client(tower)
    c.embed(model="small:1b", input="a", options={"num_ctx": 2048})
    c.embed(model="small:1b", input="a", options={"num_ctx": 4096})
    assert len(kinds(tower, "small:1b", "load_start")) == 2


def test_errors_are_ollamas(tower):
    with pytest.raises(ollama.ResponseError) as err:
        client(tower).embed(model="nope", input="a")
    assert err.value.status_code == 404 and 'model "nope" not found' in err.value.error
    r = httpx.post(tower.url("ep-a") + "/api/embed", json={"model": "small:1b", "input": 5})
    assert r.status_code == 400 and r.json() == {"error": "invalid input type"}
