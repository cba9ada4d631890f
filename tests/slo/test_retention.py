"""Retention never loses history: the two data-loss reproductions of issue 17, and the rules
that prevent them (docs/retention.md).

1. Raising TOWEROPS_LOAD_TIMEOUT_S made every pruned hour look unsettled again: it was read
   from raw rows whose decisions were gone, and re-rolled from nothing.
2. A late outcome in the hour the prune cut through made that hour be recomputed from the
   half of its decisions left, and `towerops_decisions_total` went down.
"""
from __future__ import annotations

import datetime as dt

import pytest
from prometheus_client.parser import text_string_to_metric_families

from models_registry import errors
from models_registry import models as m
from models_registry.selection import outcomes
from models_registry.slo import reports, retention, rollups

pytestmark = pytest.mark.django_db
MIN = dt.timedelta(minutes=1)
HOUR = dt.timedelta(hours=1)


def decisions_total(client) -> float:
    r = client.get("/metrics")
    assert r.status_code == 200, r.content
    fams = {f.name: f for f in text_string_to_metric_families(r.content.decode())}
    return sum(s.value for s in fams["towerops_decisions"].samples if s.name == "towerops_decisions_total")


def fallbacks(window="7d"):
    r = reports.fallbacks_report(window)
    return r["decisions"], r["fallbacks"], r["rate"]


def test_raising_the_load_timeout_keeps_a_pruned_hours_figures(rig, settings, client, time_machine):
    """Issue 17, reproduction 1: (1 decision, 1 fallback, 1.0) must stay so at 1200 s, after the
    beat's re-roll, and after the timeout is put back to 600 s."""
    settings.TOWEROPS_LOAD_TIMEOUT_S = 600
    settings.TOWEROPS_DECISION_RAW_DAYS = 2
    now = dt.datetime(2026, 6, 10, 12, 30, tzinfo=dt.timezone.utc)
    h = now.replace(minute=0) - 72 * HOUR
    rig.load(h - 2 * HOUR)  # older raw data: the pruned hour is not before the oldest raw row
    rig.decision(h + 10 * MIN, action="fallback", model="remote:gpt-4o-mini", urgency="background")
    time_machine.move_to(h + HOUR + 12 * MIN, tick=False)  # the beat: 11-16 minutes after the hour
    rollups.rollup_due()
    time_machine.move_to(now, tick=False)
    rollups.rollup_due()
    assert retention.prune_raw_decisions() == 1
    assert not m.SelectionDecision.objects.exists()
    assert fallbacks() == (1, 1, 1.0)
    counted = decisions_total(client)
    assert counted == 1

    settings.TOWEROPS_LOAD_TIMEOUT_S = 1200
    assert fallbacks() == (1, 1, 1.0)
    assert decisions_total(client) == counted
    rollups.rollup_due()
    assert fallbacks() == (1, 1, 1.0)
    settings.TOWEROPS_LOAD_TIMEOUT_S = 600
    rollups.rollup_due()
    assert fallbacks() == (1, 1, 1.0)
    assert decisions_total(client) == counted


