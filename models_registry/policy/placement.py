"""Where a model goes: VRAM bookkeeping per GPU and the placement rule shared by
selection (``select``) and the preload windows (``place`` / ``place_many``).

Pure: standard library only, no clock (``World.now`` is the time).

The rule
--------
* Free VRAM of a GPU (``free_mib_by_gpu``) = total - reserved - every resident's MiB on
  it, whatever its state (requested, loading, loaded, unloading all hold memory), and the
  lower of that and the telemetry's ``measured_free_mib`` when there is one.
* A model fits a GPU when Ollama would load it there without evicting on its own: its VRAM need
  <= the GPU's free VRAM for an endpoint's first runner, else <= 80 % of it (Ollama's pre-flight,
  ``ollama_rules.fits``: beside other runners a model must fit within 80 % of what is free) --
  after evicting only
  *evictable* residents: state ``loaded``, nothing in flight, not pinned (the resident
  or the model), on an endpoint that is up. Busy or pinned models are never evicted.
* Never evicted either, against churn: a model loaded less than ``min_residency_s`` ago, and,
  for a preload window's loads (``spare_recent``), a model used within ``recent_use_window_s``.
* Evictions on a GPU go least recently used first (never used = oldest), and stop as
  soon as the model fits.
* What an eviction costs (``recency``, ``reload_rate``): a model used just now counts 1, falling
  to 0 over the recent-use window, and a model an open preload window wants (``World.wanted``)
  counts 1 all through its window; its reload is priced at the wait weight of the urgency
  classes that used it within the window (the highest), not the evicting request's — for a
  window's model, at least the highest weight of the non-critical classes (people it is warm for).
* On one endpoint the preferred GPU is: no eviction, then the least "recent use" evicted
  (see ``recency``), then the fewest evictions, then the tightest fit (best-fit keeps the
  big holes for big models), then the GPU key.
* A model that fits no single GPU of an endpoint may be split across several GPUs of
  that endpoint when it ``allow_split``: the GPUs with the most room first, two, then
  three, ...; it needs ``vram_mib + split_overhead_mib * (n - 1)`` spread in proportion
  to their room (evicting only when the room without evictions is not enough).
"""
from __future__ import annotations

from operator import attrgetter
from typing import Iterable

from .ollama_rules import room_for
from .types import Eviction, GpuView, Placement, ResidentView, World

NEG_INF = float("-inf")
_KEY = attrgetter("key")
_new = object.__new__
_set = object.__setattr__


def free_mib_by_gpu(world: World) -> dict[str, int]:
    """Free MiB per GPU key: total - reserved - resident MiB, capped by the measured free."""
    free = {}
    for g in world.gpus:
        free[g.key] = g.total_mib - g.reserved_mib
    for r in world.residents:
        for gpu, mib in r.vram_by_gpu:
            if gpu in free:
                free[gpu] -= mib
    for g in world.gpus:
        measured = g.measured_free_mib
        if measured is not None and measured < free[g.key]:
            free[g.key] = measured
    return free


def recency(last_used_at: float | None, now: float, window_s: float) -> float:
    """1.0 for a model used just now, falling linearly to 0.0 at ``window_s`` ago (or never)."""
    if last_used_at is None or window_s <= 0:
        return 0.0
    r = 1.0 - (now - last_used_at) / window_s
    if r <= 0.0:
        return 0.0
    return 1.0 if r > 1.0 else r


def _lru_key(item: tuple[ResidentView, int]) -> tuple:
    r = item[0]
    t = r.last_used_at
    return (NEG_INF if t is None else t, r.model, r.endpoint)


