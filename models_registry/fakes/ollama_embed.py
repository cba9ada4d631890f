"""The simulator's embedding routes, in Ollama's shapes: ``POST /api/embed`` and the older
``POST /api/embeddings``.

* ``/api/embed`` ``{"model", "input": str | [str], "truncate"?, "dimensions"?, "options"?, "keep_alive"?}``
  -> ``{"model", "embeddings": [[float]], "total_duration", "load_duration", "prompt_eval_count"}``;
  vectors are L2-normalised, as Ollama's are. An empty input loads the model and answers
  ``{"model", "embeddings": []}`` (Ollama's routes.go does the same).
* ``/api/embeddings`` ``{"model", "prompt"}`` -> ``{"embedding": [float]}`` (not normalised); an empty
  prompt -> ``{"embedding": []}``.

The model is scheduled like a generation (the same runner, so a different ``num_ctx`` reloads it);
the prompt is read at the model's prefill speed. Vectors are deterministic in the text, with the
model's embedding length from its architecture. Registered on the simulator's HTTP layer through
``ROUTES`` (one dispatch line in ollama_server.py).
"""
from __future__ import annotations

import hashlib
import math
import struct
import time
from typing import Any

from models_registry.fakes import ollama_server as sim


def _vector(text: str, dims: int, normalise: bool) -> list[float]:
    out: list[float] = []
    counter = 0
    while len(out) < dims:
        block = hashlib.sha256(f"{counter}:{text}".encode()).digest()
        out.extend((x / 2**31) - 1.0 for x in struct.unpack("<8I", block))
        counter += 1
    out = out[:dims]
    if normalise:
        norm = math.sqrt(sum(v * v for v in out)) or 1.0
        out = [v / norm for v in out]
    return [round(v, 7) for v in out]


def _serve(tower: "sim.SimulatedTower", ep, body: dict, ctx, texts: list[str]) -> tuple[Any, float, int, float]:
    """Schedule the model, read the texts; -> (runner facts, load seconds, tokens, total seconds)."""
    facts = tower._lookup(ep, body.get("model"), for_show=False)
    options = body.get("options") or {}
    if not isinstance(options, dict):
        raise sim.SimError(400, "json: cannot unmarshal options")
    keep_alive = sim._keep_alive_of(body)
    start = time.monotonic()
    runner = tower._acquire(ep, facts, options, keep_alive, ctx)
    loaded = time.monotonic()
    try:
        tokens = sum(max(1, len(t) // 4) for t in texts)
        if tokens:
            rate = (facts.spec.prefill_tokens_per_s or 20 * facts.spec.tokens_per_s)
            ctx.sleep_until(loaded + tower._real(tokens / rate))
    finally:
        tower._idle(runner)
    return facts, loaded - start, tokens, time.monotonic() - start


def embed(tower: "sim.SimulatedTower", ep, body: dict, ctx) -> None:
    inp = body.get("input")
    if inp is None or inp == "" or inp == []:
        texts = []
    elif isinstance(inp, str):
        texts = [inp]
    elif isinstance(inp, list) and all(isinstance(x, str) for x in inp):
        texts = inp
    else:
        raise sim.SimError(400, "invalid input type")
    facts, load_s, tokens, total_s = _serve(tower, ep, body, ctx, texts)
    if not texts:
        ctx.send_json(200, {"model": body.get("model"), "embeddings": []})
        return
    dims = facts.embedding
    wanted = body.get("dimensions")
    if isinstance(wanted, int) and 0 < wanted < dims:
        dims = wanted
    ctx.send_json(200, {
        "model": body.get("model"),
        "embeddings": [_vector(t, dims, normalise=True) for t in texts],
        "total_duration": int(total_s * 1e9), "load_duration": int(load_s * 1e9), "prompt_eval_count": tokens,
    })


def embeddings(tower: "sim.SimulatedTower", ep, body: dict, ctx) -> None:
    prompt = body.get("prompt") or ""
    if not isinstance(prompt, str):
        raise sim.SimError(400, "invalid prompt type")
    facts, _, _, _ = _serve(tower, ep, body, ctx, [prompt] if prompt else [])
    ctx.send_json(200, {"embedding": _vector(prompt, facts.embedding, normalise=False) if prompt else []})


ROUTES = {"/api/embed": embed, "/api/embeddings": embeddings}
