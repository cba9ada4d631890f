"""A discrete-event simulator of a tower in virtual time (no sleeping, no HTTP).

The tower comes from a profile's ``World`` (GPUs, endpoints, models). Requests arrive in
trace order; each is handed to a policy, which returns what to do; the simulator then
accounts for it:

* a load of model M takes ``M.load_s`` (per endpoint where learned) from the moment it is
  started; its VRAM is held from then on, and VRAM is enforced per GPU (a policy that
  over-commits a GPU raises ``SimError``);
* a request holds its model for its prefill and its generation, one request at a time,
  first come first served (Ollama's default ``OLLAMA_NUM_PARALLEL=1``): it starts at
  max(arrival, model ready, the previous request's end);
* prefill takes ``min(input_tokens, endpoint num_ctx) / prefill_tokens_per_s`` (Ollama
  truncates a longer prompt to the context; the profile's ``prefill_tokens_per_s``,
  default 20 × tokens/s: see ``models_registry.profile.PREFILL_PER_DECODE``), generation
  ``output_tokens / tokens_per_s``; both × ``split_throughput_factor`` on a split model;
* the **time to first token** (TTFT, the interactive p95) is start − arrival + prefill;
  the response time is the end − arrival;
* a resident is unloaded ``keep_alive`` after the end of its last request (the profile's
  endpoint ``keep_alive`` for ``towerops``, ``always_best`` and ``clairvoyant``, 5 min for
  ``ollama_default``); a negative keep_alive (``-1m``) keeps it until it is evicted;
* a fallback to a remote model has its first token after ``remote_latency_s`` and ends
  ``tokens / tokens_per_s`` later.

Events in the future (load completions, keep-alive expiries, preload ticks) are applied,
in time order, before each arrival.

Policies
--------
``towerops``
    The production decision core unchanged: for each request a ``World`` is built from the
    simulated state at that instant (residents with their state, ``ready_at``,
    ``last_used_at``, ``in_flight`` and ``busy_s`` = the exact time the requests already
    routed there need) and ``policy.select`` is called with the request's task type,
    urgency, output and input (prompt) tokens; its decision is carried out (use_loaded /
    wait_for_load / load with its evictions -- a second copy of a resident model on another
    endpoint included / fallback). With a wall clock
    (``start``), the profile's preload windows run as the live beat runs
    ``tasks.apply_preload_windows``: every 60 s, each model of the open windows that is not
    resident is placed by ``policy.place`` (evicting only idle models outside the warm
    set) and loaded; a model a window preloaded is unloaded once no window wants it, it
    is idle and unused for 5 min (``TOWEROPS_PRELOAD_IDLE_MIN``) — except on an endpoint
    whose keep_alive is forever (keep-warm: it stays until its VRAM is needed). The ticks
    start a week before the first request, so the trace meets the tower as a week of its
    windows left it; what happened before the first request is not counted.
``ollama_default``
    The caller asks every request of a task type for its ideal model (highest quality
    for the task among enabled local models that could ever fit one GPU of an endpoint),
    sent to the first endpoint (profile order) where it could fit. Ollama's scheduler
    (../shared/reference/ollama.md §1): the loaded model is used at once (queueing on its
    one slot); otherwise the request waits its turn in the server's pending queue (one
    load at a time per server, FIFO); the load needs ``vram <= 80 %`` of a GPU's free VRAM
    when other models are loaded, else it evicts one victim at a time, ordered by keep-alive
    then model name (not LRU), idle ones first, waiting for a busy victim to finish; new
    loads keep_alive 5 min. No preloading.
``always_best``
    The best quality for the task among models resident or placeable now (``place``:
    evicting idle models, LRU), always waited for; remote only when nothing local fits.
    No preloading (the seed's "demo" approach).
``clairvoyant``
    A reference point that knows the future, kept simple. It knows, before the trace
    starts, every request's task type: its warm set is, for the task types by number of
    requests (most first), their enabled local models meeting the floor, best quality
    first, each placed (``policy.place``, no evictions) where it still fits, loaded so
    that it is ready when the first request arrives (those loads are counted). Then each
    request goes to the resident that gives it the earliest first token (it knows every
    queue exactly and the request's own prefill), ties to the better quality; it never
    loads or evicts during the trace. A request no resident serves at its floor falls
    back to the best remote, else to the best resident. It is not an optimum (greedy per
    request), but no policy that keeps the same models can start answering sooner, and
    its warm set is what the trace's task mix asks for.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import heapq
import math
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Callable, Iterable

from models_registry import metrics
from models_registry.profile import window_open
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
PRELOAD_TICK_S = 60.0  # CELERY_BEAT_SCHEDULE["preload-windows"]
PRELOAD_IDLE_S = 300.0  # TOWEROPS_PRELOAD_IDLE_MIN default: a window's model is cooled after this idle
WARMUP_S = 7 * 86400.0  # preload ticks run this long (a week of windows) before the first request
INF = math.inf


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
    trigger: str = "selection"
    idle_view: ResidentView | None = None  # its view while loaded and idle (cleared on use)

    def in_flight(self, now: float) -> int:
        ends = self.ends
        while ends and ends[0] <= now:
            ends.popleft()
        return len(ends)

    def expires_at(self) -> float:
        return max(self.ready_at, self.free_at) + self.keep_alive_s


@dataclass(slots=True)
class Served:
    """One request's outcome."""

    req: Request
    model: str | None
    action: str | None
    quality: float | None
    met_floor: bool
    start: float  # the model starts on it (prefill, then generation)
    first_token: float  # start + prefill (remote: arrival + remote latency)
    end: float
    expected_wait_s: float | None  # what the policy expected (towerops), else None
    residency: int | None

    @property
    def wait_s(self) -> float:
        return self.start - self.req.arrival_s

    @property
    def ttft_s(self) -> float:
        return self.first_token - self.req.arrival_s

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
    start: dt.datetime | None = None  # the wall clock of virtual time 0, when preloads ran


