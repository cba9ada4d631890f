"""An Ollama-compatible HTTP server for one profile: a simulated Tower.

``SimulatedTower(profile)`` serves, at each endpoint ``base_url`` of the profile (a loopback
``host:port``), the part of Ollama's HTTP API a manager uses:

* ``GET /`` ("Ollama is running"), ``GET|HEAD /api/version``, ``GET /api/tags``,
  ``POST /api/show``, ``GET /api/ps``;
* ``POST /api/generate`` and ``POST /api/chat``: an empty prompt / empty ``messages`` loads the
  model (blocks until loaded, ``done_reason: "load"``, no metrics); ``keep_alive: 0`` with an
  empty prompt unloads it (returns at once, ``done_reason: "unload"``; the unload itself is
  asynchronous, poll ``/api/ps``); anything else generates: NDJSON tokens streamed at the model's
  ``tokens_per_s`` (or one object with ``"stream": false``) ending in Ollama's metrics
  (``total_duration``, ``load_duration``, ``prompt_eval_count``, ``prompt_eval_duration``,
  ``eval_count``, ``eval_duration``, all in ns).

What it simulates, following ``shared/reference/ollama.md`` (Ollama v0.30+ scheduler):

* **Virtual VRAM per GPU**: ``total_gb - reserved_gb`` of each GPU the endpoint lists (and only
  those). GPUs belong to the host, so two endpoints sharing a GPU share its memory.
* **Model size**: ``vram_gb`` of the profile at a 4096-token context; the KV cache grows or shrinks
  it with ``min(num_ctx, context_length) * num_parallel`` (f16 KV from the architecture in
  ``/api/show``). Without ``options.num_ctx`` the VRAM-tier default applies (>= 47 GiB -> 262144,
  >= 23 GiB -> 32768, else 4096), capped at the model's context length.
* **Load time** = ``host.simulator.load_fixed_s + file_size_gb / disk_gbps`` the first time a file
  is read on the host, ``/ cached_disk_gbps`` afterwards (the page cache never forgets).
* **Scheduler**: one runner per model; requests for a loaded model with the same ``num_ctx`` take
  the fast path; every other request waits in one FIFO per endpoint (one load at a time,
  head-of-line blocking, so concurrent requests for a model that is loading share that one load).
  A different ``num_ctx`` reloads the model. ``OLLAMA_NUM_PARALLEL`` (``num_parallel``, default 1)
  requests run at once per model; the others wait. More than ``max_queue`` waiting -> 503.
* **Placement and eviction** (reference 1.3 / 1.5): one GPU where the model takes <= 80 % of the
  available memory (the one with the most available), else all of the endpoint's GPUs (split);
  the first model of an endpoint may use 100 % (and spill to ``cpu_ram_gb`` of host RAM, if given);
  a later model that does not fit, or ``max_loaded_models`` (default 3 x #GPUs) reached, evicts
  one runner at a time: sorted by configured keep-alive (shortest first, forever last), then name;
  the first idle one, else the first one (and it waits until that one is idle). Not LRU.
  A model too large even alone -> 500 ``model requires more system memory (...) than is
  available (...)``.
* **keep_alive**: Go duration strings (``"30m"``, ``"1h30m"``), numbers as seconds, negative =
  forever (``expires_at`` ~292 years ahead), 0 = unload when idle; absent = keep the loaded
  runner's value, or ``default_keep_alive`` (5m) for a new load. The timer runs only while the
  runner is idle; ``expires_at`` is refreshed when it becomes idle.
* **Errors** in Ollama's shapes: ``{"error": "..."}`` with 400 / 404 / 500 / 503; unknown model ->
  404 (``model 'x' not found`` from show, ``model "x" not found, try pulling it first`` from
  generate/chat); remote-kind models are not installed; unknown routes -> 404 ``404 page not found``.
* A client that disconnects during a load aborts it (Ollama does the same); a hung load fails after
  ``load_timeout`` (Ollama's ``OLLAMA_LOAD_TIMEOUT``, 5m).

``time_scale`` divides every simulated duration (loads, unloads, token pacing, keep-alive): at 100,
a 13.5 s load takes 0.135 s and a 5m keep-alive 3 s. Reported times (``expires_at``, durations) are
the scaled ones, so they agree with the client's own stopwatch. ``clock`` (seconds since the epoch,
default ``time.time``) drives timestamps and keep-alive expiry, so a test can inject a fake clock.

Test hooks: ``stop_endpoint(name)`` / ``start_endpoint(name)`` (the listener goes away: connection
refused; by default the endpoint's runners go with it, as when ``ollama serve`` stops),
``hang_loads(name, True)`` (loads on that endpoint stall until turned off, the client gives up,
or ``load_timeout`` passes), ``events`` (what happened: loads, unloads, evictions, with reasons).

Stdlib only: one ``ThreadingHTTPServer`` per endpoint, each in its own thread, plus a reaper thread
for keep-alive expiry. ``main(argv)`` is the command line (``manage.py simulate_tower`` wraps it).
"""
from __future__ import annotations

