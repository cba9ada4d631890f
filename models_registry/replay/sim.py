"""A discrete-event simulator of a tower in virtual time (no sleeping, no HTTP).

The tower comes from a profile's ``World`` (GPUs, endpoints, models). Requests arrive in
trace order; each is handed to a policy, which returns what to do; the simulator then
accounts for it:

* a load of model M takes ``M.load_s`` (per endpoint where learned) from the moment it is
  started; its VRAM is held from then on, and VRAM is enforced per GPU (a policy that
  over-commits a GPU raises ``SimError``);
* generation takes ``output_tokens / tokens_per_s`` (× the split factor when a model
  spans GPUs); no prefill term (Azure's context tokens would be a cache-dependent guess);
* requests to one resident model are served one at a time, first come first served
  (Ollama's default ``OLLAMA_NUM_PARALLEL=1``): a request starts at max(arrival, model
  ready, the previous request's end);
* a resident is unloaded ``keep_alive`` after the end of its last request (the profile's
  endpoint ``keep_alive`` for ``towerops`` and ``always_best``, 5 min for ``ollama_default``);
* a fallback to a remote model responds in ``remote_latency_s + tokens / tokens_per_s``.

The response time of a request is its simulated end − its arrival. Events in the future
(load completions, keep-alive expiries) are kept in a heap and applied, in time order,
before each arrival.

Policies
--------
``towerops``
    The production decision core unchanged: for each request a ``World`` is built from the
    simulated state at that instant (residents with their state, ``ready_at``,
    ``last_used_at`` and ``in_flight`` = requests queued or running on them) and
    ``policy.select`` is called; its decision is carried out (use_loaded / wait_for_load /
    load with its evictions / fallback). Preload windows are not simulated.
``ollama_default``
    The caller asks every request of a task type for its ideal model (highest quality
    for the task among enabled local models that could ever fit one GPU of an endpoint),
    sent to the first endpoint (profile order) where it could fit. Ollama's scheduler
    (../shared/reference/ollama.md §1): the loaded model is used at once (queueing on its
    one slot); otherwise the request waits its turn in the server's pending queue (one
    load at a time per server, FIFO); the load needs ``vram <= 80 %`` of a GPU's free VRAM
    when other models are loaded, else it evicts one victim at a time, ordered by keep-alive
    then model name (not LRU), idle ones first, waiting for a busy victim to finish; new
    loads keep_alive 5 min.
``always_best``
    The best quality for the task among models resident or placeable now (``place``:
    evicting idle models, LRU), always waited for; remote only when nothing local fits.
"""
from __future__ import annotations

import heapq
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Callable, Iterable

from models_registry import metrics
from models_registry.policy import (
    ModelView,
    ResidentView,
    SelectionRequest,
    World,
    place,
    select,
)

from .traces import Request

OLLAMA_KEEP_ALIVE_S = 300.0
OLLAMA_FIT_FRACTION = 0.80


class SimError(RuntimeError):
    """The simulated tower would break a physical rule (e.g. VRAM over a GPU's capacity)."""


@dataclass(slots=True)
class Resident:
    key: int
    model: ModelView
    endpoint: str
    vram_by_gpu: tuple
    load_start: float
    ready_at: float
    keep_alive_s: float
    free_at: float = 0.0  # the end of the last request queued on it
    last_used_at: float | None = None
    ends: deque = field(default_factory=deque)  # end times of requests not finished yet
    split: bool = False

    def in_flight(self, now: float) -> int:
        ends = self.ends
        while ends and ends[0] <= now:
            ends.popleft()
        return len(ends)

    def expires_at(self) -> float:
        return max(self.ready_at, self.free_at) + self.keep_alive_s


@dataclass
class Served:
    """One request's outcome."""

    req: Request
    model: str | None
    action: str | None
    quality: float | None
    met_floor: bool
    start: float  # generation starts
    end: float
    expected_response_s: float | None
    residency: int | None

    @property
    def wait_s(self) -> float:
        return self.start - self.req.arrival_s

    @property
    def response_s(self) -> float:
        return self.end - self.req.arrival_s


@dataclass
class SimResult:
    policy: str
    served: list[Served]
    loads: list[metrics.LoadRec]
    spans: list[metrics.Span]
    usable_mib: float
    end: float
    vram_samples: list[tuple[float, int]]  # (time, MiB held on all GPUs) after each change
    max_vram_by_gpu: dict[str, int]
    residencies: dict[int, tuple[str, str, float]]  # key -> (model, endpoint, ready_at)