class Tower:
    """The simulated hardware: residents, their VRAM per GPU, pending expiries."""

    def __init__(self, world: World, keep_alive_by_endpoint: dict[str, float], num_ctx: dict[str, int],
                 prefill_tps: dict[str, float]):
        self.world = world
        self.usable = {g.key: g.total_mib - g.reserved_mib for g in world.gpus}
        self.used = dict.fromkeys(self.usable, 0)
        self.max_used = dict.fromkeys(self.usable, 0)
        self.residents: dict[tuple[str, str], Resident] = {}
        self.keep_alive = keep_alive_by_endpoint
        self.num_ctx = num_ctx
        self.prefill_tps = prefill_tps
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
             split: bool = False, trigger: str = "selection") -> Resident:
        for g, mib in vram_by_gpu:
            self.used[g] += mib
            if self.used[g] > self.usable[g]:
                raise SimError(f"{model.tag} on {g}: {self.used[g]} MiB held > {self.usable[g]} usable")
            if self.used[g] > self.max_used[g]:
                self.max_used[g] = self.used[g]
        self._next_key += 1
        r = Resident(self._next_key, model, endpoint, tuple(vram_by_gpu), now, now + load_s,
                     self.keep_alive[endpoint], free_at=now + load_s, split=split, trigger=trigger)
        self.residents[(model.tag, endpoint)] = r
        self.info[r.key] = (model.tag, endpoint, r.ready_at)
        self.loads.append(metrics.LoadRec(now + load_s, "load", model.tag, endpoint, load_s))
        if r.keep_alive_s != INF:
            heapq.heappush(self._heap, (r.expires_at(), r.key, (model.tag, endpoint)))
        self._sample(now)
        return r

    def evict(self, model: str, endpoint: str, now: float, kind: str = "evict") -> None:
        r = self.residents.get((model, endpoint))
        if r is None:
            raise SimError(f"evicting {model} on {endpoint}, which is not resident")
        if r.in_flight(now) or r.ready_at > now:
            raise SimError(f"evicting {model} on {endpoint} while it is busy or loading")
        self._remove(r, now, kind)

    def _remove(self, r: Resident, at: float, kind: str) -> None:
        del self.residents[(r.model.tag, r.endpoint)]
        for g, mib in r.vram_by_gpu:
            self.used[g] -= mib
        self.spans.append(metrics.Span(r.key, r.load_start, at, sum(m for _, m in r.vram_by_gpu)))
        self.loads.append(metrics.LoadRec(at, kind, r.model.tag, r.endpoint))
        self._sample(at)

    def _sample(self, at: float) -> None:
        self.vram_samples.append((at, sum(self.used.values())))

    def times(self, r: Resident, req: Request, split_factor: float) -> tuple[float, float]:
        """(prefill s, generation s) of ``req`` on ``r``."""
        m = r.model
        f = split_factor if r.split else 1.0
        prompt = min(req.input_tokens, self.num_ctx[r.endpoint])
        pre = self.prefill_tps.get(m.tag, 0.0) * f
        tps = m.tokens_per_s * f
        return (prompt / pre if pre > 0 else 0.0), (req.output_tokens / tps if tps > 0 else 0.0)

    def serve(self, r: Resident, now: float, prefill_s: float, gen_s: float) -> tuple[float, float, float]:
        """Queue a request on ``r``: (start, first token, end)."""
        start = max(now, r.ready_at, r.free_at)
        first = start + prefill_s
        end = first + gen_s
        r.free_at = end
        r.last_used_at = now
        r.idle_view = None
        r.ends.append(end)
        return start, first, end

    def views(self, now: float, busy: bool = True) -> tuple[ResidentView, ...]:
        """The residents as the policy sees them at ``now`` (``busy``: with the exact busy_s)."""
        out = []
        for r in self.residents.values():
            if r.ready_at <= now and r.free_at <= now:  # loaded and idle: the view only changes on use
                v = r.idle_view
                if v is None or v.busy_s != (0.0 if busy else None):
                    v = r.idle_view = _view(r.model.tag, r.endpoint, r.vram_by_gpu, "loaded", r.ready_at,
                                            r.last_used_at, 0, 0.0 if busy else None)
            else:
                v = _view(r.model.tag, r.endpoint, r.vram_by_gpu, "loaded" if r.ready_at <= now else "loading",
                          r.ready_at, r.last_used_at, r.in_flight(now),
                          max(0.0, r.free_at - max(now, r.ready_at)) if busy else None)
            out.append(v)
        return tuple(out)

    def close(self, end: float) -> None:
        for r in self.residents.values():
            self.spans.append(metrics.Span(r.key, r.load_start, None, sum(m for _, m in r.vram_by_gpu)))


