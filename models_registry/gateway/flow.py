"""One request through the gateway: select → hold while its model loads → admission by urgency →
forward with the endpoint's num_ctx and keep_alive → (the protocol relays the answer) → record.

``Flow.open(call)`` returns the upstream answer once its headers arrived, with the admission
lease held; an endpoint that refuses or errors before that is failed over: the attempt's
decision gets an error outcome and the request is selected again without that endpoint (each
new decision links to the one it retries, ``retry_of``), up to ``MAX_ATTEMPTS``. ``Flow.finish``
releases the lease and records the outcome in the background.
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import httpx
from django.db import close_old_connections, connections
from django.db.utils import InterfaceError, OperationalError

from models_registry.gateway import recording
from models_registry.gateway.admission import Lease, group_of
from models_registry.gateway.recording import Measured, Route
from models_registry.policy import SelectionRequest
from models_registry.selection.service import Ask

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 3
HOLD_POLL_S = 0.05


class GatewayError(Exception):
    """An answer the gateway gives itself, in the caller's protocol: ``status`` and ``message``."""

    def __init__(self, status: int, message: str, route: Route | None = None, attempts: list[int] | None = None):
        super().__init__(message)
        self.status, self.message, self.route, self.attempts = status, message, route, attempts or []


@dataclass
class Call:
    """A request as the gateway forwards it: the Ollama-native path and body (model, stream,
    num_ctx and keep_alive are set per attempt), and what the selection needs."""

    path: str
    body: dict
    task: str
    urgency: str
    client: str
    named: str | None = None
    max_wait_s: float | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    streams: bool = True  # chat/generate: always streamed from Ollama, so the first token is seen here
    started: float = field(default_factory=time.perf_counter)
    asked_num_ctx: Any = None
    conversation: str = ""  # learning.signals.conversation_digest of the body
    pending: Route | None = None  # the decision taken and not yet answered (cancelled if the client leaves)


@dataclass
class Opened:
    route: Route
    response: httpx.Response
    lease: Lease
    attempts: list[int]
    waited_s: float  # arrival until the model's first byte (its headers)


