"""Celery tasks: thin wrappers that load ids and call the runtime's services. Idempotent.

Loads, unloads, state sync and telemetry run on the host's own queue (`Host.queue`), so
each host's agent talks to its own Ollama and GPUs; fan-out and policy tasks run on
`central`. Every task is safe to run twice: the service re-reads the row and does nothing
when the work is already done. The work itself is in runtime/loads.py (loads, unloads, stale
loads), runtime/sync.py (reconcile with /api/ps) and runtime/telemetry.py (GPU snapshots);
every residency state change in runtime/lifecycle.py.
"""
from __future__ import annotations

import logging

from celery import shared_task

from models_registry import conf
from models_registry import models as m
from models_registry.runtime import dispatch, endpoint_slots, loads, preload, sync, telemetry
from models_registry.runtime.ollama import OllamaUnavailable
from models_registry.timeutil import utcnow

log = logging.getLogger(__name__)

# Read at import: the load task's soft_time_limit is fixed when the task is defined.
LOAD_TIMEOUT_S = conf.value("TOWEROPS_LOAD_TIMEOUT_S")
REQUESTED_TIMEOUT_S = conf.value("TOWEROPS_REQUESTED_TIMEOUT_S")

S = m.Residency.State
T = m.LoadEvent.Trigger


def _send_again(task, args: list, residency_id: int) -> str:
    """The endpoint is busy with another load or unload: run this one a moment later, elsewhere in
    the pool (runtime/endpoint_slots.py). A fresh message, so an unload keeps its own retries."""
    task.apply_async(args=args, queue=dispatch.queue_of(residency_id), countdown=endpoint_slots.BUSY_RETRY_S)
    return "endpoint busy: sent again"


@shared_task(bind=True, acks_late=True, max_retries=0, soft_time_limit=LOAD_TIMEOUT_S + 30)
def execute_load(self, residency_id: int) -> str:
    """requested → loading → loaded | failed (runtime/loads.py), one at a time per endpoint."""
    endpoint_id = endpoint_slots.endpoint_of(residency_id)
    if endpoint_id is None:
        return "nothing to do (gone)"
    with endpoint_slots.endpoint_slot(endpoint_id) as held:
        if not held:
            return _send_again(self, [residency_id], residency_id)
        return loads.execute_load(residency_id, load_timeout_s=LOAD_TIMEOUT_S)


@shared_task(bind=True, acks_late=True, max_retries=3, default_retry_delay=5)
def execute_unload(self, residency_id: int, trigger: str = T.ADMIN, evict: bool = False) -> str:
    """unloading → unloaded, confirmed through /api/ps; retried while Ollama is unreachable or still holds it.

    If the retries run out, the state sync confirms it."""
    endpoint_id = endpoint_slots.endpoint_of(residency_id)
    if endpoint_id is None:
        return "nothing to do (gone)"
    with endpoint_slots.endpoint_slot(endpoint_id) as held:
        if not held:
            return _send_again(self, [residency_id, trigger, evict], residency_id)
        try:
            return loads.execute_unload(residency_id, trigger, evict=evict, load_timeout_s=LOAD_TIMEOUT_S)
        except (OllamaUnavailable, loads.StillLoaded) as exc:
            raise self.retry(exc=exc, countdown=2 ** self.request.retries) from exc


@shared_task
def resolve_stale_loads() -> int:
    """A load never stays `requested` or `loading` past its bound (runtime/loads.py). Cheap: beat runs it
    every few seconds, so a load whose worker died ends a few seconds after its timeout."""
    return loads.resolve_stale_loads(utcnow(), load_timeout_s=LOAD_TIMEOUT_S, requested_timeout_s=REQUESTED_TIMEOUT_S)


@shared_task
def relay_outbox() -> int:
    """Send the loads a broker outage held back (runtime/dispatch.py)."""
    return dispatch.relay_outbox()


@shared_task
def sync_all_endpoints() -> int:
    """Fan out: each endpoint is synced by its own host's agent."""
    rows = list(m.Endpoint.objects.values_list("pk", "host__queue"))
    for pk, queue in rows:
        sync_endpoint.apply_async(args=[pk], queue=queue, expires=30)
    return len(rows)


@shared_task
def sync_endpoint(endpoint_id: int) -> str:
    """Reconcile the endpoint's residencies with its /api/ps (runtime/sync.py); one at a time per endpoint."""
    with endpoint_slots.endpoint_slot(endpoint_id, endpoint_slots.SYNC) as held:
        if not held:
            return "endpoint busy: its previous sync is still running"
        return sync.sync_endpoint(endpoint_id, load_timeout_s=LOAD_TIMEOUT_S, requested_timeout_s=REQUESTED_TIMEOUT_S)


@shared_task
def collect_all_telemetry() -> int:
    queues = list(m.Host.objects.values_list("pk", "queue"))
    for pk, queue in queues:
        record_gpu_snapshots.apply_async(args=[pk], queue=queue, expires=30)
    return len(queues)


@shared_task
def record_gpu_snapshots(host_id: int) -> int:
    """Read this host's GPUs and append a GpuSnapshot each (runtime/telemetry.py)."""
    return telemetry.record_gpu_snapshots(host_id)


# --------------------------------------------------------------------------- preload windows


@shared_task
def apply_preload_windows() -> dict:
    """Warm what the open preload windows want; cool what an ended window warmed (runtime.preload)."""
    return preload.apply_windows(utcnow())
