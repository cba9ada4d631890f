"""One load or unload, and one state sync, at a time per endpoint: a slow or hung endpoint holds at
most two of its host agent's worker processes (deploy/bin/agent runs four), never all of them.

Ollama loads one model at a time per server anyway. A load or unload that finds its endpoint's slot taken
does not wait for it (that would pin a worker process to the slow endpoint): it is sent again a
moment later and returns, freeing its process for the other endpoints' work. The slot is a
PostgreSQL session advisory lock: taken without waiting, released when the task ends, and released
by the server when the worker dies or its connection drops, so it cannot outlive its holder. A state
sync that finds another sync of its endpoint still running (hung on its timeout) is skipped: the
next one, a sync interval later, does its work.
A re-sent load is still bounded: the stale-load sweep fails it `TOWEROPS_REQUESTED_TIMEOUT_S` after
its first send (docs/failure-behaviour.md), and the re-sent task then finds nothing to do.
"""
from __future__ import annotations

import contextlib
import logging

from django.db import DatabaseError, connection

from models_registry import models as m

log = logging.getLogger(__name__)

# pg_advisory_lock(int4, int4): the slot's class, the endpoint's id.
WORK = 0x70E4  # loads and unloads
SYNC = 0x70E5  # state syncs (/api/ps)
BUSY_RETRY_S = 1.0  # when a task sent again for a busy endpoint runs next


@contextlib.contextmanager
def endpoint_slot(endpoint_id: int, slot: int = WORK):
    """Yields True when this process now holds the endpoint's slot, False when another does."""
    with connection.cursor() as cur:
        cur.execute("SELECT pg_try_advisory_lock(%s, %s)", [slot, endpoint_id])
        held = cur.fetchone()[0]
    try:
        yield held
    finally:
        if held:
            try:
                with connection.cursor() as cur:
                    cur.execute("SELECT pg_advisory_unlock(%s, %s)", [slot, endpoint_id])
            except DatabaseError:  # the connection is gone, and the lock with it
                log.warning("could not release endpoint %s's slot: its connection is gone (so is the lock)",
                            endpoint_id)


def endpoint_of(residency_id: int) -> int | None:
    return m.Residency.objects.filter(pk=residency_id).values_list("endpoint_id", flat=True).first()
