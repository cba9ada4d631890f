"""Loading and unloading models on an endpoint: the host agent's work behind the load tasks, and
the sweep that ends the loads nobody finished.

Every state change goes through lifecycle.transition; these functions talk to Ollama and say which
move its answer makes. The bounds they keep are in docs/failure-behaviour.md:

* A load task ends (loaded, failed, or unloaded when it was asked to) within the load timeout of
  its start: its evictions and the load itself share one deadline.
* A load whose task stopped reporting (the worker died, the broker lost the task) is resolved by
  ``resolve_stale_loads`` STALE_GRACE_S after its bound: by the central sweep (beat, every few
  seconds) and by its endpoint's sync, which asks Ollama first (a load Ollama has is booked loaded).
"""
from __future__ import annotations

import datetime as dt
import logging
import time

from django.db.models import DateTimeField, F, Q, Value

from models_registry import conf
from models_registry import models as m
from models_registry import timeutil
from models_registry.runtime import lifecycle
from models_registry.runtime.lifecycle import ORIGIN, Event
from models_registry.runtime.ollama import (
    OllamaClient,
    OllamaClientError,
    OllamaTimeout,
    same_model,
)
from models_registry.transactions import atomic_with_retry, until_reachable

log = logging.getLogger(__name__)

S = m.Residency.State
K = m.LoadEvent.Kind
T = m.LoadEvent.Trigger
EWMA_ALPHA = 0.3  # weight of the newest load time in the learned estimate
UNLOAD_WAIT_S = 60.0  # how long an unload task waits for /api/ps to confirm it
# A load's task reports within the load timeout of its start; the sweep waits this much longer, so
# that it never races a task finishing on time (nor its bookkeeping retried through a database blip).
STALE_GRACE_S = 3.0


class StillLoaded(Exception):
    """Ollama took the unload but /api/ps still lists the model (busy, or slow to free)."""


def client_for(endpoint: m.Endpoint, load_timeout_s: float) -> OllamaClient:
    return OllamaClient(endpoint.base_url, load_timeout=load_timeout_s)


def learn_load_time(model_id: int, endpoint_id: int, seconds: float) -> None:
    """Update the EWMA of load seconds for this model on this endpoint."""

    def learn():
        est = m.LoadTimeEstimate.objects.select_for_update().filter(model_id=model_id, endpoint_id=endpoint_id).first()
        if est is None:
            m.LoadTimeEstimate.objects.create(model_id=model_id, endpoint_id=endpoint_id, seconds=seconds, samples=1)
        else:  # (a row the gateway made for speeds alone holds the catalog's seconds: the first load replaces them)
            est.seconds = seconds if est.samples == 0 else EWMA_ALPHA * seconds + (1 - EWMA_ALPHA) * est.seconds
            est.samples += 1
            est.save(update_fields=["seconds", "samples", "updated_at"])

    atomic_with_retry(learn)


