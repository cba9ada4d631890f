"""Transactions that survive what PostgreSQL may still do to them.

Lock order (every writer follows it, so transactions cannot wait on each other in a cycle):
  1. the reservation lock (reservations.RESERVATION_LOCK, an advisory lock): anything that books
     VRAM (a selection's load, an admin or preload load, an adopted external model);
  2. residency rows, by id, changed by conditional UPDATEs (lifecycle.transition) or locked with
     ``select_for_update(of=("self",), no_key=True)`` (never the rows they join);
  3. new rows (decisions, residencies, load events): their foreign-key checks take FOR KEY SHARE on
     the catalog and fleet rows, which nothing on these paths locks any harder.
No runtime path locks a model, endpoint or GPU row FOR UPDATE.

A deadlock or serialization failure that still happens (another writer outside these paths, an
admin deleting a row) is retried by ``atomic_with_retry``; an outage is not (``is_conflict``).
"""
from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import TypeVar

from django.db import InterfaceError, OperationalError, connection, transaction

log = logging.getLogger(__name__)

R = TypeVar("R")
CONFLICT_SQLSTATES = frozenset({"40P01", "40001"})  # deadlock_detected, serialization_failure
ATTEMPTS = 5


def is_conflict(exc: BaseException) -> bool:
    """A deadlock or serialization failure: the transaction lost to another and may simply run again."""
    cause = exc.__cause__ if isinstance(exc, OperationalError) else exc
    return getattr(cause, "sqlstate", None) in CONFLICT_SQLSTATES


def atomic_with_retry(fn: Callable[..., R], *args, attempts: int = ATTEMPTS, **kwargs) -> R:
    """fn(*args, **kwargs) in a transaction, run again (after a short random pause) when it loses a
    deadlock or a serialization failure. Inside an outer transaction it only joins it: the outermost
    one is the one that can be run again."""
    if connection.in_atomic_block:
        return fn(*args, **kwargs)
    for attempt in range(1, attempts + 1):
        try:
            with transaction.atomic():
                return fn(*args, **kwargs)
        except OperationalError as exc:
            if not is_conflict(exc) or attempt == attempts:
                raise
            log.info("retrying a transaction after %s (attempt %d)", exc.__cause__.__class__.__name__, attempt)
            time.sleep(random.uniform(0.005, 0.05) * attempt)  # jitter, so that the two do not collide again
    raise AssertionError("unreachable")


def until_reachable(fn: Callable[..., R], *args, deadline: float, pause: float = 0.5, **kwargs) -> R:
    """fn(*args, **kwargs), again on a fresh connection while the database cannot be reached, until
    time.monotonic() passes `deadline` (then the last error). For the bookkeeping at the end of work
    that already happened, so that a database restart does not lose it."""
    while True:
        try:
            return atomic_with_retry(fn, *args, **kwargs)
        except (OperationalError, InterfaceError) as exc:
            if is_conflict(exc) or connection.in_atomic_block or time.monotonic() + pause > deadline:
                raise
            log.warning("database unreachable (%s); trying again", exc)
            connection.close()  # a broken connection is not reused; the next query opens another
            time.sleep(pause)