def _zone(name: str):
    import zoneinfo

    return zoneinfo.ZoneInfo(name)


_RESIDENT_FIELDS = tuple(f.name for f in dataclasses.fields(ResidentView))
_new = object.__new__


def _view(model, endpoint, vram_by_gpu, state, ready_at, last_used_at, in_flight, busy_s) -> ResidentView:
    """ResidentView(...) without the frozen dataclass's per-field object.__setattr__ (the replay
    builds one per resident per request; the object is the same)."""
    v = _new(ResidentView)
    object.__setattr__(v, "__dict__", {"model": model, "endpoint": endpoint, "vram_by_gpu": vram_by_gpu,
                                       "state": state, "ready_at": ready_at, "last_used_at": last_used_at,
                                       "in_flight": in_flight, "pinned": False, "busy_s": busy_s})
    return v


assert _RESIDENT_FIELDS == ("model", "endpoint", "vram_by_gpu", "state", "ready_at", "last_used_at", "in_flight",
                            "pinned", "busy_s"), "ResidentView changed: update _view"


def _floor(world: World, task: str) -> float:
    for t in world.task_types:
        if t.name == task:
            return t.quality_floor
    raise ValueError(f"unknown task type {task!r}")


def _remote_gen_s(m: ModelView, tokens: int) -> float:
    return tokens / m.tokens_per_s if m.tokens_per_s > 0 else 0.0


# --------------------------------------------------------------------------- policies