def test_a_late_outcome_in_the_hour_the_prune_reached_keeps_its_decisions(rig, settings, client, make_key,
                                                                          time_machine):
    """Issue 17, reproduction 2: "2 of 2 fell back" must not become "1 of 1", and the counter
    must not go down, when an outcome arrives for a decision of the hour the prune reached."""
    settings.TOWEROPS_DECISION_RAW_DAYS = 2
    now = dt.datetime(2026, 6, 10, 12, 30, tzinfo=dt.timezone.utc)
    h = now.replace(minute=0) - 48 * HOUR  # the cutoff, now - 2 days, is 12:30 of this hour
    first = rig.decision(h + 10 * MIN, action="fallback", model="remote:gpt-4o-mini", urgency="background")
    second = rig.decision(h + 50 * MIN, action="fallback", model="remote:gpt-4o-mini", urgency="background")
    time_machine.move_to(h + HOUR + 12 * MIN, tick=False)
    rollups.rollup_due()
    time_machine.move_to(now, tick=False)
    rollups.rollup_due()
    assert fallbacks() == (2, 2, 1.0)
    counted = decisions_total(client)
    assert counted == 2

    retention.prune_raw_decisions()
    assert fallbacks() == (2, 2, 1.0)
    key = make_key("select")
    r = client.post(f"/api/v1/decisions/{second.pk}/outcome", {"response_ms": 900, "success": True},
                    content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {key}")
    assert r.status_code == 200, r.content
    assert fallbacks() == (2, 2, 1.0)
    assert decisions_total(client) == counted
    rollups.rollup_due()
    assert fallbacks() == (2, 2, 1.0)
    assert decisions_total(client) == counted

    # An hour later the whole hour is past the cutoff: both go, together, and the hour is sealed.
    time_machine.move_to(now + HOUR, tick=False)
    rollups.rollup_due()
    assert retention.prune_raw_decisions() == 2
    assert not m.SelectionDecision.objects.filter(pk__in=[first.pk, second.pk]).exists()
    assert fallbacks() == (2, 2, 1.0)
    assert decisions_total(client) == counted


# --------------------------------------------------------------------------- the rules behind it

T0 = dt.datetime(2026, 6, 10, 12, 30, tzinfo=dt.timezone.utc)


def _rollup_values(h):
    return m.SloHourlyRollup.objects.filter(hour=h).values().get()


def test_settled_is_recorded_when_the_rollup_is_made_not_read_from_todays_timeout(rig, settings, time_machine):
    settings.TOWEROPS_LOAD_TIMEOUT_S = 600  # settled 11 minutes after the hour
    h = T0.replace(minute=0) - 5 * HOUR
    rig.decision(h + 10 * MIN)
    time_machine.move_to(h + HOUR + 5 * MIN, tick=False)
    rollups.rollup_hour(h)
    assert _rollup_values(h)["settled_at"] is None
    assert h in rollups.hours_to_roll()
    time_machine.move_to(h + HOUR + 12 * MIN, tick=False)
    assert rollups.rollup_due() == [h]
    assert _rollup_values(h)["settled_at"] == h + HOUR + 12 * MIN
    assert rollups.hours_to_roll() == []
    settings.TOWEROPS_LOAD_TIMEOUT_S = 3600  # raised: the hour stays settled, read from its rollup
    time_machine.move_to(T0, tick=False)
    assert h not in rollups.hours_to_roll()
    assert next(x for x in rollups.hour_data(h) if x.hour == h).source == "rollup"
    # a recompute (a late outcome) keeps the fact, and does not make it earlier or later
    rollups.mark_hour_dirty(h + 10 * MIN)
    rollups.rollup_due()
    assert _rollup_values(h)["settled_at"] == h + HOUR + 12 * MIN


def _pruned_hour(rig, settings, time_machine, n=2):
    """An hour with `n` fallbacks, rolled up by the beat, then pruned and sealed (raw days: 2)."""
    settings.TOWEROPS_DECISION_RAW_DAYS = 2
    h = T0.replace(minute=0) - 72 * HOUR
    ds = [rig.decision(h + (10 + i) * MIN, action="fallback", model="remote:gpt-4o-mini", urgency="background",
                       response_ms=800, rating=0.5) for i in range(n)]
    time_machine.move_to(h + HOUR + 12 * MIN, tick=False)
    rollups.rollup_due()
    time_machine.move_to(T0, tick=False)
    return h, ds


def test_a_sealed_hour_is_never_recomputed(rig, settings, time_machine):
    h, _ = _pruned_hour(rig, settings, time_machine)
    rig.load(h - HOUR)  # raw data older than the hour: it is not "before the oldest raw row"
    assert retention.prune_raw_decisions() == 2
    sealed = _rollup_values(h)
    assert sealed["sealed_at"] == T0 and sealed["decisions"] == 2 and sealed["settled_at"] is not None
    assert rollups.rollup_hour(h).decisions == 2  # a forced re-roll returns the row as it is
    for timeout in (60, 600, 7200):
        settings.TOWEROPS_LOAD_TIMEOUT_S = timeout
        assert h not in rollups.hours_to_roll()
        rollups.rollup_due()
        rollups.rollup_range(h - HOUR, h + 2 * HOUR)
        assert _rollup_values(h) == sealed
    assert rollups.mark_hour_dirty(h + 5 * MIN) == h  # not marked: the hour is returned as sealed
    assert _rollup_values(h) == sealed
    assert fallbacks("7d") == (2, 2, 1.0)


def test_the_database_refuses_to_mark_a_sealed_hour_for_recompute(rig, settings, time_machine):
    """What a migration like 0005 (every rolled-up hour marked dirty) would do to a sealed hour."""
    from django.db import IntegrityError, connection, transaction

    h, _ = _pruned_hour(rig, settings, time_machine)
    retention.prune_raw_decisions()
    for sql in ("UPDATE models_registry_slohourlyrollup SET dirty_at = now() WHERE computed_at IS NOT NULL",
                "UPDATE models_registry_slohourlyrollup SET settled_at = NULL",
                "UPDATE models_registry_slohourlyrollup SET computed_at = NULL"):
        with pytest.raises(IntegrityError, match="slorollup_sealed_is_final"), transaction.atomic():
            connection.cursor().execute(sql)
    assert _rollup_values(h)["dirty_at"] is None


def test_an_outcome_for_a_decision_of_a_sealed_hour_is_refused_and_nothing_is_stored(
        rig, settings, client, make_key, time_machine):
    """An hour an older release pruned in part (its cut went through the hour): migration 0009
    seals it, and an outcome for a decision it still holds is a 409 saying why."""
    import importlib

    from django.apps import apps
    from django.db import connection

    h, (d1, d2) = _pruned_hour(rig, settings, time_machine)
    m.SelectionDecision.objects.filter(pk=d1.pk).delete()  # what the old prune did to the first half
    m.SloHourlyRollup.objects.filter(hour=h).update(settled_at=None)  # the columns 0009 adds start empty
    migration = importlib.import_module("models_registry.migrations.0009_rollup_sealed")
    with connection.schema_editor() as editor:
        migration.record_settled_and_sealed(apps, editor)
    row = _rollup_values(h)
    assert row["sealed_at"] is not None and row["decisions"] == 2 and row["settled_at"] == row["computed_at"]
    before = reports.quality_report("7d")["rows"]

    key = make_key("select")
    r = client.post(f"/api/v1/decisions/{d2.pk}/outcome", {"response_ms": 100, "success": True, "rating": 1.0},
                    content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {key}")
    assert r.status_code == 409, r.content
    detail = r.json()["detail"]
    assert f"decision {d2.pk}" in detail and "pruned" in detail and "nothing was stored" in detail
    assert m.DecisionOutcome.objects.get(decision=d2).response_ms == 800  # the old outcome, unchanged
    assert _rollup_values(h) == row
    assert reports.quality_report("7d")["rows"] == before
    assert fallbacks("7d") == (2, 2, 1.0)
    assert retention.prune_raw_decisions() == 1  # the rest of a sealed hour goes at the next prune
    assert fallbacks("7d") == (2, 2, 1.0)


def test_the_prune_waits_for_hours_that_are_dirty_unsettled_or_miscounted(rig, settings, time_machine):
    settings.TOWEROPS_DECISION_RAW_DAYS = 2
    h = T0.replace(minute=0) - 72 * HOUR
    unsettled, dirty, miscounted = h, h + HOUR, h + 2 * HOUR
    for x in (unsettled, dirty, miscounted):
        rig.decision(x + 10 * MIN)
    time_machine.move_to(h + HOUR + 5 * MIN, tick=False)
    rollups.rollup_hour(unsettled)
    time_machine.move_to(h + 4 * HOUR, tick=False)
    rollups.rollup_hour(dirty)
    rollups.rollup_hour(miscounted)
    rollups.mark_hour_dirty(dirty + 10 * MIN)
    rig.decision(miscounted + 20 * MIN)  # written into the hour after its rollup: the rollup misses it
    time_machine.move_to(T0, tick=False)
    assert retention.prune_raw_decisions() == 0
    assert m.SelectionDecision.objects.count() == 4
    assert not m.SloHourlyRollup.objects.filter(sealed_at__isnull=False).exists()
    assert _rollup_values(miscounted)["dirty_at"] == T0  # the prune asks the beat to recompute it
    rollups.rollup_due()  # the beat catches up: all three qualify
    assert retention.prune_raw_decisions() == 4
    assert m.SloHourlyRollup.objects.filter(sealed_at__isnull=False).count() == 3


def test_a_load_event_in_the_next_hour_that_points_at_a_pruned_decision_seals_that_hour_too(
        rig, settings, time_machine):
    """The load event keeps its row but loses its decision (the thrash report's task type): its
    hour's raw rows change, so that hour is sealed with the pruned one and keeps its labels."""
    settings.TOWEROPS_DECISION_RAW_DAYS = 2
    h = T0.replace(minute=0) - 49 * HOUR  # the next hour ends 47 h ago: not past the cutoff
    asker = rig.decision(h + HOUR - dt.timedelta(seconds=1), action="load", task="analysis", urgency="batch")
    rig.load(h + HOUR + dt.timedelta(seconds=1), decision=asker)
    later = rig.decision(h + HOUR + 10 * MIN)
    time_machine.move_to(h + 2 * HOUR + 12 * MIN, tick=False)
    rollups.rollup_due()
    time_machine.move_to(T0, tick=False)
    thrash = reports.thrash_report("7d")["by_task_type"]
    assert thrash == [{"task_type": "analysis", "loads": 1, "thrash_loads": 0, "evictions": 0, "unloads": 0, "failures": 0}]
    assert retention.prune_raw_decisions() == 1
    assert _rollup_values(h + HOUR)["sealed_at"] == T0
    assert m.SelectionDecision.objects.filter(pk=later.pk).exists()  # its own hour is not past the cutoff
    with pytest.raises(errors.HourSealed):
        outcomes.record_outcome(later.pk, 500, True, None)
    rollups.rollup_due()
    assert reports.thrash_report("7d")["by_task_type"] == thrash


def test_pruning_a_rated_decision_keeps_what_its_rating_taught(rig, settings, time_machine):
    """The quality signals of pruned decisions go with them; their evidence stays summed, so the
    observed quality is the same after the prune."""
    from models_registry.learning import quality, signals

    settings.TOWEROPS_DECISION_RAW_DAYS = 2
    now = dt.datetime(2026, 6, 10, 12, 30, tzinfo=dt.timezone.utc)
    h = now.replace(minute=0) - 72 * HOUR
    rig.load(h - 2 * HOUR)
    d = rig.decision(h + 10 * MIN, task="chat", model="llama3.2:3b")
    assert signals.record_rating(d.pk, 0.0, h + 11 * MIN)
    before = {(o.model, o.task): o.estimate for o in quality.observed()}
    time_machine.move_to(h + HOUR + 12 * MIN, tick=False)
    rollups.rollup_due()
    time_machine.move_to(now, tick=False)
    rollups.rollup_due()
    assert retention.prune_raw_decisions() == 1
    assert not m.QualitySignal.objects.exists()
    assert {(o.model, o.task): o.estimate for o in quality.observed()} == before
    assert before[("llama3.2:3b", "chat")].count == 1
