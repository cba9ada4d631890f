"""The replay's policies: who decides, for each request, what the simulated tower does.

Policies
--------
``towerops``
    The production decision core unchanged: for each request a ``World`` is built from the
    simulated state at that instant (residents with their state, ``ready_at``,
    ``last_used_at``, ``in_flight`` and ``busy_s`` = the exact time the requests already
    routed there need) and ``policy.select`` is called with the request's task type,
    urgency, output and input (prompt) tokens; its decision is carried out (use_loaded /
    wait_for_load / load with its evictions -- a second copy of a resident model on another
    endpoint included / fallback). With a wall clock (``start``), the profile's preload
    windows run as the live beat (``runtime.preload``) runs them: every 60 s, the plan of
    ``policy.preload`` (the same function) is carried out: each model of the open windows
    that has no residency is placed, largest first (evicting only idle models outside the
    warm set), and loaded; a model a window preloaded is unloaded once no window wants it,
    it is idle and unused for 5 min (``TOWEROPS_PRELOAD_IDLE_MIN``) — except on an endpoint
    whose keep_alive is forever (keep-warm: it stays until its VRAM is needed). The ticks
    start a week before the first request (``warmup_s``), so the trace meets the tower as a
    week of its windows left it; what happened before the first request is not counted.
``ollama_default``
    The caller asks every request of a task type for its ideal model (highest quality
    for the task among enabled local models that Ollama could load alone on an endpoint),
    sent to the first endpoint (profile order) where it could. Ollama's scheduler
    (../shared/reference/ollama.md §1, the rules of ``policy.ollama_rules``, as the Ollama
    simulator runs them): the loaded model is used at once (queueing on its one slot);
    otherwise the request waits its turn in the server's pending queue (one load at a time
    per server, FIFO); the load goes on the GPU with the most room where it takes at most
    80 % of it, else is split over the endpoint's GPUs (the first model of a server may
    take it all); when it does not fit, or the server holds its limit of loaded models
    (3 per GPU), it evicts one victim at a time, ordered by keep-alive then model name
    (not LRU), idle ones first, waiting for a busy victim to finish; new loads keep_alive
    5 min. No preloading.
``always_best``
    The best quality for the task among models resident or placeable now (``place``:
    evicting idle models, LRU), always waited for; remote only when nothing local fits.
    No preloading (the seed's "demo" approach).
``clairvoyant``
    A reference point that knows the future, kept simple. It knows, before the trace
    starts, every request's task type: its warm set is, for the task types by number of
    requests (most first), their enabled local models meeting the floor, best quality
    first, each placed (``policy.place``, no evictions; largest first) where it still fits, loaded so
    that it is ready when the first request arrives (those loads are counted). Then each
    request goes to the resident that gives it the earliest first token (it knows every
    queue exactly and the request's own prefill), ties to the better quality; it never
    loads or evicts during the trace. A request no resident serves at its floor falls
    back to the best remote, else to the best resident. It is not an optimum (greedy per
    request), but no policy that keeps the same models can start answering sooner, and
    its warm set is what the trace's task mix asks for.
"""
from __future__ import annotations

import datetime as dt
import math
from collections import Counter, deque

from models_registry.catalog.profile import wanted_at, window_open
from models_registry.policy import (
    ModelView,
    SelectionRequest,
    World,
    ollama_rules,
    place,
    select,
)
from models_registry.policy.learning import learned_world
from models_registry.policy.ollama_rules import take_slot
from models_registry.policy.preload import IDLE_S as PRELOAD_IDLE_S
from models_registry.policy.preload import WindowView, plan_preload, warm_set
from models_registry.policy.upgrade import after_windows, plan_upgrade
from models_registry.policy.warmset import demand_warm_set

from .tower import (
    INF,
    Resident,
    Served,
    SimError,
    Tower,
    keep_alive_by_endpoint,
    num_ctx_by_endpoint,
    num_parallel_by_endpoint,
    prefill_by_model,
)
from .traces import Request

PRELOAD_TICK_S = 60.0  # CELERY_BEAT_SCHEDULE["preload-windows"]
WARMUP_S = 7 * 86400.0  # preload ticks run this long (a week of windows) before the first request