class Policy:
    name = ""
    own_keep_alive: float | None = None  # overrides the profile's endpoint keep_alive

    def __init__(self, world: World, profile, start: dt.datetime | None = None):
        self.world = world
        self.profile = profile
        self.start = start
        keep = keep_alive_by_endpoint(profile)
        if self.own_keep_alive is not None:
            keep = dict.fromkeys(keep, self.own_keep_alive)
        self.tower = Tower(world, keep, num_ctx_by_endpoint(profile), prefill_by_model(profile))
        self.models = {m.tag: m for m in world.models}
        self.split_factor = world.params.split_throughput_factor

    def prepare(self, requests: list[Request]) -> None:
        """Called once with the whole trace before the first request (only the clairvoyant looks)."""

    def world_at(self, now: float, busy: bool = True) -> World:
        w = self.world
        return World(now, w.gpus, w.endpoints, self.tower.views(now, busy), w.models, w.task_types,
                     w.urgencies, w.params)

    def fallback(self, req: Request, task_floor: float) -> Served:
        remotes = [m for m in self.world.models if m.kind == "remote" and m.enabled]
        if not remotes:
            return Served(req, None, None, None, False, req.arrival_s, req.arrival_s, req.arrival_s, None, None)
        m = max(remotes, key=lambda m: (m.quality.get(req.task_type, 0.0), m.tag))
        return self.remote(req, m, task_floor)

    def remote(self, req: Request, m: ModelView, task_floor: float, expected_wait_s: float | None = None) -> Served:
        q = m.quality.get(req.task_type, 0.0)
        first = req.arrival_s + m.remote_latency_s
        return Served(req, m.tag, "fallback", q, q >= task_floor, first, first,
                      first + _remote_gen_s(m, req.output_tokens), expected_wait_s, None)

    def run(self, r: Resident, req: Request, now: float, model: str, action: str, quality: float,
            met: bool, expected_wait_s: float | None = None) -> Served:
        pre, gen = self.tower.times(r, req, self.split_factor)
        start, first, end = self.tower.serve(r, now, pre, gen)
        return Served(req, model, action, quality, met, start, first, end, expected_wait_s, r.key)

    def finish(self, end: float) -> None:
        """After the last request (the clock runs on to ``end``)."""
        self.tower.advance(end)


