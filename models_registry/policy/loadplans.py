"""Load plans for select(): where a model that needs some MiB of VRAM could be loaded now, one
plan per up endpoint, and what each plan's evictions cost in score.

The placement itself (which GPU, which evictions, a split's shares) is placement.py's rule
(``Tower.plan_on_endpoint``); this module prices it for one request's urgency and caches the
plans per VRAM need, since many models share a size. Pure, like the rest of the core.
"""
from __future__ import annotations

from typing import NamedTuple

from .placement import Tower, _model
from .types import EndpointView, Eviction, ModelView
from .waits import prefill_s


class LoadPlan(NamedTuple):
    """One way to load a model on one endpoint.

    Plans compare as tuples, cheapest first: eviction cost, then fewer evictions, then the
    tightest fit, then the endpoint key. Endpoint keys are unique among one need's plans, so
    the fields after it never decide an order.
    """

    cost: float  # score points: sum over evicted E of recency(E) * (penalty + w * E's reload s)
    n_evictions: int
    left_mib: int  # MiB left over on the GPU(s) it uses
    endpoint: str
    gpus: tuple[str, ...]
    evictions: tuple[Eviction, ...]
    split: bool  # spans several GPUs of the endpoint
    vram_by_gpu: tuple[tuple[str, int], ...]  # what the new residency books, per GPU


_plan = tuple.__new__  # _plan(LoadPlan, (...)): a LoadPlan without NamedTuple's keyword-parsing __new__


class LoadPlanner:
    """The plans per VRAM need for one select() call: one Tower, one urgency's prices."""

    __slots__ = ("tower", "rooms", "penalty", "wait_weight", "by_need")

    def __init__(self, tower: Tower, penalty: float, wait_weight: float):
        self.tower = tower
        self.penalty = penalty
        self.wait_weight = wait_weight
        free = tower.free
        overhead = tower.world.params.split_overhead_mib
        # Per up endpoint, the quick checks that spare most needs placement.py: (endpoint, its GPUs
        # as (free MiB, key) ascending: the first that holds a need is its tightest fit, the most
        # free MiB on one GPU evicting nothing, the largest need it can take at all: evicting, or
        # split when allowed).
        rooms = []
        for ep in tower.up_endpoints:
            by_free = sorted([(free[g], g) for g in ep.gpus if g in free])
            most_free, most_max_free, sum_max_free = tower.room(ep)
            reach = most_max_free
            if ep.allow_split and len(by_free) > 1:
                reach = max(reach, sum_max_free - overhead)
            # At Ollama's loaded-model limit nothing loads without an eviction: no quick plan there.
            rooms.append((ep, by_free, -1 if tower.over_limit(ep) else most_free, reach))
        self.rooms: list[tuple[EndpointView, list[tuple[int, str]], int, int]] = rooms
        # need (MiB) -> plans(need); hot loops look here first and call plans() only on a miss
        self.by_need: dict[int, tuple[list[LoadPlan], LoadPlan | None]] = {}

    def plans(self, need: int) -> tuple[list[LoadPlan], LoadPlan | None]:
        """(every endpoint's plan for ``need`` MiB, the cheapest of them or None)."""
        entry = self.by_need.get(need)
        if entry is not None:
            return entry
        tower = self.tower
        plans = []
        for ep, by_free, most_free, reach in self.rooms:
            want = tower.room_needed(ep, need)  # Ollama's pre-flight: within 80 % beside other runners
            if want <= most_free:  # room without evicting anything: the tightest GPU
                for free, gpu in by_free:
                    if free >= want:
                        plans.append(_plan(LoadPlan, (0.0, 0, free - need, ep.key, (gpu,), (), False,
                                                      ((gpu, need),))))
                        break
            elif need <= reach:
                found = tower.plan_on_endpoint(ep, need)
                if found is not None:
                    vram_by_gpu, evicted, recency_sum, split, left = found
                    cost = self.penalty * recency_sum + reload_cost(tower, evicted, self.wait_weight)
                    plans.append(_plan(LoadPlan, (
                        cost, len(evicted), left, ep.key, tuple(g for g, _ in vram_by_gpu),
                        tuple(tower.eviction(r) for r in evicted), split, vram_by_gpu)))
        entry = (plans, min(plans) if plans else None)
        self.by_need[need] = entry
        return entry


def reload_cost(tower: Tower, evicted, wait_weight: float) -> float:
    """Sum over ``evicted`` of recency x its load seconds there x the rate of those who used it
    (Tower.reload_rate; ``wait_weight``, the evicting request's, when unknown): the wait an
    eviction is expected to cost whoever asks for that model next, at their exchange rate."""
    total = 0.0
    for r in evicted:
        rec = tower.recency_of(r)
        if rec > 0.0:  # evictions are few
            total += rec * tower.reload_rate(r, wait_weight) * _model(tower.world, r.model).load_s_on(r.endpoint)
    return total


def fastest_plan(m: ModelView, plans: list[LoadPlan], wait_weight: float) -> tuple[float, LoadPlan]:
    """(load seconds, plan) of the best-scoring plan when ``m``'s load time differs per endpoint:
    the least wait_weight * load s + cost, then the shorter load, then the cheaper plan."""
    best = None
    for p in plans:
        wait = m.load_s_on(p.endpoint)
        key = (wait_weight * wait + p.cost, wait, p)
        if best is None or key < best:
            best = key
    return best[1], best[2]


def best_copy(m: ModelView, quality: float, score: float, plans: list[LoadPlan], hosting: set[str],
              wait_weight: float, prompt: int, num_ctx: dict | None, split_factor: float):
    """(score, plan, wait, prefill) of the best-scoring load of a second copy of ``m`` on an
    endpoint not in ``hosting``, if it scores above ``score`` (the resident's); else None. Ties:
    the cheaper plan."""
    best = None
    for p in plans:
        if p.endpoint in hosting:
            continue
        pre = prefill_s(m, p.endpoint, prompt, num_ctx[p.endpoint], split_factor if p.split else 1.0) if prompt else 0.0
        wait = m.load_s_on(p.endpoint) + pre
        cscore = quality - wait_weight * wait - p.cost
        if cscore > score and (best is None or (-cscore, p) < (-best[0], best[1])):
            best = (cscore, p, wait, pre)
    return best
