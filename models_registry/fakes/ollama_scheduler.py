"""Ollama's scheduler, simulated (``shared/reference/ollama.md`` §1, v0.30+), without HTTP.

The rules themselves (placement and the 80 % fit, the loaded-model limit, parallel slots, the
eviction order, model names) are ``models_registry.policy.ollama_rules``, which the replay's
``ollama_default`` uses too; here they run against the servers' state (``ollama_state``) in
real time divided by ``time_scale``:

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
  runner is idle; ``expires_at`` is refreshed when it becomes idle. A reaper thread expires them.
* A client that disconnects during a load aborts it (Ollama does the same); a hung load fails after
  ``load_timeout`` (Ollama's ``OLLAMA_LOAD_TIMEOUT``, 5m).
"""
from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from models_registry.catalog.durations import parse_keep_alive
from models_registry.catalog.profile import Profile
from models_registry.policy import ollama_rules

from .ollama_state import (
    FOREVER,
    GIB,
    SimError,
    SimEvent,
    _Aborted,
    _Endpoint,
    _Host,
    _human_gib,
    _model_facts,
    _ModelFacts,
    _Placement,
    _Runner,
)

if TYPE_CHECKING:
    from .ollama_http import _RequestCtx

log = logging.getLogger("towerops.simulator")


class Scheduler:
    """The Ollama servers of a profile's hosts, without their HTTP: state, time and scheduling.

    ``SimulatedTower`` (``ollama_server``) serves it over HTTP; its docstring lists the settings.
    """

    def __init__(
        self,
        profile: Profile,
        time_scale: float = 1.0,
        clock: Callable[[], float] = time.time,
        *,
        hosts: Iterable[str] | None = None,
        default_keep_alive: str | float = ollama_rules.DEFAULT_KEEP_ALIVE_S,
        num_parallel: int = 1,
        max_loaded_models: int = 0,
        max_queue: int = 512,
        context_length: int | None = None,
        load_timeout: str | float = "5m",
        cpu_ram_gb: float = 0.0,
        unload_s: float = 0.5,
        tick_s: float = 0.005,
    ):
        if time_scale <= 0:
            raise ValueError("time_scale must be > 0")
        self.profile = profile
        self.time_scale = float(time_scale)
        self.clock = clock
        self.default_keep_alive = parse_keep_alive(default_keep_alive)
        self.num_parallel = ollama_rules.num_parallel(num_parallel)
        self.max_loaded_models = max_loaded_models
        self.max_queue = max_queue
        self.context_length = context_length
        self.load_timeout = parse_keep_alive(load_timeout) or 300.0
        self.cpu_ram = int(cpu_ram_gb * GIB)
        self.unload_s = unload_s
        self.tick_s = tick_s
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        self._events: collections.deque[SimEvent] = collections.deque(maxlen=10000)
        self._closing = False

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
                host.endpoints.append(ep)
                self.endpoints[espec.name] = ep
        if wanted is not None and (missing := wanted - set(self.hosts)):
            raise ValueError(f"unknown host(s) in profile: {', '.join(sorted(missing))}")

    # ------------------------------------------------------------------ introspection

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

    def gpu_busy(self, host: str, index: int) -> bool:
        """Whether a model on this GPU is generating now (the simulated telemetry's utilisation)."""
        with self._lock:
            return any(r.active and index in r.alloc for r in self.hosts[host].runners())

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
        return ollama_rules.default_num_ctx(ep.vram_total() / GIB)

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
        alloc = ollama_rules.place_runner(size, avail, first=first)
        if alloc is not None:
            return _Placement(alloc, 0)
        if not first:
            return "evict"
        total = sum(avail.values())
        if size - total <= cpu_free:  # partial offload: what fits on the GPUs, the rest in RAM
            return _Placement(dict(avail), size - total)
        return "too_big"

    def _find_victim(self, ep: _Endpoint) -> _Runner | None:
        """Ollama's findRunnerToUnload (ollama_rules.runner_to_unload) among the loaded runners."""
        return ollama_rules.runner_to_unload(
            (r for r in ep.runners.values() if r.state == "loaded"),
            keep_alive_s=lambda r: r.keep_alive, name=lambda r: r.facts.name, idle=lambda r: r.ref_count == 0)

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
        # The profile's per-endpoint value when it sets one (TowerOps reads the same), else the server's setting.
        max_runners = ollama_rules.max_loaded_models(ep.spec.max_loaded_models or self.max_loaded_models,
                                                     len(ep.gpu_indexes))
        loaded_ctx = ollama_rules.slot_context(req_ctx, facts.spec.context_length)
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
