"""The preload plan: what the open windows want warm now, and what to load, cool or skip.

One rule for both callers: the live beat (``models_registry.runtime.preload``, every 60 s)
performs the plan through VRAM reservations; the replay (``replay/sim.py``'s towerops policy)
performs it on its simulated tower. Pure: plain records in, a plan out; the time is
``world.now``. Whether a window is open at an instant needs time zones (I/O), so the caller
asks ``catalog.profile.window_open`` (the one definition) and passes the answer in.

The rule
--------
* The *warm set* is the enabled local models of the open windows: windows by name, each
  window's models by tag, each model once.
* Each model of the warm set that has no residency at all (any state, any endpoint) is placed
  by ``place_many`` (the placement code of selections: best fit, evicting only idle models
  outside the warm set, never busy or pinned ones, nor one used within the recent-use window or
  loaded within ``min_residency_s``: a window does not take the room of what serves people now),
  **largest first**: every load takes the
  tightest GPU, so small models placed first could take the only GPU a large one fits (the
  same order ``warmset.never_fits`` checks windows with). A model with no place is skipped.
* A model a window preloaded that no window wants any more is cooled (unloaded) once it is
  idle: loaded, nothing in flight, unused for ``idle_s`` (``TOWEROPS_PRELOAD_IDLE_MIN``);
  never a pinned model. On a keep-warm endpoint (keep_alive forever) it is kept instead, until
  a load needs its room: freeing VRAM nobody asked for gains nothing.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Collection, Iterable

from .placement import place_many
from .types import ModelView, Placement, World

IDLE_S = 300.0  # TOWEROPS_PRELOAD_IDLE_MIN's default (5 min): a window's model is cooled after this idle
NO_ROOM = "does not fit on any up endpoint without evicting a busy, pinned or wanted model"


@dataclass(frozen=True, slots=True)
class WindowView:
    """A preload window at the plan's time. ``is_open``: enabled and open now (the caller asks
    ``window_open``); ``models``: its model tags, in any order."""

    name: str
    models: tuple[str, ...]
    is_open: bool


@dataclass(frozen=True, slots=True)
class Skip:
    model: str
    reason: str


@dataclass(frozen=True, slots=True)
class Cooling:
    model: str
    endpoint: str


@dataclass(frozen=True, slots=True)
class PreloadPlan:
    wanted: tuple[str, ...]  # the warm set, in window order
    loads: tuple[Placement, ...]  # largest first; each placed after (and around) the ones before it
    skipped: tuple[Skip, ...]  # wanted, not resident, and no place now
    cool: tuple[Cooling, ...]  # preloaded, wanted by no window, idle long enough: unload now
    kept_warm: tuple[Cooling, ...]  # the same on keep-warm endpoints: kept until their room is needed
    cool_later: tuple[Cooling, ...]  # preloaded, wanted by no window, but loading, busy or used recently


def warm_set(windows: Iterable[WindowView], models: Iterable[ModelView]) -> tuple[str, ...]:
    """The enabled local models of the open windows: windows by name, models by tag, once each."""
    local = {m.tag for m in models if m.kind == "local" and m.enabled}
    out: dict[str, None] = {}
    for w in sorted((w for w in windows if w.is_open), key=lambda w: w.name):
        for tag in sorted(w.models):
            if tag in local:
                out[tag] = None
    return tuple(out)


def plan_preload(world: World, windows: Iterable[WindowView], *, preloaded: Collection[tuple[str, str]],
                 keep_warm: Collection[str], idle_s: float = IDLE_S) -> PreloadPlan:
    """What a preload tick does at ``world.now``.

    ``preloaded``: the (model, endpoint) of the residencies a preload window loaded (trigger
    ``preload``, any state); ``keep_warm``: the endpoints whose keep_alive is forever; ``idle_s``: how long
    an unwanted preloaded model must have been unused before it is cooled.
    """
    wanted = warm_set(windows, world.models)
    size = {m.tag: m.vram_mib for m in world.models}
    resident = {r.model for r in world.residents}
    missing = sorted((t for t in wanted if t not in resident), key=lambda t: (-size[t], t))
    placed = place_many(world, missing, protect=wanted, spare_recent=True)
    loads = tuple(p for p in placed.values() if p is not None)
    skipped = tuple(Skip(t, NO_ROOM) for t, p in placed.items() if p is None)

    evicted = {(e.model, e.endpoint) for p in loads for e in p.evictions}
    pinned = {m.tag for m in world.models if m.pinned}
    cool, kept, later = [], [], []
    for r in world.residents:
        key = (r.model, r.endpoint)
        if (r.state == "unloading" or key not in preloaded or key in evicted or r.model in wanted
                or r.model in pinned or r.pinned):
            continue
        c = Cooling(r.model, r.endpoint)
        if r.endpoint in keep_warm:
            kept.append(c)
        elif r.state != "loaded" or r.in_flight or (r.busy_s or 0.0) > 0.0 or (
                r.last_used_at is not None and r.last_used_at > world.now - idle_s):
            later.append(c)  # still loading, busy, or used recently
        else:
            cool.append(c)
    return PreloadPlan(wanted, loads, skipped, tuple(cool), tuple(kept), tuple(later))
