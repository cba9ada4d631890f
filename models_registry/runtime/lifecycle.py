"""The residency state machine: the one place a Residency changes state.

Every change is a conditional UPDATE (``WHERE state IN from_states``): of two processes racing
for the same row, one wins and the other sees ``False`` and re-reads; no row lock is held
across I/O. When the UPDATE changed the row, the matching ``LoadEvent`` is written in the same
transaction, so the books and the history never disagree.

The allowed moves (anything else raises ``IllegalTransition``):

=====================  ===========  ==============  =============================================
from                   to           LoadEvent kind  who
=====================  ===========  ==============  =============================================
(new)                  requested    --              reservations.reserve: a load is booked
(new)                  loaded       load            sync: a model someone else loaded (adopted)
requested              loading      --              loads.execute_load starts
loading                loaded       load            loads.execute_load; loads.resolve_stale_loads
                                                    when the sync finds it in /api/ps
requested, loading     failed       fail            loads.execute_load (Ollama error, timeout);
                                                    loads.resolve_stale_loads (nobody reported)
requested              unloaded     unload          reservations.request_unload: cancelled before
                                                    its load started
loading                unloading    --              reservations.request_unload during the load
                                                    (ready_at cleared: the load task unloads it
                                                    as soon as its load finishes)
loaded                 unloading    --              reservations.request_unload; reservations.reserve
                                                    (an eviction, done by the load's task)
unloading              unloaded     unload, evict   loads.execute_unload; loads.execute_load (its
                                                    evictions, or asked while loading); sync
                                                    (gone from /api/ps)
loaded                 unloaded     unload          sync: Ollama dropped it (expiry, someone else)
=====================  ===========  ==============  =============================================

Every move to ``unloading`` sets ``unload_trigger`` (who asked), which the event that ends it
carries, whoever finishes it. The bound each transient state keeps is in docs/failure-behaviour.md.

``requested``, ``loading``, ``loaded`` and ``unloading`` hold VRAM (``Residency.objects.active()``);
``unloaded`` and ``failed`` are final.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Iterable

from django.db import transaction
from django.db.models import Max, Q
from django.db.models.functions import Coalesce

from models_registry import models as m
from models_registry.slo import metrics

S = m.Residency.State
K = m.LoadEvent.Kind

# (from, to) -> the LoadEvent kinds that move may write (empty: it writes none).
TRANSITIONS: dict[tuple[str, str], frozenset[str]] = {
    (S.REQUESTED, S.LOADING): frozenset(),
    (S.LOADING, S.LOADED): frozenset({K.LOAD}),
    (S.REQUESTED, S.FAILED): frozenset({K.FAIL}),
    (S.LOADING, S.FAILED): frozenset({K.FAIL}),
    (S.REQUESTED, S.UNLOADED): frozenset({K.UNLOAD}),
    (S.LOADING, S.UNLOADING): frozenset(),
    (S.LOADED, S.UNLOADING): frozenset(),
    (S.UNLOADING, S.UNLOADED): frozenset({K.UNLOAD, K.EVICT}),
    (S.LOADED, S.UNLOADED): frozenset({K.UNLOAD}),
}
# A residency is created in one of these states, with an event of these kinds (empty: none).
INITIAL: dict[str, frozenset[str]] = {
    S.REQUESTED: frozenset(),
    S.LOADED: frozenset({K.LOAD}),
}

ORIGIN = "origin"  # Event.decision_id: the selection decision that asked for this residency's load


class IllegalTransition(ValueError):
    pass


@dataclasses.dataclass(frozen=True)
class Event:
    """The LoadEvent a transition writes; unset fields come from the residency."""

    kind: str
    trigger: str | None = None  # default: the residency's trigger
    reason: str = ""  # LoadEvent.error: a failure's error, or why a correction was made
    requested_at: dt.datetime | None = None  # default: the residency's requested_at
    started_at: dt.datetime | None = None
    finished_at: dt.datetime | None = None
    duration_s: float | None = None
    decision_id: int | str | None = None  # an id, ORIGIN, or None


def _check(from_states: Iterable[str], to_state: str, event: Event | None) -> None:
    for state in from_states:
        kinds = TRANSITIONS.get((state, to_state))
        if kinds is None:
            raise IllegalTransition(f"a residency may not go from {state} to {to_state}")
        if (event is None and kinds) or (event is not None and event.kind not in kinds):
            want = " or ".join(sorted(kinds)) or "no"
            raise IllegalTransition(f"{state} -> {to_state} writes {want} event, not {event.kind if event else 'none'}")


def transition(residency_id: int, from_states: str | Iterable[str], to_state: str, *,
               event: Event | None = None, **fields) -> bool:
    """Move the residency to `to_state` if it is in one of `from_states`; True if it moved.

    `fields` are set on the row in the same UPDATE; `event` is written when the row moved."""
    from_states = (from_states,) if isinstance(from_states, str) else tuple(from_states)
    _check(from_states, to_state, event)
    if to_state == S.UNLOADING and not fields.get("unload_trigger"):
        raise IllegalTransition("a move to unloading says who asked (unload_trigger)")
    with transaction.atomic(savepoint=False):
        moved = m.Residency.objects.filter(pk=residency_id, state__in=from_states).update(state=to_state, **fields)
        if moved and event is not None:
            _record(m.Residency.objects.get(pk=residency_id), event)
    return bool(moved)


def admit(*, state: str, gpus: Iterable[tuple[int, int]] = (), event: Event | None = None, **fields) -> m.Residency:
    """Create a residency in an initial state, with its GPU shares [(gpu id, MiB)] and its event."""
    kinds = INITIAL.get(state)
    if kinds is None or (event is None and kinds) or (event is not None and event.kind not in kinds):
        raise IllegalTransition(f"a residency may not start as {state} with {event.kind if event else 'no'} event")
    with transaction.atomic(savepoint=False):
        r = m.Residency.objects.create(state=state, **fields)
        m.ResidencyGpu.objects.bulk_create([m.ResidencyGpu(residency=r, gpu_id=g, vram_mib=mib) for g, mib in gpus])
        if event is not None:
            _record(r, event)
    return r


def gpu_keys(residency_id: int) -> list[str]:
    return [p.gpu.key for p in m.ResidencyGpu.objects.filter(residency_id=residency_id)
            .select_related("gpu__host").order_by("pk")]


def origin_decision(residency_id: int) -> int | None:
    """The first decision routed to this residency: for a selection's load, the one that asked for it."""
    return m.SelectionDecision.objects.filter(residency_id=residency_id).order_by("pk").values_list(
        "pk", flat=True).first()