class Tower:
    """The simulated hardware: residents, their VRAM per GPU, pending expiries."""

    def __init__(self, world: World, keep_alive_by_endpoint: dict[str, float]):
        self.world = world
        self.usable = {g.key: g.total_mib - g.reserved_mib for g in world.gpus}
        self.used = dict.fromkeys(self.usable, 0)
        self.max_used = dict.fromkeys(self.usable, 0)
        self.residents: dict[tuple[str, str], Resident] = {}
        self.keep_alive = keep_alive_by_endpoint
        self.loads: list[metrics.LoadRec] = []
        self.spans: list[metrics.Span] = []
        self.vram_samples: list[tuple[float, int]] = []
        self._heap: list = []  # (expires_at, key, (model, endpoint))
        self._next_key = 0
        self.info: dict[int, tuple[str, str, float]] = {}  # residency -> (model, endpoint, ready_at)

    # -- time
    def advance(self, now: float) -> None:
        """Apply the keep-alive expiries due by ``now``, in time order."""
        heap = self._heap
        while heap and heap[0][0] <= now:
            at, key, rk = heapq.heappop(heap)
            r = self.residents.get(rk)
            if r is None or r.key != key:
                continue
            due = r.expires_at()
            if due > at:  # used again since: re-arm
                heapq.heappush(heap, (due, key, rk))
                continue
            self._remove(r, at, "unload")

    # -- changes
    def load(self, model: ModelView, endpoint: str, vram_by_gpu, now: float, load_s: float,
             split: bool = False) -> Resident:
        for g, mib in vram_by_gpu:
            self.used[g] += mib
            if self.used[g] > self.usable[g]:
                raise SimError(f"{model.tag} on {g}: {self.used[g]} MiB held > {self.usable[g]} usable")
            if self.used[g] > self.max_used[g]:
                self.max_used[g] = self.used[g]
        self._next_key += 1
        r = Resident(self._next_key, model, endpoint, tuple(vram_by_gpu), now, now + load_s,
                     self.keep_alive[endpoint], free_at=now + load_s, split=split)
        self.residents[(model.tag, endpoint)] = r
        self.info[r.key] = (model.tag, endpoint, r.ready_at)
        self.loads.append(metrics.LoadRec(now + load_s, "load", model.tag, endpoint, load_s))
        heapq.heappush(self._heap, (r.expires_at(), r.key, (model.tag, endpoint)))
        self._sample(now)
        return r

    def evict(self, model: str, endpoint: str, now: float) -> None:
        r = self.residents.get((model, endpoint))
        if r is None:
            raise SimError(f"evicting {model} on {endpoint}, which is not resident")
        if r.in_flight(now) or r.ready_at > now:
            raise SimError(f"evicting {model} on {endpoint} while it is busy or loading")
        self._remove(r, now, "evict")

    def _remove(self, r: Resident, at: float, kind: str) -> None:
        del self.residents[(r.model.tag, r.endpoint)]
        for g, mib in r.vram_by_gpu:
            self.used[g] -= mib
        self.spans.append(metrics.Span(r.key, r.load_start, at, sum(m for _, m in r.vram_by_gpu)))
        self.loads.append(metrics.LoadRec(at, kind, r.model.tag, r.endpoint))
        self._sample(at)

    def _sample(self, at: float) -> None:
        self.vram_samples.append((at, sum(self.used.values())))

    def serve(self, r: Resident, now: float, gen_s: float) -> tuple[float, float]:
        start = max(now, r.ready_at, r.free_at)
        end = start + gen_s
        r.free_at = end
        r.last_used_at = now
        r.ends.append(end)
        return start, end

    def close(self, end: float) -> None:
        for r in self.residents.values():
            self.spans.append(metrics.Span(r.key, r.load_start, None, sum(m for _, m in r.vram_by_gpu)))


def _duration_s(text: str) -> float:
    text = str(text).strip()
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    for u in ("ms", "h", "m", "s"):
        if text.endswith(u):
            return float(text[: -len(u)]) * units[u]
    return float(text)


def _gen_s(model: ModelView, tokens: int, split: bool, split_factor: float) -> float:
    tps = model.tokens_per_s * (split_factor if split else 1.0)
    return tokens / tps if tps > 0 else 0.0


def _floor(world: World, task: str) -> float:
    for t in world.task_types:
        if t.name == task:
            return t.quality_floor
    raise ValueError(f"unknown task type {task!r}")


# --------------------------------------------------------------------------- policies