def execute_load(residency_id: int, *, load_timeout_s: float) -> str:
    """requested -> loading -> loaded | failed, within load_timeout_s of the start.

    Evictions marked `unloading` on the same endpoint go first. If an unload was asked while the
    model was loading, the model is unloaded as soon as its load finishes (the asker wins)."""
    r = m.Residency.objects.select_related("model", "endpoint").filter(pk=residency_id).first()
    started = timeutil.utcnow()
    if r is None or not lifecycle.transition(r.pk, S.REQUESTED, S.LOADING, loaded_at=started):
        r = m.Residency.objects.filter(pk=residency_id).first()
        return f"nothing to do ({r.state if r else 'gone'})"
    deadline = time.monotonic() + load_timeout_s
    endpoint, model = r.endpoint, r.model
    client = client_for(endpoint, load_timeout_s)
    load_started = started
    try:
        # Inside the try: an eviction that cannot reach the endpoint (or does not finish in time)
        # fails this load now instead of leaving it `loading` until the sweep.
        for victim in victims_on(endpoint.pk):
            execute_unload(victim, r.trigger, evict=True, load_timeout_s=load_timeout_s,
                           wait_s=deadline - time.monotonic(), decision_id=lifecycle.origin_decision(r.pk))
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise OllamaTimeout("the evictions took the whole load timeout", endpoint.base_url)
        client = client_for(endpoint, remaining)  # the load's read timeout: what is left of the bound
        load_started = timeutil.utcnow()
        client.load(model.tag, keep_alive=endpoint.keep_alive, num_ctx=endpoint.num_ctx)
    except Exception as exc:  # noqa: BLE001 - OllamaError, OllamaUnavailable or anything else: the VRAM must be released
        finished = timeutil.utcnow()
        error = str(exc)[:2000]
        until_reachable(
            lifecycle.transition, r.pk, S.LOADING, S.FAILED, ended_at=finished, error=error,
            event=Event(K.FAIL, reason=error, started_at=load_started, finished_at=finished,
                        duration_s=(finished - load_started).total_seconds(), decision_id=ORIGIN),
            deadline=deadline + STALE_GRACE_S,
        )
        log.warning("load of %s on %s failed: %s", model.tag, endpoint.name, exc)
        return f"failed: {exc}"
    finished = timeutil.utcnow()
    duration = (finished - load_started).total_seconds()
    # A load's answer carries no expiry: ask /api/ps, so that a model Ollama drops at its
    # keep_alive before the next sync is recorded as `expiry`, not `external`.
    try:
        running = client.running(model.tag)
    except OllamaClientError:  # the load succeeded; the expiry is only bookkeeping
        running = None
    # The load happened: its bookkeeping outlives a database restart (until the sweep's bound).
    loaded = until_reachable(
        lifecycle.transition, r.pk, S.LOADING, S.LOADED,
        ready_at=finished,
        expires_at=running.expires_at if running else None,
        # The queue behind the load was estimated from the predicted ready_at: move it by
        # however much earlier or later the load really finished (SQL reads the old ready_at).
        busy_until=F("busy_until") - (F("ready_at") - Value(finished, output_field=DateTimeField())),
        event=Event(K.LOAD, started_at=load_started, finished_at=finished, duration_s=duration, decision_id=ORIGIN),
        deadline=deadline + STALE_GRACE_S,
    )
    learn_load_time(model.pk, endpoint.pk, duration)
    if loaded:
        return f"loaded {model.tag} on {endpoint.name} in {duration:.1f} s"
    return _after_a_lost_load(r.pk, client, max(1.0, deadline - time.monotonic()))


def _after_a_lost_load(residency_id: int, client: OllamaClient, wait_s: float) -> str:
    """The load finished, but the residency is no longer `loading`: say what that means."""
    r = m.Residency.objects.select_related("model", "endpoint").get(pk=residency_id)
    if r.state == S.LOADED:  # the sync saw it in /api/ps first, and booked it
        return f"loaded {r.model.tag} on {r.endpoint.name} (booked by the state sync)"
    # Asked to unload while loading (unloading), or given up meanwhile (failed by the sweep, its
    # VRAM released): Ollama must not keep what the books no longer hold, unless a newer residency
    # of the same model there holds it now.
    if r.state != S.UNLOADING and m.Residency.objects.active().filter(model=r.model, endpoint=r.endpoint).exists():
        return f"loaded {r.model.tag} on {r.endpoint.name}, for a newer residency (this one was {r.state})"
    now = timeutil.utcnow()
    try:
        client.unload(r.model.tag)
        gone = client.wait_unloaded(r.model.tag, timeout=wait_s)
    except OllamaClientError as exc:
        log.warning("could not unload %s from %s after its load: %s", r.model.tag, r.endpoint.name, exc)
        gone = False  # the state sync unloads it once it can
    if r.state == S.UNLOADING and gone:
        lifecycle.transition(
            r.pk, S.UNLOADING, S.UNLOADED, ended_at=timeutil.utcnow(),
            event=Event(K.UNLOAD, trigger=r.unload_trigger or T.ADMIN, requested_at=now, started_at=now,
                        finished_at=timeutil.utcnow(),
                        reason="asked to unload while it was loading: unloaded as soon as its load finished"),
        )
        return f"unloaded {r.model.tag} from {r.endpoint.name}: asked to unload while it was loading"
    log.warning("%s finished loading on %s after its residency became %s: unloaded%s", r.model.tag,
                r.endpoint.name, r.state, "" if gone else " (not confirmed yet: the state sync finishes it)")
    return f"unloaded {r.model.tag} from {r.endpoint.name}: its residency was {r.state}"


def victims_on(endpoint_id: int) -> list[int]:
    """Residencies a load on this endpoint evicts first: `unloading` ones that were loaded (not a load
    asked to unload while it runs: its own task finishes that one), least recently used first, the
    order placement chose them in (policy.placement's LRU key) and the replay evicts them in."""
    return list(m.Residency.objects.filter(endpoint_id=endpoint_id, state=S.UNLOADING, ready_at__isnull=False)
                .order_by(F("last_used_at").asc(nulls_first=True), "model__tag", "pk").values_list("pk", flat=True))