class TowerOpsPolicy(Policy):
    """policy.select, unchanged, on a World built from the simulated state; preload windows."""

    name = "towerops"

    def __init__(self, world: World, profile, start: dt.datetime | None = None):
        super().__init__(world, profile, start)
        local = {m.tag for m in world.models if m.kind == "local" and m.enabled}
        # (days, start, end, zone, models) of the enabled windows by name, models by tag: as
        # tasks.desired_warm_set orders them; window_open is the live definition.
        self.windows = [(tuple(w.day_numbers), w.start, w.end, w.timezone, sorted(t for t in w.models if t in local))
                        for w in sorted((w for w in profile.preload_windows if w.enabled), key=lambda w: w.name)]
        self.pinned = {m.tag for m in world.models if m.pinned}
        self.next_tick = INF
        self.first = 0.0
        self._last_wanted: list[str] | None = None
        self._last_residents: set = set()
        self._cooling = False
        self.preload_log: list[tuple[float, str, str]] = []  # (t, "load"/"skip"/"cool", tag)

    def prepare(self, requests: list[Request]) -> None:
        if self.start is not None and self.windows:
            self.first = requests[0].arrival_s if requests else 0.0
            self.next_tick = self.first - WARMUP_S

    def wanted(self, t: float) -> list[str]:
        """tasks.desired_warm_set at the wall-clock time of virtual ``t``."""
        at = self.start + dt.timedelta(seconds=t)
        out: list[str] = []
        for days, start, end, zone, tags in self.windows:
            if window_open(days, start, end, zone, at):
                for tag in tags:
                    if tag not in out:
                        out.append(tag)
        return out

    def tick(self, t: float) -> None:
        """tasks.apply_preload_windows at ``t``."""
        tower = self.tower
        tower.advance(t)
        wanted = self.wanted(t)
        if (t < self.first and wanted == self._last_wanted and not self._cooling
                and self._last_residents == tower.residents.keys()):
            return  # before the trace, with the same warm set and residents, a tick changes nothing
        self._last_wanted = wanted
        protect = tuple(wanted)
        for tag in wanted:
            if any(k[0] == tag for k in tower.residents):
                continue  # already requested, loading or loaded: nothing to do
            p = place(self.world_at(t), tag, protect=protect)
            if p is None:
                self.preload_log.append((t, "skip", tag))
                continue
            for e in p.evictions:
                tower.evict(e.model, e.endpoint, t)
            tower.load(self.models[tag], p.endpoint, p.vram_by_gpu, t, p.load_s, p.split, trigger="preload")
            self.preload_log.append((t, "load", tag))
        self._cooling = False
        for r in list(tower.residents.values()):
            if r.trigger != "preload" or r.model.tag in wanted or r.keep_alive_s == INF:
                continue
            if (r.ready_at <= t and r.free_at <= t and r.model.tag not in self.pinned
                    and (r.last_used_at is None or r.last_used_at <= t - PRELOAD_IDLE_S)):
                tower._remove(r, t, "unload")
                self.preload_log.append((t, "cool", r.model.tag))
            else:
                self._cooling = True  # to be cooled at a later tick
        self._last_residents = set(tower.residents)

    def _ticks_until(self, now: float) -> None:
        while self.next_tick <= now:
            t = self.next_tick
            self.tick(t)
            self.next_tick = t + PRELOAD_TICK_S
            if self.next_tick < self.first and not self._cooling:
                # Before the trace a tick can only do something once a window opens or closes or a
                # model expires: jump to the first tick on the grid at or after that.
                due = min(self._next_edge(self.next_tick), self.tower._heap[0][0] if self.tower._heap else INF)
                if due > self.next_tick:
                    steps = math.ceil((min(due, self.first) - self.next_tick) / PRELOAD_TICK_S)
                    self.next_tick += steps * PRELOAD_TICK_S

    def _next_edge(self, t: float) -> float:
        """The first virtual time >= t at which some window's local start or end time falls."""
        at = self.start + dt.timedelta(seconds=t)
        best = INF
        for _days, start, end, zone, _tags in self.windows:
            tz = _zone(zone)
            day = at.astimezone(tz).date()
            for d in (day, day + dt.timedelta(days=1)):
                for clock in (start, end):
                    edge = (dt.datetime.combine(d, clock, tzinfo=tz) - self.start).total_seconds()
                    if t <= edge < best:
                        best = edge
        return best

    def handle(self, req: Request) -> Served:
        now = req.arrival_s
        if self.next_tick <= now:
            self._ticks_until(now)
        tower = self.tower
        tower.advance(now)
        world = self.world_at(now)
        d = select(world, SelectionRequest(req.task_type, req.urgency, expected_output_tokens=req.output_tokens,
                                           input_tokens=req.input_tokens))
        if d.action is None:
            return Served(req, None, None, None, False, now, now, now, None, None)
        m = self.models[d.model]
        if d.action == "fallback":
            return self.remote(req, m, _floor(self.world, req.task_type), d.expected_wait_s)
        if d.action == "load":
            for e in d.evictions:
                tower.evict(e.model, e.endpoint, now)
            split = len(d.gpus) > 1
            vram = place(world, d.model).vram_by_gpu if split else ((d.gpus[0], m.vram_mib),)
            r = tower.load(m, d.endpoint, vram, now, m.load_s_on(d.endpoint), split)
        else:
            r = tower.residents[(d.model, d.endpoint)]
        return self.run(r, req, now, d.model, d.action, d.quality, d.met_floor, d.expected_wait_s)

    def finish(self, end: float) -> None:
        self._ticks_until(end)
        super().finish(end)


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
                    world = self.world_at(now, busy=False)
                p = place(world, m.tag)
                if p is None:
                    continue
                for e in p.evictions:
                    tower.evict(e.model, e.endpoint, now)
                r = tower.load(m, p.endpoint, p.vram_by_gpu, now, p.load_s, p.split)
                action = "load"
            return self.run(r, req, now, m.tag, action, q, q >= floor)
        return self.fallback(req, floor)


