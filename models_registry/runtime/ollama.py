"""The Ollama adapter: the few calls TowerOps makes to an Ollama server, on httpx.

``OllamaClient(base_url)`` (sync) and ``AsyncOllamaClient(base_url)`` (same methods, awaitable):

* ``version()`` -> ``"0.30.0"`` (``GET /api/version``). Behaviour differs by era (see
  shared/reference/ollama.md); callers may branch on it.
* ``tags()`` -> ``[InstalledModel]`` (``GET /api/tags``; ``size`` is bytes on disk).
* ``show(model)`` -> ``ModelInfo`` (``POST /api/show``): architecture, layers (block_count),
  heads, KV heads, embedding and context length from ``model_info``; ``kv_cache_bytes(num_ctx)``
  reproduces Ollama's own f16 KV estimate.
* ``ps()`` -> ``[RunningModel]`` (``GET /api/ps``): size, size_vram, expires_at (aware datetime;
  ~292 years ahead means keep_alive < 0, "forever"), context_length.
* ``load(model, keep_alive, num_ctx)`` -> ``LoadResult``: ``POST /api/generate`` with the model,
  no prompt, the keep_alive and ``options.num_ctx``. Ollama answers only once the model is loaded
  (after any queueing and evictions), so this uses ``load_timeout`` (long) for the read. The
  duration is measured here: a load-only answer carries no metrics in real Ollama.

  **Preloads must use the same options as real traffic** (at least ``num_ctx``; also
  ``num_batch``, ``num_gpu``, ``main_gpu``, ``use_mmap``, ``num_thread`` if traffic sets them):
  Ollama keeps one runner per model and reloads it when a request's runner options differ
  (``needsReload``), so a preload with another ``num_ctx`` costs a second full load on the first
  real request. Omitting ``num_ctx`` is not neutral either: Ollama then picks a default from the
  server's total VRAM (4096 / 32768 / 262144 tokens), which may not be what traffic sends.
  A client that disconnects mid-load makes Ollama abort the load, hence the long read timeout.
* ``unload(model)``: ``keep_alive: 0`` with no prompt. Ollama answers at once and unloads when the
  runner is idle (after its in-flight requests), so use ``wait_unloaded(model, timeout)``, which
  polls ``/api/ps`` until the model is gone.
* ``generate(model, prompt, ...)`` -> ``GenerateResult`` (non-streaming) with Ollama's metrics.

Errors: ``OllamaError`` (the server answered with an error: ``status`` and Ollama's ``message``,
e.g. 404 ``model 'x' not found``, 500 on a failed load, 503 queue full) and ``OllamaUnavailable``
(connection refused, reset, DNS, or a timeout: mark the endpoint down). ``OllamaTimeout`` is the
``OllamaUnavailable`` raised when the server accepted the request but did not answer in time
(e.g. a hung load). Both derive from ``OllamaClientError``.

Model names: Ollama reports ``tinyllama:latest`` for ``tinyllama``; compare with ``same_model``.
"""
from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import re
import time
from typing import Any

import httpx

from models_registry.policy.ollama_rules import (  # the one definition
    normalize_model_name,
    same_model,
)

__all__ = [
    "AsyncOllamaClient", "GenerateResult", "InstalledModel", "LoadResult", "ModelInfo",
    "OllamaClient", "OllamaClientError", "OllamaError", "OllamaTimeout", "OllamaUnavailable",
    "RunningModel", "normalize_model_name", "parse_timestamp", "same_model",
]

DEFAULT_TIMEOUT = 10.0
DEFAULT_LOAD_TIMEOUT = 600.0
# expires_at further than this from now means keep_alive < 0 (Ollama: MaxInt64 ns ~ 292 years).
FOREVER_THRESHOLD = dt.timedelta(days=365 * 100)


# --------------------------------------------------------------------------- errors


