"""Queue the agent's work when the caller's transaction commits, without losing it to the broker.

A load's outbox is its own `requested` residency: written in the decision's transaction, with
`dispatched_at` NULL until its task has reached the broker. After the commit the task is sent
once (no retries: a broker that is down must not hold the caller's answer); when that fails the
row stays undispatched and `relay_outbox` (beat, every few seconds) sends it once the broker is
back. The caller's answer never depends on the broker: 200 with the decision, the load runs when
the broker returns (or is failed after TOWEROPS_OUTBOX_MAX_AGE_S). Sending twice is harmless:
the load task only starts a `requested` residency (runtime/loads.py).

Unloads need no outbox: an `unloading` residency that no task finishes is unloaded by its
endpoint's state sync (runtime/sync.py).

The tasks are looked up by name in Celery's registry, so the services that enqueue them need
not import the task module that imports those services.
"""
from __future__ import annotations

import datetime as dt
import logging

from celery import current_app
from django.db import transaction

from models_registry import models as m
from models_registry.timeutil import utcnow

log = logging.getLogger(__name__)

EXECUTE_LOAD = "models_registry.runtime.tasks.execute_load"
EXECUTE_UNLOAD = "models_registry.runtime.tasks.execute_unload"
# The relay leaves a fresh row to the send after its commit (no double send in the common case).
RELAY_AFTER_S = 2.0

S = m.Residency.State


def queue_of(residency_id: int) -> str:
    """The queue of the agent on the residency's host (`central` when it has none)."""
    return m.Residency.objects.filter(pk=residency_id).values_list("endpoint__host__queue", flat=True).first() or "central"


def send(task_name: str, args: list, queue: str) -> bool:
    """Publish once; False (logged) when the broker cannot take it now."""
    try:
        current_app.tasks[task_name].apply_async(args=args, queue=queue, retry=False)
    except Exception as exc:  # noqa: BLE001 - kombu/redis/amqp connection errors: any of them means "not sent"
        log.warning("could not send %s%s to queue %s (%s): %s", task_name.rsplit(".", 1)[1], args, queue,
                    type(exc).__name__, exc)
        return False
    return True


def send_load(residency_id: int, queue: str) -> bool:
    """Send the load task and mark the outbox row dispatched."""
    if not send(EXECUTE_LOAD, [residency_id], queue):
        return False
    m.Residency.objects.filter(pk=residency_id, dispatched_at__isnull=True).update(dispatched_at=utcnow())
    return True


def enqueue_load(residency_id: int, decision_id: int | None = None) -> None:
    """Send the load to the host's agent once the reservation is committed (or leave it to the relay)."""
    queue = queue_of(residency_id)
    transaction.on_commit(lambda: send_load(residency_id, queue))


def enqueue_unload(residency_id: int, trigger: str) -> None:
    queue = queue_of(residency_id)
    transaction.on_commit(lambda: send(EXECUTE_UNLOAD, [residency_id, trigger], queue))


def relay_outbox(now: dt.datetime | None = None) -> int:
    """Send every load whose task has not reached the broker yet; returns how many were sent."""
    now = now or utcnow()
    rows = list(m.Residency.objects.filter(state=S.REQUESTED, dispatched_at__isnull=True,
                                           requested_at__lt=now - dt.timedelta(seconds=RELAY_AFTER_S))
                .order_by("requested_at").values_list("pk", "endpoint__host__queue"))
    sent = 0
    for pk, queue in rows:
        if not send_load(pk, queue or "central"):
            break  # the broker is still down: the next run tries again
        sent += 1
    if sent:
        log.info("outbox: sent %d load(s) a broker outage had held back", sent)
    return sent