import argparse
import collections
import dataclasses
import datetime as dt
import hashlib
import ipaddress
import json
import logging
import math
import select
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from models_registry.durations import parse_keep_alive
from models_registry.profile import EndpointSpec, HostSpec, ModelSpec, Profile, load_profile_file

log = logging.getLogger("towerops.simulator")

GIB = 1024**3
FOREVER = math.inf
MAX_DURATION_NS = 2**63 - 1  # Go's MaxInt64 Duration: what keep_alive < 0 becomes
OLLAMA_VERSION = "0.30.0"
EPOCH_MODIFIED = dt.datetime(2025, 1, 1, tzinfo=dt.timezone.utc)

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

_WORDS = (
    "the tower answers from a simulated model and streams one token at a time while the "
    "scheduler keeps its runners warm until their keep alive runs out"
).split()


# --------------------------------------------------------------------------- helpers


class SimError(Exception):
    """An error the HTTP layer turns into Ollama's ``{"error": message}`` with a status."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


class _Aborted(Exception):
    """The client went away, the endpoint stopped or the tower shut down: drop the request."""


def normalize_model_name(name: str) -> str:
    """Ollama's canonical short name: ``tinyllama`` -> ``tinyllama:latest``.

    The tag is the part after the last ':' when that ':' comes after the last '/' (a
    ``host:port/`` registry prefix is not a tag).
    """
    name = name.strip()
    last = name.rsplit("/", 1)[-1]
    return name if ":" in last else f"{name}:latest"


def _rfc3339(ts: float) -> str:
    """Go's RFC3339Nano in UTC ("...Z"); far-future values are clamped to what datetime holds."""
    try:
        d = dt.datetime.fromtimestamp(ts, dt.timezone.utc)
    except (OverflowError, OSError, ValueError):
        d = dt.datetime(9999, 12, 31, 23, 59, 59, tzinfo=dt.timezone.utc)
    return d.isoformat().replace("+00:00", "Z")


def _human_gib(n_bytes: float) -> str:
    return f"{n_bytes / GIB:.1f} GiB"


def _is_loopback(host: str) -> bool:
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


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


# --------------------------------------------------------------------------- the tower


@dataclasses.dataclass
class _Placement:
    alloc: dict[int, int]
    cpu_bytes: int


