"""Moving up: when the tower is idle and has room, load the best model for the task types that
were busy lately, in the background (trigger ``upgrade``).

Why: interactive requests never wait for a load their patience cannot cover, so on a tower whose
traffic is all interactive a better model that takes longer to load than that patience is never
loaded by a selection (the seed's Tower: llama3.2:3b, the best chat model, 6.8 s against 5 s of
patience). Preload windows fix that for the hours someone typed in; this fixes it for the rest.

One rule for both callers: the live preload beat (``runtime.preload``, every 60 s, after the
windows' own plan) and the replay's tick. Pure: the time is ``world.now``; ``demand`` is what the
caller counted (selections per task type within the recent-use window).

The rule
--------
* Only when nothing is waiting: no load in progress (requested, loading) and no resident with
  requests in flight or queued, and only when the windows planned no load this tick.
* The task types by demand (most requests first, then name); for each, the enabled local model of
  the highest quality meeting its floor that has no residency at all. It is an upgrade when its
  quality beats every loaded model's for that task by at least ``params.upgrade_min_gain``.
* A tick's cooling and moving up are decided together (``after_windows``): a window's model the
  plan would cool but moving up would load straight back is kept instead.
* Else (no task type has such an upgrade), for the task types by demand, the best model meeting
  the floor that is not resident, where it fits in free VRAM without evicting anything: another
  queue for a busy task (Ollama serves one request at a time per model), in memory that would
  otherwise hold nothing.
* It is placed as a selection's load would be (``placement.place``), but evicting nothing used
  within the recent-use window, nothing an open window wants, and nothing loaded within
  ``min_residency_s``. The first such placement is the plan: one upgrade per tick.
* Never a model in ``held_off``: those an admin unloaded within the recent-use window (the live
  beat reads them; the replay has no admin). Unloading a model by hand means "not now": moving up
  must not load it straight back (a selection that needs it still may).
"""
from __future__ import annotations

from dataclasses import replace
from typing import Mapping

from .placement import place
from .preload import Cooling, PreloadPlan
from .types import Placement, World


def plan_upgrade(world: World, demand: Mapping[str, int], held_off: frozenset[str] = frozenset()
                 ) -> Placement | None:
    """The background load that moves the tower up now, or None (the rule above)."""
    gain = world.params.upgrade_min_gain
    if not demand or gain >= 1.0:
        return None
    for r in world.residents:
        if r.state in ("requested", "loading") or r.in_flight or (r.busy_s or 0.0) > 0.0:
            return None
    up = {e.key for e in world.endpoints if e.up}
    loaded = [r.model for r in world.residents if r.state == "loaded" and r.endpoint in up]
    present = {r.model for r in world.residents}
    floors = {t.name: t.quality_floor for t in world.task_types}
    local = [m for m in world.models if m.kind == "local" and m.enabled]
    by_tag = {m.tag: m for m in local}
    local = [m for m in local if m.tag not in held_off]  # still counted as what is loaded (have)
    for task, n in sorted(demand.items(), key=lambda kv: (-kv[1], kv[0])):
        if n <= 0 or task not in floors:
            continue
        floor = floors[task]
        have = max((by_tag[t].quality.get(task, 0.0) for t in loaded if t in by_tag), default=0.0)
        best = sorted((m for m in local if m.quality.get(task, 0.0) >= floor),
                      key=lambda m: (-m.quality.get(task, 0.0), m.tag))
        for m in best:
            q = m.quality.get(task, 0.0)
            if q < have + gain:
                break
            if m.tag in present:
                continue
            p = place(world, m.tag, protect=world.wanted, spare_recent=True)
            if p is not None:
                return p
    for task, n in sorted(demand.items(), key=lambda kv: (-kv[1], kv[0])):
        if n <= 0 or task not in floors:
            continue
        # Another queue for a busy task: the best model meeting its floor that is not resident, in
        # VRAM free as it is (Ollama serves one request at a time per model; empty VRAM earns nothing).
        for m in sorted((m for m in local if m.quality.get(task, 0.0) >= floors[task] and m.tag not in present),
                        key=lambda m: (-m.quality.get(task, 0.0), m.tag)):
            p = place(world, m.tag, allow_evictions=False)
            if p is not None:
                return p
    return None


def after_windows(world: World, plan: PreloadPlan, demand: Mapping[str, int],
                  held_off: frozenset[str] = frozenset()) -> tuple[tuple[Cooling, ...], Placement | None]:
    """(what the tick cools, the upgrade it loads) after the windows' ``plan``: no upgrade when the
    windows load something; a model to be cooled that moving up would load back is kept instead."""
    if plan.loads:
        return plan.cool, None
    if plan.cool:
        cooled = {(c.model, c.endpoint) for c in plan.cool}
        world = replace(world, residents=tuple(r for r in world.residents if (r.model, r.endpoint) not in cooled))
    up = plan_upgrade(world, demand, held_off)
    if up is not None and any(c.model == up.model for c in plan.cool):
        return tuple(c for c in plan.cool if c.model != up.model), None
    return plan.cool, up