class Policy:
    name = ""

    def __init__(self, world: World, keep_alive: dict[str, float]):
        self.world = world
        self.tower = Tower(world, keep_alive)
        self.models = {m.tag: m for m in world.models}

    def fallback(self, req: Request, task_floor: float) -> Served:
        remotes = [m for m in self.world.models if m.kind == "remote" and m.enabled]
        if not remotes:
            return Served(req, None, None, None, False, req.arrival_s, req.arrival_s, None, None)
        m = max(remotes, key=lambda m: (m.quality.get(req.task_type, 0.0), m.tag))
        q = m.quality.get(req.task_type, 0.0)
        resp = m.remote_latency_s + _gen_s(m, req.output_tokens, False, 1.0)
        return Served(req, m.tag, "fallback", q, q >= task_floor, req.arrival_s + m.remote_latency_s,
                      req.arrival_s + resp, resp, None)


class TowerOpsPolicy(Policy):
    """policy.select, unchanged, on a World built from the simulated state."""

    name = "towerops"

    def handle(self, req: Request) -> Served:
        now = req.arrival_s
        tower = self.tower
        tower.advance(now)
        w = self.world
        residents = tuple(
            ResidentView(r.model.tag, r.endpoint, r.vram_by_gpu,
                         "loaded" if r.ready_at <= now else "loading", r.ready_at, r.last_used_at,
                         r.in_flight(now), busy_s=max(0.0, r.free_at - max(now, r.ready_at)))
            for r in tower.residents.values())
        world = World(now, w.gpus, w.endpoints, residents, w.models, w.task_types, w.urgencies, w.params)
        d = select(world, SelectionRequest(req.task_type, req.urgency, expected_output_tokens=req.output_tokens))
        if d.action is None:
            return Served(req, None, None, None, False, now, now, None, None)
        if d.action == "fallback":
            m = self.models[d.model]
            resp = m.remote_latency_s + _gen_s(m, req.output_tokens, False, 1.0)
            return Served(req, d.model, "fallback", d.quality, d.met_floor, now + m.remote_latency_s,
                          now + resp, d.expected_response_s, None)
        m = self.models[d.model]
        if d.action == "load":
            for e in d.evictions:
                tower.evict(e.model, e.endpoint, now)
            split = len(d.gpus) > 1
            if split:
                p = place(world, d.model)
                vram = p.vram_by_gpu
            else:
                vram = ((d.gpus[0], m.vram_mib),)
            r = tower.load(m, d.endpoint, vram, now, m.load_s_on(d.endpoint), split)
        else:
            r = tower.residents[(d.model, d.endpoint)]
        start, end = tower.serve(r, now, _gen_s(m, req.output_tokens, r.split, w.params.split_throughput_factor))
        return Served(req, d.model, d.action, d.quality, d.met_floor, start, end, d.expected_response_s, r.key)


class AlwaysBestPolicy(Policy):
    """The best quality that is resident or can be placed now, always waited for."""

    name = "always_best"

    def handle(self, req: Request) -> Served:
        now = req.arrival_s
        tower = self.tower
        tower.advance(now)
        w = self.world
        floor = _floor(w, req.task_type)
        by_tag = {}
        for r in tower.residents.values():
            by_tag.setdefault(r.model.tag, r)
        world = None
        ranked = sorted((m for m in w.models if m.kind == "local" and m.enabled),
                        key=lambda m: (-m.quality.get(req.task_type, 0.0), m.tag))
        for m in ranked:
            q = m.quality.get(req.task_type, 0.0)
            r = by_tag.get(m.tag)
            action = "use_loaded" if r is not None and r.ready_at <= now else "wait_for_load"
            if r is None:
                if world is None:
                    residents = tuple(
                        ResidentView(x.model.tag, x.endpoint, x.vram_by_gpu,
                                     "loaded" if x.ready_at <= now else "loading", x.ready_at,
                                     x.last_used_at, x.in_flight(now))
                        for x in tower.residents.values())
                    world = World(now, w.gpus, w.endpoints, residents, w.models, w.task_types,
                                  w.urgencies, w.params)
                p = place(world, m.tag)
                if p is None:
                    continue
                for e in p.evictions:
                    tower.evict(e.model, e.endpoint, now)
                r = tower.load(m, p.endpoint, p.vram_by_gpu, now, p.load_s, p.split)
                action = "load"
            start, end = tower.serve(r, now, _gen_s(m, req.output_tokens, r.split,
                                                    w.params.split_throughput_factor))
            return Served(req, m.tag, action, q, q >= floor, start, end, None, r.key)
        return self.fallback(req, floor)