class SimulatedTower:
    """Every endpoint of ``profile`` as a simulated Ollama server on its loopback base_url.

    ``time_scale``: simulated seconds per real second (100 -> everything 100x faster).
    ``clock``: wall-clock seconds (default ``time.time``) for timestamps and keep-alive expiry.
    ``hosts``: serve only these hosts' endpoints (default: all).
    ``bind_host``: listen here instead of the URL's host (which must otherwise be loopback).
    Ollama settings: ``default_keep_alive`` (OLLAMA_KEEP_ALIVE), ``num_parallel``
    (OLLAMA_NUM_PARALLEL), ``max_loaded_models`` (0 = 3 x #GPUs), ``max_queue``,
    ``context_length`` (OLLAMA_CONTEXT_LENGTH; None = the VRAM tier), ``load_timeout``
    (OLLAMA_LOAD_TIMEOUT). Simulation: ``cpu_ram_gb`` (host RAM for weights that do not fit in
    VRAM; 0 = none), ``unload_s`` (runner teardown), ``default_eval_tokens`` (answer length when
    ``num_predict`` is not set), ``version`` (what /api/version says).
    Port 0 in a base_url binds a free port; ``url(name)`` tells which.
    """

    def __init__(
        self,
        profile: Profile,
        time_scale: float = 1.0,
        clock: Callable[[], float] = time.time,
        *,
        hosts: Iterable[str] | None = None,
        bind_host: str | None = None,
        default_keep_alive: str | float = "5m",
        num_parallel: int = 1,
        max_loaded_models: int = 0,
        max_queue: int = 512,
        context_length: int | None = None,
        load_timeout: str | float = "5m",
        cpu_ram_gb: float = 0.0,
        unload_s: float = 0.5,
        default_eval_tokens: int = 32,
        version: str = OLLAMA_VERSION,
        tick_s: float = 0.005,
    ):
        if time_scale <= 0:
            raise ValueError("time_scale must be > 0")
        self.profile = profile
        self.time_scale = float(time_scale)
        self.clock = clock
        self.default_keep_alive = parse_keep_alive(default_keep_alive)
        self.num_parallel = max(1, num_parallel)
        self.max_loaded_models = max_loaded_models
        self.max_queue = max_queue
        self.context_length = context_length
        self.load_timeout = parse_keep_alive(load_timeout) or 300.0
        self.cpu_ram = int(cpu_ram_gb * GIB)
        self.unload_s = unload_s
        self.default_eval_tokens = default_eval_tokens
        self.version = version
        self.tick_s = tick_s
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        self._events: collections.deque[SimEvent] = collections.deque(maxlen=10000)
        self._closing = False
        self._started = False
        self._stopped = threading.Event()
        self._reaper: threading.Thread | None = None

        models = {f.name: f for f in (_model_facts(m) for m in profile.models if m.kind == "local")}
        wanted = set(hosts) if hosts is not None else None
        self.hosts: dict[str, _Host] = {}
        self.endpoints: dict[str, _Endpoint] = {}
        for hspec in profile.hosts:
            if wanted is not None and hspec.name not in wanted:
                continue
            host = _Host(hspec)
            self.hosts[hspec.name] = host
            for espec in hspec.endpoints:
                ep = _Endpoint(espec, host, models)
                if bind_host:
                    ep.bind_host = bind_host
                elif not _is_loopback(ep.bind_host):
                    raise ValueError(
                        f"endpoint {espec.name}: {espec.base_url} is not a loopback address; "
                        "the simulator only listens on this machine (pass bind_host to override)"
                    )
                host.endpoints.append(ep)
                self.endpoints[espec.name] = ep
        if wanted is not None and (missing := wanted - set(self.hosts)):
            raise ValueError(f"unknown host(s) in profile: {', '.join(sorted(missing))}")

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> "SimulatedTower":
        """Bind every endpoint and start serving in background threads; returns self."""
        with self._lock:
            if self._started:
                return self
            self._started = True
            self._closing = False
            self._stopped.clear()
        try:
            for name in self.endpoints:
                self.start_endpoint(name)
        except Exception:
            self.shutdown()
            raise
        self._reaper = threading.Thread(target=self._reap_loop, name="ollama-sim-reaper", daemon=True)
        self._reaper.start()
        return self

    def serve_forever(self) -> None:
        """Start (if needed) and block until ``shutdown()`` is called from another thread."""
        self.start()
        self._stopped.wait()

    def shutdown(self) -> None:
        """Stop every listener, drop every runner and in-flight request, stop the reaper."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        for name in list(self.endpoints):
            self.stop_endpoint(name)
        if self._reaper is not None and self._reaper is not threading.current_thread():
            self._reaper.join(timeout=5)
        self._reaper = None
        with self._lock:
            self._started = False
        self._stopped.set()

    def __enter__(self) -> "SimulatedTower":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.shutdown()

    def stop_endpoint(self, name: str, unload: bool = True) -> None:
        """Make an endpoint go down: close its listener and its open connections.

        With ``unload`` (the default) its runners go too, as when ``ollama serve`` stops; with
        ``unload=False`` they stay (a network outage) and reappear when it comes back.
        """
        ep = self.endpoints[name]
        with self._cond:
            ep.epoch += 1
            server, thread = ep.server, ep.thread
            ep.server = ep.thread = None
            if unload:
                for r in list(ep.runners.values()):
                    self._drop_runner(r, "stopped")
            self._cond.notify_all()
        if server is not None:
            server.shutdown()
            server.close_connections()
            server.server_close()
        if thread is not None:
            thread.join(timeout=5)

    def start_endpoint(self, name: str) -> str:
        """(Re)start an endpoint's listener on its port; returns its URL."""
        ep = self.endpoints[name]
        with self._lock:
            if ep.server is not None:
                return ep.url
        server = _Server((ep.bind_host, ep.port), _Handler, self, ep)
        ep.port = server.server_address[1]
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                  name=f"ollama-sim-{name}", daemon=True)
        with self._lock:
            ep.server, ep.thread = server, thread
        thread.start()
        log.info("simulated Ollama %s listening on %s", name, ep.url)
        return ep.url

    def hang_loads(self, name: str, hang: bool = True) -> None:
        """Loads on this endpoint stall (no progress) while ``hang`` is set."""
        with self._cond:
            self.endpoints[name].hang = hang
            self._cond.notify_all()

    # ------------------------------------------------------------------ introspection

    def url(self, name: str) -> str:
        return self.endpoints[name].url

    def urls(self) -> dict[str, str]:
        return {name: ep.url for name, ep in self.endpoints.items()}

    def profile_with_actual_urls(self) -> Profile:
        """The profile with every served endpoint's base_url set to where it really listens."""
        hosts = []
        for h in self.profile.hosts:
            eps = [e.model_copy(update={"base_url": self.endpoints[e.name].url}) if e.name in self.endpoints else e
                   for e in h.endpoints]
            hosts.append(h.model_copy(update={"endpoints": eps}))
        return self.profile.model_copy(update={"hosts": hosts})

    @property
    def events(self) -> list[SimEvent]:
        with self._lock:
            return list(self._events)

    def loaded(self, name: str) -> dict[str, str]:
        """Model name -> runner state (loading / loaded / unloading) on one endpoint."""
        with self._lock:
            return {k: r.state for k, r in self.endpoints[name].runners.items()}

    def gpu_free_bytes(self, host: str, index: int) -> int:
        with self._lock:
            h = self.hosts[host]
            return h.gpus[index].total - h.gpu_used(index)

    def forget_page_cache(self, host: str | None = None) -> None:
        """Drop the simulated page cache (next loads are cold), for one host or all."""
        with self._lock:
            for h in self.hosts.values():
                if host is None or h.spec.name == host:
                    h.page_cache.clear()

    # ------------------------------------------------------------------ internals: time

    def _real(self, virtual_s: float) -> float:
        return virtual_s / self.time_scale

    def _event(self, ep: _Endpoint, model: str, kind: str, **detail) -> None:
        self._events.append(SimEvent(self.clock(), ep.name, model, kind, detail))
        log.debug("%s %s %s %s", ep.name, model, kind, detail)

    def _wait(self, ctx: "_RequestCtx | None", timeout: float | None = None) -> None:
        """Wait on the condition for a change (caller holds the lock), then check the request."""
        self._cond.wait(min(timeout, 0.02) if timeout is not None else 0.02)
        if ctx is not None:
            ctx.check()
        elif self._closing:
            raise _Aborted()

    def _reap_loop(self) -> None:
        with self._cond:
            while not self._closing:
                self._reap()
                self._cond.wait(self.tick_s)

    def _reap(self) -> None:
        now, mono = self.clock(), time.monotonic()
        for ep in self.endpoints.values():
            for r in list(ep.runners.values()):
                if r.state == "loaded" and r.ref_count == 0:
                    if r.keep_alive == 0:
                        self._begin_unload(r, r.unload_reason or "keep_alive")
                    elif r.expires_at is not None and now >= r.expires_at:
                        self._begin_unload(r, "expired")
                elif r.state == "unloading" and mono >= r.unload_until:
                    self._drop_runner(r, r.unload_reason)

    def _begin_unload(self, r: _Runner, reason: str) -> None:
        r.state = "unloading"
        r.unload_reason = reason
        r.expires_at = self.clock()
        r.unload_until = time.monotonic() + self._real(self.unload_s)
        self._event(r.endpoint, r.facts.name, "unload_start", reason=reason)
        self._cond.notify_all()

    def _drop_runner(self, r: _Runner, reason: str) -> None:
        prev = r.state
        if prev == "gone":
            return
        r.state = "gone"
        r.alloc, r.cpu_bytes = {}, 0
        if r.endpoint.runners.get(r.facts.name) is r:
            del r.endpoint.runners[r.facts.name]
        if prev != "loading":
            self._event(r.endpoint, r.facts.name, "unloaded", reason=reason)
        self._cond.notify_all()

    def _idle(self, r: _Runner) -> None:
        """A request finished with the runner (Ollama's processCompleted)."""
        with self._cond:
            r.ref_count -= 1
            if r.ref_count == 0 and r.state == "loaded":
                r.expires_at = self.clock() + (self._real(r.keep_alive) if r.keep_alive != FOREVER else FOREVER)
            self._cond.notify_all()

    # ------------------------------------------------------------------ internals: scheduling

    def _default_ctx(self, ep: _Endpoint) -> int:
        if self.context_length:
            return self.context_length
        total = ep.vram_total()
        return 262144 if total >= 47 * GIB else 32768 if total >= 23 * GIB else 4096

    def _requested_ctx(self, ep: _Endpoint, options: dict) -> int:
        num_ctx = options.get("num_ctx")
        if num_ctx is None:
            return self._default_ctx(ep)
        try:
            return max(int(num_ctx), 4)
        except (TypeError, ValueError):
            raise SimError(400, f"json: cannot unmarshal {type(num_ctx).__name__} into Go struct field "
                                ".options.num_ctx of type int") from None

    def _place(self, ep: _Endpoint, size: int, first: bool) -> _Placement | str:
        """Where a runner of ``size`` bytes goes, or "evict" / "too_big" (reference 1.3)."""
        host = ep.host
        cpu_free = max(0, self.cpu_ram - host.cpu_used())
        gpus = [host.gpus[i] for i in ep.gpu_indexes if i in host.gpus]
        if not gpus:
            if size <= cpu_free:
                return _Placement({}, size)
            return "too_big" if first else "evict"
        avail = {g.index: max(0, g.total - host.gpu_used(g.index)) for g in gpus}
        single = [i for i, a in avail.items() if size <= 0.8 * a]
        if single:
            best = max(single, key=lambda i: (avail[i], -i))
            return _Placement({best: size}, 0)
        total = sum(avail.values())
        if not first:
            if len(gpus) > 1 and size <= 0.8 * total:
                return _Placement(_split(size, avail), 0)
            return "evict"
        if size <= total:
            return _Placement(_split(size, avail), 0)
        if size - total <= cpu_free:  # partial offload: what fits on the GPUs, the rest in RAM
            return _Placement(dict(avail), size - total)
        return "too_big"

    def _find_victim(self, ep: _Endpoint) -> _Runner | None:
        """Ollama's findRunnerToUnload: ByDurationAndName, first idle one, else the first."""
        candidates = sorted((r for r in ep.runners.values() if r.state == "loaded"),
                            key=lambda r: (r.keep_alive, r.facts.name))
        for r in candidates:
            if r.ref_count == 0:
                return r
        return candidates[0] if candidates else None

    def _acquire(self, ep: _Endpoint, facts: _ModelFacts, options: dict, keep_alive: float | None,
                 ctx: "_RequestCtx") -> _Runner:
        """Ollama's getRunner + processPending: returns the runner with a reference held."""
        req_ctx = self._requested_ctx(ep, options)
        with self._cond:
            r = ep.runners.get(facts.name)
            if r is not None and r.state == "loaded" and r.num_ctx == req_ctx:
                return self._attach(r, keep_alive)  # the fast path: no queue
            if ep.pending >= self.max_queue:
                raise SimError(503, "server busy, please try again.  maximum pending requests exceeded")
            ep.pending += 1
        try:
            while not ep.sched_lock.acquire(timeout=0.02):
                ctx.check()
            try:
                return self._schedule(ep, facts, req_ctx, keep_alive, ctx)
            finally:
                ep.sched_lock.release()
        finally:
            with self._cond:
                ep.pending -= 1

    def _attach(self, r: _Runner, keep_alive: float | None) -> _Runner:
        r.ref_count += 1  # expires_at stays stale while the runner is busy, as in Ollama
        if keep_alive is not None:
            r.keep_alive = keep_alive
            r.unload_reason = ""
        return r

    def _schedule(self, ep: _Endpoint, facts: _ModelFacts, req_ctx: int, keep_alive: float | None,
                  ctx: "_RequestCtx") -> _Runner:
        max_runners = self.max_loaded_models or 3 * max(len(ep.gpu_indexes), 1)
        train = facts.spec.context_length or req_ctx
        loaded_ctx = min(req_ctx, train)
        size = facts.size_bytes(loaded_ctx * self.num_parallel)
        with self._cond:
            while True:
                ctx.check()
                r = ep.runners.get(facts.name)
                victim, reason = None, "evicted"
                if r is not None:
                    if r.state == "loaded" and r.num_ctx == req_ctx:
                        return self._attach(r, keep_alive)
                    if r.state == "loaded":
                        victim, reason = r, "reload"
                    else:  # unloading
                        self._wait(ctx)
                        continue
                else:
                    present = [x for x in ep.runners.values() if x.state in ("loaded", "unloading")]
                    unloading = any(x.state == "unloading" for x in ep.host.runners())
                    if len(present) >= max_runners:
                        if unloading:
                            self._wait(ctx)
                            continue
                        victim = self._find_victim(ep)
                    else:
                        placed = self._place(ep, size, first=not present)
                        if isinstance(placed, _Placement):
                            break
                        if unloading:
                            self._wait(ctx)
                            continue
                        if placed == "too_big":
                            available = sum(max(0, ep.host.gpus[i].total - ep.host.gpu_used(i))
                                            for i in ep.gpu_indexes if i in ep.host.gpus)
                            available += max(0, self.cpu_ram - ep.host.cpu_used())
                            self._event(ep, facts.name, "load_failed", reason="too_big", size=size)
                            raise SimError(500, f"model requires more system memory ({_human_gib(size)}) "
                                                f"than is available ({_human_gib(available)})")
                        victim = self._find_victim(ep)
                if victim is None:  # nothing of ours to evict (another endpoint holds the GPU)
                    self._event(ep, facts.name, "load_failed", reason="no_room", size=size)
                    raise SimError(500, f"model requires more system memory ({_human_gib(size)}) "
                                        "than is available")
                log.info("%s: unloading %s to make room for %s (%s)", ep.name, victim.facts.name,
                         facts.name, reason)
                victim.keep_alive = 0
                victim.unload_reason = reason
                self._cond.notify_all()
                while victim.state != "gone":
                    self._wait(ctx)
            # Place and load (outside the lock, still holding the endpoint's scheduler lock).
            runner = _Runner(
                facts=facts, endpoint=ep, num_ctx=req_ctx, ctx=loaded_ctx, size=size,
                alloc=placed.alloc, cpu_bytes=placed.cpu_bytes,
                keep_alive=keep_alive if keep_alive is not None else self.default_keep_alive,
            )
            ep.runners[facts.name] = runner
            cached = facts.name in ep.host.page_cache
            sim = ep.host.spec.simulator
            load_s = sim.load_fixed_s + (facts.file_bytes / GIB) / (sim.cached_disk_gbps if cached else sim.disk_gbps)
            self._event(ep, facts.name, "load_start", cached=cached, load_s=load_s, size=size,
                        size_vram=runner.size_vram, num_ctx=req_ctx)
        try:
            self._simulate_load(ep, runner, load_s, ctx)
        except BaseException as exc:
            with self._cond:
                self._drop_runner(runner, "load_failed")
                self._event(ep, facts.name, "load_failed",
                            reason=exc.message if isinstance(exc, SimError) else type(exc).__name__)
            raise
        with self._cond:
            runner.state = "loaded"
            ep.host.page_cache.add(facts.name)
            self._event(ep, facts.name, "loaded", cached=cached, load_s=load_s)
            self._cond.notify_all()
            return self._attach(runner, None)

    def _simulate_load(self, ep: _Endpoint, runner: _Runner, load_s: float, ctx: "_RequestCtx") -> None:
        remaining = self._real(load_s)
        stalled = 0.0
        timeout = self._real(self.load_timeout)
        last = time.monotonic()
        with self._cond:
            while remaining > 0:
                if runner.state == "gone":
                    raise _Aborted()
                self._wait(ctx, remaining if not ep.hang else None)
                now = time.monotonic()
                if ep.hang:
                    stalled += now - last
                    if stalled >= timeout:
                        progress = 1 - remaining / max(self._real(load_s), 1e-9)
                        raise SimError(500, f"timed out waiting for llama runner to start - progress {progress:.2f} - ")
                else:
                    remaining -= now - last
                last = now

    # ------------------------------------------------------------------ internals: requests

    def _unload_request(self, ep: _Endpoint, facts: _ModelFacts) -> None:
        """keep_alive 0 with no prompt: Ollama's expireRunner (asynchronous)."""
        with self._cond:
            r = ep.runners.get(facts.name)
            if r is not None and r.state == "loaded":
                r.keep_alive = 0
                r.unload_reason = "keep_alive"
                self._cond.notify_all()

    def _generate(self, ep: _Endpoint, facts: _ModelFacts, body: dict, ctx: "_RequestCtx", chat: bool) -> None:
        start = time.monotonic()
        options = body.get("options") or {}
        if not isinstance(options, dict):
            raise SimError(400, "json: cannot unmarshal options")
        keep_alive = _keep_alive_of(body)
        if chat:
            messages = body.get("messages") or []
            prompt = " ".join(str(m.get("content") or "") for m in messages if isinstance(m, dict))
            empty = not messages
        else:
            prompt = body.get("prompt") or ""
            empty = prompt == "" and not body.get("images")
        if empty and keep_alive == 0:
            self._unload_request(ep, facts)
            ctx.send_json(200, self._done_obj(body, facts, chat, "unload"))
            return
        runner = self._acquire(ep, facts, options, keep_alive, ctx)
        if empty:  # a load: idle (expires_at set) before the client hears back
            self._idle(runner)
            ctx.send_json(200, self._done_obj(body, facts, chat, "load"))
            return
        try:
            self._answer(ep, runner, body, prompt, options, ctx, chat, start, time.monotonic())
        finally:
            self._idle(runner)

    def _done_obj(self, body: dict, facts: _ModelFacts, chat: bool, reason: str) -> dict:
        out: dict[str, Any] = {"model": body.get("model"), "created_at": _rfc3339(self.clock())}
        if chat:
            out["message"] = {"role": "assistant", "content": ""}
        else:
            out["response"] = ""
        out.update(done=True, done_reason=reason)
        return out

    def _answer(self, ep: _Endpoint, runner: _Runner, body: dict, prompt: str, options: dict,
                ctx: "_RequestCtx", chat: bool, start: float, loaded_at: float) -> None:
        # One generation slot per num_parallel: wait for ours.
        with self._cond:
            while runner.active >= self.num_parallel:
                self._wait(ctx)
            runner.active += 1
        try:
            tps = runner.facts.spec.tokens_per_s
            if runner.size:
                gpu_share = runner.size_vram / runner.size
                tps = tps / (gpu_share + (1 - gpu_share) * 10)  # CPU-offloaded layers are ~10x slower
            prompt_tokens = max(1, len(prompt) // 4) + (10 if chat else 4)
            num_predict = options.get("num_predict")
            try:
                num_predict = int(num_predict) if num_predict is not None else -1
            except (TypeError, ValueError):
                num_predict = -1
            if 0 <= num_predict < self.default_eval_tokens:
                n_out, done_reason = num_predict, "length"
            else:
                n_out, done_reason = self.default_eval_tokens, "stop"
            prompt_s = self._real(prompt_tokens / (tps * 20))
            token_s = self._real(1 / tps)
            seed = int(hashlib.sha256(prompt.encode()).hexdigest()[:8], 16)
            tokens = [(" " if i else "") + _WORDS[(seed + i) % len(_WORDS)] for i in range(n_out)]
            stream = body.get("stream", True) is not False
            model = body.get("model")

            def chunk(text: str) -> dict:
                out: dict[str, Any] = {"model": model, "created_at": _rfc3339(self.clock())}
                if chat:
                    out["message"] = {"role": "assistant", "content": text}
                else:
                    out["response"] = text
                out["done"] = False
                return out

            t0 = time.monotonic()
            ctx.sleep_until(t0 + prompt_s)
            t1 = time.monotonic()
            if stream:
                ctx.start_stream()
                for i, tok in enumerate(tokens):
                    ctx.sleep_until(t1 + (i + 1) * token_s)
                    ctx.stream(chunk(tok))
            else:
                ctx.sleep_until(t1 + n_out * token_s)
            final = chunk("")
            final["done"] = True
            final["done_reason"] = done_reason
            if not chat:
                final["context"] = [(seed + i) % 32000 for i in range(min(prompt_tokens + n_out, 64))]
                if not stream:
                    final["response"] = "".join(tokens)
            elif not stream:
                final["message"]["content"] = "".join(tokens)
            load_ns = int((loaded_at - start) * 1e9)
            prompt_ns = int(prompt_s * 1e9)
            eval_ns = int(n_out * token_s * 1e9)
            total_ns = max(int((time.monotonic() - start) * 1e9), load_ns + prompt_ns + eval_ns)
            final.update(total_duration=total_ns, load_duration=load_ns, prompt_eval_count=prompt_tokens,
                         prompt_eval_duration=prompt_ns, eval_count=n_out, eval_duration=eval_ns)
            if stream:
                ctx.stream(final)
                ctx.end_stream()
            else:
                ctx.send_json(200, final)
        finally:
            with self._cond:
                runner.active -= 1
                self._cond.notify_all()

    # ------------------------------------------------------------------ internals: API bodies

    def _lookup(self, ep: _Endpoint, name: Any, for_show: bool) -> _ModelFacts:
        if not isinstance(name, str) or not name.strip():
            raise SimError(400, "model is required")
        facts = ep.models.get(normalize_model_name(name))
        if facts is None:
            key = normalize_model_name(name).casefold()
            facts = next((f for n, f in ep.models.items() if n.casefold() == key), None)
        if facts is None:
            if for_show:
                raise SimError(404, f"model '{name}' not found")
            raise SimError(404, f'model "{name}" not found, try pulling it first')
        return facts

    def _tags(self, ep: _Endpoint) -> dict:
        out = []
        for f in ep.models.values():
            out.append({
                "name": f.name, "model": f.name,
                "modified_at": EPOCH_MODIFIED.isoformat().replace("+00:00", "Z"),
                "size": f.file_bytes, "digest": f.digest, "details": f.details(),
            })
        return {"models": out}

    def _show(self, ep: _Endpoint, body: dict) -> dict:
        facts = self._lookup(ep, body.get("model") or body.get("name"), for_show=True)
        return {
            "license": "",
            "modelfile": f"# Modelfile generated by the TowerOps simulator\nFROM {facts.name}\n",
            "parameters": f"num_ctx {facts.spec.context_length}" if facts.spec.context_length else "",
            "template": "{{ .Prompt }}",
            "details": facts.details(),
            "model_info": facts.model_info(),
            "capabilities": ["completion"],
            "modified_at": EPOCH_MODIFIED.isoformat().replace("+00:00", "Z"),
        }

    def _ps(self, ep: _Endpoint) -> dict:
        with self._lock:
            now = self.clock()
            rows = []
            for r in ep.runners.values():
                if r.state not in ("loaded", "unloading"):
                    continue
                if r.keep_alive == FOREVER and r.state == "loaded":
                    expires = now + MAX_DURATION_NS / 1e9
                else:
                    expires = r.expires_at if r.expires_at is not None else now
                rows.append((expires, {
                    "name": r.facts.name, "model": r.facts.name, "size": r.size, "size_vram": r.size_vram,
                    "digest": r.facts.digest, "details": r.facts.details(),
                    "expires_at": _rfc3339(expires), "context_length": r.ctx,
                }))
        rows.sort(key=lambda x: x[0], reverse=True)
        return {"models": [row for _, row in rows]}


def _split(size: int, avail: dict[int, int]) -> dict[int, int]:
    """Spread ``size`` over GPUs in proportion to their available memory (llama-server's split)."""
    if len(avail) == 1:
        return {next(iter(avail)): size}
    total = sum(avail.values()) or 1
    out, left = {}, size
    items = sorted(avail.items())
    for i, (idx, a) in enumerate(items):
        part = left if i == len(items) - 1 else size * a // total
        out[idx] = part
        left -= part
    return {k: v for k, v in out.items() if v > 0}


def _keep_alive_of(body: dict) -> float | None:
    try:
        return parse_keep_alive(body.get("keep_alive"))
    except ValueError as exc:
        raise SimError(400, str(exc)) from None


# --------------------------------------------------------------------------- HTTP layer


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    block_on_close = False

    def __init__(self, address, handler, tower: SimulatedTower, endpoint: _Endpoint):
        self.tower, self.endpoint = tower, endpoint
        self._conns: set[socket.socket] = set()
        self._conns_lock = threading.Lock()
        super().__init__(address, handler)

    def process_request(self, request, client_address):
        with self._conns_lock:
            self._conns.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request):
        with self._conns_lock:
            self._conns.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        with self._conns_lock:
            conns = list(self._conns)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class _RequestCtx:
    """One request's view: abort checks and the response writers."""

    def __init__(self, handler: "_Handler"):
        self.h = handler
        self.tower: SimulatedTower = handler.server.tower
        self.ep: _Endpoint = handler.server.endpoint
        self.epoch = self.ep.epoch
        self.streaming = False
        self.responded = False

    def client_gone(self) -> bool:
        sock = self.h.connection
        try:
            readable, _, _ = select.select([sock], [], [], 0)
            if not readable:
                return False
            return sock.recv(1, socket.MSG_PEEK) == b""
        except (OSError, ValueError):
            return True

    def check(self) -> None:
        if self.tower._closing or self.ep.epoch != self.epoch or self.client_gone():
            raise _Aborted()

    def sleep_until(self, deadline: float) -> None:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(left, 0.02))
            if self.tower._closing or self.ep.epoch != self.epoch:
                raise _Aborted()

    def send_json(self, status: int, obj: Any) -> None:
        data = json.dumps(obj).encode()
        h = self.h
        h.send_response(status)
        h.send_header("Content-Type", "application/json; charset=utf-8")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        if h.command != "HEAD":
            h.wfile.write(data)
        self.responded = True

    def start_stream(self) -> None:
        h = self.h
        h.send_response(200)
        h.send_header("Content-Type", "application/x-ndjson")
        h.send_header("Transfer-Encoding", "chunked")
        h.end_headers()
        self.streaming = self.responded = True

    def stream(self, obj: Any) -> None:
        data = json.dumps(obj).encode() + b"\n"
        self.h.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.h.wfile.flush()

    def end_stream(self) -> None:
        self.h.wfile.write(b"0\r\n\r\n")
        self.h.wfile.flush()
        self.streaming = False


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are separate writes: no 40 ms delayed-ACK stalls
    server_version = "ollama-sim"
    sys_version = ""
    server: _Server

    def log_message(self, fmt: str, *args) -> None:  # quiet by default
        log.debug("%s %s", self.server.endpoint.name, fmt % args)

    def do_GET(self) -> None:
        self._dispatch()

    def do_HEAD(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    def _read_body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            parts = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    break
                parts.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(parts)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _json_body(self, body: bytes) -> dict:
        if not body.strip():
            raise SimError(400, "missing request body")
        try:
            data = json.loads(body)
        except json.JSONDecodeError as exc:
            raise SimError(400, f"invalid character in request body: {exc.msg}") from None
        if not isinstance(data, dict):
            raise SimError(400, "json: cannot unmarshal request body")
        return data

    def _dispatch(self) -> None:
        tower, ep = self.server.tower, self.server.endpoint
        ctx = _RequestCtx(self)
        path = urlsplit(self.path).path.rstrip("/") or "/"
        method = self.command
        try:
            raw = self._read_body() if method in ("POST", "DELETE") else b""
            if path == "/" and method in ("GET", "HEAD"):
                self._text(200, "Ollama is running")
            elif path == "/api/version" and method in ("GET", "HEAD"):
                ctx.send_json(200, {"version": tower.version})
            elif path == "/api/tags" and method in ("GET", "HEAD"):
                ctx.send_json(200, tower._tags(ep))
            elif path == "/api/ps" and method == "GET":
                ctx.send_json(200, tower._ps(ep))
            elif path == "/api/show" and method == "POST":
                ctx.send_json(200, tower._show(ep, self._json_body(raw)))
            elif path in ("/api/generate", "/api/chat") and method == "POST":
                body = self._json_body(raw)
                facts = tower._lookup(ep, body.get("model"), for_show=False)
                tower._generate(ep, facts, body, ctx, chat=path == "/api/chat")
            else:
                self._text(404, "404 page not found")
        except SimError as exc:
            if ctx.streaming:  # mid-stream errors are a last NDJSON line
                ctx.stream({"error": exc.message})
                ctx.end_stream()
            elif not ctx.responded:
                ctx.send_json(exc.status, {"error": exc.message})
        except (_Aborted, BrokenPipeError, ConnectionResetError, ConnectionAbortedError):
            self.close_connection = True
        except Exception as exc:  # a bug in the simulator: answer like Ollama would, log it
            log.exception("simulator error on %s %s", method, path)
            if not ctx.responded:
                try:
                    ctx.send_json(500, {"error": f"internal error: {exc}"})
                except OSError:
                    pass
            self.close_connection = True

    def _text(self, status: int, text: str) -> None:
        data = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)


