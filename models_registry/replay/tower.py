"""The replay's simulated tower: residents, their VRAM per GPU, queues and keep-alive, in
virtual time (no sleeping, no HTTP).

The tower comes from a profile's ``World`` (GPUs, endpoints, models). A policy
(``replay.policies``) decides; the tower accounts for it:

* a load of model M takes ``M.load_s`` (per endpoint where learned) from the moment it is
  started; its VRAM is held from then on, and VRAM is enforced per GPU (a policy that
  over-commits a GPU raises ``SimError``, as does one that loads a model beside others beyond
  Ollama's 80 % pre-flight, ``ollama_rules.fits``: Ollama would evict behind it);
* a request holds one of its model's slots (the endpoint's ``num_parallel``, Ollama's default
  1) for its prefill and its generation, first come first served: it starts at max(arrival,
  model ready, its slot free) on the slot free soonest (``ollama_rules.take_slot``, the rule
  the live queue estimate uses too);
* prefill takes ``min(input_tokens, endpoint num_ctx) / prefill_tokens_per_s`` (Ollama
  truncates a longer prompt to the context; the profile's ``prefill_tokens_per_s``,
  default 20 × tokens/s: see ``models_registry.catalog.profile.PREFILL_PER_DECODE``), generation
  ``output_tokens / tokens_per_s``; both × ``split_throughput_factor`` on a split model;
* the **time to first token** (TTFT, the interactive p95) is start − arrival + prefill;
  the response time is the end − arrival;
* a resident is unloaded ``keep_alive`` after the end of its last request (the profile's
  endpoint ``keep_alive`` for ``towerops``, ``always_best`` and ``clairvoyant``, 5 min for
  ``ollama_default``); a negative keep_alive (``-1m``) keeps it until it is evicted;
* a fallback to a remote model has its first token after ``remote_latency_s`` and ends
  ``tokens / tokens_per_s`` later.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import heapq
import math
from collections import deque
from dataclasses import dataclass, field

from models_registry.policy import ModelView, ResidentView, World
from models_registry.policy.ollama_rules import fits, num_parallel, queue_after_ready, take_slot
from models_registry.slo import metrics

from .traces import Request

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
    slots: list = field(default_factory=list)  # when each parallel slot is next free
    used_by: dict = field(default_factory=dict)  # urgency class -> its last use
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
    learner: object = None  # replay.learning.Learner, when a hidden truth was learned


class Tower:
    """The simulated hardware: residents, their VRAM per GPU, pending expiries."""

    def __init__(self, world: World, keep_alive_by_endpoint: dict[str, float], num_ctx: dict[str, int],
                 prefill_tps: dict[str, float], num_parallel: dict[str, int] | None = None):
        self.world = world
        self.num_parallel = num_parallel or {}
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
        self.evicted_at: dict[tuple[str, str], float] = {}  # (model, endpoint) -> its latest eviction

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
        if len(vram_by_gpu) == 1:  # Ollama's pre-flight (ollama_rules.fits): beside others within 80 %
            (g, mib), = vram_by_gpu
            first = not any(r.endpoint == endpoint for r in self.residents.values())
            if not fits(mib, self.usable[g] - self.used[g], first=first):
                raise SimError(f"{model.tag} on {g}: {mib} MiB beside other models needs 80 % of the "
                               f"{self.usable[g] - self.used[g]} MiB free; Ollama would evict first")
        for g, mib in vram_by_gpu:
            self.used[g] += mib
            if self.used[g] > self.usable[g]:
                raise SimError(f"{model.tag} on {g}: {self.used[g]} MiB held > {self.usable[g]} usable")
            if self.used[g] > self.max_used[g]:
                self.max_used[g] = self.used[g]
        self._next_key += 1
        r = Resident(self._next_key, model, endpoint, tuple(vram_by_gpu), now, now + load_s,
                     self.keep_alive[endpoint], free_at=now + load_s, split=split, trigger=trigger,
                     slots=[now + load_s] * self.num_parallel.get(endpoint, 1))
        self.residents[(model.tag, endpoint)] = r
        self.info[r.key] = (model.tag, endpoint, r.ready_at)
        thrash = metrics.is_thrash_load(now, self.evicted_at.get((model.tag, endpoint)))
        self.loads.append(metrics.LoadRec(now + load_s, "load", model.tag, endpoint, load_s, thrash))
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
        if kind == "evict":
            self.evicted_at[(r.model.tag, r.endpoint)] = at
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

    def serve(self, r: Resident, now: float, prefill_s: float, gen_s: float,
              urgency: str | None = None) -> tuple[float, float, float]:
        """Queue a request on ``r``: (start, first token, end)."""
        slot, start = take_slot(r.slots, now, r.ready_at)
        first = start + prefill_s
        end = first + gen_s
        r.slots[slot] = end
        if end > r.free_at:
            r.free_at = end
        r.last_used_at = now
        if urgency is not None:
            r.used_by[urgency] = now
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
                                            r.last_used_at, 0, 0.0 if busy else None, tuple(r.used_by.items()))
            else:
                v = _view(r.model.tag, r.endpoint, r.vram_by_gpu, "loaded" if r.ready_at <= now else "loading",
                          r.ready_at, r.last_used_at, r.in_flight(now),
                          queue_after_ready(r.slots, now, r.ready_at) if busy else None, tuple(r.used_by.items()))
            out.append(v)
        return tuple(out)

    def close(self, end: float) -> None:
        for r in self.residents.values():
            self.spans.append(metrics.Span(r.key, r.load_start, None, sum(m for _, m in r.vram_by_gpu)))


_RESIDENT_FIELDS = tuple(f.name for f in dataclasses.fields(ResidentView))
_new = object.__new__


def _view(model, endpoint, vram_by_gpu, state, ready_at, last_used_at, in_flight, busy_s, used_by) -> ResidentView:
    """ResidentView(...) without the frozen dataclass's per-field object.__setattr__ (the replay
    builds one per resident per request; the object is the same)."""
    v = _new(ResidentView)
    object.__setattr__(v, "__dict__", {"model": model, "endpoint": endpoint, "vram_by_gpu": vram_by_gpu,
                                       "state": state, "ready_at": ready_at, "last_used_at": last_used_at,
                                       "in_flight": in_flight, "pinned": False, "busy_s": busy_s,
                                       "used_by": used_by})
    return v


assert _RESIDENT_FIELDS == ("model", "endpoint", "vram_by_gpu", "state", "ready_at", "last_used_at", "in_flight",
                            "pinned", "busy_s", "used_by"), "ResidentView changed: update _view"


def keep_alive_by_endpoint(profile) -> dict[str, float]:
    return {e.name: e.keep_alive_s for h in profile.hosts for e in h.endpoints}


def num_ctx_by_endpoint(profile) -> dict[str, int]:
    return {e.name: e.num_ctx for h in profile.hosts for e in h.endpoints}


def num_parallel_by_endpoint(profile) -> dict[str, int]:
    return {e.name: num_parallel(e.num_parallel) for h in profile.hosts for e in h.endpoints}


def prefill_by_model(profile) -> dict[str, float]:
    return {m.tag: m.prefill_tps for m in profile.models}
