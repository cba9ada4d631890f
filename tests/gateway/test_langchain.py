"""langchain-ollama's ChatOllama, unchanged: validate_model_on_init accepts the virtual model."""
from __future__ import annotations

import pytest
from langchain_ollama import ChatOllama

from .conftest import put_loaded, recorded

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def test_chat_ollama_validates_auto_and_streams(sim, gateway, key):
    put_loaded(sim, "llama3.2:3b", "tower-amd")
    headers = {"Authorization": f"Bearer {key}", "X-TowerOps-Urgency": "critical"}
    llm = ChatOllama(model="auto", base_url=gateway.url, validate_model_on_init=True, keep_alive="5m",
                     client_kwargs={"headers": headers})
    chunks = list(llm.stream("hello, how are you?"))
    assert len("".join(c.content for c in chunks).split()) == 32
    (d,) = recorded(1)
    assert (d.urgency, d.task_type.name, d.model.tag) == ("critical", "chat", "llama3.2:3b")
    assert d.outcome.first_token_ms is not None
    # LangChain sent keep_alive "5m": the gateway sends the endpoint's (keep-warm) instead.
    assert sim.loaded("tower-amd") == {"llama3.2:3b": "loaded"}
    assert sim.endpoints["tower-amd"].runners["llama3.2:3b"].keep_alive == float("inf")


def test_an_unknown_model_fails_validation(sim, gateway, key):
    with pytest.raises(ValueError, match="not found"):
        ChatOllama(model="auto:nope", base_url=gateway.url, validate_model_on_init=True,
                   client_kwargs={"headers": {"Authorization": f"Bearer {key}"}})
