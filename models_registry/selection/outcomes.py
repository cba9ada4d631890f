"""What happened to a decision, as its caller reports it."""
from __future__ import annotations

from django.db import transaction

from models_registry import models as m
from models_registry.errors import BadInput, HourSealed
from models_registry.learning import signals
from models_registry.selection import advisory
from models_registry.slo import rollups
from models_registry.timeutil import utcnow


def record_outcome(decision_id: int, response_ms: int, success: bool, rating: float | None,
                   first_token_ms: int | None = None):
    """Store (or replace) what happened to a decision. `first_token_ms`, when the caller streamed,
    is the interactive p95's preferred source; without it `response_ms` stands in (an upper bound).

    A late outcome marks its decision's hour for recompute. One for a decision of a *sealed* hour
    (raw decisions pruned: docs/retention.md) is refused with HourSealed (409) and nothing is
    stored: the hour's figures are final, and storing an outcome they can never count would
    lose it silently. Whole hours are pruned and sealed together, so this meets only an hour an
    older release pruned in part, or a decision pruned while its outcome was on the way."""
    if first_token_ms is not None and first_token_ms > response_ms:
        raise BadInput(f"first_token_ms ({first_token_ms}) cannot be more than response_ms ({response_ms})")
    row = m.SelectionDecision.objects.filter(pk=decision_id).values_list("created_at", "residency_id").first()
    if row is None:
        return None
    created_at, residency_id = row
    with transaction.atomic():
        # First the hour's rollup row (locked until commit: retention seals an hour under the same
        # lock), then the outcome: a late outcome changes its hour's p95, so that rollup is recomputed.
        sealed = rollups.mark_hour_dirty(created_at)
        if sealed is not None:
            raise HourSealed(
                f"decision {decision_id} was made in {sealed:%Y-%m-%d %H}:00 UTC, an hour whose raw decisions were "
                f"pruned (TOWEROPS_DECISION_RAW_DAYS): its figures are final, so an outcome can no longer be "
                f"recorded for it; nothing was stored"
            )
        outcome, _ = m.DecisionOutcome.objects.update_or_create(
            decision_id=decision_id,
            defaults={"response_ms": response_ms, "first_token_ms": first_token_ms, "success": success,
                      "rating": rating, "reported_at": utcnow()},
        )
        if rating is not None:
            signals.record_rating(decision_id, rating, utcnow())  # observed quality's explicit signal
    advisory.release(decision_id, residency_id)  # served: its queue time is no longer a guess
    return outcome
