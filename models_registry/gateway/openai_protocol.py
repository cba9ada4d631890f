"""OpenAI's API on top of Ollama's native one: requests translated to /api/chat, /api/generate and
/api/embed, answers translated back, in the shapes Ollama's own OpenAI layer writes.

Why translate rather than forward to Ollama's /v1: Ollama's OpenAI layer takes no ``num_ctx`` and
no ``keep_alive``, so a model loaded with the endpoint's context would be reloaded with the
server's default one; through the native API the gateway sends the endpoint's values and gets
Ollama's durations back to measure. Fields OpenAI has and Ollama does not are dropped.
"""
from __future__ import annotations

import base64
import json
import struct
import time
import uuid
from typing import Any


class BadRequest(ValueError):
    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


def error_body(message: str, kind: str = "invalid_request_error", code: str | None = None,
               param: str | None = None) -> bytes:
    return json.dumps({"error": {"message": message, "type": kind, "param": param, "code": code}}).encode()


def _text(content: Any) -> tuple[str, list[str]]:
    """An OpenAI message content (a string or parts) -> (text, base64 images)."""
    if content is None:
        return "", []
    if isinstance(content, str):
        return content, []
    if not isinstance(content, list):
        raise BadRequest("content must be a string or a list of parts", "messages")
    texts, images = [], []
    for part in content:
        if not isinstance(part, dict):
            raise BadRequest("each content part must be an object", "messages")
        if part.get("type") == "text":
            texts.append(str(part.get("text") or ""))
        elif part.get("type") == "image_url":
            url = (part.get("image_url") or {}).get("url") if isinstance(part.get("image_url"), dict) \
                else part.get("image_url")
            if not isinstance(url, str) or not url.startswith("data:") or "," not in url:
                raise BadRequest("only data: URLs are supported for images", "messages")
            images.append(url.split(",", 1)[1])
    return "\n".join(texts), images


def _options(body: dict) -> dict:
    opts: dict[str, Any] = {}
    for src, dst in (("temperature", "temperature"), ("top_p", "top_p"), ("seed", "seed"),
                     ("frequency_penalty", "frequency_penalty"), ("presence_penalty", "presence_penalty")):
        if body.get(src) is not None:
            opts[dst] = body[src]
    limit = body.get("max_completion_tokens", body.get("max_tokens"))
    if limit is not None:
        opts["num_predict"] = limit
    stop = body.get("stop")
    if stop is not None:
        opts["stop"] = [stop] if isinstance(stop, str) else stop
    return opts


def _format(body: dict) -> Any:
    rf = body.get("response_format")
    if not isinstance(rf, dict):
        return None
    if rf.get("type") == "json_object":
        return "json"
    if rf.get("type") == "json_schema":
        return (rf.get("json_schema") or {}).get("schema")
    return None


def chat_request(body: dict) -> dict:
    """/v1/chat/completions -> an /api/chat body (model, stream and options are set by the caller)."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("messages must be a non-empty list", "messages")
    out_msgs = []
    for msg in messages:
        if not isinstance(msg, dict) or not isinstance(msg.get("role"), str):
            raise BadRequest("each message needs a role", "messages")
        text, images = _text(msg.get("content"))
        out: dict[str, Any] = {"role": msg["role"], "content": text}
        if images:
            out["images"] = images
        if msg.get("tool_calls"):
            calls = []
            for call in msg["tool_calls"]:
                fn = call.get("function") or {}
                args = fn.get("arguments")
                if isinstance(args, str):
                    try:
                        args = json.loads(args or "{}")
                    except json.JSONDecodeError:
                        raise BadRequest("tool_calls[].function.arguments is not JSON", "messages") from None
                calls.append({"function": {"name": fn.get("name"), "arguments": args or {}}})
            out["tool_calls"] = calls
        if msg.get("role") == "tool" and msg.get("name"):
            out["tool_name"] = msg["name"]
        out_msgs.append(out)
    req: dict[str, Any] = {"messages": out_msgs, "options": _options(body)}
    if body.get("tools"):
        req["tools"] = body["tools"]
    fmt = _format(body)
    if fmt is not None:
        req["format"] = fmt
    return req


def completion_request(body: dict) -> dict:
    prompt = body.get("prompt")
    if isinstance(prompt, list):
        if len(prompt) != 1 or not isinstance(prompt[0], str):
            raise BadRequest("prompt must be a string (or a list of one string)", "prompt")
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise BadRequest("prompt must be a string", "prompt")
    req: dict[str, Any] = {"prompt": prompt, "options": _options(body)}
    if body.get("suffix"):
        req["suffix"] = body["suffix"]
    return req


def embed_request(body: dict) -> dict:
    inp = body.get("input")
    if isinstance(inp, str) or (isinstance(inp, list) and inp and all(isinstance(x, str) for x in inp)):
        req = {"input": inp}
        if body.get("dimensions"):
            req["dimensions"] = body["dimensions"]
        return req
    raise BadRequest("input must be a string or a non-empty list of strings", "input")


# --------------------------------------------------------------------------- answers


def _finish(final: dict, tool_calls: bool) -> str:
    if tool_calls:
        return "tool_calls"
    return "length" if final.get("done_reason") == "length" else "stop"


def _usage(final: dict) -> dict:
    p, c = int(final.get("prompt_eval_count") or 0), int(final.get("eval_count") or 0)
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


def _tool_calls(calls: list | None) -> list:
    out = []
    for i, call in enumerate(calls or ()):
        fn = call.get("function") or {}
        out.append({"id": f"call_{uuid.uuid4().hex[:8]}", "index": i, "type": "function",
                    "function": {"name": fn.get("name"), "arguments": json.dumps(fn.get("arguments") or {})}})
    return out


class ChatStream:
    """Ollama /api/chat lines -> chat.completion.chunk SSE frames, as Ollama's OpenAI layer writes them."""

    def __init__(self, model: str, include_usage: bool):
        self.id = f"chatcmpl-{uuid.uuid4().hex[:12]}"
        self.created = int(time.time())
        self.model, self.include_usage = model, include_usage
        self.saw_tools = False

    def _chunk(self, delta: dict, finish: str | None, usage: dict | None = None, choices: bool = True) -> bytes:
        obj: dict[str, Any] = {"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                               "model": self.model, "system_fingerprint": "fp_ollama",
                               "choices": [{"index": 0, "delta": delta, "finish_reason": finish}] if choices else []}
        if usage is not None:
            obj["usage"] = usage
        return b"data: " + json.dumps(obj).encode() + b"\n\n"

    def frames(self, line: dict) -> bytes:
        msg = line.get("message") or {}
        delta: dict[str, Any] = {"role": "assistant", "content": msg.get("content") or ""}
        if msg.get("thinking"):
            delta["reasoning"] = msg["thinking"]
        if msg.get("tool_calls"):
            self.saw_tools = True
            delta["tool_calls"] = _tool_calls(msg["tool_calls"])
        if not line.get("done"):
            return self._chunk(delta, None)
        out = self._chunk(delta, _finish(line, self.saw_tools))
        if self.include_usage:
            out += self._chunk({}, None, _usage(line), choices=False)
        return out + b"data: [DONE]\n\n"


