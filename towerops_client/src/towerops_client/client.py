"""The TowerOps HTTP client: TowerOpsClient (sync), AsyncTowerOpsClient, and
TowerModelManager, which makes the seed's integration snippet work as written.

API (served by TowerOps, ``Authorization: Bearer <key>``):
    POST /api/v1/select                 -> a decision (see Selection)
    GET  /api/v1/state                  -> {"gpus": [...], "endpoints": [...], "residents": [...]}
    GET  /api/v1/models                 -> the catalog, with quality scores per task type
    GET  /api/v1/task-types             -> task types with their quality floors
    GET  /api/v1/decisions/{id}         -> a recorded decision
    POST /api/v1/decisions/{id}/outcome -> record how it went
    POST /api/v1/models/{tag}/preload   -> {"residency_id", "state"}   (admin scope)
    POST /api/v1/models/{tag}/unload    (admin scope)
Errors are JSON ``{"detail": ...}`` with a 4xx/5xx status; they raise TowerOpsError. Where the
client is pointed comes from its arguments or TOWEROPS_URL / TOWEROPS_API_KEY; with neither, it
raises TowerOpsConfigError (it never guesses a server).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from enum import Enum
from typing import Any
from urllib.parse import quote

import httpx

from . import __version__

API = "/api/v1"
USER_AGENT = f"towerops-client/{__version__}"


class TaskUrgency(str, Enum):
    """How long the caller can wait; the values are the API's urgency names."""

    CRITICAL = "critical"
    INTERACTIVE = "interactive"
    BACKGROUND = "background"
    BATCH = "batch"

    def __str__(self) -> str:
        return self.value


class TowerOpsError(Exception):
    """The API answered with an error status (or could not be reached: status 0)."""

    def __init__(self, status: int, detail: Any, *, method: str = "", url: str = ""):
        self.status = status
        self.detail = detail
        self.method = method
        self.url = url
        where = f" ({method} {url})" if method else ""
        super().__init__(f"TowerOps error {status}{where}: {detail}")


class TowerOpsConfigError(TowerOpsError):
    """The client was not told which TowerOps to use, or with which key."""

    def __init__(self, message: str):
        super().__init__(0, message)
        self.args = (message,)

    def __str__(self) -> str:
        return self.detail


@dataclass(frozen=True)
class Alternative:
    model: str
    quality: float | None
    expected_wait_s: float | None
    score: float | None
    rejected_because: str | None

    @classmethod
    def from_json(cls, data: dict) -> "Alternative":
        return cls(model=data.get("model", ""), quality=data.get("quality"),
                   expected_wait_s=data.get("expected_wait_s"), score=data.get("score"),
                   rejected_because=data.get("rejected_because"))


@dataclass(frozen=True)
class Selection:
    """The body of POST /api/v1/select."""

    decision_id: Any
    model: str | None
    endpoint: str | None
    gpus: tuple
    action: str | None
    expected_wait_s: float | None
    quality: float | None
    warned: bool
    reason: str
    evictions: tuple
    alternatives: tuple[Alternative, ...]
    raw: dict = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, data: dict) -> "Selection":
        if not isinstance(data, dict):
            raise TowerOpsError(200, f"unexpected select response: {data!r}")
        return cls(
            decision_id=data.get("decision_id"),
            model=data.get("model"),
            endpoint=data.get("endpoint"),
            gpus=tuple(data.get("gpus") or ()),
            action=data.get("action"),
            expected_wait_s=data.get("expected_wait_s"),
            quality=data.get("quality"),
            warned=bool(data.get("warned", False)),
            reason=data.get("reason") or "",
            evictions=tuple(data.get("evictions") or ()),
            alternatives=tuple(Alternative.from_json(a) for a in data.get("alternatives") or ()),
            raw=data,
        )


def _settings(base_url: str | None, api_key: str | None) -> tuple[str, str]:
    """The server and key: the arguments, else TOWEROPS_URL and TOWEROPS_API_KEY; no default server."""
    url = (base_url or os.environ.get("TOWEROPS_URL") or "").strip().rstrip("/")
    if not url:
        raise TowerOpsConfigError(
            "no TowerOps server configured: pass base_url=... or set TOWEROPS_URL (e.g. http://towerops.lan:8000)")
    if not url.startswith(("http://", "https://")):
        raise TowerOpsConfigError(f"TowerOps URL {url!r} must start with http:// or https://")
    key = (api_key if api_key is not None else os.environ.get("TOWEROPS_API_KEY") or "").strip()
    if not key:
        raise TowerOpsConfigError(
            "no TowerOps API key configured: pass api_key=... or set TOWEROPS_API_KEY (make one with "
            "`manage.py create_api_key NAME --scopes select,read` or in the admin's API keys)")
    return url, key