def _zone(name: str):
    import zoneinfo

    return zoneinfo.ZoneInfo(name)


def _floor(world: World, task: str) -> float:
    for t in world.task_types:
        if t.name == task:
            return t.quality_floor
    raise ValueError(f"unknown task type {task!r}")


def _remote_gen_s(m: ModelView, tokens: int) -> float:
    return tokens / m.tokens_per_s if m.tokens_per_s > 0 else 0.0


class Policy:
    name = ""
    own_keep_alive: float | None = None  # overrides the profile's endpoint keep_alive

    def __init__(self, world: World, profile, start: dt.datetime | None = None, warmup_s: float = WARMUP_S):
        self.world = world
        self.profile = profile
        self.start = start
        self.warmup_s = warmup_s  # how long preload ticks run before the first request (towerops)
        keep = keep_alive_by_endpoint(profile)
        if self.own_keep_alive is not None:
            keep = dict.fromkeys(keep, self.own_keep_alive)
        self.tower = Tower(world, keep, num_ctx_by_endpoint(profile), prefill_by_model(profile),
                           num_parallel_by_endpoint(profile))
        self.models = {m.tag: m for m in world.models}
        self.split_factor = world.params.split_throughput_factor

    def prepare(self, requests: list[Request]) -> None:
        """Called once with the whole trace before the first request (only the clairvoyant looks)."""

    def world_at(self, now: float, busy: bool = True) -> World:
        w = self.world
        return World(now, w.gpus, w.endpoints, self.tower.views(now, busy), w.models, w.task_types,
                     w.urgencies, w.params, self.wanted_at(now))

    def wanted_at(self, now: float) -> tuple[str, ...]:
        """World.wanted: the models the open preload windows want (none without a clock)."""
        return ()

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
        start, first, end = self.tower.serve(r, now, pre, gen, req.urgency)
        return Served(req, model, action, quality, met, start, first, end, expected_wait_s, r.key)

    def finish(self, end: float) -> None:
        """After the last request (the clock runs on to ``end``)."""
        self.tower.advance(end)