def execute_unload(residency_id: int, trigger: str, *, evict: bool = False, load_timeout_s: float,
                   wait_s: float = UNLOAD_WAIT_S, decision_id: int | None = None) -> str:
    """unloading -> unloaded, confirmed through /api/ps (Ollama unloads asynchronously).

    Raises OllamaUnavailable, or StillLoaded when /api/ps still lists the model after wait_s: the
    caller retries rather than book VRAM as free that is not."""
    r = m.Residency.objects.select_related("model", "endpoint").filter(pk=residency_id).first()
    if r is None or r.state != S.UNLOADING:
        return f"nothing to do ({r.state if r else 'gone'})"
    if r.ready_at is None:
        return "its load task unloads it when the load finishes"  # asked to unload while loading
    started = timeutil.utcnow()
    client = client_for(r.endpoint, load_timeout_s)
    client.unload(r.model.tag)
    if not client.wait_unloaded(r.model.tag, timeout=max(0.0, wait_s)):
        raise StillLoaded(f"{r.model.tag} is still listed by {r.endpoint.name}'s /api/ps")
    finished = timeutil.utcnow()
    lifecycle.transition(
        r.pk, S.UNLOADING, S.UNLOADED, ended_at=finished,
        event=Event(K.EVICT if evict else K.UNLOAD, trigger=trigger, requested_at=started, started_at=started,
                    finished_at=finished, duration_s=(finished - started).total_seconds(), decision_id=decision_id),
    )
    return f"unloaded {r.model.tag} from {r.endpoint.name}"


def stale_loads(now: dt.datetime, *, load_timeout_s: float, requested_timeout_s: float, endpoint_id: int | None = None):
    """Loads past their bound: `loading` longer than the load timeout (+ grace), `requested` longer
    than the requested timeout since its task reached the broker, or (the broker was down: the
    outbox, runtime/dispatch.py) TOWEROPS_OUTBOX_MAX_AGE_S since it was asked without reaching it."""
    outbox_max_age_s = conf.value("TOWEROPS_OUTBOX_MAX_AGE_S")
    rows = m.Residency.objects.filter(
        Q(state=S.LOADING, loaded_at__lt=now - dt.timedelta(seconds=load_timeout_s + STALE_GRACE_S))
        | Q(state=S.REQUESTED, dispatched_at__lt=now - dt.timedelta(seconds=requested_timeout_s))
        | Q(state=S.REQUESTED, dispatched_at__isnull=True, requested_at__lt=now - dt.timedelta(seconds=outbox_max_age_s))
    )
    return rows.filter(endpoint_id=endpoint_id) if endpoint_id is not None else rows


def resolve_stale_loads(now: dt.datetime, *, load_timeout_s: float, requested_timeout_s: float,
                        endpoint_id: int | None = None, running: set[str] | None = None) -> int:
    """End the loads nobody finished: failed, or loaded when `running` (the endpoint's /api/ps
    names, from the sync) shows Ollama has the model. Returns how many were ended."""
    count = 0
    for r in stale_loads(now, load_timeout_s=load_timeout_s, requested_timeout_s=requested_timeout_s,
                         endpoint_id=endpoint_id).select_related("model"):
        if r.state == S.LOADING and running is not None and any(same_model(r.model.tag, n) for n in running):
            count += lifecycle.transition(
                r.pk, S.LOADING, S.LOADED, ready_at=now,
                event=Event(K.LOAD, started_at=r.loaded_at, finished_at=now, decision_id=ORIGIN,
                            reason="found loaded by the state sync after its load task stopped reporting"),
            )
            continue
        error = (f"timed out in state {r.state}" if r.state != S.REQUESTED or r.dispatched_at is not None
                 else "the broker was unreachable: its load task was never sent")
        count += lifecycle.transition(
            r.pk, r.state, S.FAILED, ended_at=now, error=error,
            event=Event(K.FAIL, reason=error, started_at=r.loaded_at, finished_at=now, decision_id=ORIGIN),
        )
    return count


def load_in_flight(r: m.Residency, now: dt.datetime, load_timeout_s: float) -> bool:
    """An `unloading` residency asked to unload while it was loading, whose load task may still run
    (and so may still put the model in Ollama): that task finishes it, not the sync."""
    return (r.state == S.UNLOADING and r.ready_at is None and r.loaded_at is not None
            and r.loaded_at >= now - dt.timedelta(seconds=load_timeout_s + STALE_GRACE_S))