def _headers(api_key: str) -> dict[str, str]:
    return {"Accept": "application/json", "User-Agent": USER_AGENT, "Authorization": f"Bearer {api_key}"}


def outcome_body(response_ms: float, success: bool, rating: float | None = None,
                 first_token_ms: float | None = None) -> dict:
    """The JSON body of POST /api/v1/decisions/{id}/outcome. Milliseconds may be fractional (a
    stopwatch's ``(t1 - t0) * 1000``): they are sent rounded to whole ms, as the server keeps
    them; ``rating`` is how good the answer was, 0..1."""
    for name, value in (("response_ms", response_ms), ("first_token_ms", first_token_ms)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or not 0 <= value <= 86_400_000):
            raise ValueError(f"{name} must be a number of milliseconds from 0 to 86400000, not {value!r}")
    if rating is not None and (isinstance(rating, bool) or not isinstance(rating, (int, float))
                               or not 0.0 <= rating <= 1.0):
        raise ValueError(f"rating must be a number from 0 (useless) to 1 (perfect), not {rating!r}")
    body: dict[str, Any] = {"response_ms": round(response_ms), "success": bool(success)}
    if first_token_ms is not None:
        body["first_token_ms"] = round(first_token_ms)
    if rating is not None:
        body["rating"] = float(rating)
    return body


def _urgency(urgency: TaskUrgency | str) -> str:
    if isinstance(urgency, TaskUrgency):
        return urgency.value
    text = str(urgency).strip()
    try:
        return TaskUrgency(text.lower()).value
    except ValueError:
        try:
            return TaskUrgency[text.upper()].value
        except KeyError:
            return text  # let the server say which values are allowed (422)


def select_body(task_type: str, urgency: TaskUrgency | str, *, min_quality: float | None = None,
                max_wait_s: float | None = None, expected_output_tokens: int | None = None,
                input_tokens: int | None = None, client: str | None = None,
                dry_run: bool | None = None) -> dict:
    """The JSON body of POST /api/v1/select; optional fields are left out when None."""
    body: dict[str, Any] = {"task_type": task_type, "urgency": _urgency(urgency)}
    for name, value in (("min_quality", min_quality), ("max_wait_s", max_wait_s),
                        ("expected_output_tokens", expected_output_tokens),
                        ("input_tokens", input_tokens), ("client", client),
                        ("dry_run", dry_run)):
        if value is not None:
            body[name] = value
    return body


def _parse(response: httpx.Response) -> Any:
    if response.status_code >= 400:
        try:
            data = response.json()
            detail = data.get("detail", data) if isinstance(data, dict) else data
        except ValueError:
            detail = response.text.strip() or response.reason_phrase
        raise TowerOpsError(response.status_code, detail, method=response.request.method,
                            url=str(response.request.url))
    if not response.content:
        return None
    try:
        return response.json()
    except ValueError:
        raise TowerOpsError(response.status_code, f"not JSON: {response.text[:200]!r}",
                            method=response.request.method, url=str(response.request.url))


def _tag_path(tag: str) -> str:
    return quote(tag, safe=":")


def fastest_loaded(state: dict, catalog: list[dict], task_type: str | None = None,
                   min_quality: float = 0.0) -> str | None:
    """The loaded model that answers fastest: highest tokens/s in the catalog, then the smallest,
    then by name. With a task type, only models whose quality for it is at least `min_quality`
    (a model without a score for the task does not qualify). None if no loaded model qualifies."""
    by_tag = {m["tag"]: m for m in catalog or () if isinstance(m, dict) and m.get("tag")}
    best = None
    for r in (state or {}).get("residents", ()):
        tag = r.get("model")
        if r.get("state") != "loaded" or tag not in by_tag:
            continue
        if task_type is not None:
            quality = (by_tag[tag].get("quality") or {}).get(task_type)
            if quality is None or quality < min_quality:
                continue
        key = (-float(by_tag[tag].get("tokens_per_s") or 0), r.get("vram_mib") or 0, tag)
        if best is None or key < best[0]:
            best = (key, tag)
    return best[1] if best else None


def task_floor(task_types: list[dict], task_type: str) -> float:
    for t in task_types:
        if t.get("name") == task_type:
            return float(t.get("quality_floor") or 0.0)
    known = ", ".join(sorted(t.get("name", "") for t in task_types))
    raise ValueError(f"task_type {task_type!r} is not one of TowerOps' task types: {known}")


