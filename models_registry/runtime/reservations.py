"""VRAM reservations: a load booked as a Residency in state requested, its victims marked unloading.

Every reservation, from a selection, a preload window or an admin, is made under one lock
after re-reading the world, so two of them can never take the same MiB.
"""
from __future__ import annotations

import dataclasses
import datetime as dt

from django.db import connection

from models_registry import models as m
from models_registry import policy
from models_registry.errors import NoRoom, NotFound
from models_registry.policy import Eviction
from models_registry.runtime import dispatch, lifecycle
from models_registry.runtime.lifecycle import Event
from models_registry.selection.world import Config, read_world
from models_registry.timeutil import utcnow
from models_registry.transactions import atomic_with_retry

# One lock for every selection that reserves VRAM: loads are rare (the SLO is < 10 an hour),
# so serialising them costs nothing, and two selections can never both take the same MiB.
RESERVATION_LOCK = 0x746F7765  # "towe"

S = m.Residency.State
K = m.LoadEvent.Kind


def lock_reservations() -> None:
    with connection.cursor() as cur:
        cur.execute("SELECT pg_advisory_xact_lock(%s)", [RESERVATION_LOCK])


def reserve(
    cfg: Config,
    tag: str,
    endpoint: str,
    vram_by_gpu: tuple[tuple[str, int], ...],
    evictions: tuple[Eviction, ...],
    *,
    trigger: str,
    now: dt.datetime,
    load_s: float,
    busy_s: float = 0.0,
) -> int:
    """A Residency in state requested for the new model; the models it evicts go to unloading.

    Callers hold RESERVATION_LOCK and have just read the world under it."""
    for ev in evictions:
        victim = m.Residency.objects.filter(
            model_id=cfg.model_ids[ev.model], endpoint_id=cfg.endpoint_ids[ev.endpoint], state=S.LOADED
        ).values_list("pk", flat=True).first()
        if victim is not None:  # the load's task evicts it before loading
            lifecycle.transition(victim, S.LOADED, S.UNLOADING, unload_trigger=trigger)
    residency = lifecycle.admit(
        state=S.REQUESTED,
        gpus=[(cfg.gpu_ids[key], mib) for key, mib in vram_by_gpu],
        model_id=cfg.model_ids[tag],
        endpoint_id=cfg.endpoint_ids[endpoint],
        trigger=trigger,
        vram_mib=sum(mib for _, mib in vram_by_gpu),
        requested_at=now,
        ready_at=now + dt.timedelta(seconds=load_s),
        last_used_at=now if busy_s else None,
        busy_until=now + dt.timedelta(seconds=busy_s) if busy_s else None,
    )
    return residency.pk


def request_load(tag: str, *, trigger: str, endpoint: str | None = None, now: dt.datetime | None = None,
                 protect: tuple[str, ...] = ()) -> dict:
    """Reserve and queue a load of `tag` outside a selection (admin, preload window).

    Placed by the same code as selections, under the same lock; an already-active
    residency is returned as it is (idempotent). One that is unloading does not count: the
    model is placed elsewhere (not on that endpoint, where its runner is still going)."""
    return atomic_with_retry(_request_load, tag, trigger, endpoint, now or utcnow(), protect)