class Flow:
    def __init__(self, admission, http: httpx.AsyncClient, executor: ThreadPoolExecutor,
                 load_timeout_s: float = 600.0):
        self.admission, self.http, self.executor = admission, http, executor
        self.load_timeout_s = load_timeout_s
        self._background: set[asyncio.Task] = set()

    async def db(self, fn, *args):
        """Run a Django call in the pool (its threads keep their own connections)."""
        def run():
            try:
                return fn(*args)
            except (OperationalError, InterfaceError):
                close_old_connections()  # a connection the server closed: once more on a new one
                return fn(*args)

        return await asyncio.get_running_loop().run_in_executor(self.executor, run)

    def later(self, fn, *args, after: asyncio.Future | None = None) -> None:
        """Run a Django call in the background (recording), once ``after`` is done; never lost, never
        awaited by the reply."""
        async def run():
            if after is not None:
                await asyncio.wait([after])
            return await self.db(fn, *args)

        task = asyncio.ensure_future(run())
        self._background.add(task)
        task.add_done_callback(self._done)

    def start_write(self, route: Route) -> None:
        """INSERT the decision in the background while the request goes on (route.written)."""
        if route.decision_id is None and route.write is not None:
            route.written = asyncio.ensure_future(self.db(recording.write, route))

    async def written(self, route: Route) -> int:
        if route.written is not None:
            await asyncio.shield(route.written)
        return route.decision_id

    def _done(self, task: asyncio.Task) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("gateway: recording failed", exc_info=task.exception())

    async def close_connections(self) -> None:
        """Each pool thread closes its database connection (one job per thread, held at a barrier)."""
        threads = len(getattr(self.executor, "_threads", ())) or 1
        barrier = threading.Barrier(threads)

        def close():
            connections.close_all()
            try:
                barrier.wait(timeout=2)
            except threading.BrokenBarrierError:
                pass

        loop = asyncio.get_running_loop()
        await asyncio.gather(*(loop.run_in_executor(self.executor, close) for _ in range(threads)))

    async def drain(self) -> None:
        while self._background:
            await asyncio.gather(*list(self._background), return_exceptions=True)

    # ------------------------------------------------------------------ the request

    async def open(self, call: Call) -> Opened:
        exclude: set[str] = set()
        attempts: list[int] = []
        req = SelectionRequest(task_type=call.task, urgency=call.urgency, max_wait_s=call.max_wait_s,
                               expected_output_tokens=call.output_tokens, input_tokens=call.input_tokens)
        try:
            return await self._attempts(call, req, exclude, attempts)
        except asyncio.CancelledError:
            # The client went away before the answer began: the decision it holds is cancelled.
            if call.pending is not None:
                elapsed = int((time.perf_counter() - call.started) * 1000)
                self.later(recording.record, call.pending,
                           Measured("cancelled", elapsed, error="the client went away before the answer began"),
                           after=call.pending.written)
            raise

    async def _attempts(self, call: Call, req: SelectionRequest, exclude: set[str], attempts: list[int]) -> Opened:
        retry_of = None
        last_error = "no endpoint answered"
        for _ in range(MAX_ATTEMPTS):
            try:
                live = await self.admission.snapshot(call.urgency)
            except Exception:  # the queue counts are an estimate's input: select without them
                log.warning("gateway: no live queue counts", exc_info=True)
                live = None
            route = await self.db(recording.select, req, call.client,
                                  Ask(model=call.named, exclude_endpoints=frozenset(exclude), live=live,
                                      retry_of=retry_of, local_only=True))
            route.conversation, route.named = call.conversation, call.named is not None
            self.start_write(route)
            call.pending = route
            if route.model is None or route.action == "fallback" or not route.base_url:
                why = route.reason if route.action != "fallback" else (
                    f"{route.reason} (the gateway forwards to local models only)")
                attempts.append(await self.written(route))
                self._fail(call, route, 503, f"no local model can serve this request now: {why}")
                raise GatewayError(503, f"no local model can serve this request now: {why}", route, attempts)
            try:
                if route.action in ("load", "wait_for_load"):
                    await self._hold(route)
            except _AttemptFailed as exc:
                last_error = exc.message
                attempts.append(await self.written(route))
                self._fail(call, route, 503, exc.message)
                exclude.add(route.endpoint)
                retry_of = route.decision_id
                continue
            service_s = max(0.0, (route.expected_response_s or 0.0) - (route.expected_wait_s or 0.0)
                            + route.expected_prefill_s)
            lease = await self.admission.acquire(group_of(route.model, route.endpoint), call.urgency, route.slots,
                                                 service_s)
            try:
                response = await self._send(call, route)
            except _AttemptFailed as exc:
                await self.admission.release(lease)
                last_error = exc.message
                attempts.append(await self.written(route))
                if exc.final:
                    self._fail(call, route, exc.status, exc.message)
                    raise GatewayError(exc.status, exc.message, route, attempts) from None
                self._fail(call, route, exc.status, exc.message)
                exclude.add(route.endpoint)
                retry_of = route.decision_id
                continue
            except BaseException:
                await asyncio.shield(self.admission.release(lease))
                raise
            try:
                attempts.append(await self.written(route))  # the headers carry its id
            except BaseException:
                await response.aclose()
                await asyncio.shield(self.admission.release(lease))
                raise
            call.pending = None  # from here on the protocol records it (Flow.finish)
            return Opened(route, response, lease, attempts, time.perf_counter() - call.started)
        raise GatewayError(502, f"every attempt failed; the last: {last_error}", None, attempts)

    async def _hold(self, route: Route) -> None:
        """Wait until the model this decision loads (or joins) is loaded. A client that goes away
        cancels this task and so its hold; the load itself goes on for whoever comes next."""
        deadline = time.monotonic() + self.load_timeout_s
        while True:
            state = await self.db(recording.residency_state, route.residency_id) if route.residency_id else None
            if state == "loaded":
                return
            if state not in ("requested", "loading"):
                raise _AttemptFailed(503, f"the load of {route.model} on {route.endpoint} ended as {state or 'gone'}")
            if time.monotonic() > deadline:
                raise _AttemptFailed(504, f"{route.model} did not load on {route.endpoint} in {self.load_timeout_s:g} s")
            await asyncio.sleep(HOLD_POLL_S)

    def upstream_body(self, call: Call, route: Route) -> dict:
        body = dict(call.body)
        body["model"] = route.model
        if call.streams:
            body["stream"] = True
        options = dict(body.get("options") or {})
        options["num_ctx"] = route.num_ctx  # a different one would make Ollama reload the model
        body["options"] = options
        body["keep_alive"] = _keep_alive(route.keep_alive)
        return body

    async def _send(self, call: Call, route: Route) -> httpx.Response:
        request = self.http.build_request("POST", route.base_url + call.path, json=self.upstream_body(call, route))
        try:
            response = await self.http.send(request, stream=True)
        except httpx.TimeoutException as exc:
            raise _AttemptFailed(504, f"{route.endpoint} did not answer: {type(exc).__name__}") from None
        except httpx.HTTPError as exc:
            raise _AttemptFailed(502, f"{route.endpoint} is unreachable: {exc or type(exc).__name__}") from None
        if response.status_code < 400:
            return response
        try:
            raw = await response.aread()
        except httpx.HTTPError:
            raw = b""
        finally:
            await response.aclose()
        message = _error_text(raw) or f"HTTP {response.status_code}"
        # The client's own mistake (400) would fail anywhere; anything else may work elsewhere.
        final = response.status_code == 400
        raise _AttemptFailed(response.status_code, f"{route.endpoint}: {message}", final=final)

    def _fail(self, call: Call, route: Route, status: int, message: str) -> None:
        call.pending = None
        elapsed = int((time.perf_counter() - call.started) * 1000)
        self.later(recording.record, route, Measured("error", elapsed, error=f"HTTP {status}: {message}"))

    async def finish(self, opened: Opened | None, call: Call, measured: Measured) -> None:
        if opened is None:
            return
        await asyncio.shield(self.admission.release(opened.lease))
        self.later(recording.record, opened.route, measured)


class _AttemptFailed(Exception):
    def __init__(self, status: int, message: str, final: bool = False):
        super().__init__(message)
        self.status, self.message, self.final = status, message, final


def _error_text(raw: bytes) -> str:
    import json

    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return raw.decode(errors="replace").strip()[:500]
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        return body["error"]
    return str(body)[:500]


def _keep_alive(value: str) -> Any:
    """The endpoint's keep_alive as Ollama reads it: a Go duration string, or seconds."""
    try:
        number = float(value)
    except ValueError:
        return value
    return int(number) if number.is_integer() else number