class TowerOpsClient:
    """Synchronous client. ``transport`` is for tests (httpx.MockTransport)."""

    def __init__(self, base_url: str | None = None, api_key: str | None = None, *,
                 timeout: float = 10.0, transport: httpx.BaseTransport | None = None,
                 client_name: str | None = None):
        self.base_url, self.api_key = _settings(base_url, api_key)
        self.client_name = client_name
        self._http = httpx.Client(base_url=self.base_url, headers=_headers(self.api_key),
                                  timeout=timeout, transport=transport)

    def _request(self, method: str, path: str, **kw) -> Any:
        try:
            response = self._http.request(method, API + path, **kw)
        except httpx.HTTPError as exc:
            raise TowerOpsError(0, f"cannot reach TowerOps at {self.base_url}: {exc}",
                                method=method, url=self.base_url + API + path) from exc
        return _parse(response)

    def select(self, task_type: str, urgency: TaskUrgency | str = TaskUrgency.INTERACTIVE, *,
               min_quality: float | None = None, max_wait_s: float | None = None,
               expected_output_tokens: int | None = None, input_tokens: int | None = None,
               client: str | None = None, dry_run: bool | None = None) -> Selection:
        body = select_body(task_type, urgency, min_quality=min_quality, max_wait_s=max_wait_s,
                           expected_output_tokens=expected_output_tokens, input_tokens=input_tokens,
                           client=client or self.client_name, dry_run=dry_run)
        return Selection.from_json(self._request("POST", "/select", json=body))

    def state(self) -> dict:
        return self._request("GET", "/state")

    def models(self) -> list[dict]:
        return self._request("GET", "/models")

    def task_types(self) -> list[dict]:
        return self._request("GET", "/task-types")["task_types"]

    def decision(self, decision_id: Any) -> dict:
        return self._request("GET", f"/decisions/{decision_id}")

    def report_outcome(self, decision_id: Any, response_ms: float, success: bool,
                       rating: float | None = None, first_token_ms: float | None = None) -> dict:
        """How a decision went: milliseconds from the request to the whole answer (and to its first
        token, when streaming; fractions are fine), success, and a 0..1 rating if you have one."""
        body = outcome_body(response_ms, success, rating, first_token_ms)
        return self._request("POST", f"/decisions/{decision_id}/outcome", json=body)

    def preload(self, tag: str) -> dict:
        return self._request("POST", f"/models/{_tag_path(tag)}/preload")

    def unload(self, tag: str) -> dict:
        return self._request("POST", f"/models/{_tag_path(tag)}/unload")

    def fastest_loaded_model(self, task_type: str | None = None, *, min_quality: float | None = None) -> str | None:
        """The fastest model loaded now; with `task_type`, the fastest whose quality for it meets
        the task's floor (or `min_quality`, when given). None when none does."""
        floor = 0.0
        if task_type is not None:
            floor = min_quality if min_quality is not None else task_floor(self.task_types(), task_type)
        return fastest_loaded(self.state(), self.models(), task_type, floor)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "TowerOpsClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class AsyncTowerOpsClient:
    """Asynchronous client. Use as ``async with`` or call ``aclose()``."""

    def __init__(self, base_url: str | None = None, api_key: str | None = None, *,
                 timeout: float = 10.0, transport: httpx.AsyncBaseTransport | None = None,
                 client_name: str | None = None):
        self.base_url, self.api_key = _settings(base_url, api_key)
        self.client_name = client_name
        self._http = httpx.AsyncClient(base_url=self.base_url, headers=_headers(self.api_key),
                                       timeout=timeout, transport=transport)

    async def _request(self, method: str, path: str, **kw) -> Any:
        try:
            response = await self._http.request(method, API + path, **kw)
        except httpx.HTTPError as exc:
            raise TowerOpsError(0, f"cannot reach TowerOps at {self.base_url}: {exc}",
                                method=method, url=self.base_url + API + path) from exc
        return _parse(response)

    async def select(self, task_type: str, urgency: TaskUrgency | str = TaskUrgency.INTERACTIVE,
                     *, min_quality: float | None = None, max_wait_s: float | None = None,
                     expected_output_tokens: int | None = None, input_tokens: int | None = None,
                     client: str | None = None, dry_run: bool | None = None) -> Selection:
        body = select_body(task_type, urgency, min_quality=min_quality, max_wait_s=max_wait_s,
                           expected_output_tokens=expected_output_tokens, input_tokens=input_tokens,
                           client=client or self.client_name, dry_run=dry_run)
        return Selection.from_json(await self._request("POST", "/select", json=body))

    async def state(self) -> dict:
        return await self._request("GET", "/state")

    async def models(self) -> list[dict]:
        return await self._request("GET", "/models")

    async def task_types(self) -> list[dict]:
        return (await self._request("GET", "/task-types"))["task_types"]

    async def preload(self, tag: str) -> dict:
        return await self._request("POST", f"/models/{_tag_path(tag)}/preload")

    async def unload(self, tag: str) -> dict:
        return await self._request("POST", f"/models/{_tag_path(tag)}/unload")

    async def report_outcome(self, decision_id: Any, response_ms: float, success: bool,
                             rating: float | None = None, first_token_ms: float | None = None) -> dict:
        body = outcome_body(response_ms, success, rating, first_token_ms)
        return await self._request("POST", f"/decisions/{decision_id}/outcome", json=body)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> "AsyncTowerOpsClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()


