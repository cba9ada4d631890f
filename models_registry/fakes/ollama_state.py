"""The simulated Ollama servers' state: model facts, GPUs, runners, hosts and endpoints.

Plain data, no threads and no HTTP: the scheduler (``ollama_scheduler``) changes it under its
lock; the API bodies (``ollama_server``) and the HTTP layer (``ollama_http``) read it.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import math
import threading
from collections.abc import Iterable
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from models_registry.catalog.profile import EndpointSpec, HostSpec, ModelSpec
from models_registry.policy.ollama_rules import normalize_model_name

if TYPE_CHECKING:
    from .ollama_http import _Server

GIB = 1024**3
FOREVER = math.inf

# Architecture facts for /api/show (block count, embedding length, heads, KV heads).
# Known tags first (public model cards / GGUF metadata), otherwise derived from parameters_b.
_KNOWN_ARCH: dict[str, tuple[str, int, int, int, int]] = {
    "tinyllama": ("llama", 22, 2048, 32, 4),
    "llama3.2:1b": ("llama", 16, 2048, 32, 8),
    "llama3.2:3b": ("llama", 28, 3072, 24, 8),
    "llama3.2": ("llama", 28, 3072, 24, 8),
    "llama3.1:8b": ("llama", 32, 4096, 32, 8),
    "llama3:8b": ("llama", 32, 4096, 32, 8),
    "mistral:7b": ("llama", 32, 4096, 32, 8),
    "mistral": ("llama", 32, 4096, 32, 8),
    "qwen2.5-coder:7b": ("qwen2", 28, 3584, 28, 4),
    "qwen2.5:7b": ("qwen2", 28, 3584, 28, 4),
    "qwen2.5-coder:32b": ("qwen2", 64, 5120, 40, 8),
    "qwen2.5:32b": ("qwen2", 64, 5120, 40, 8),
    "deepseek-r1:32b": ("qwen2", 64, 5120, 40, 8),
    "deepseek-coder-v2:16b": ("deepseek2", 27, 2048, 16, 16),
    "deepseek-coder-v2": ("deepseek2", 27, 2048, 16, 16),
}


class SimError(Exception):
    """An error the HTTP layer turns into Ollama's ``{"error": message}`` with a status."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


class _Aborted(Exception):
    """The client went away, the endpoint stopped or the tower shut down: drop the request."""


def _rfc3339(ts: float) -> str:
    """Go's RFC3339Nano in UTC ("...Z"); far-future values are clamped to what datetime holds."""
    try:
        d = dt.datetime.fromtimestamp(ts, dt.timezone.utc)
    except (OverflowError, OSError, ValueError):
        d = dt.datetime(9999, 12, 31, 23, 59, 59, tzinfo=dt.timezone.utc)
    return d.isoformat().replace("+00:00", "Z")


def _human_gib(n_bytes: float) -> str:
    return f"{n_bytes / GIB:.1f} GiB"


