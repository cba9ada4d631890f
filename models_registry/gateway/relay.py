"""Relaying Ollama's answer to the caller, measuring it on the way: the first token's time here,
the totals, and Ollama's final counts and durations.

* Native streams are passed through byte for byte as they arrive (no buffering, no re-encoding);
  only the last line is parsed, for the metrics.
* Everything else is read line by line: a caller that asked for ``"stream": false`` gets the
  lines aggregated into one object, as Ollama builds it (the gateway always streams from
  Ollama, so the first token is measured for every request); OpenAI callers get each line
  translated (openai_protocol).

An upstream that breaks mid-stream ends the stream with an error in the caller's protocol (an
NDJSON ``{"error": ...}`` line, an SSE ``data: {"error": ...}`` frame) and is recorded as an error;
a client that leaves is recorded as cancelled (the upstream request is closed, which cancels it
in Ollama).
"""
from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator

import httpx

from models_registry.gateway.recording import Measured


class Lines:
    """Split an upstream byte stream into NDJSON lines."""

    def __init__(self, response: httpx.Response):
        self.response = response

    async def __aiter__(self) -> AsyncIterator[bytes]:
        partial = b""
        async for chunk in self.response.aiter_raw():
            data = partial + chunk
            *lines, partial = data.split(b"\n")
            for line in lines:
                if line.strip():
                    yield line
        if partial.strip():
            yield partial


class Aggregate:
    """Ollama's streamed lines -> the single object it answers with ``"stream": false``."""

    def __init__(self, chat: bool):
        self.chat = chat
        self.text: list[str] = []
        self.thinking: list[str] = []
        self.tool_calls: list = []
        self.final: dict | None = None
        self.error: str | None = None

    def add(self, obj: dict) -> None:
        if "error" in obj:
            self.error = str(obj["error"])
            return
        part = obj.get("message") or {} if self.chat else obj
        key = "content" if self.chat else "response"
        if part.get(key):
            self.text.append(part[key])
        if part.get("thinking"):
            self.thinking.append(part["thinking"])
        if part.get("tool_calls"):
            self.tool_calls.extend(part["tool_calls"])
        if obj.get("done"):
            self.final = obj

    def result(self) -> dict:
        out = dict(self.final or {})
        if self.chat:
            msg = dict(out.get("message") or {"role": "assistant"})
            msg["content"] = "".join(self.text)
            if self.thinking:
                msg["thinking"] = "".join(self.thinking)
            if self.tool_calls:
                msg["tool_calls"] = self.tool_calls
            out["message"] = msg
        else:
            out["response"] = "".join(self.text)
            if self.thinking:
                out["thinking"] = "".join(self.thinking)
        return out


def measured_from(final: dict | None, error: str | None, started: float, first: float | None) -> Measured:
    now = time.perf_counter()
    m = Measured("error" if error or final is None else "ok", int((now - started) * 1000),
                 None if first is None else int((first - started) * 1000))
    if error:
        m.error = error
    elif final is None:
        m.error = "the answer ended without Ollama's final object"
    if final is not None:
        m.read_final(final)
    return m


def cancelled(started: float, first: float | None) -> Measured:
    """The client went away before the answer's last object was relayed."""
    return Measured("cancelled", int((time.perf_counter() - started) * 1000),
                    None if first is None else int((first - started) * 1000), error="the client went away mid-answer")


def relay_failed(started: float) -> Measured:
    """The relay itself broke before it could measure anything."""
    return Measured("error", int((time.perf_counter() - started) * 1000), error="relay failed")


def parse(line: bytes) -> dict:
    try:
        obj = json.loads(line)
    except ValueError:
        return {"error": f"not JSON from Ollama: {line[:200]!r}"}
    return obj if isinstance(obj, dict) else {"error": "unexpected answer from Ollama"}
