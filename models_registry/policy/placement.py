"""Where a model goes: VRAM bookkeeping per GPU and the placement rule shared by
selection (``select``) and the preload windows (``place`` / ``place_many``).

Pure: standard library only, no clock (``World.now`` is the time).

The rule
--------
* Free VRAM of a GPU (``free_mib_by_gpu``) = total - reserved - every resident's MiB on
  it, whatever its state (requested, loading, loaded, unloading all hold memory), and the
  lower of that and the telemetry's ``measured_free_mib`` when there is one.
* A model fits a GPU when its VRAM need <= that GPU's free VRAM after evicting only
  *evictable* residents: state ``loaded``, nothing in flight, not pinned (the resident
  or the model), on an endpoint that is up. Busy or pinned models are never evicted.
* Evictions on a GPU go least recently used first (never used = oldest), and stop as
  soon as the model fits.
* On one endpoint the preferred GPU is: no eviction, then the least "recent use" evicted
  (see ``recency``), then the fewest evictions, then the tightest fit (best-fit keeps the
  big holes for big models), then the GPU key.
* A model that fits no single GPU of an endpoint may be split across several GPUs of
  that endpoint when it ``allow_split``: the GPUs with the most room first, two, then
  three, ...; it needs ``vram_mib + split_overhead_mib * (n - 1)`` spread in proportion
  to their room (evicting only when the room without evictions is not enough).
"""
from __future__ import annotations

from typing import Iterable

from .types import Eviction, GpuView, Placement, ResidentView, World

NEG_INF = float("-inf")


def free_mib_by_gpu(world: World) -> dict[str, int]:
    """Free MiB per GPU key: total - reserved - resident MiB, capped by the measured free."""
    free = {g.key: g.total_mib - g.reserved_mib for g in world.gpus}
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
                 "down_endpoints", "_evictions", "_recency", "_room")

    def __init__(self, world: World, protect: Iterable[str] = ()):
        self.world = world
        self.now = world.now
        self.window = world.params.recent_use_window_s
        free = free_mib_by_gpu(world)
        self.free = free
        eps = world.endpoints
        if len(eps) > 1:
            eps = sorted(eps, key=lambda e: e.key)
        self.up_endpoints = [e for e in eps if e.up]
        self.down_endpoints = [e for e in eps if not e.up]
        evictable: dict[str, list[tuple[ResidentView, int]]] = {}
        if world.residents:
            up_keys = {e.key for e in self.up_endpoints}
            pinned = {m.tag for m in world.models if m.pinned}
            pinned.update(protect)
            for r in world.residents:
                if (r.state == "loaded" and r.in_flight == 0 and not r.pinned
                        and r.model not in pinned and r.endpoint in up_keys):
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
        self.max_free = max_free
        self._evictions: dict[int, Eviction] = {}
        self._recency: dict[int, float] = {}
        self._room: dict[str, tuple[int, int, int]] = {}

    # -- helpers -------------------------------------------------------------------
    def eviction(self, r: ResidentView) -> Eviction:
        ev = self._evictions.get(id(r))
        if ev is None:
            ev = Eviction(model=r.model, endpoint=r.endpoint, gpus=r.gpus, vram_mib=r.vram_mib)
            self._evictions[id(r)] = ev
        return ev

    def recency_of(self, r: ResidentView) -> float:
        v = self._recency.get(id(r))
        if v is None:
            v = recency(r.last_used_at, self.now, self.window)
            self._recency[id(r)] = v
        return v

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

    def plan_on_endpoint(self, ep, need: int):
        """Best single-GPU (else split) load plan on one up endpoint.

        Returns ``(vram_by_gpu, evicted residents, recency sum, split, MiB left over)``
        or None.
        """
        most_free, most_max_free, sum_max_free = self.room(ep)
        free = self.free
        if need <= most_free:  # room without evicting: the tightest fit
            best_gpu = None
            best_left = 0
            for g in ep.gpus:
                f = free.get(g)
                if f is not None and f >= need and (best_gpu is None or f - need < best_left
                                                    or (f - need == best_left and g < best_gpu)):
                    best_gpu, best_left = g, f - need
            return ((best_gpu, need),), (), 0.0, False, best_left
        if need <= most_max_free:  # room after evicting idle models (LRU first)
            best = None
            max_free = self.max_free
            for g in ep.gpus:
                mf = max_free.get(g)
                if mf is None or mf < need:
                    continue
                chosen, have = self._evict_for(g, need, free[g], None)
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

    def _plan_split(self, ep, need: int):
        params = self.world.params
        free = self.free
        max_free = self.max_free
        gpus = [g for g in ep.gpus if g in free]
        for room, evicting in ((free, False), (max_free, True)):
            order = sorted(gpus, key=lambda g: (-room[g], g))
            for n in range(2, len(order) + 1):
                chosen = order[:n]
                total = need + params.split_overhead_mib * (n - 1)
                rooms = [max(0, room[g]) for g in chosen]
                s = sum(rooms)
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
                    have = free[g] + sum(
                        mib for r, mib in self.evictable.get(g, ()) if id(r) in gone)
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


def _best_plan(tower: Tower, model) -> Placement | None:
    best = None
    for ep in tower.up_endpoints:
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
          protect: Iterable[str] = ()) -> Placement | None:
    """Where a fresh load of ``model_tag`` would go now, or None when it fits nowhere.

    Considers only endpoints that are up. ``allow_evictions=False`` accepts only GPUs
    with room as they are. ``protect`` names models that must not be evicted (on top of
    the busy and pinned ones, which never are). Remote and disabled models give None.
    Existing residency of the same model is ignored: the caller decides whether a
    second copy is wanted. Raises KeyError for an unknown tag.
    """
    model = _model(world, model_tag)
    if model.kind != "local" or not model.enabled:
        return None
    tower = Tower(world, protect=protect)
    if not allow_evictions:
        tower.evictable = {}
        tower.max_free = dict(tower.free)
    return _best_plan(tower, model)


def place_many(world: World, tags: Iterable[str], *, allow_evictions: bool = True
               ) -> dict[str, Placement | None]:
    """Place a warm set one model at a time (for preload windows), in the given order.

    Each placement updates the bookkeeping (its VRAM becomes a resident in state
    ``requested``, its evictions disappear) before the next, so the set never
    over-commits a GPU. Models of the set that are already resident (requested, loading
    or loaded on an up endpoint) are left out of the result and never evicted; nor are
    busy or pinned ones. The result maps each remaining tag to its Placement, or None
    where it does not fit (or is remote, disabled or unknown).
    """
    wanted = list(dict.fromkeys(tags))
    up = {e.key for e in world.endpoints if e.up}
    present = {r.model for r in world.residents
               if r.endpoint in up and r.state in ("requested", "loading", "loaded")}
    protect = set(wanted)
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
                        params=world.params)
        p = place(current, tag, allow_evictions=allow_evictions, protect=protect)
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