@dataclasses.dataclass(frozen=True)
class SimEvent:
    """One thing that happened in the simulator (for tests and logs)."""

    at: float  # clock() when it happened
    endpoint: str
    model: str
    kind: str  # load_start | loaded | load_failed | unload_start | unloaded
    detail: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class _ModelFacts:
    spec: ModelSpec
    name: str  # normalized, e.g. tinyllama:latest
    arch: str
    blocks: int
    embedding: int
    heads: int
    kv_heads: int
    digest: str

    @property
    def file_bytes(self) -> int:
        gb = self.spec.file_size_gb if self.spec.file_size_gb else self.spec.vram_gb
        return int(gb * GIB)

    @property
    def kv_bytes_per_token(self) -> int:
        # Ollama's PredictServerVRAM: 2 (K+V) * blocks * kv_heads * head_dim * 2 bytes (f16)
        return 2 * self.blocks * self.kv_heads * (self.embedding // max(self.heads, 1)) * 2

    def size_bytes(self, ctx_total: int) -> int:
        """Bytes the runner uses with ``ctx_total`` tokens of KV (num_ctx x num_parallel)."""
        train = self.spec.context_length or 4096
        base = int(self.spec.vram_gb * GIB)
        size = base + self.kv_bytes_per_token * (ctx_total - min(4096, train))
        return max(size, min(base, self.file_bytes))

    def model_info(self) -> dict:
        a = self.arch
        return {
            "general.architecture": a,
            "general.parameter_count": int((self.spec.parameters_b or 0) * 1e9),
            "general.file_type": 15,
            "general.quantization_version": 2,
            f"{a}.block_count": self.blocks,
            f"{a}.context_length": self.spec.context_length,
            f"{a}.embedding_length": self.embedding,
            f"{a}.attention.head_count": self.heads,
            f"{a}.attention.head_count_kv": self.kv_heads,
            f"{a}.feed_forward_length": self.embedding * 4,
        }

    def details(self) -> dict:
        p = self.spec.parameters_b
        return {
            "parent_model": "",
            "format": "gguf",
            "family": self.arch,
            "families": [self.arch],
            "parameter_size": f"{p:.1f}B" if p else "",
            "quantization_level": self.spec.quantization or "",
        }


def _model_facts(spec: ModelSpec) -> _ModelFacts:
    name = normalize_model_name(spec.tag)
    known = _KNOWN_ARCH.get(spec.tag) or _KNOWN_ARCH.get(name.removesuffix(":latest"))
    if known:
        arch, blocks, emb, heads, kv = known
    else:
        p = spec.parameters_b or max(spec.vram_gb * 1.6, 1.0)
        blocks, emb = next(
            (b, e) for limit, b, e in ((2, 22, 2048), (5, 28, 3072), (10, 32, 4096), (20, 40, 5120),
                                       (40, 64, 5120), (1e9, 80, 8192)) if p < limit
        )
        arch, heads, kv = "llama", emb // 128, 8
    digest = hashlib.sha256(name.encode()).hexdigest()
    return _ModelFacts(spec, name, arch, blocks, emb, heads, kv, digest)


# --------------------------------------------------------------------------- state


@dataclasses.dataclass
class _Gpu:
    index: int
    total: int  # bytes usable: total - reserved


@dataclasses.dataclass
class _Runner:
    facts: _ModelFacts
    endpoint: "_Endpoint"
    num_ctx: int  # as requested (or defaulted): what needsReload compares
    ctx: int  # loaded context per slot (capped at the model's length)
    size: int
    alloc: dict[int, int]  # GPU index -> bytes
    cpu_bytes: int
    keep_alive: float  # virtual seconds; inf = forever; 0 = unload when idle
    state: str = "loading"  # loading | loaded | unloading | gone
    ref_count: int = 0
    active: int = 0  # requests generating right now (<= num_parallel)
    expires_at: float | None = None  # clock() seconds, set when the runner goes idle
    unload_until: float = 0.0  # time.monotonic() when an unload finishes
    unload_reason: str = ""

    @property
    def size_vram(self) -> int:
        return sum(self.alloc.values())


class _Host:
    def __init__(self, spec: HostSpec):
        self.spec = spec
        self.gpus = {g.index: _Gpu(g.index, max(0, g.total_mib - g.reserved_mib) * 1024 * 1024) for g in spec.gpus}
        self.page_cache: set[str] = set()
        self.endpoints: list[_Endpoint] = []

    def runners(self) -> Iterable[_Runner]:
        for ep in self.endpoints:
            yield from ep.runners.values()

    def gpu_used(self, index: int) -> int:
        return sum(r.alloc.get(index, 0) for r in self.runners() if r.state != "gone")

    def cpu_used(self) -> int:
        return sum(r.cpu_bytes for r in self.runners() if r.state != "gone")


class _Endpoint:
    def __init__(self, spec: EndpointSpec, host: _Host, models: dict[str, _ModelFacts]):
        self.spec, self.host, self.models = spec, host, models
        parts = urlsplit(spec.base_url)
        self.bind_host = parts.hostname or "127.0.0.1"
        self.port = parts.port if parts.port is not None else (443 if parts.scheme == "https" else 80)
        self.gpu_indexes = list(spec.gpus)
        self.runners: dict[str, _Runner] = {}
        self.sched_lock = threading.Lock()  # Ollama's single processPending goroutine
        self.pending = 0
        self.hang = False
        self.epoch = 0  # bumped on stop: in-flight requests of an older epoch are dropped
        self.server: _Server | None = None
        self.thread: threading.Thread | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def url(self) -> str:
        host = f"[{self.bind_host}]" if ":" in self.bind_host else self.bind_host
        return f"http://{host}:{self.port}"

    def vram_total(self) -> int:
        return sum(self.host.gpus[i].total for i in self.gpu_indexes if i in self.host.gpus)


@dataclasses.dataclass
class _Placement:
    alloc: dict[int, int]
    cpu_bytes: int