def last_eviction(model_id: int, endpoint_id: int, before: dt.datetime) -> dt.datetime | None:
    """When ``model_id`` was last evicted from ``endpoint_id`` (by TowerOps, or by Ollama itself:
    an unload nobody asked for) at or before ``before``, within the thrash window; else None."""
    since = before - dt.timedelta(seconds=metrics.THRASH_WINDOW_S)
    at = (m.LoadEvent.objects
          .filter(Q(kind=K.EVICT) | Q(kind=K.UNLOAD, trigger=m.Trigger.EXTERNAL),
                  model_id=model_id, endpoint_id=endpoint_id, requested_at__gte=since, requested_at__lte=before)
          .aggregate(at=Max(Coalesce("finished_at", "requested_at")))["at"])
    return at


def _record(r: m.Residency, event: Event) -> m.LoadEvent:
    decision_id = origin_decision(r.pk) if event.decision_id == ORIGIN else event.decision_id
    requested_at = event.requested_at or r.requested_at
    thrash = False
    if event.kind == K.LOAD:
        gone = last_eviction(r.model_id, r.endpoint_id, requested_at)
        thrash = metrics.is_thrash_load(requested_at.timestamp(), gone.timestamp() if gone else None)
    return m.LoadEvent.objects.create(
        model_id=r.model_id, endpoint_id=r.endpoint_id, gpu_keys=gpu_keys(r.pk), kind=event.kind,
        trigger=event.trigger or r.trigger, requested_at=requested_at, thrash=thrash,
        started_at=event.started_at, finished_at=event.finished_at, duration_s=event.duration_s,
        vram_mib=r.vram_mib, error=event.reason[:2000], residency_id=r.pk, decision_id=decision_id,
    )
