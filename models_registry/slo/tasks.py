"""Celery tasks of the SLO side: hourly rollups and retention (beat, on the central queue)."""
from __future__ import annotations

import datetime as dt

from celery import shared_task

from models_registry.slo import retention, rollups


@shared_task
def rollup_hour(hour_iso: str) -> str:
    """Recompute one complete clock hour's SLO rollup from raw rows and upsert it (idempotent)."""
    hour = dt.datetime.fromisoformat(hour_iso)
    if hour.tzinfo is None:
        hour = hour.replace(tzinfo=dt.timezone.utc)
    row = rollups.rollup_hour(hour)
    return f"rolled up {row.hour.isoformat()}: {row.decisions} decisions" if row else "hour not over yet"


@shared_task
def rollup_due_hours() -> int:
    """Beat, every few minutes: the previous hour until it settles, dirty hours (late outcomes), missing hours."""
    return len(rollups.rollup_due())


@shared_task
def prune_decisions() -> int:
    """Beat, hourly: delete raw decisions older than TOWEROPS_DECISION_RAW_DAYS whose hour is rolled up."""
    return retention.prune_raw_decisions()


@shared_task
def prune_snapshots() -> int:
    """Beat, hourly: thin old GPU snapshots (retention.prune_snapshots)."""
    return retention.prune_snapshots()