class TowerModelManager:
    """The seed's interface, backed by the TowerOps API.

        manager = TowerModelManager()   # base_url / api_key default to TOWEROPS_URL / _API_KEY
        model_id, reason, wait_time = await manager.select_model(
            task_type="code_generation", urgency=TaskUrgency.INTERACTIVE)
        if wait_time > 5.0:
            model_id = manager.get_fastest_loaded_model()   # sync, as in the seed

    Each async call opens its own short-lived connection, so the manager works across
    several ``asyncio.run`` calls. ``last_selection`` keeps the full last answer and
    ``last_task_type`` the task it was for (what get_fastest_loaded_model defaults to).
    """

    def __init__(self, base_url: str | None = None, api_key: str | None = None, *,
                 timeout: float = 10.0, client_name: str = "towerops_client",
                 transport: httpx.BaseTransport | None = None,
                 async_transport: httpx.AsyncBaseTransport | None = None):
        self.base_url, self.api_key = _settings(base_url, api_key)
        self.timeout = timeout
        self.client_name = client_name
        self._transport = transport
        self._async_transport = async_transport if async_transport is not None else (
            transport if isinstance(transport, httpx.AsyncBaseTransport) else None)
        self.last_selection: Selection | None = None
        self.last_task_type: str | None = None

    def _async(self) -> AsyncTowerOpsClient:
        return AsyncTowerOpsClient(self.base_url, self.api_key, timeout=self.timeout,
                                   transport=self._async_transport, client_name=self.client_name)

    def _sync(self) -> TowerOpsClient:
        return TowerOpsClient(self.base_url, self.api_key, timeout=self.timeout,
                              transport=self._transport, client_name=self.client_name)

    async def select_model(self, task_type: str,
                           urgency: TaskUrgency | str = TaskUrgency.INTERACTIVE, *,
                           min_quality: float | None = None, max_wait_s: float | None = None,
                           expected_output_tokens: int | None = None, input_tokens: int | None = None,
                           dry_run: bool | None = None) -> tuple[str | None, str, float]:
        """``(model_id, reason, wait_time)``; model_id is None only when nothing can serve."""
        async with self._async() as client:
            sel = await client.select(task_type, urgency, min_quality=min_quality,
                                      max_wait_s=max_wait_s,
                                      expected_output_tokens=expected_output_tokens,
                                      input_tokens=input_tokens, dry_run=dry_run)
        self.last_selection, self.last_task_type = sel, task_type
        return sel.model, sel.reason, float(sel.expected_wait_s or 0.0)

    def select_model_sync(self, task_type: str,
                          urgency: TaskUrgency | str = TaskUrgency.INTERACTIVE,
                          **kw) -> tuple[str | None, str, float]:
        with self._sync() as client:
            sel = client.select(task_type, urgency, **kw)
        self.last_selection, self.last_task_type = sel, task_type
        return sel.model, sel.reason, float(sel.expected_wait_s or 0.0)

    async def preload_model(self, tag: str) -> dict:
        """Ask TowerOps to load ``tag`` (admin scope); returns {"residency_id", "state"}."""
        async with self._async() as client:
            return await client.preload(tag)

    async def unload_model(self, tag: str) -> dict:
        async with self._async() as client:
            return await client.unload(tag)

    def get_fastest_loaded_model(self, task_type: str | None = None, *,
                                 min_quality: float | None = None) -> str | None:
        """The fastest model loaded right now that is good enough for `task_type` (its quality
        for the task at least the task's floor, or `min_quality`), or None. `task_type` defaults to
        the last select_model's, so the seed's fallback never offers a model below the floor of
        the task it was asked for; with no task at all, any loaded model. Synchronous."""
        task_type = task_type if task_type is not None else self.last_task_type
        with self._sync() as client:
            return client.fastest_loaded_model(task_type, min_quality=min_quality)

    def get_state(self) -> dict:
        with self._sync() as client:
            return client.state()
