"""The gateway's ASGI application: Ollama's and OpenAI's route tables in front of the towers.

A lean ASGI app (no framework) served by uvicorn beside Django, sharing its models through a
thread pool: the request path is a dict lookup, the answer is relayed chunk by chunk as it
arrives, and a task watching the connection cancels the request the moment its client leaves
(its hold for a load, its place in the queue, the upstream request). Why not Django async views:
see docs/gateway.md ("Why a separate ASGI app", measured).
"""
from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor

import httpx

from models_registry import conf
from models_registry.gateway import auth, listing
from models_registry.gateway import openai_protocol as oai
from models_registry.gateway.admission import (
    URGENCY_RANK,
    LocalAdmission,
    RedisAdmission,
)
from models_registry.gateway.classifier import classify, prompt_text
from models_registry.gateway.flow import Call, Flow, GatewayError, Opened
from models_registry.gateway.recording import Measured
from models_registry.gateway.relay import Aggregate, Lines, cancelled, measured_from, parse, relay_failed
from models_registry.learning import signals
from models_registry.selection.world import cached_config, load_config
from models_registry.timeutil import utcnow

log = logging.getLogger(__name__)

MAX_BODY = 64 * 1024 * 1024  # images travel base64 in the body
FEEDBACK_PREFIX = "/towerops/v1/decisions/"  # + <id>/feedback: the caller rates an answer (not an Ollama route)
NDJSON, JSON, SSE = "application/x-ndjson", "application/json; charset=utf-8", "text/event-stream"


class Request:
    """One HTTP exchange: the body, the replies, and the watch on the client's connection."""

    def __init__(self, scope, receive, send):
        self.scope, self.receive, self._send = scope, receive, send
        self.method, self.path = scope["method"], scope["path"]
        self.headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        self.client_ip = (scope.get("client") or ("", 0))[0]
        self.arrived = time.perf_counter()  # the first token's time counts from here
        self.gone = False
        self._watch: asyncio.Task | None = None
        self.started = False

    async def body(self) -> bytes:
        chunks, size = [], 0
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                self.gone = True
                raise asyncio.CancelledError()
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > MAX_BODY:
                raise GatewayError(413, f"request body over {MAX_BODY // 2**20} MiB")
            chunks.append(chunk)
            if not message.get("more_body"):
                return b"".join(chunks)

    def watch(self) -> None:
        """From now on, the client leaving cancels the task handling its request."""
        handler = asyncio.current_task()

        async def wait():
            while True:
                message = await self.receive()
                if message["type"] == "http.disconnect":
                    self.gone = True
                    handler.cancel()
                    return

        self._watch = asyncio.ensure_future(wait())

    def unwatch(self) -> None:
        if self._watch is not None:
            self._watch.cancel()

    async def start(self, status: int, content_type: str, headers: dict | None = None) -> None:
        raw = [(b"content-type", content_type.encode())]
        raw += [(k.encode(), _header_value(v)) for k, v in (headers or {}).items()]
        await self._send({"type": "http.response.start", "status": status, "headers": raw})
        self.started = True

    async def write(self, data: bytes, more: bool = True) -> None:
        if not more:
            self.unwatch()  # the server reports a finished exchange as a disconnect: not a client leaving
        await self._send({"type": "http.response.body", "body": data, "more_body": more})

    async def respond(self, status: int, body: bytes, content_type: str = JSON, headers: dict | None = None) -> None:
        await self.start(status, content_type, {**(headers or {}), "content-length": str(len(body))})
        await self.write(b"" if self.method == "HEAD" else body, more=False)


def _header_value(value) -> bytes:
    text = str(value).replace("\r", " ").replace("\n", " ")
    return text.encode("ascii", "replace")[:500]