class OllamaDefaultPolicy(Policy):
    """The caller asks for the task's ideal model; Ollama's own scheduler does the rest."""

    name = "ollama_default"

    def __init__(self, world: World, keep_alive: dict[str, float]):
        super().__init__(world, dict.fromkeys(keep_alive, OLLAMA_KEEP_ALIVE_S))
        self.usable = {g.key: g.total_mib - g.reserved_mib for g in world.gpus}
        self.loader_free_at = {e.key: 0.0 for e in world.endpoints}
        self._ideal: dict[str, tuple] = {}

    def ideal(self, task: str):
        """(model, endpoint) for a task: the best local model that could ever fit a GPU."""
        hit = self._ideal.get(task)
        if hit is None:
            best = None
            for m in self.world.models:
                if m.kind != "local" or not m.enabled:
                    continue
                for e in self.world.endpoints:
                    if any(m.vram_mib <= self.usable[g] for g in e.gpus):
                        key = (-m.quality.get(task, 0.0), m.tag)
                        if best is None or key < best[0]:
                            best = (key, m, e)
                        break
            hit = self._ideal[task] = (best[1], best[2]) if best else (None, None)
        return hit

    def handle(self, req: Request) -> Served:
        now = req.arrival_s
        tower = self.tower
        tower.advance(now)
        floor = _floor(self.world, req.task_type)
        m, ep = self.ideal(req.task_type)
        if m is None:
            return self.fallback(req, floor)
        q = m.quality.get(req.task_type, 0.0)
        r = tower.residents.get((m.tag, ep.key))
        action = "use_loaded" if r is not None and r.ready_at <= now else "wait_for_load"
        if r is None:
            # The server's single pending queue: one load at a time, FIFO.
            t = max(now, self.loader_free_at[ep.key])
            while True:
                tower.advance(t)
                gpu = self._fit(m, ep, t)
                if gpu is not None:
                    break
                on_ep = [x for x in tower.residents.values() if x.endpoint == ep.key]
                if not on_ep:
                    raise SimError(f"{m.tag} cannot fit an empty {ep.key}")
                order = sorted(on_ep, key=lambda x: (x.keep_alive_s, x.model.tag))
                idle = [x for x in order if x.ready_at <= t and x.in_flight(t) == 0]
                if idle:
                    tower.evict(idle[0].model.tag, ep.key, t)
                else:
                    # wait for the first victim to go idle, then evict it
                    v = order[0]
                    t = max(v.free_at, v.ready_at)
                    tower.advance(t)
                    if (v.model.tag, ep.key) in tower.residents:
                        tower.evict(v.model.tag, ep.key, t)
            load_s = m.load_s_on(ep.key)
            r = tower.load(m, ep.key, ((gpu, m.vram_mib),), t, load_s)
            self.loader_free_at[ep.key] = t + load_s
            action = "load"
        start, end = tower.serve(r, now, _gen_s(m, req.output_tokens, False, 1.0))
        return Served(req, m.tag, action, q, q >= floor, start, end, None, r.key)

    def _fit(self, m: ModelView, ep, t: float) -> str | None:
        """Ollama's bestSingleGPUFit: a GPU where the model takes <= 80 % of the free VRAM
        (only the first model of a server may take it all), the one with most free first."""
        tower = self.tower
        alone = not any(x.endpoint == ep.key for x in tower.residents.values())
        frees = sorted(((self.usable[g] - tower.used[g], g) for g in ep.gpus), reverse=True)
        for free, g in frees:
            if m.vram_mib <= (free if alone else OLLAMA_FIT_FRACTION * free):
                return g
        return None


POLICIES: dict[str, type[Policy]] = {
    "towerops": TowerOpsPolicy,
    "ollama_default": OllamaDefaultPolicy,
    "always_best": AlwaysBestPolicy,
}


def keep_alive_by_endpoint(profile) -> dict[str, float]:
    return {e.name: _duration_s(e.keep_alive) for h in profile.hosts for e in h.endpoints}


def simulate(profile, requests: Iterable[Request], policy: str, *,
             progress: Callable[[int], None] | None = None) -> SimResult:
    """Run ``requests`` (sorted by arrival) through ``policy`` on the profile's tower."""
    world = profile.to_world(0.0)
    pol = POLICIES[policy](world, keep_alive_by_endpoint(profile))
    served = []
    handle = pol.handle
    for i, req in enumerate(requests):
        served.append(handle(req))
        if progress is not None and (i & 1023) == 1023:
            progress(1024)
    if progress is not None:
        progress(len(served) & 1023)
    end = max((s.end for s in served), default=0.0)
    end = max(end, max((s.req.arrival_s for s in served), default=0.0)) + 1e-6
    pol.tower.advance(end)
    pol.tower.close(end)
    usable = float(sum(pol.tower.usable.values()))
    return SimResult(policy, served, pol.tower.loads, pol.tower.spans, usable, end,
                     pol.tower.vram_samples, dict(pol.tower.max_used),
                     pol.tower.info)