class OllamaClientError(Exception):
    """Base of the adapter's errors."""

    def __init__(self, message: str, url: str = ""):
        super().__init__(message)
        self.message, self.url = message, url


class OllamaError(OllamaClientError):
    """Ollama answered with an error: ``status`` (HTTP) and ``message`` (its ``error`` text)."""

    def __init__(self, status: int, message: str, url: str = ""):
        super().__init__(message, url)
        self.status = status

    def __str__(self) -> str:
        return f"{self.message} (HTTP {self.status} from {self.url})" if self.url else \
            f"{self.message} (HTTP {self.status})"

    @property
    def not_found(self) -> bool:
        return self.status == 404


class OllamaUnavailable(OllamaClientError):
    """The endpoint cannot be reached (refused, reset, timed out): treat it as down."""

    def __str__(self) -> str:
        return f"Ollama at {self.url} unavailable: {self.message}" if self.url else self.message


class OllamaTimeout(OllamaUnavailable):
    """The server took the request but did not answer within the timeout (e.g. a hung load)."""


# --------------------------------------------------------------------------- names and times


_TS_RE = re.compile(
    r"^(\d{4,})-(\d\d)-(\d\d)[T ](\d\d):(\d\d):(\d\d)(?:\.(\d+))?(Z|[+-]\d\d:?\d\d)?$", re.IGNORECASE
)


def parse_timestamp(value: Any) -> dt.datetime | None:
    """Go's RFC3339Nano (``2024-06-04T14:38:31.83753-07:00``, up to 9 fraction digits) -> aware
    datetime (UTC if no offset). Go's zero time (year 1) and unparsable values -> None."""
    if not isinstance(value, str) or not value:
        return None
    m = _TS_RE.match(value.strip())
    if not m:
        return None
    year, month, day, hour, minute, second, frac, tz = m.groups()
    if int(year) <= 1 or int(year) > 9999:
        return None if int(year) <= 1 else dt.datetime.max.replace(tzinfo=dt.timezone.utc)
    micro = int((frac or "0")[:6].ljust(6, "0"))
    if not tz or tz.upper() == "Z":
        tzinfo = dt.timezone.utc
    else:
        sign = -1 if tz[0] == "-" else 1
        digits = tz[1:].replace(":", "")
        tzinfo = dt.timezone(sign * dt.timedelta(hours=int(digits[:2]), minutes=int(digits[2:])))
    try:
        return dt.datetime(int(year), int(month), int(day), int(hour), int(minute), int(second), micro,
                           tzinfo=tzinfo)
    except ValueError:
        return None


def _ns_to_s(value: Any) -> float | None:
    return value / 1e9 if isinstance(value, (int, float)) else None


def _keep_alive_json(keep_alive: Any) -> Any:
    """What goes in the ``keep_alive`` field: Go duration strings and numbers (seconds) as they
    are, a timedelta as seconds, and a numeric string ("-1", "300") as the number: Ollama's API
    reads a JSON string as a Go duration, which needs a unit."""
    if isinstance(keep_alive, dt.timedelta):
        return keep_alive.total_seconds()
    if isinstance(keep_alive, str):
        try:
            number = float(keep_alive.strip())
        except ValueError:
            return keep_alive
        return int(number) if number.is_integer() else number
    return keep_alive


# --------------------------------------------------------------------------- results