class TowerOpsPolicy(Policy):
    """policy.select, unchanged, on a World built from the simulated state; preload windows."""

    name = "towerops"

    def __init__(self, world: World, profile, start: dt.datetime | None = None, warmup_s: float = WARMUP_S):
        super().__init__(world, profile, start, warmup_s)
        # (name, days, start, end, zone, models) of the enabled windows; window_open is the live definition.
        self.windows = [(w.name, tuple(w.day_numbers), w.start, w.end, w.timezone, tuple(w.models))
                        for w in profile.preload_windows if w.enabled]
        self._window_key = tuple(self.windows)
        self._local = frozenset(m.tag for m in world.models if m.kind == "local" and m.enabled)
        self.keep_warm = {e for e, s in self.tower.keep_alive.items() if s == INF}
        self.next_tick = INF
        self.first = 0.0
        self._last_wanted: list[str] | None = None
        self._last_residents: set = set()
        self._cooling = False
        self.preload_log: list[tuple[float, str, str]] = []  # (t, "load"/"skip"/"cool"/"upgrade", tag)
        self._recent: deque = deque()  # (arrival, task type) of the recent-use window: moving up's demand
        self.learner = None  # replay.learning.Learner: a hidden truth to learn (simulate's ``truth``)

    def prepare(self, requests: list[Request]) -> None:
        self.first = requests[0].arrival_s if requests else 0.0
        if self.start is not None and self.windows:
            self.next_tick = self.first - self.warmup_s
        elif self.world.params.upgrade_min_gain < 1.0:
            self.next_tick = self.first  # no windows: the beat only moves up, from the first request on

    def world_at(self, now: float, busy: bool = True) -> World:
        world = super().world_at(now, busy)
        learner = self.learner
        if learner is not None and learner.truth.mode != "shadow":
            # Active mode: the beat (windows, moving up) sees the observed quality too, as live.
            world = learned_world(world, learner.estimates)
        return world

    def wanted_at(self, now: float) -> tuple[str, ...]:
        if self.start is None or not self.windows:
            return ()
        return wanted_at(self._window_key, self._local, self.start + dt.timedelta(seconds=now))

    def windows_at(self, t: float) -> list[WindowView]:
        """The windows at the wall-clock time of virtual ``t`` (runtime.preload.windows_at)."""
        at = self.start + dt.timedelta(seconds=t)
        return [WindowView(name, tags, window_open(days, start, end, zone, at))
                for name, days, start, end, zone, tags in self.windows]

    def tick(self, t: float) -> None:
        """The preload beat (runtime.preload.apply_windows) at ``t``: policy.preload's plan, carried
        out; when it loads nothing, policy.upgrade's plan (moving up)."""
        tower = self.tower
        tower.advance(t)
        if self.start is None or not self.windows:
            self.move_up(t)
            return
        windows = self.windows_at(t)
        wanted = warm_set(windows, self.world.models)
        if (t < self.first and wanted == self._last_wanted and not self._cooling
                and self._last_residents == tower.residents.keys()):
            return  # before the trace, with the same warm set and residents, a tick changes nothing
        self._last_wanted = wanted
        plan = plan_preload(self.world_at(t), windows, preloaded=self._preloaded(), keep_warm=self.keep_warm,
                            idle_s=PRELOAD_IDLE_S)
        for p in plan.loads:
            for e in p.evictions:
                tower.evict(e.model, e.endpoint, t)
            tower.load(self.models[p.model], p.endpoint, p.vram_by_gpu, t, p.load_s, p.split, trigger="preload")
            self.preload_log.append((t, "load", p.model))
        self.preload_log.extend((t, "skip", s.model) for s in plan.skipped)
        cool, up = plan.cool, None
        if not plan.loads and self.world.params.upgrade_min_gain < 1.0:
            cool, up = after_windows(self.world_at(t), plan, self.demand(t))
        for c in cool:
            tower._remove(tower.residents[(c.model, c.endpoint)], t, "unload")
            self.preload_log.append((t, "cool", c.model))
        self._cooling = bool(plan.cool_later)  # to be cooled at a later tick
        if up is not None:
            self._upgrade(up, t)
        self._last_residents = set(tower.residents)

    def demand(self, t: float) -> Counter:
        """Requests per task type within the recent-use window before ``t`` (runtime.preload.demand)."""
        recent, since = self._recent, t - self.world.params.recent_use_window_s
        while recent and recent[0][0] < since:
            recent.popleft()
        return Counter(task for _, task in recent)

    def move_up(self, t: float) -> None:
        """policy.upgrade's plan at ``t`` (no windows to run), carried out."""
        if self.world.params.upgrade_min_gain >= 1.0:
            return
        demand = self.demand(t)
        if not demand:
            return
        p = plan_upgrade(self.world_at(t), demand)
        if p is not None:
            self._upgrade(p, t)

    def _upgrade(self, p, t: float) -> None:
        for e in p.evictions:
            self.tower.evict(e.model, e.endpoint, t)
        self.tower.load(self.models[p.model], p.endpoint, p.vram_by_gpu, t, p.load_s, p.split, trigger="upgrade")
        self.preload_log.append((t, "upgrade", p.model))

    def _preloaded(self) -> set[tuple[str, str]]:
        return {k for k, r in self.tower.residents.items() if r.trigger == "preload"}

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
        for _name, _days, start, end, zone, _tags in self.windows:
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
        self._recent.append((now, req.task_type))
        tower = self.tower
        tower.advance(now)
        world = self.world_at(now)
        sreq = SelectionRequest(req.task_type, req.urgency, expected_output_tokens=req.output_tokens,
                                input_tokens=req.input_tokens)
        learner = self.learner
        d = select(world, sreq) if learner is None else learner.decide(world, sreq, now)
        served = self._carry_out(d, req, now)
        if learner is not None:
            learner.answered(req, served.model, served.action, served.end)
        return served

    def _carry_out(self, d, req: Request, now: float) -> Served:
        tower = self.tower
        if d.action is None:
            return Served(req, None, None, None, False, now, now, now, None, None)
        m = self.models[d.model]
        if d.action == "fallback":
            return self.remote(req, m, _floor(self.world, req.task_type), d.expected_wait_s)
        if d.action == "load":
            for e in d.evictions:
                tower.evict(e.model, e.endpoint, now)
            r = tower.load(m, d.endpoint, d.vram_by_gpu, now, m.load_s_on(d.endpoint), len(d.gpus) > 1)
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
    """The caller asks for the task's ideal model; Ollama's own scheduler (policy.ollama_rules) does the rest."""

    name = "ollama_default"
    own_keep_alive = ollama_rules.DEFAULT_KEEP_ALIVE_S

    def __init__(self, world: World, profile, start: dt.datetime | None = None, warmup_s: float = WARMUP_S):
        super().__init__(world, profile, start, warmup_s)
        self.usable = {g.key: g.total_mib - g.reserved_mib for g in world.gpus}
        self.loader_free_at = {e.key: 0.0 for e in world.endpoints}
        self._ideal: dict[str, tuple] = {}

    def ideal(self, task: str):
        """(model, endpoint) for a task: the best local model that Ollama could load alone on
        an endpoint, sent to the first such endpoint."""
        hit = self._ideal.get(task)
        if hit is None:
            best = None
            for m in self.world.models:
                if m.kind != "local" or not m.enabled:
                    continue
                for e in self.world.endpoints:
                    if ollama_rules.place_runner(m.vram_mib, {g: self.usable[g] for g in e.gpus}, first=True):
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
            alloc, t = self._make_room(m, ep, t)
            load_s = m.load_s_on(ep.key)
            r = tower.load(m, ep.key, tuple(alloc.items()), t, load_s, split=len(alloc) > 1)
            self.loader_free_at[ep.key] = t + load_s
            action = "load"
        return self.run(r, req, now, m.tag, action, q, q >= floor)

    def _make_room(self, m: ModelView, ep, t: float) -> tuple[dict[str, int], float]:
        """Ollama's processPending for a model that is not loaded: evict one runner at a time
        (waiting for a busy one to finish) until the loaded-model limit and the fit allow the
        load. Returns its VRAM per GPU and the time it can start."""
        tower = self.tower
        limit = ollama_rules.max_loaded_models(None, len(ep.gpus))
        while True:
            tower.advance(t)
            on_ep = [x for x in tower.residents.values() if x.endpoint == ep.key]
            if len(on_ep) < limit:
                room = {g: max(0, self.usable[g] - tower.used[g]) for g in ep.gpus}
                alloc = ollama_rules.place_runner(m.vram_mib, room, first=not on_ep)
                if alloc is not None:
                    return alloc, t
            if not on_ep:
                raise SimError(f"{m.tag} cannot fit an empty {ep.key}")

            def idle(x: Resident, t=t) -> bool:
                return x.ready_at <= t and x.in_flight(t) == 0

            victim = ollama_rules.runner_to_unload(on_ep, keep_alive_s=lambda x: x.keep_alive_s,
                                                   name=lambda x: x.model.tag, idle=idle)
            if not idle(victim):  # wait for it to go idle, then evict it
                t = max(victim.free_at, victim.ready_at)
                tower.advance(t)
            if (victim.model.tag, ep.key) in tower.residents:
                tower.evict(victim.model.tag, ep.key, t)


class ClairvoyantPolicy(Policy):
    """Knows the trace's task mix before it starts and every queue exactly (module docstring)."""

    name = "clairvoyant"

    def prepare(self, requests: list[Request]) -> None:
        counts = Counter(r.task_type for r in requests)
        t0 = min(0.0, requests[0].arrival_s if requests else 0.0) - 1.0  # ready before the trace starts
        tower = self.tower
        # The warm set rule lives once (policy.warmset.demand_warm_set, the predicted windows' too):
        # the trace's task mix, every model meeting a floor, placed largest first with no eviction.
        for tag, p in demand_warm_set(self.world_at(t0, busy=False), counts).items():
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
            first = take_slot(r.slots, now, r.ready_at)[1] + pre
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
