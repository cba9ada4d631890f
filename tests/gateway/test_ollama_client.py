"""The `ollama` package, unchanged, against the gateway: what a user gets by pointing OLLAMA_HOST at it."""
from __future__ import annotations

import ollama
import pytest

from models_registry import models as m

from .conftest import put_loaded, recorded

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def client(gateway, key):
    return ollama.Client(host=gateway.url, headers={"Authorization": f"Bearer {key}"})


def _measured(d: m.SelectionDecision) -> m.DecisionOutcome:
    o = d.outcome
    assert (o.measured_by, o.result, o.success) == ("gateway", "ok", True)
    assert o.first_token_ms is not None and 0 <= o.first_token_ms <= o.response_ms
    assert o.output_tokens == 32 and o.prompt_tokens > 0  # the simulator's answer length
    assert o.eval_s > 0 and o.total_s > 0
    return o


def test_chat_streamed_and_not_are_answered_and_recorded(sim, client):
    put_loaded(sim, "llama3.2:3b", "tower-amd")
    whole = client.chat(model="llama3.2:3b", messages=[{"role": "user", "content": "hello there"}])
    assert whole.done and whole.done_reason == "stop" and len(whole.message.content.split()) == 32
    assert whole.eval_count == 32 and whole.total_duration > 0
    parts = list(client.chat(model="llama3.2:3b", messages=[{"role": "user", "content": "hello there"}], stream=True))
    assert len(parts) == 33 and parts[-1].done and parts[-1].done_reason == "stop"
    assert "".join(p.message.content for p in parts) == whole.message.content  # the same answer, streamed
    for d in recorded(2):
        assert (d.model.tag, d.endpoint.name, d.action, d.source) == ("llama3.2:3b", "tower-amd", "use_loaded", "gateway")
        assert "asked for by name" in d.reason
        _measured(d)


def test_generate_streamed_and_not_through_a_virtual_model(sim, client):
    put_loaded(sim, "llama3.2:3b", "tower-amd")
    whole = client.generate(model="auto:general", prompt="what is the capital of France?")
    assert whole.done and len(whole.response.split()) == 32 and whole.model == "llama3.2:3b"
    parts = list(client.generate(model="auto:general", prompt="what is the capital of France?", stream=True))
    assert parts[-1].done and "".join(p.response for p in parts) == whole.response
    for d in recorded(2):
        assert d.task_type.name == "general" and d.model.tag == "llama3.2:3b"
        _measured(d)


def test_tags_show_and_ps(sim, client):
    put_loaded(sim, "llama3.2:3b", "tower-amd")
    names = [x.model for x in client.list().models]
    assert names[0] == "auto:latest" and "auto:code_generation" in names and "llama3.2:3b" in names
    assert "qwen2.5-coder:32b" in names and "gpt-4o-mini" not in " ".join(names)  # local models only
    shown = client.show("auto")
    assert "num_ctx" in shown.parameters and shown.modelinfo["towerops.context_length"] == 4096
    real = client.show("llama3.2:3b")  # asked of an endpoint: Ollama's own template and model_info
    assert real.modelinfo["general.architecture"] == "llama" and "num_ctx" in real.parameters
    with pytest.raises(ollama.ResponseError) as err:
        client.show("nope:1b")
    assert err.value.status_code == 404
    running = client.ps().models
    assert [(x.model, x.context_length) for x in running] == [("llama3.2:3b", 4096)]


def test_embed_and_the_older_embeddings(sim, client):
    put_loaded(sim, "llama3.2:3b", "tower-amd")
    out = client.embed(model="llama3.2:3b", input=["one text", "another"])
    assert len(out.embeddings) == 2 and len(out.embeddings[0]) == 3072
    assert abs(sum(v * v for v in out.embeddings[0]) - 1.0) < 1e-3  # normalised, as Ollama's are
    old = client.embeddings(model="llama3.2:3b", prompt="one text")
    assert len(old.embedding) == 3072
    for d in recorded(2):
        assert d.model.tag == "llama3.2:3b" and d.outcome.result == "ok"
    with pytest.raises(ollama.ResponseError) as err:
        client.embed(model="auto", input="x")
    assert err.value.status_code == 400 and "named model" in err.value.error


def test_an_unknown_model_is_404_in_ollamas_words(sim, client):
    with pytest.raises(ollama.ResponseError) as err:
        client.chat(model="nope:1b", messages=[{"role": "user", "content": "hi"}])
    assert err.value.status_code == 404 and 'model "nope:1b" not found' in err.value.error


def test_a_remote_or_disabled_catalog_model_asked_by_name_is_404_not_a_500(sim, client):
    m.LlmModel.objects.filter(tag="mistral:7b").update(enabled=False)
    for name in ("remote:gpt-4o-mini", "mistral:7b"):
        with pytest.raises(ollama.ResponseError) as err:
            client.chat(model=name, messages=[{"role": "user", "content": "hi"}])
        assert err.value.status_code == 404 and f'model "{name}" not found' in err.value.error