class Tower:
    """Per-call bookkeeping derived once from a World (internal; shared with select)."""

    __slots__ = ("world", "now", "window", "free", "max_free", "evictable", "up_endpoints",
                 "down_endpoints", "_evictions", "_recency", "_room", "runners", "wanted", "_rates")

    def __init__(self, world: World, protect: Iterable[str] = (), spare_recent: bool = False,
                 spare_new: bool = True):
        self.world = world
        self.now = world.now
        self.window = world.params.recent_use_window_s
        free = free_mib_by_gpu(world)
        self.free = free
        eps = world.endpoints
        if len(eps) > 1:
            eps = sorted(eps, key=_KEY)
        up: list = []
        down: list = []
        for e in eps:
            (up if e.up else down).append(e)
        self.up_endpoints = up
        self.down_endpoints = down
        evictable: dict[str, list[tuple[ResidentView, int]]] = {}
        # Runners per endpoint as Ollama counts them (an unloading model is on its way out: the
        # load that evicts it unloads it first).
        runners: dict[str, int] = {}
        if world.residents:
            up_keys = {e.key for e in up}
            pinned = None  # the pinned models, once a resident could be evicted at all
            # loaded before this: evictable (an admin's explicit load may evict anything idle)
            settled = self.now - world.params.min_residency_s if spare_new else float("inf")
            recent = self.now - self.window if spare_recent else None
            for r in world.residents:
                if r.state != "unloading":
                    runners[r.endpoint] = runners.get(r.endpoint, 0) + 1
                if r.state == "loaded" and r.in_flight == 0 and not r.pinned and r.endpoint in up_keys:
                    if pinned is None:
                        pinned = {m.tag for m in world.models if m.pinned}
                        pinned.update(protect)
                    if r.model in pinned:
                        continue
                    if r.ready_at is not None and r.ready_at > settled:
                        continue  # loaded moments ago: not evicted (min_residency_s)
                    if recent is not None and r.last_used_at is not None and r.last_used_at > recent:
                        continue
                    for gpu, mib in r.vram_by_gpu:
                        if gpu in free:
                            lst = evictable.get(gpu)
                            if lst is None:
                                evictable[gpu] = [(r, mib)]
                            else:
                                lst.append((r, mib))
        max_free = dict(free)
        for gpu, items in evictable.items():
            if len(items) > 1:
                items.sort(key=_lru_key)
            for _, mib in items:
                max_free[gpu] += mib
        self.evictable = evictable
        self.runners = runners
        self.max_free = max_free
        self._evictions: dict[int, Eviction] = {}
        self._recency: dict[int, float] = {}
        self._room: dict[str, tuple[int, int, int]] = {}
        self.wanted = world.wanted
        self._rates: dict[str, float] | None = None

    # -- helpers -------------------------------------------------------------------
    def eviction(self, r: ResidentView) -> Eviction:
        ev = self._evictions.get(id(r))
        if ev is None:
            # Eviction(model=..., ...) stored straight into its __dict__: the same object without
            # the frozen dataclass's object.__setattr__ per field (selection builds these per call).
            ev = _new(Eviction)
            _set(ev, "__dict__", {"model": r.model, "endpoint": r.endpoint, "gpus": r.gpus,
                                  "vram_mib": r.vram_mib})
            self._evictions[id(r)] = ev
        return ev

    def recency_of(self, r: ResidentView) -> float:
        v = self._recency.get(id(r))
        if v is None:
            v = 1.0 if r.model in self.wanted else recency(r.last_used_at, self.now, self.window)
            self._recency[id(r)] = v
        return v

    def reload_rate(self, r: ResidentView, asking: float) -> float:
        """The wait weight an eviction of ``r`` prices its reload at: the highest of the urgency
        classes that used it within the recent-use window (``asking``, the evicting request's,
        when none is known); for a model a window wants, at least the highest non-critical one."""
        rates = self._rates
        if rates is None:
            rates = self._rates = {u.name: u.wait_weight for u in self.world.urgencies}
        rate = None
        since = self.now - self.window
        for name, at in r.used_by:
            if at > since:
                w = rates.get(name, asking)
                if rate is None or w > rate:
                    rate = w
        if r.model in self.wanted:
            floor = max((u.wait_weight for u in self.world.urgencies if not u.use_loaded_if_acceptable),
                        default=asking)
            if rate is None or floor > rate:
                rate = floor
        return asking if rate is None else rate

    def largest_free_mib(self) -> int:
        """Room on the roomiest GPU of an up endpoint, after every allowed eviction."""
        best = 0
        for ep in self.up_endpoints:
            v = self.room(ep)[1]
            if v > best:
                best = v
        return best

    def room(self, ep) -> tuple[int, int, int]:
        """(most free MiB on one GPU, most after evictions, sum after evictions) of ``ep``."""
        r = self._room.get(ep.key)
        if r is None:
            free, max_free = self.free, self.max_free
            most = most_max = -1
            total = 0
            for g in ep.gpus:
                f = free.get(g)
                if f is None:
                    continue
                mf = max_free[g]
                if f > most:
                    most = f
                if mf > most_max:
                    most_max = mf
                if mf > 0:
                    total += mf
            r = (most, most_max, total)
            self._room[ep.key] = r
        return r

    def _evict_for(self, gpu: str, need: int, have: int, gone: set[int] | None):
        """Residents to evict (LRU first) so ``need`` fits on ``gpu`` given ``have`` free.

        Returns ``(residents, free MiB after)`` or None."""
        chosen = []
        for r, mib in self.evictable.get(gpu, ()):
            if gone is not None and id(r) in gone:
                continue
            chosen.append(r)
            have += mib
            if have >= need:
                return chosen, have
        return None

    def over_limit(self, ep) -> int:
        """How many runners a load on ``ep`` must evict to stay within Ollama's loaded-model
        limit (``EndpointView.max_loaded``): 0 below it. Ollama would otherwise evict one itself,
        by its own order (ollama_rules.runner_to_unload), behind TowerOps' back."""
        if not ep.max_loaded:
            return 0
        excess = self.runners.get(ep.key, 0) - ep.max_loaded + 1
        return excess if excess > 0 else 0

    def room_needed(self, ep, need: int) -> int:
        """The free MiB a GPU of ``ep`` must have for Ollama to load a model needing ``need`` there
        as it is: all of it for the server's first runner, else need / 80 % (``ollama_rules.fits``).
        (A load that evicts every runner there could have the lot; counted as beside them.)"""
        return room_for(need, first=not self.runners.get(ep.key))

    def plan_on_endpoint(self, ep, need: int):
        """Best single-GPU (else split) load plan on one up endpoint.

        Returns ``(vram_by_gpu, evicted residents, recency sum, split, MiB left over)``
        or None.
        """
        excess = self.over_limit(ep)
        if excess:
            return self._plan_at_limit(ep, need, excess)
        most_free, most_max_free, sum_max_free = self.room(ep)
        free = self.free
        want = self.room_needed(ep, need)
        if want <= most_free:  # room without evicting: the tightest fit
            best_gpu = None
            best_left = 0
            for g in ep.gpus:
                f = free.get(g)
                if f is not None and f >= want and (best_gpu is None or f - need < best_left
                                                    or (f - need == best_left and g < best_gpu)):
                    best_gpu, best_left = g, f - need
            return ((best_gpu, need),), (), 0.0, False, best_left
        if want <= most_max_free:  # room after evicting idle models (LRU first)
            best = None
            max_free = self.max_free
            for g in ep.gpus:
                mf = max_free.get(g)
                if mf is None or mf < want:
                    continue
                chosen, have = self._evict_for(g, want, free[g], None)
                rec = 0.0
                for r in chosen:
                    rec += self.recency_of(r)
                key = (rec, len(chosen), have - need, g)
                if best is None or key < best[0]:
                    best = (key, g, chosen, rec)
            return ((best[1], need),), tuple(best[2]), best[3], False, best[0][2]
        if (ep.allow_split and len(ep.gpus) > 1
                and need + self.world.params.split_overhead_mib <= sum_max_free):
            return self._plan_split(ep, need)
        return None

    def _plan_at_limit(self, ep, need: int, excess: int):
        """A single-GPU plan on an endpoint at its loaded-model limit: the ``excess`` least recently
        used idle runners there go first, wherever they are, then (LRU) what the chosen GPU still
        needs. None when too few runners may be evicted (busy or pinned), or nothing fits. A model
        that only fits split is not placed at the limit (rare; it waits for a runner to go)."""
        seen: set[int] = set()
        runners = []
        for g in ep.gpus:
            for r, _ in self.evictable.get(g, ()):
                if id(r) not in seen:
                    seen.add(id(r))
                    runners.append((r, 0))
        if len(runners) < excess:
            return None
        runners.sort(key=_lru_key)
        forced = [r for r, _ in runners[:excess]]
        gone = {id(r) for r in forced}
        best = None
        for g in ep.gpus:
            have = self.free.get(g)
            if have is None:
                continue
            for r in forced:
                for gpu, mib in r.vram_by_gpu:
                    if gpu == g:
                        have += mib
            chosen = list(forced)
            want = self.room_needed(ep, need)
            if have < want:
                more = self._evict_for(g, want, have, gone)
                if more is None:
                    continue
                extra, have = more
                chosen += extra
            rec = 0.0
            for r in chosen:
                rec += self.recency_of(r)
            key = (rec, len(chosen), have - need, g)
            if best is None or key < best[0]:
                best = (key, g, chosen, rec)
        if best is None:
            return None
        return ((best[1], need),), tuple(best[2]), best[3], False, best[0][2]

    def _plan_split(self, ep, need: int):
        overhead = self.world.params.split_overhead_mib
        free = self.free
        max_free = self.max_free
        gpus = [g for g in ep.gpus if g in free]
        least_total = need + min(overhead, overhead * (len(gpus) - 1))  # of any split's totals below
        for room, evicting in ((free, False), (max_free, True)):
            roomy = 0
            for g in gpus:
                if room[g] > 0:
                    roomy += room[g]
            if roomy < least_total:  # no set of these GPUs holds it: spare the search
                continue
            order = [g for _, g in sorted([(-room[g], g) for g in gpus])]  # most room first, then key
            for n in range(2, len(order) + 1):
                chosen = order[:n]
                total = need + overhead * (n - 1)
                rooms = []
                s = 0
                for g in chosen:
                    mib = room[g]
                    if mib < 0:
                        mib = 0
                    rooms.append(mib)
                    s += mib
                if s < total or s <= 0:
                    continue
                shares = [total * r // s for r in rooms]
                rest = total - sum(shares)
                for i in range(len(shares)):  # hand out the rounding remainder
                    if rest <= 0:
                        break
                    extra = min(rest, rooms[i] - shares[i])
                    shares[i] += extra
                    rest -= extra
                if not evicting:
                    return tuple(zip(chosen, shares)), (), 0.0, True, s - total
                gone: set[int] = set()
                evicted: list[ResidentView] = []
                ok = True
                for g, share in zip(chosen, shares):
                    have = free[g]
                    if gone:  # what this split already evicts on g counts as room
                        for r, mib in self.evictable.get(g, ()):
                            if id(r) in gone:
                                have += mib
                    if have >= share:
                        continue
                    more = self._evict_for(g, share, have, gone)
                    if more is None:
                        ok = False
                        break
                    for r in more[0]:
                        gone.add(id(r))
                        evicted.append(r)
                if ok:
                    rec = sum(self.recency_of(r) for r in evicted)
                    return tuple(zip(chosen, shares)), tuple(evicted), rec, True, s - total
        return None


def _best_plan(tower: Tower, model, exclude: frozenset[str] | set[str] = frozenset()) -> Placement | None:
    best = None
    for ep in tower.up_endpoints:
        if ep.key in exclude:
            continue
        plan = tower.plan_on_endpoint(ep, model.vram_mib)
        if plan is None:
            continue
        vram_by_gpu, evicted, rec, split, left = plan
        load_s = model.load_s_on(ep.key)
        key = (len(evicted) > 0, rec, split, load_s, len(evicted), left, ep.key)
        if best is None or key < best[0]:
            best = (key, ep, vram_by_gpu, evicted, load_s, split)
    if best is None:
        return None
    _, ep, vram_by_gpu, evicted, load_s, split = best
    return Placement(
        model=model.tag,
        endpoint=ep.key,
        vram_by_gpu=vram_by_gpu,
        evictions=tuple(tower.eviction(r) for r in evicted),
        load_s=load_s,
        split=split,
    )


def _model(world: World, tag: str):
    for m in world.models:
        if m.tag == tag:
            return m
    raise KeyError(f"unknown model {tag!r}")


def place(world: World, model_tag: str, *, allow_evictions: bool = True,
          protect: Iterable[str] = (), spare_recent: bool = False, spare_new: bool = True) -> Placement | None:
    """Where a fresh load of ``model_tag`` would go now, or None when it fits nowhere.

    Considers only endpoints that are up, and not those where the model already has a
    resident in any state (one runner per model and server; an unloading one is still
    there). ``allow_evictions=False`` accepts only GPUs with room as they are. ``protect``
    names models that must not be evicted (on top of the busy and pinned ones, which never
    are); ``spare_recent`` spares models used within the recent-use window too (a preload
    window's loads); ``spare_new=False`` lets it evict a model loaded within ``min_residency_s``
    (an admin's explicit load). Remote and disabled models give None. Residency of the same model elsewhere is
    ignored: the caller decides whether a second copy is wanted. Raises KeyError for an
    unknown tag.
    """
    model = _model(world, model_tag)
    if model.kind != "local" or not model.enabled:
        return None
    tower = Tower(world, protect=protect, spare_recent=spare_recent, spare_new=spare_new)
    if not allow_evictions:
        tower.evictable = {}
        tower.max_free = dict(tower.free)
    return _best_plan(tower, model, {r.endpoint for r in world.residents if r.model == model_tag})


def place_many(world: World, tags: Iterable[str], *, allow_evictions: bool = True,
               protect: Iterable[str] = (), spare_recent: bool = False) -> dict[str, Placement | None]:
    """Place a warm set one model at a time (for preload windows), in the given order.

    Each placement updates the bookkeeping (its VRAM becomes a resident in state
    ``requested``, its evictions disappear) before the next, so the set never
    over-commits a GPU. Models of the set that are already resident (requested, loading
    or loaded on an up endpoint) are left out of the result and never evicted; nor are
    busy or pinned ones, nor those named in ``protect``. The result maps each remaining tag
    to its Placement, or None where it does not fit (or is remote, disabled or unknown).
    """
    wanted = list(dict.fromkeys(tags))
    up = {e.key for e in world.endpoints if e.up}
    present = {r.model for r in world.residents
               if r.endpoint in up and r.state in ("requested", "loading", "loaded")}
    protect = set(wanted).union(protect)
    residents = list(world.residents)
    # A telemetry figure is a snapshot: what we place or evict here moves it too.
    measured = {g.key: g.measured_free_mib for g in world.gpus if g.measured_free_mib is not None}
    out: dict[str, Placement | None] = {}
    models = {m.tag: m for m in world.models}
    for tag in wanted:
        if tag in present:
            continue
        model = models.get(tag)
        if model is None or model.kind != "local" or not model.enabled:
            out[tag] = None
            continue
        gpus = world.gpus
        if measured:
            gpus = tuple(GpuView(g.key, g.name, g.total_mib, g.reserved_mib, measured[g.key])
                         if g.key in measured else g for g in world.gpus)
        current = World(now=world.now, gpus=gpus, endpoints=world.endpoints,
                        residents=tuple(residents), models=world.models,
                        task_types=world.task_types, urgencies=world.urgencies,
                        params=world.params, wanted=world.wanted)
        p = place(current, tag, allow_evictions=allow_evictions, protect=protect, spare_recent=spare_recent)
        out[tag] = p
        if p is None:
            continue
        for ev in p.evictions:
            for i, r in enumerate(residents):
                if r.model == ev.model and r.endpoint == ev.endpoint and r.gpus == ev.gpus \
                        and r.state == "loaded":
                    del residents[i]
                    for g, mib in r.vram_by_gpu:
                        if g in measured:
                            measured[g] += mib
                    break
        for g, mib in p.vram_by_gpu:
            if g in measured:
                measured[g] -= mib
        residents.append(ResidentView(model=tag, endpoint=p.endpoint, vram_by_gpu=p.vram_by_gpu,
                                      state="requested", ready_at=world.now + p.load_s))
    return out