def _request_load(tag: str, trigger: str, endpoint: str | None, now: dt.datetime, protect: tuple[str, ...]) -> dict:
    lock_reservations()
    world, cfg, rids = read_world(now)
    if tag not in cfg.model_ids:
        raise NotFound(f"unknown model {tag!r}")
    states = {(r.model, r.endpoint): r.state for r in world.residents}
    existing = sorted((ep, rid) for (t, ep), rid in rids.items() if t == tag and (endpoint is None or ep == endpoint))
    staying = [(ep, rid) for ep, rid in existing if states.get((tag, ep)) != S.UNLOADING]
    if staying or (endpoint is not None and existing):
        ep, rid = (staying or existing)[0]
        state = states[(tag, ep)]
        return {"residency_id": rid, "model": tag, "endpoint": ep, "state": state, "detail": f"already {state} on {ep}"}
    if endpoint is not None:
        if endpoint not in cfg.endpoint_ids:
            raise NotFound(f"unknown endpoint {endpoint!r}")
        # Only the named endpoint may take it: to the placement code, the others are down.
        world = dataclasses.replace(
            world, endpoints=tuple(e if e.key == endpoint else dataclasses.replace(e, up=False) for e in world.endpoints)
        )
    # An admin's explicit load may evict a model loaded moments ago; a window's may not (min_residency_s).
    placement = policy.place(world, tag, protect=protect, spare_new=trigger != m.Trigger.ADMIN)
    if placement is None:
        raise NoRoom(f"{tag} does not fit on any up endpoint{' ' + endpoint if endpoint else ''} without evicting a busy or pinned model")
    residency_id = reserve(
        cfg, tag, placement.endpoint, placement.vram_by_gpu, placement.evictions,
        trigger=trigger, now=now, load_s=placement.load_s,
    )
    dispatch.enqueue_load(residency_id)
    evicts = ", ".join(e.model for e in placement.evictions)
    return {
        "residency_id": residency_id,
        "model": tag,
        "endpoint": placement.endpoint,
        "state": S.REQUESTED,
        "detail": f"loading on {placement.endpoint}" + (f" after evicting {evicts}" if evicts else ""),
    }


def admin_preload(tag: str, endpoint: str | None = None) -> dict:
    return request_load(tag, trigger=m.LoadEvent.Trigger.ADMIN, endpoint=endpoint)


def request_unload(tag: str, *, trigger: str, endpoint: str | None = None) -> dict:
    """Unload `tag` (from `endpoint`, else from everywhere), whatever its residency is doing.

    loaded: queued for the host's agent. unloading: queued again (its unload may have been lost).
    loading: its load task unloads it as soon as the load finishes (an unload Ollama got now would
    be a no-op, and the load would then leave the model there). requested: the load is cancelled."""
    return atomic_with_retry(_request_unload, tag, trigger, endpoint)


def _request_unload(tag: str, trigger: str, endpoint: str | None) -> dict:
    rows = list(
        m.Residency.objects.active().select_for_update(of=("self",), no_key=True)
        .filter(model__tag=tag, **({"endpoint__name": endpoint} if endpoint else {}))
        .select_related("endpoint").order_by("pk")
    )
    if not rows:
        if not m.LlmModel.objects.filter(tag=tag).exists():
            raise NotFound(f"unknown model {tag!r}")
        return {"residency_id": None, "model": tag, "endpoint": endpoint, "state": None, "detail": "not loaded"}
    now = utcnow()
    done = []
    for r in rows:
        if r.state == S.REQUESTED:
            lifecycle.transition(
                r.pk, S.REQUESTED, S.UNLOADED, ended_at=now, unload_trigger=trigger,
                event=Event(K.UNLOAD, trigger=trigger, requested_at=now, finished_at=now,
                            reason="cancelled before its load started"),
            )
            done.append((r, S.UNLOADED, f"load on {r.endpoint.name} cancelled"))
        elif r.state == S.LOADING:
            lifecycle.transition(r.pk, S.LOADING, S.UNLOADING, ready_at=None, unload_trigger=trigger)
            done.append((r, S.UNLOADING, f"unloading from {r.endpoint.name} once its load finishes"))
        else:  # loaded, or unloading already (asked again: its unload may have been lost)
            if r.state == S.LOADED:
                lifecycle.transition(r.pk, S.LOADED, S.UNLOADING, unload_trigger=trigger)
            if r.state == S.LOADED or r.ready_at is not None:
                dispatch.enqueue_unload(r.pk, trigger=trigger)
            done.append((r, S.UNLOADING, f"unloading from {r.endpoint.name}"))
    first, state, _ = done[0]
    return {
        "residency_id": first.pk,
        "model": tag,
        "endpoint": first.endpoint.name,
        "state": state,
        "detail": "; ".join(detail for _, _, detail in done),
    }


def admin_unload(tag: str, endpoint: str | None = None) -> dict:
    return request_unload(tag, trigger=m.LoadEvent.Trigger.ADMIN, endpoint=endpoint)