@dataclasses.dataclass(frozen=True)
class InstalledModel:
    """One row of ``/api/tags``."""

    name: str
    model: str
    size: int  # bytes on disk
    digest: str
    modified_at: dt.datetime | None
    format: str = ""
    family: str = ""
    families: tuple[str, ...] = ()
    parameter_size: str = ""
    quantization_level: str = ""
    context_length: int | None = None  # newer Ollama versions only

    @classmethod
    def from_json(cls, row: dict) -> "InstalledModel":
        details = row.get("details") or {}
        name = row.get("name") or row.get("model") or ""
        return cls(
            name=name, model=row.get("model") or name, size=int(row.get("size") or 0),
            digest=row.get("digest") or "", modified_at=parse_timestamp(row.get("modified_at")),
            format=details.get("format") or "", family=details.get("family") or "",
            families=tuple(details.get("families") or ()),
            parameter_size=details.get("parameter_size") or "",
            quantization_level=details.get("quantization_level") or "",
            context_length=details.get("context_length"),
        )


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """What ``/api/show`` says about a model that matters for sizing it."""

    name: str
    architecture: str
    block_count: int | None
    context_length: int | None  # trained context (n_ctx_train)
    embedding_length: int | None
    head_count: int | None
    head_count_kv: int | None
    parameter_count: int | None
    family: str = ""
    parameter_size: str = ""
    quantization_level: str = ""
    capabilities: tuple[str, ...] = ()
    model_info: dict = dataclasses.field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_json(cls, name: str, body: dict) -> "ModelInfo":
        info = body.get("model_info") or {}
        details = body.get("details") or {}
        arch = info.get("general.architecture") or details.get("family") or ""

        def key(suffix: str) -> int | None:
            value = info.get(f"{arch}.{suffix}")
            if isinstance(value, list):  # per-layer arrays in some architectures
                value = max(value) if value else None
            return int(value) if isinstance(value, (int, float)) else None

        return cls(
            name=name, architecture=arch,
            block_count=key("block_count"), context_length=key("context_length"),
            embedding_length=key("embedding_length"), head_count=key("attention.head_count"),
            head_count_kv=key("attention.head_count_kv") or key("attention.head_count"),
            parameter_count=info.get("general.parameter_count"),
            family=details.get("family") or "", parameter_size=details.get("parameter_size") or "",
            quantization_level=details.get("quantization_level") or "",
            capabilities=tuple(body.get("capabilities") or ()), model_info=dict(info),
        )

    @property
    def kv_bytes_per_token(self) -> int | None:
        """f16 K+V bytes per token of context: 2 * layers * kv_heads * head_dim * 2 (Ollama's estimate)."""
        if not (self.block_count and self.head_count_kv and self.embedding_length and self.head_count):
            return None
        return 2 * self.block_count * self.head_count_kv * (self.embedding_length // self.head_count) * 2

    def kv_cache_bytes(self, num_ctx: int, num_parallel: int = 1) -> int | None:
        """KV cache for ``num_ctx`` (capped at the trained context) x ``num_parallel`` slots."""
        per = self.kv_bytes_per_token
        if per is None:
            return None
        ctx = min(num_ctx, self.context_length) if self.context_length else num_ctx
        return per * ctx * num_parallel


@dataclasses.dataclass(frozen=True)
class RunningModel:
    """One row of ``/api/ps``: a model loaded in Ollama."""

    name: str
    model: str
    size: int  # bytes the runner uses (weights + KV + compute)
    size_vram: int  # bytes of it in GPU memory; == size means 100 % GPU
    expires_at: dt.datetime | None
    context_length: int | None
    digest: str = ""
    family: str = ""
    parameter_size: str = ""
    quantization_level: str = ""

    @classmethod
    def from_json(cls, row: dict) -> "RunningModel":
        details = row.get("details") or {}
        name = row.get("name") or row.get("model") or ""
        return cls(
            name=name, model=row.get("model") or name, size=int(row.get("size") or 0),
            size_vram=int(row.get("size_vram") or 0), expires_at=parse_timestamp(row.get("expires_at")),
            context_length=row.get("context_length"), digest=row.get("digest") or "",
            family=details.get("family") or "", parameter_size=details.get("parameter_size") or "",
            quantization_level=details.get("quantization_level") or "",
        )

    @property
    def gpu_fraction(self) -> float:
        """Share of the runner in VRAM (1.0 = "100% GPU", 0.0 = CPU only)."""
        return self.size_vram / self.size if self.size else 0.0

    def keeps_forever(self, now: dt.datetime | None = None) -> bool:
        """keep_alive < 0: expires_at lies about 292 years ahead."""
        if self.expires_at is None:
            return False
        now = now or dt.datetime.now(dt.timezone.utc)
        return self.expires_at - now > FOREVER_THRESHOLD

    def expires_in(self, now: dt.datetime | None = None) -> float | None:
        """Seconds until expiry (negative: overdue, i.e. "Stopping..."); None if unknown."""
        if self.expires_at is None:
            return None
        now = now or dt.datetime.now(dt.timezone.utc)
        return (self.expires_at - now).total_seconds()


@dataclasses.dataclass(frozen=True)
class LoadResult:
    """A finished load: ``duration_s`` measured around the HTTP call (the number to learn from);
    ``load_duration_s`` only if the server reported one (real Ollama does not on a load-only call)."""

    model: str
    duration_s: float
    load_duration_s: float | None
    done_reason: str
    num_ctx: int | None
    keep_alive: Any


@dataclasses.dataclass(frozen=True)
class GenerateResult:
    model: str
    response: str
    done_reason: str
    duration_s: float  # measured here
    total_duration_s: float | None
    load_duration_s: float | None  # includes queueing and evictions in Ollama
    prompt_eval_count: int | None
    prompt_eval_duration_s: float | None
    eval_count: int | None
    eval_duration_s: float | None

    @property
    def tokens_per_s(self) -> float | None:
        if self.eval_count and self.eval_duration_s:
            return self.eval_count / self.eval_duration_s
        return None


# --------------------------------------------------------------------------- request bodies


def _options(num_ctx: int | None, options: dict | None) -> dict | None:
    opts = dict(options or {})
    if num_ctx is not None:
        opts["num_ctx"] = int(num_ctx)
    return opts or None


def _load_body(model: str, keep_alive: Any, num_ctx: int | None, options: dict | None) -> dict:
    body: dict[str, Any] = {"model": model, "stream": False}
    if keep_alive is not None:
        body["keep_alive"] = _keep_alive_json(keep_alive)
    if opts := _options(num_ctx, options):
        body["options"] = opts
    return body


def _generate_body(model: str, prompt: str, keep_alive: Any, num_ctx: int | None, options: dict | None) -> dict:
    body = _load_body(model, keep_alive, num_ctx, options)
    body["prompt"] = prompt
    return body


def _load_result(model: str, data: dict, started: float, num_ctx: int | None, keep_alive: Any) -> LoadResult:
    return LoadResult(
        model=model, duration_s=time.monotonic() - started,
        load_duration_s=_ns_to_s(data.get("load_duration")), done_reason=data.get("done_reason") or "",
        num_ctx=num_ctx, keep_alive=keep_alive,
    )


def _generate_result(model: str, data: dict, started: float) -> GenerateResult:
    return GenerateResult(
        model=model, response=data.get("response") or "", done_reason=data.get("done_reason") or "",
        duration_s=time.monotonic() - started, total_duration_s=_ns_to_s(data.get("total_duration")),
        load_duration_s=_ns_to_s(data.get("load_duration")), prompt_eval_count=data.get("prompt_eval_count"),
        prompt_eval_duration_s=_ns_to_s(data.get("prompt_eval_duration")), eval_count=data.get("eval_count"),
        eval_duration_s=_ns_to_s(data.get("eval_duration")),
    )


def _find_running(models: list[RunningModel], model: str) -> RunningModel | None:
    return next((m for m in models if same_model(m.name, model) or same_model(m.model, model)), None)


class _Base:
    def __init__(self, base_url: str, timeout: float = DEFAULT_TIMEOUT, load_timeout: float = DEFAULT_LOAD_TIMEOUT):
        self.base_url = base_url.rstrip("/")
        self.timeout = float(timeout)
        self.load_timeout = float(load_timeout)
        self._load_timeouts = httpx.Timeout(self.timeout, read=self.load_timeout)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.base_url!r})"

    def _decode(self, response: httpx.Response) -> Any:
        url = self.base_url
        if response.status_code >= 400:
            message = response.text.strip()
            try:
                body = response.json()
                if isinstance(body, dict) and isinstance(body.get("error"), str):
                    message = body["error"]
            except ValueError:
                pass
            raise OllamaError(response.status_code, message or response.reason_phrase, url)
        try:
            data = response.json()
        except ValueError:
            raise OllamaError(response.status_code, f"not JSON: {response.text[:200]!r}", url) from None
        if isinstance(data, dict) and isinstance(data.get("error"), str):
            raise OllamaError(response.status_code, data["error"], url)
        return data

    def _unavailable(self, exc: httpx.HTTPError) -> OllamaUnavailable:
        if isinstance(exc, httpx.TimeoutException) and not isinstance(exc, httpx.ConnectTimeout):
            return OllamaTimeout(f"no answer within the timeout ({type(exc).__name__})", self.base_url)
        reason = str(exc) or type(exc).__name__
        return OllamaUnavailable(reason, self.base_url)


