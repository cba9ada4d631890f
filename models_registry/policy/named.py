"""select_named(world, request, tag) -> Decision: a model the caller named, never substituted.

The gateway serves a request for a real model name as asked. Where it goes is decided by the
same rule as any selection (module docstring of select.py), over a World that holds only that
model and in which it meets the floor: use it where it is loaded with the shortest queue, wait
for its load in progress, load it where it fits (evicting idle models least recently used
first), or load a copy when its queue is longer than a load. Its quality is then judged against
the task's real floor, so the SLO's "quality met" stays honest. Pure, like select().
"""
from __future__ import annotations

from dataclasses import replace

from .select import PolicyInputError, select
from .types import Decision, SelectionRequest, World


def select_named(world: World, request: SelectionRequest, tag: str) -> Decision:
    model = next((m for m in world.models if m.tag == tag), None)
    if model is None or model.kind != "local" or not model.enabled:
        allowed = sorted(m.tag for m in world.models if m.kind == "local" and m.enabled)
        raise PolicyInputError("model", tag, allowed)
    task = next((t for t in world.task_types if t.name == request.task_type), None)
    if task is None:
        raise PolicyInputError("task_type", request.task_type, sorted(t.name for t in world.task_types))
    floor = max(task.quality_floor, request.min_quality or 0.0)
    quality = model.quality.get(task.name)
    # The other models stay in the world, disabled: what a load evicts is priced by its own load
    # time, and a pinned model stays pinned. Only the named model's candidate is listed.
    only = replace(
        world,
        models=tuple(x if x is model else replace(x, enabled=False) for x in world.models),
        task_types=tuple(replace(t, quality_floor=0.0) if t is task else t for t in world.task_types),
    )
    d = select(only, replace(request, min_quality=None))
    d = replace(d, candidates=tuple(c for c in d.candidates if c.model == tag))
    if d.model is None:
        why = d.candidates[0].rejected_because if d.candidates else "nothing can serve it"
        return replace(d, reason=f"{tag} was asked for by name and cannot be served now: {why}")
    met = quality is not None and quality >= floor
    judged = (f"quality {quality:.2f} {'meets' if met else 'is below'} the {task.name} floor {floor:.2f}"
              if quality is not None else f"no {task.name} quality score")
    return replace(d, quality=quality, met_floor=met, reason=f"{tag} asked for by name ({judged}): {_where(d)}")


def _where(d: Decision) -> str:
    pre = d.expected_prefill_s
    wait = (d.expected_wait_s or 0.0) - pre
    first = f"first token in {d.expected_wait_s:.1f} s, " if pre else ""
    if d.action == "use_loaded":
        queue = f" after a {wait:.1f} s queue" if wait > 0 else ""
        return f"loaded on {d.endpoint}, {first}responds in {d.expected_response_s:.1f} s{queue}"
    if d.action == "wait_for_load":
        return f"already loading on {d.endpoint}, ready in {wait:.1f} s, {first}responds in {d.expected_response_s:.1f} s"
    evicting = ", evicting " + ", ".join(e.model for e in d.evictions) if d.evictions else ""
    return (f"a {wait:.1f} s load on {d.endpoint} ({', '.join(d.gpus)}){evicting}, "
            f"{first}responds in {d.expected_response_s:.1f} s")