class Gateway:
    """The ASGI callable. ``admission`` and ``http`` may be given (tests); else built at startup."""

    def __init__(self, admission=None, http: httpx.AsyncClient | None = None):
        self.admission = admission
        self.http = http
        self.flow: Flow | None = None
        self.open_networks = [ipaddress.ip_network(n, strict=False)
                              for n in conf.value("TOWEROPS_GATEWAY_OPEN_NETWORKS")]
        self.routes = {
            ("GET", "/"): self.root, ("HEAD", "/"): self.root,
            ("GET", "/api/version"): self.version, ("HEAD", "/api/version"): self.version,
            ("GET", "/api/tags"): self.tags, ("HEAD", "/api/tags"): self.tags,
            ("GET", "/api/ps"): self.ps, ("POST", "/api/show"): self.show,
            ("POST", "/api/chat"): self.native, ("POST", "/api/generate"): self.native,
            ("POST", "/api/embed"): self.native_embed, ("POST", "/api/embeddings"): self.native_embed,
            ("GET", "/v1/models"): self.v1_models,
            ("POST", "/v1/chat/completions"): self.v1_generate, ("POST", "/v1/completions"): self.v1_generate,
            ("POST", "/v1/embeddings"): self.v1_embeddings,
        }

    # ------------------------------------------------------------------ lifecycle

    async def startup(self) -> None:
        if self.admission is None:
            url = conf.value("TOWEROPS_GATEWAY_REDIS_URL")
            self.admission = RedisAdmission(url, conf.value("TOWEROPS_GATEWAY_REDIS_PREFIX")) \
                if url else LocalAdmission()
        await self.admission.start()
        if self.http is None:
            timeout = httpx.Timeout(10.0, read=conf.value("TOWEROPS_LOAD_TIMEOUT_S"))
            self.http = httpx.AsyncClient(timeout=timeout, limits=httpx.Limits(max_connections=None,
                                          max_keepalive_connections=256))
        executor = ThreadPoolExecutor(max_workers=conf.value("TOWEROPS_GATEWAY_DB_THREADS"),
                                      thread_name_prefix="gateway-db")
        self.flow = Flow(self.admission, self.http, executor,
                         conf.value("TOWEROPS_LOAD_TIMEOUT_S"))

    async def shutdown(self) -> None:
        if self.flow is not None:
            await self.flow.drain()
            await self.flow.close_connections()
            self.flow.executor.shutdown(wait=True)
        if self.http is not None:
            await self.http.aclose()
        if self.admission is not None:
            await self.admission.close()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    try:
                        await self.startup()
                    except Exception as exc:
                        log.exception("gateway: startup failed")
                        await send({"type": "lifespan.startup.failed", "message": str(exc)})
                        return
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await self.shutdown()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        req = Request(scope, receive, send)
        openai = req.path.startswith("/v1/")
        handler = self.routes.get((req.method, req.path.rstrip("/") or "/"))
        if handler is None and req.method == "GET" and req.path.startswith("/v1/models/"):
            handler = self.v1_model
        elif handler is None and req.method == "POST" and req.path.startswith(FEEDBACK_PREFIX):
            handler = self.feedback
        try:
            if handler is None:
                if openai:
                    await req.respond(404, oai.error_body(f"no route {req.method} {req.path}"))
                else:
                    await req.respond(404, b"404 page not found", "text/plain")
                return
            await handler(req)
        except asyncio.CancelledError:
            if not req.gone:
                raise
            asyncio.current_task().uncancel()  # the client left: nothing more to send
        except GatewayError as exc:
            await self._error(req, exc, openai)
        except Exception:
            log.exception("gateway: %s %s failed", req.method, req.path)
            await self._error(req, GatewayError(500, "internal error in the TowerOps gateway"), openai)
        finally:
            req.unwatch()

    async def _error(self, req: Request, exc: GatewayError, openai: bool) -> None:
        if req.started:
            return
        headers = decision_headers(exc.route, exc.attempts) if exc.route else {}
        if openai:
            kind = "invalid_request_error" if exc.status < 500 else "api_error"
            code = {401: "invalid_api_key", 404: "model_not_found"}.get(exc.status)
            await req.respond(exc.status, oai.error_body(exc.message, kind, code), headers=headers)
        else:
            await req.respond(exc.status, json.dumps({"error": exc.message}).encode(), headers=headers)

    # ------------------------------------------------------------------ helpers

    async def principal(self, req: Request) -> auth.Principal:
        token = auth.bearer(req.headers)
        found = auth.cached(token) if token else None
        if found is auth.MISS:
            found = await self.flow.db(auth.lookup, token)
        if found is not None:
            if "infer" not in found.scopes:
                raise GatewayError(403, "this API key lacks the 'infer' scope")
            return found
        if self._open(req.client_ip):
            return auth.Principal(None, frozenset({"infer"}), f"anonymous@{req.client_ip}")
        raise GatewayError(401, "unauthorized: send Authorization: Bearer <a TowerOps API key with the infer scope>")

    def _open(self, ip: str) -> bool:
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return False
        return any(addr in net for net in self.open_networks)

    async def json_body(self, req: Request) -> dict:
        raw = await req.body()
        if not raw.strip():
            raise GatewayError(400, "missing request body")
        try:
            body = json.loads(raw)
        except ValueError as exc:
            raise GatewayError(400, f"invalid JSON in the request body: {exc}") from None
        if not isinstance(body, dict):
            raise GatewayError(400, "the request body must be a JSON object")
        return body

    async def resolve(self, req: Request, who: auth.Principal, name, body: dict, path: str,
                      streams: bool) -> Call:
        """The model name, headers and key defaults -> what the selection needs (README order:
        the X-TowerOps-* headers, then the virtual model, then the key's defaults, then the prompt)."""
        if not isinstance(name, str) or not name.strip():
            raise GatewayError(400, "model is required")
        cfg = cached_config() or await self.flow.db(load_config)
        tasks = {t.name for t in cfg.task_types}
        urgencies = {u.name for u in cfg.urgencies}
        is_virtual, virtual_task = listing.parse_virtual(name, tasks)
        named = None
        adopted = req.headers.get("x-towerops-decision-id")
        if adopted:
            if not adopted.isdigit():
                raise GatewayError(400, "X-TowerOps-Decision-Id must be a decision id")
            named = await self.flow.db(_adopt, int(adopted))
            if named is None:
                raise GatewayError(404, f"no select API decision {adopted} to use")
        elif not is_virtual:
            named = _catalog_tag(cfg, name)
            if named is None:
                raise GatewayError(404, f'model "{name}" not found, try pulling it first')
        if path in ("/api/embed", "/api/embeddings") and named is None:
            raise GatewayError(400, "embeddings need a named model: vectors from different models do not mix")
        task = req.headers.get("x-towerops-task") or virtual_task or who.default_task
        if task and task not in tasks:
            raise GatewayError(400, f"X-TowerOps-Task: unknown task type {task!r}; allowed: {', '.join(sorted(tasks))}")
        text, system = prompt_text(body)
        if not task:
            task = classify(text, sorted(tasks), system)
        urgency = req.headers.get("x-towerops-urgency") or who.default_urgency or "interactive"
        if urgency not in urgencies:
            allowed = [u for u in URGENCY_RANK if u in urgencies]
            raise GatewayError(400, f"X-TowerOps-Urgency: unknown urgency {urgency!r}; allowed: {', '.join(allowed)}")
        max_wait = req.headers.get("x-towerops-max-wait")
        try:
            max_wait_s = float(max_wait) if max_wait else None
        except ValueError:
            raise GatewayError(400, "X-TowerOps-Max-Wait must be seconds, e.g. 5 or 0.5") from None
        options = body.get("options") if isinstance(body.get("options"), dict) else {}
        predict = options.get("num_predict")
        client = (req.headers.get("x-towerops-client") or req.headers.get("x-openwebui-user-name") or who.name)
        return Call(path=path, body=body, task=task, urgency=urgency, client=f"gateway {client}"[:200], named=named,
                    started=req.arrived,
                    max_wait_s=max_wait_s, input_tokens=_tokens(body), streams=streams,
                    output_tokens=predict if isinstance(predict, int) and predict > 0 else None,
                    asked_num_ctx=options.get("num_ctx"),
                    conversation=signals.conversation_digest(body) if path not in ("/api/embed", "/api/embeddings") else "")

    # ------------------------------------------------------------------ listing routes

    async def root(self, req: Request) -> None:
        await req.respond(200, b"Ollama is running", "text/plain; charset=utf-8")

    async def version(self, req: Request) -> None:
        await self.principal(req)
        await req.respond(200, json.dumps({"version": await self.flow.db(listing.minimum_version)}).encode())

    async def tags(self, req: Request) -> None:
        await self.principal(req)
        await req.respond(200, json.dumps(await self.flow.db(listing.tags)).encode())

    async def ps(self, req: Request) -> None:
        await self.principal(req)
        await req.respond(200, json.dumps(await self.flow.db(listing.ps)).encode())

    async def show(self, req: Request) -> None:
        await self.principal(req)
        body = await self.json_body(req)
        name = body.get("model") or body.get("name")
        if not isinstance(name, str) or not name:
            raise GatewayError(400, "model is required")
        cfg = await self.flow.db(load_config)
        is_virtual, task = listing.parse_virtual(name, {t.name for t in cfg.task_types})
        if is_virtual:
            await req.respond(200, json.dumps(await self.flow.db(listing.show_virtual, name, task)).encode())
            return
        tag = _catalog_tag(cfg, name)
        if tag is None:
            raise GatewayError(404, f"model '{name}' not found")
        # Ollama knows the template and capabilities: ask an endpoint, then state the num_ctx sent.
        shown = None
        for url in await self.flow.db(_up_endpoint_urls):
            try:
                r = await self.http.post(url + "/api/show", json={**body, "model": tag}, timeout=10.0)
            except httpx.HTTPError:
                continue
            if r.status_code == 200:
                shown = r.json()
                break
        if shown is None:
            raise GatewayError(404, f"model '{name}' not found on any endpoint that is up")
        ctx = await self.flow.db(listing.context_length)
        await req.respond(200, json.dumps(listing.with_num_ctx(shown, ctx)).encode())

    async def v1_models(self, req: Request) -> None:
        await self.principal(req)
        await req.respond(200, json.dumps(await self.flow.db(listing.openai_models)).encode())

    async def v1_model(self, req: Request) -> None:
        await self.principal(req)
        want = req.path.removeprefix("/v1/models/")
        models = (await self.flow.db(listing.openai_models))["data"]
        found = next((x for x in models if x["id"] == want or x["id"] == f"{want}:latest"), None)
        if found is None:
            raise GatewayError(404, f"model '{want}' not found")
        await req.respond(200, json.dumps(found).encode())

    # ------------------------------------------------------------------ feedback

    async def feedback(self, req: Request) -> None:
        """``POST /towerops/v1/decisions/<id>/feedback`` ``{"rating": 0..1}``: the caller rates an answer
        by the ``X-TowerOps-Decision-Id`` it came with (learning/signals.py; the web API has the same call)."""
        await self.principal(req)
        tail = req.path.removeprefix(FEEDBACK_PREFIX)
        number, _, rest = tail.partition("/")
        if rest.rstrip("/") != "feedback" or not number.isdigit():
            raise GatewayError(404, f"no route {req.method} {req.path}")
        body = await self.json_body(req)
        try:
            rated = await self.flow.db(signals.rate, int(number), body.get("rating"), utcnow())
        except ValueError as exc:
            raise GatewayError(400, str(exc)) from None
        except signals.NotRatable as exc:
            raise GatewayError(404 if exc.missing else 409, str(exc)) from None
        await req.respond(200, json.dumps(rated).encode())

    # ------------------------------------------------------------------ Ollama inference

    async def native(self, req: Request) -> None:
        who = await self.principal(req)
        body = await self.json_body(req)
        req.watch()
        chat = req.path == "/api/chat"
        stream = body.get("stream", True) is not False
        if body.get("keep_alive") in (0, "0", "0s", "0m") and _empty(body, chat):
            # An unload (Open WebUI's, `ollama stop`): models are shared, so TowerOps keeps them and
            # decides evictions itself; the caller gets Ollama's answer.
            done = {"model": body.get("model"), "created_at": _now_rfc3339(), "done": True, "done_reason": "unload"}
            done.update({"message": {"role": "assistant", "content": ""}} if chat else {"response": ""})
            await req.respond(200, json.dumps(done).encode())
            return
        call = await self.resolve(req, who, body.get("model"), body, req.path, streams=True)
        opened = await self.flow.open(call)
        headers = decision_headers(opened.route, opened.attempts, call)
        if stream:
            await self._relay_ndjson(req, call, opened, headers)
        else:
            agg = Aggregate(chat)
            await self._collect(call, opened, agg.add)
            if agg.error:
                await req.respond(500, json.dumps({"error": agg.error}).encode(), headers=headers)
            else:
                await req.respond(200, json.dumps(agg.result()).encode(), headers=headers)

    async def _relay_ndjson(self, req: Request, call: Call, opened: Opened, headers: dict) -> None:
        """Pass Ollama's stream through as it arrives; parse only its last line."""
        started, first, last, error = call.started, None, b"", None
        measured = None
        try:
            await req.start(200, NDJSON, headers)
            partial = b""
            try:
                async for chunk in opened.response.aiter_raw():
                    if first is None:
                        first = time.perf_counter()
                    await req.write(chunk)
                    data = partial + chunk
                    cut = data.rfind(b"\n")
                    if cut >= 0:
                        tail, partial = data[:cut], data[cut + 1:]
                        last = tail[tail.rfind(b"\n") + 1:] or last
                    else:
                        partial = data
            except httpx.HTTPError as exc:  # the endpoint broke off mid-answer
                error = f"{opened.route.endpoint} broke off: {exc or type(exc).__name__}"
                await req.write(json.dumps({"error": error}).encode() + b"\n")
            if partial.strip():
                last = partial
            await req.write(b"", more=False)
            final = parse(last) if last else None
            if final is not None and "error" in final:
                error, final = str(final["error"]), None
            measured = measured_from(final, error, started, first)
        except asyncio.CancelledError:
            done = parse(last) if last else None
            if done is not None and done.get("done"):  # all of it relayed: a client that leaves then has not cancelled
                measured = measured_from(done, error, started, first)
            else:
                measured = cancelled(started, first)
            raise
        finally:
            await asyncio.shield(opened.response.aclose())
            await self.flow.finish(opened, call, measured or relay_failed(started))

    async def _collect(self, call: Call, opened: Opened, each, req: Request | None = None) -> Measured:
        """Read the upstream answer line by line (non-streamed callers, OpenAI ones): ``each(line)``
        sees every object; with ``req``, what it returns is written to the client at once."""
        started, first, final, error = call.started, None, None, None
        measured = None
        try:
            try:
                async for line in Lines(opened.response):
                    if first is None:
                        first = time.perf_counter()
                    obj = parse(line)
                    out = each(obj)
                    if req is not None and out:
                        await req.write(out)
                    if "error" in obj:
                        error = str(obj["error"])
                    elif obj.get("done") or call.path in ("/api/embed", "/api/embeddings"):
                        final = obj
            except httpx.HTTPError as exc:
                error = f"{opened.route.endpoint} broke off: {exc or type(exc).__name__}"
                out = each({"error": error})
                if req is not None and out:
                    await req.write(out)
            measured = measured_from(final, error, started, first)
            return measured
        except asyncio.CancelledError:
            if final is not None:  # the last object was relayed (OpenAI's [DONE] too): the client may leave
                measured = measured_from(final, error, started, first)
            else:
                measured = cancelled(started, first)
            raise
        finally:
            await asyncio.shield(opened.response.aclose())
            await self.flow.finish(opened, call, measured or relay_failed(started))

    async def native_embed(self, req: Request) -> None:
        who = await self.principal(req)
        body = await self.json_body(req)
        req.watch()
        call = await self.resolve(req, who, body.get("model"), body, req.path, streams=False)
        opened = await self.flow.open(call)
        headers = decision_headers(opened.route, opened.attempts, call)
        answers: list[dict] = []
        await self._collect(call, opened, answers.append)
        answer = answers[0] if answers else {"error": "no answer from Ollama"}
        await req.respond(500 if "error" in answer else 200, json.dumps(answer).encode(), headers=headers)

    # ------------------------------------------------------------------ OpenAI inference

    async def v1_generate(self, req: Request) -> None:
        who = await self.principal(req)
        body = await self.json_body(req)
        req.watch()
        chat = req.path == "/v1/chat/completions"
        try:
            native = oai.chat_request(body) if chat else oai.completion_request(body)
        except oai.BadRequest as exc:
            raise GatewayError(400, str(exc)) from None
        call = await self.resolve(req, who, body.get("model"), native, "/api/chat" if chat else "/api/generate",
                                  streams=True)
        opened = await self.flow.open(call)
        headers = decision_headers(opened.route, opened.attempts, call)
        model = opened.route.model
        if body.get("stream"):
            include = bool((body.get("stream_options") or {}).get("include_usage"))
            translator = (oai.ChatStream if chat else oai.CompletionStream)(model, include)
            await req.start(200, SSE, headers)

            def frame(obj: dict) -> bytes:
                return oai.sse_error(str(obj["error"])) if "error" in obj else translator.frames(obj)

            await self._collect(call, opened, frame, req)
            await req.write(b"", more=False)
        else:
            agg = Aggregate(chat)
            await self._collect(call, opened, agg.add)
            if agg.error:
                await req.respond(500, oai.error_body(agg.error, "api_error"), headers=headers)
                return
            result = agg.result()
            out = oai.chat_completion(model, result) if chat else oai.completion(model, result)
            await req.respond(200, json.dumps(out).encode(), headers=headers)

    async def v1_embeddings(self, req: Request) -> None:
        who = await self.principal(req)
        body = await self.json_body(req)
        req.watch()
        try:
            native = oai.embed_request(body)
        except oai.BadRequest as exc:
            raise GatewayError(400, str(exc)) from None
        call = await self.resolve(req, who, body.get("model"), native, "/api/embed", streams=False)
        opened = await self.flow.open(call)
        headers = decision_headers(opened.route, opened.attempts, call)
        answers: list[dict] = []
        await self._collect(call, opened, answers.append)
        answer = answers[0] if answers else {"error": "no answer from Ollama"}
        if "error" in answer:
            await req.respond(500, oai.error_body(str(answer["error"]), "api_error"), headers=headers)
            return
        out = oai.embeddings(opened.route.model, answer, body.get("encoding_format"))
        await req.respond(200, json.dumps(out).encode(), headers=headers)