# --------------------------------------------------------------------------- sync client


class OllamaClient(_Base):
    """A sync client for one Ollama server. ``timeout`` for quick calls, ``load_timeout`` (read)
    for ``load``. Reuses connections; close it (or use ``with``)."""

    def __init__(self, base_url: str, timeout: float = DEFAULT_TIMEOUT, load_timeout: float = DEFAULT_LOAD_TIMEOUT,
                 *, transport: httpx.BaseTransport | None = None):
        super().__init__(base_url, timeout, load_timeout)
        self._http = httpx.Client(base_url=self.base_url, timeout=self.timeout, transport=transport,
                                  headers={"Accept": "application/json"})

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "OllamaClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _call(self, method: str, path: str, json: Any = None, timeout: Any = None) -> Any:
        try:
            kwargs: dict[str, Any] = {}
            if json is not None:
                kwargs["json"] = json
            if timeout is not None:
                kwargs["timeout"] = timeout
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise self._unavailable(exc) from exc
        return self._decode(response)

    def version(self) -> str:
        return str(self._call("GET", "/api/version").get("version", ""))

    def is_up(self) -> bool:
        """True when ``/api/version`` answers."""
        try:
            self.version()
            return True
        except OllamaClientError:
            return False

    def tags(self) -> list[InstalledModel]:
        return [InstalledModel.from_json(row) for row in self._call("GET", "/api/tags").get("models") or []]

    def show(self, model: str) -> ModelInfo:
        return ModelInfo.from_json(model, self._call("POST", "/api/show", {"model": model}))

    def ps(self) -> list[RunningModel]:
        return [RunningModel.from_json(row) for row in self._call("GET", "/api/ps").get("models") or []]

    def running(self, model: str) -> RunningModel | None:
        """The ``/api/ps`` row of ``model``, or None if it is not loaded."""
        return _find_running(self.ps(), model)

    def load(self, model: str, keep_alive: Any = None, num_ctx: int | None = None,
             options: dict | None = None) -> LoadResult:
        """Load ``model`` and block until Ollama has it ready (see the module docstring).

        ``keep_alive``: Go duration string ("30m"), seconds, -1 (forever) or None (server default;
        a loaded model keeps its current one). ``num_ctx``/``options``: exactly what real traffic
        will send, or Ollama reloads the model on the first request. Raises OllamaError (e.g. 500
        when the model does not fit), OllamaTimeout after ``load_timeout``, OllamaUnavailable.
        """
        started = time.monotonic()
        data = self._call("POST", "/api/generate", _load_body(model, keep_alive, num_ctx, options),
                          timeout=self._load_timeouts)
        return _load_result(model, data, started, num_ctx, keep_alive)

    def unload(self, model: str) -> None:
        """Ask Ollama to unload ``model`` (keep_alive 0). Returns at once; the unload happens when the
        runner is idle. A model that is not loaded is a no-op. Confirm with ``wait_unloaded``."""
        self._call("POST", "/api/generate", {"model": model, "keep_alive": 0, "stream": False})

    def wait_unloaded(self, model: str, timeout: float = 30.0, poll: float = 0.25) -> bool:
        """Poll ``/api/ps`` until ``model`` is gone: True, or False after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            if self.running(model) is None:
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(poll, left))

    def generate(self, model: str, prompt: str, *, keep_alive: Any = None, num_ctx: int | None = None,
                 options: dict | None = None) -> GenerateResult:
        """A non-streaming generation (loads the model first if needed; long timeout)."""
        started = time.monotonic()
        data = self._call("POST", "/api/generate", _generate_body(model, prompt, keep_alive, num_ctx, options),
                          timeout=self._load_timeouts)
        return _generate_result(model, data, started)


# --------------------------------------------------------------------------- async client


class AsyncOllamaClient(_Base):
    """The same calls as ``OllamaClient``, awaitable (``httpx.AsyncClient``)."""

    def __init__(self, base_url: str, timeout: float = DEFAULT_TIMEOUT, load_timeout: float = DEFAULT_LOAD_TIMEOUT,
                 *, transport: httpx.AsyncBaseTransport | None = None):
        super().__init__(base_url, timeout, load_timeout)
        self._http = httpx.AsyncClient(base_url=self.base_url, timeout=self.timeout, transport=transport,
                                       headers={"Accept": "application/json"})

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> "AsyncOllamaClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()

    async def _call(self, method: str, path: str, json: Any = None, timeout: Any = None) -> Any:
        try:
            kwargs: dict[str, Any] = {}
            if json is not None:
                kwargs["json"] = json
            if timeout is not None:
                kwargs["timeout"] = timeout
            response = await self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise self._unavailable(exc) from exc
        return self._decode(response)

    async def version(self) -> str:
        return str((await self._call("GET", "/api/version")).get("version", ""))

    async def is_up(self) -> bool:
        try:
            await self.version()
            return True
        except OllamaClientError:
            return False

    async def tags(self) -> list[InstalledModel]:
        return [InstalledModel.from_json(r) for r in (await self._call("GET", "/api/tags")).get("models") or []]

    async def show(self, model: str) -> ModelInfo:
        return ModelInfo.from_json(model, await self._call("POST", "/api/show", {"model": model}))

    async def ps(self) -> list[RunningModel]:
        return [RunningModel.from_json(r) for r in (await self._call("GET", "/api/ps")).get("models") or []]

    async def running(self, model: str) -> RunningModel | None:
        return _find_running(await self.ps(), model)

    async def load(self, model: str, keep_alive: Any = None, num_ctx: int | None = None,
                   options: dict | None = None) -> LoadResult:
        """See ``OllamaClient.load``: preloads must use the same options (num_ctx) as real traffic."""
        started = time.monotonic()
        data = await self._call("POST", "/api/generate", _load_body(model, keep_alive, num_ctx, options),
                                timeout=self._load_timeouts)
        return _load_result(model, data, started, num_ctx, keep_alive)

    async def unload(self, model: str) -> None:
        await self._call("POST", "/api/generate", {"model": model, "keep_alive": 0, "stream": False})

    async def wait_unloaded(self, model: str, timeout: float = 30.0, poll: float = 0.25) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            if await self.running(model) is None:
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            await asyncio.sleep(min(poll, left))

    async def generate(self, model: str, prompt: str, *, keep_alive: Any = None, num_ctx: int | None = None,
                       options: dict | None = None) -> GenerateResult:
        started = time.monotonic()
        data = await self._call("POST", "/api/generate",
                                _generate_body(model, prompt, keep_alive, num_ctx, options),
                                timeout=self._load_timeouts)
        return _generate_result(model, data, started)