# --------------------------------------------------------------------------- command line


def build_arg_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="simulate_tower", description=(
        "Serve an Ollama-compatible API at every endpoint of a TowerOps profile, with virtual GPUs."))
    p.add_argument("--profile", default="profiles/tower.yaml", help="profile YAML (default: %(default)s)")
    p.add_argument("--time-scale", type=float, default=1.0,
                   help="simulated seconds per real second (100 = 100x faster; default 1)")
    p.add_argument("--host", action="append", dest="hosts", metavar="NAME",
                   help="serve only this host's endpoints (repeatable; default all)")
    p.add_argument("--bind", dest="bind_host", default=None,
                   help="listen on this address instead of each base_url's (loopback) host")
    p.add_argument("--keep-alive", default="5m", help="default keep_alive, like OLLAMA_KEEP_ALIVE (default 5m)")
    p.add_argument("--num-parallel", type=int, default=1, help="like OLLAMA_NUM_PARALLEL (default 1)")
    p.add_argument("--max-loaded-models", type=int, default=0,
                   help="like OLLAMA_MAX_LOADED_MODELS (default 0 = 3 per GPU)")
    p.add_argument("--cpu-ram-gb", type=float, default=0.0,
                   help="host RAM for layers that do not fit in VRAM (default 0: no CPU offload)")
    p.add_argument("-v", "--verbose", action="store_true", help="log every load, unload and request")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_arg_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    profile = load_profile_file(args.profile)
    tower = SimulatedTower(
        profile, time_scale=args.time_scale, hosts=args.hosts, bind_host=args.bind_host,
        default_keep_alive=args.keep_alive, num_parallel=args.num_parallel,
        max_loaded_models=args.max_loaded_models, cpu_ram_gb=args.cpu_ram_gb,
    )
    tower.start()
    for name, url in tower.urls().items():
        print(f"simulated Ollama {name}: {url}", flush=True)

    def _stop(signum, frame):
        threading.Thread(target=tower.shutdown, daemon=True).start()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _stop)
    try:
        tower.serve_forever()
    except KeyboardInterrupt:
        tower.shutdown()
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