def decision_headers(route, attempts: list[int], call: Call | None = None) -> dict:
    """The explanation every reply carries (README: "Headers")."""
    h = {
        "X-TowerOps-Decision-Id": route.decision_id,
        "X-TowerOps-Model": route.model or "",
        "X-TowerOps-Endpoint": route.endpoint or "",
        "X-TowerOps-Action": route.action or "",
        "X-TowerOps-Expected-Wait-S": f"{route.expected_wait_s:.3f}" if route.expected_wait_s is not None else "",
        "X-TowerOps-Reason": route.reason[:300],
    }
    if len(attempts) > 1:
        h["X-TowerOps-Attempts"] = ",".join(str(a) for a in attempts)
    if call is not None:
        h["X-TowerOps-Wait-S"] = f"{time.perf_counter() - call.started:.3f}"
        h["X-TowerOps-Task"] = call.task
        h["X-TowerOps-Urgency"] = call.urgency
        h["X-TowerOps-Num-Ctx"] = route.num_ctx
        if call.asked_num_ctx is not None and call.asked_num_ctx != route.num_ctx:
            h["X-TowerOps-Num-Ctx-Asked"] = call.asked_num_ctx
    return h


def _catalog_tag(cfg, name: str) -> str | None:
    from models_registry.runtime.ollama import normalize_model_name

    # Only what this gateway can serve by name: enabled local models (a remote fallback or a disabled
    # model is "not found", as Ollama says of a model it does not have).
    want = normalize_model_name(name).casefold()
    for model in cfg.models:
        if model.kind == "local" and model.enabled and normalize_model_name(model.tag).casefold() == want:
            return model.tag
    return None


def _adopt(decision_id: int) -> str | None:
    from models_registry.gateway.recording import adopt_advisory

    return adopt_advisory(decision_id)


def _up_endpoint_urls() -> list[str]:
    from models_registry import models as m

    return [u.rstrip("/") for u in m.Endpoint.objects.filter(is_up=True).order_by("name")
            .values_list("base_url", flat=True)]


def _empty(body: dict, chat: bool) -> bool:
    return not body.get("messages") if chat else not body.get("prompt") and not body.get("images")


def _tokens(body: dict) -> int | None:
    """The prompt's length in tokens, roughly (4 characters a token), for the prefill estimate."""
    chars = 0
    for msg in body.get("messages") or ():
        if isinstance(msg, dict) and isinstance(msg.get("content"), str):
            chars += len(msg["content"])
    for key in ("prompt", "system", "input"):
        value = body.get(key)
        if isinstance(value, str):
            chars += len(value)
        elif isinstance(value, list):
            chars += sum(len(x) for x in value if isinstance(x, str))
    return chars // 4 if chars else None


def _now_rfc3339() -> str:
    import datetime as dt

    return dt.datetime.now(dt.timezone.utc).isoformat().replace("+00:00", "Z")
