"""Will a preload window's warm set fit the tower? Pure: the placement code decides.

Two questions, both answered by `place_many` (the code that places a real preload):

* *never fits* — on an empty tower (every endpoint up, no model loaded, only each GPU's
  reserved VRAM held back) some model of the set has no place: no amount of eviction
  will ever warm the whole set, so an editor refuses such a window;
* *fits now* — on the live tower (what is loaded, busy and pinned now) the set would be
  placed with these evictions, or some model would be skipped until room frees up.

And one rule for the warm set a demand asks for (``demand_warm_set``), shared by the replay's
clairvoyant reference and the predicted preload windows (``learning.forecast``): for the task
types by demand (most first), their enabled local models meeting the floor, best quality first
(``per_task`` of them, or all), each placed where it still fits with no eviction, largest first.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Iterable, Mapping

from .placement import place_many
from .types import Placement, World


@dataclass(frozen=True, slots=True)
class WarmSetFit:
    placements: dict[str, Placement | None]  # tag -> where it goes, None where it does not fit
    already_warm: tuple[str, ...] = ()  # resident already (the live check only)

    @property
    def misfits(self) -> tuple[str, ...]:
        return tuple(tag for tag, p in self.placements.items() if p is None)

    @property
    def fits(self) -> bool:
        return not self.misfits


def empty_tower(world: World) -> World:
    """The same hardware with nothing loaded, every endpoint up and no telemetry figure."""
    return replace(
        world,
        residents=(),
        endpoints=tuple(replace(e, up=True) for e in world.endpoints),
        gpus=tuple(replace(g, measured_free_mib=None) for g in world.gpus),
    )


def fit_warm_set(world: World, tags: Iterable[str]) -> WarmSetFit:
    """Place the set on `world` one model at a time (as a preload would), in the given order."""
    wanted = list(dict.fromkeys(tags))
    known = {m.tag for m in world.models}
    placements = place_many(world, [t for t in wanted if t in known])
    for t in wanted:
        if t not in known:
            placements[t] = None
    # place_many leaves out the models already resident on an up endpoint.
    warm = tuple(t for t in wanted if t in known and t not in placements)
    return WarmSetFit(placements={t: placements[t] for t in wanted if t in placements}, already_warm=warm)


def never_fits(world: World, tags: Iterable[str]) -> tuple[str, ...]:
    """The models of the set that have no place even on an empty tower (empty: it can fit).

    Placed largest first: placement picks the tightest GPU for each model (best fit), and
    best fit in decreasing size order packs small sets like these as well as any order
    (a small model taken first could otherwise fill the only GPU a large one fits).
    """
    size = {m.tag: m.vram_mib for m in world.models}
    ordered = sorted(dict.fromkeys(tags), key=lambda t: (-size.get(t, 0), t))
    return fit_warm_set(empty_tower(world), ordered).misfits


def demand_order(world: World, demand: Mapping[str, float],
                 per_task: Mapping[str, int] | None = None) -> list[str]:
    """The models a demand asks for, in priority order: task types by demand (most first, then by
    name; no demand: left out), each task type's enabled local models meeting its floor, best
    quality first (then by tag), at most ``per_task[task]`` of them (absent or None: all), once each.
    Raises ValueError for a task type the world does not know."""
    floors = {t.name: t.quality_floor for t in world.task_types}
    local = [m for m in world.models if m.kind == "local" and m.enabled]
    order: dict[str, None] = {}
    for task, weight in sorted(demand.items(), key=lambda kv: (-kv[1], kv[0])):
        if weight <= 0:
            continue
        if task not in floors:
            raise ValueError(f"unknown task type {task!r}")
        limit = None if per_task is None else per_task.get(task)
        taken = 0
        for m in sorted(local, key=lambda m: (-m.quality.get(task, 0.0), m.tag)):
            if limit is not None and taken >= limit:
                break
            if m.quality.get(task, 0.0) >= floors[task]:
                taken += 1
                order.setdefault(m.tag, None)
    return list(order)


def demand_warm_set(world: World, demand: Mapping[str, float],
                    per_task: Mapping[str, int] | None = None) -> dict[str, Placement]:
    """Where the warm set of ``demand`` (task type -> weight) goes on ``world``: ``demand_order``'s
    models placed with no eviction, largest first (a preload window's order: Ollama loads a model
    beside others only within 80 % of what is free, so big ones go first; the priority order
    breaks ties between equal sizes). Models that no longer fit are left out. In placing order."""
    order = demand_order(world, demand, per_task)
    size = {m.tag: m.vram_mib for m in world.models}
    rank = {tag: i for i, tag in enumerate(order)}
    placed = place_many(world, sorted(order, key=lambda t: (-size[t], rank[t])), allow_evictions=False)
    return {tag: p for tag, p in placed.items() if p is not None}