class OllamaDefaultPolicy(Policy):
    """The caller asks for the task's ideal model; Ollama's own scheduler does the rest."""

    name = "ollama_default"
    own_keep_alive = OLLAMA_KEEP_ALIVE_S

    def __init__(self, world: World, profile, start: dt.datetime | None = None):
        super().__init__(world, profile, start)
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
        return self.run(r, req, now, m.tag, action, q, q >= floor)

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


class ClairvoyantPolicy(Policy):
    """Knows the trace's task mix before it starts and every queue exactly (module docstring)."""

    name = "clairvoyant"

    def prepare(self, requests: list[Request]) -> None:
        counts = Counter(r.task_type for r in requests)
        w = self.world
        local = [m for m in w.models if m.kind == "local" and m.enabled]
        order: list[str] = []
        for task, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
            floor = _floor(w, task)
            for m in sorted(local, key=lambda m: (-m.quality.get(task, 0.0), m.tag)):
                if m.quality.get(task, 0.0) >= floor and m.tag not in order:
                    order.append(m.tag)
        t0 = min(0.0, requests[0].arrival_s if requests else 0.0) - 1.0  # ready before the trace starts
        tower = self.tower
        for tag in order:
            p = place(self.world_at(t0, busy=False), tag, allow_evictions=False)
            if p is None:
                continue
            tower.load(self.models[tag], p.endpoint, p.vram_by_gpu, t0 - p.load_s, p.load_s, p.split,
                       trigger="preload")
        self.warm = [k[0] for k in tower.residents]

    def handle(self, req: Request) -> Served:
        now = req.arrival_s
        tower = self.tower
        tower.advance(now)
        task = req.task_type
        floor = _floor(self.world, task)
        best = None
        for r in tower.residents.values():
            q = r.model.quality.get(task, 0.0)
            pre, _ = tower.times(r, req, self.split_factor)
            first = max(now, r.ready_at, r.free_at) + pre
            key = (q < floor, first, -q, r.model.tag, r.endpoint)
            if best is None or key < best[0]:
                best = (key, r, q)
        if best is None or best[0][0]:
            remotes = [m for m in self.world.models if m.kind == "remote" and m.enabled]
            if remotes or best is None:
                return self.fallback(req, floor)
        _, r, q = best
        action = "use_loaded" if r.ready_at <= now else "wait_for_load"
        return self.run(r, req, now, r.model.tag, action, q, q >= floor)


POLICIES: dict[str, type[Policy]] = {
    "towerops": TowerOpsPolicy,
    "ollama_default": OllamaDefaultPolicy,
    "always_best": AlwaysBestPolicy,
    "clairvoyant": ClairvoyantPolicy,
}
DEFAULT_POLICIES = ("towerops", "ollama_default", "always_best", "clairvoyant")


def keep_alive_by_endpoint(profile) -> dict[str, float]:
    return {e.name: e.keep_alive_s for h in profile.hosts for e in h.endpoints}


def num_ctx_by_endpoint(profile) -> dict[str, int]:
    return {e.name: e.num_ctx for h in profile.hosts for e in h.endpoints}


def prefill_by_model(profile) -> dict[str, float]:
    return {m.tag: m.prefill_tps for m in profile.models}


def simulate(profile, requests: Iterable[Request], policy: str, *, start: dt.datetime | None = None,
             progress: Callable[[int], None] | None = None) -> SimResult:
    """Run ``requests`` (sorted by arrival) through ``policy`` on the profile's tower.

    ``start`` (an aware datetime) is the wall-clock time of virtual time 0: with it, the
    towerops policy runs the profile's preload windows; without it, none.
    """
    if start is not None and start.tzinfo is None:
        raise ValueError("start must be an aware datetime (with a time zone)")
    requests = requests if isinstance(requests, list) else list(requests)
    world = profile.to_world(0.0)
    pol = POLICIES[policy](world, profile, start)
    pol.prepare(requests)
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
    pol.finish(end)
    pol.tower.close(end)
    usable = float(sum(pol.tower.usable.values()))
    return SimResult(policy, served, pol.tower.loads, pol.tower.spans, usable, end,
                     pol.tower.vram_samples, dict(pol.tower.max_used), pol.tower.info, start)
