"""The `openai` package, unchanged, against the gateway's /v1 (base_url = the gateway + /v1)."""
from __future__ import annotations

import base64
import struct

import openai
import pytest

from .conftest import put_loaded, recorded

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def client(gateway, key):
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=key, max_retries=0)


def test_chat_not_streamed_with_the_decision_in_the_headers(sim, client):
    put_loaded(sim, "llama3.2:3b", "tower-amd")
    raw = client.chat.completions.with_raw_response.create(
        model="auto:general", messages=[{"role": "user", "content": "what is the capital of France?"}])
    out = raw.parse()
    assert out.object == "chat.completion" and out.choices[0].finish_reason == "stop"
    assert len(out.choices[0].message.content.split()) == 32 and out.model == "llama3.2:3b"
    assert out.usage.completion_tokens == 32 and out.usage.total_tokens == out.usage.prompt_tokens + 32
    (d,) = recorded(1)
    assert raw.headers["x-towerops-decision-id"] == str(d.pk)
    assert (raw.headers["x-towerops-model"], raw.headers["x-towerops-endpoint"]) == ("llama3.2:3b", "tower-amd")
    assert raw.headers["x-towerops-action"] == "use_loaded" and raw.headers["x-towerops-reason"]
    assert float(raw.headers["x-towerops-wait-s"]) >= 0 and float(raw.headers["x-towerops-expected-wait-s"]) >= 0
    assert d.outcome.measured_by == "gateway" and d.outcome.output_tokens == 32


def test_chat_streamed_with_usage(sim, client):
    put_loaded(sim, "llama3.2:3b", "tower-amd")
    chunks = list(client.chat.completions.create(
        model="llama3.2:3b", messages=[{"role": "user", "content": "hello"}], stream=True,
        stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len(text.split()) == 32
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert [c.choices[0].finish_reason for c in finals] == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 32  # the usage chunk comes last
    (d,) = recorded(1)
    assert d.outcome.result == "ok" and d.outcome.first_token_ms <= d.outcome.response_ms


def test_completions_models_and_embeddings(sim, client):
    put_loaded(sim, "llama3.2:3b", "tower-amd")
    comp = client.completions.create(model="llama3.2:3b", prompt="Once upon a time", max_tokens=5)
    assert comp.choices[0].finish_reason == "length" and len(comp.choices[0].text.split()) == 5
    ids = [x.id for x in client.models.list().data]
    assert ids[0] == "auto:latest" and "llama3.2:3b" in ids
    assert client.models.retrieve("auto:chat").id == "auto:chat"
    emb = client.embeddings.create(model="llama3.2:3b", input=["a", "b"])
    assert [e.index for e in emb.data] == [0, 1] and len(emb.data[0].embedding) == 3072
    b64 = client.embeddings.create(model="llama3.2:3b", input="a", encoding_format="base64")
    decoded = struct.unpack("<3072f", base64.b64decode(b64.data[0].embedding))  # little-endian float32
    assert emb.data[0].embedding[:4] == pytest.approx(decoded[:4], abs=1e-6)
    for d in recorded(3):
        assert d.outcome.result == "ok"


def test_errors_are_in_openais_shape(sim, client):
    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(model="nope:1b", messages=[{"role": "user", "content": "hi"}])
    assert "not found" in err.value.message
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="auto", messages=[])
    bad = openai.OpenAI(base_url=client.base_url, api_key="tow_not_a_key", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()