class CompletionStream:
    def __init__(self, model: str, include_usage: bool):
        self.id = f"cmpl-{uuid.uuid4().hex[:12]}"
        self.created = int(time.time())
        self.model, self.include_usage = model, include_usage

    def _chunk(self, text: str, finish: str | None, usage: dict | None = None, choices: bool = True) -> bytes:
        obj: dict[str, Any] = {"id": self.id, "object": "text_completion", "created": self.created,
                               "model": self.model, "system_fingerprint": "fp_ollama",
                               "choices": [{"text": text, "index": 0, "finish_reason": finish, "logprobs": None}]
                               if choices else []}
        if usage is not None:
            obj["usage"] = usage
        return b"data: " + json.dumps(obj).encode() + b"\n\n"

    def frames(self, line: dict) -> bytes:
        text = line.get("response") or ""
        if not line.get("done"):
            return self._chunk(text, None)
        out = self._chunk(text, _finish(line, False))
        if self.include_usage:
            out += self._chunk("", None, _usage(line), choices=False)
        return out + b"data: [DONE]\n\n"


def sse_error(message: str) -> bytes:
    return b"data: " + error_body(message, "api_error") + b"\n\n"


def chat_completion(model: str, final: dict) -> dict:
    """The aggregated /api/chat answer (native.Aggregate) -> a chat.completion."""
    msg = final.get("message") or {}
    calls = _tool_calls(msg.get("tool_calls"))
    message: dict[str, Any] = {"role": "assistant", "content": msg.get("content") or ""}
    if msg.get("thinking"):
        message["reasoning"] = msg["thinking"]
    if calls:
        message["tool_calls"] = calls
    return {"id": f"chatcmpl-{uuid.uuid4().hex[:12]}", "object": "chat.completion", "created": int(time.time()),
            "model": model, "system_fingerprint": "fp_ollama",
            "choices": [{"index": 0, "message": message, "finish_reason": _finish(final, bool(calls))}],
            "usage": _usage(final)}


def completion(model: str, final: dict) -> dict:
    return {"id": f"cmpl-{uuid.uuid4().hex[:12]}", "object": "text_completion", "created": int(time.time()),
            "model": model, "system_fingerprint": "fp_ollama",
            "choices": [{"text": final.get("response") or "", "index": 0, "finish_reason": _finish(final, False),
                         "logprobs": None}],
            "usage": _usage(final)}


def embeddings(model: str, answer: dict, encoding: str | None) -> dict:
    data = []
    for i, vec in enumerate(answer.get("embeddings") or ()):
        value: Any = vec
        if encoding == "base64":
            value = base64.b64encode(struct.pack(f"<{len(vec)}f", *vec)).decode()
        data.append({"object": "embedding", "embedding": value, "index": i})
    tokens = int(answer.get("prompt_eval_count") or 0)
    return {"object": "list", "data": data, "model": model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}
