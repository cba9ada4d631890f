"""Rollups and reports on real PostgreSQL, with a small history computed by hand.

Hour H0 (5 hours ago) and H1 (4 hours ago), usable VRAM 24576 MiB:

H0  interactive: outcomes with a first token at 0.4 s (response 1.0 s), response 2.0 s only (no
                 first-token time: an upper bound), first token 0.9 s measured by the gateway
                 (response 3.0 s; missed its floor); one without outcome, expected wait 6.0 s
    critical:    expected wait 0.5 s
    (every decision also expects 10 s of generation after its wait: never part of the p95)
    background:  5 decisions, one a fallback (missed its floor); batch: 1 load decision
    -> 11 decisions, 9 met the floor
    loads: 2 load (one asked by the batch decision), 1 evict, 1 fail
    R1 (6144 MiB) resident all of H0 and serving; R2 (4096 MiB) from H0+30 min to H1, never serving
H1  2 background decisions served by R1 (both met); R1 ends at H1+30 min; no interactive request

R1 was requested 10 min before H0: the hour before H0 is observed too (R1 resident, serving nobody).

24 h window: time-to-first-token p95 of [0.4, 0.5, 0.9, 2.0, 6.0] = 6.0 (5th of 5; 2 first-token,
one of them measured by the gateway, 1 response, 2 estimated); 13 decisions, 1 fallback, 11 met; 2 loads over 3 observed hours = 0.667/h;
VRAM (6144·3600 + 6144·1800) / (24576·3·3600) = 0.125.
"""
from __future__ import annotations

import datetime as dt

import pytest

from models_registry import errors, timeutil
from models_registry import models as m
from models_registry.selection import outcomes
from models_registry.slo import metrics as M
from models_registry.slo import reports, retention, rollups

from .conftest import base_hour

pytestmark = pytest.mark.django_db
MIN = dt.timedelta(minutes=1)
HOUR = dt.timedelta(hours=1)


@pytest.fixture
def history(rig):
    h0 = base_hour(5)
    h1 = h0 + HOUR
    r1 = rig.residency(h0 - 10 * MIN, h1 + 30 * MIN, 6144, model="qwen2.5-coder:7b")
    rig.residency(h0 + 30 * MIN, h1, 4096, model="llama3.2:3b", endpoint="tower-amd")
    d = rig.decision
    d(h0 + 1 * MIN, response_ms=1000, first_token_ms=400, wait=9.0, residency=r1, model="qwen2.5-coder:7b",
      rating=0.9)
    d(h0 + 2 * MIN, response_ms=2000, wait=9.0, residency=r1, model="qwen2.5-coder:7b", rating=0.7)
    d(h0 + 3 * MIN, response_ms=3000, first_token_ms=900, wait=9.0, met=False,
      measured_by=m.DecisionOutcome.MeasuredBy.GATEWAY)
    late = d(h0 + 4 * MIN, wait=6.0)
    d(h0 + 5 * MIN, urgency="critical", wait=0.5)
    for i in range(5):
        d(h0 + (10 + i) * MIN, urgency="background", wait=30.0,
          action="fallback" if i == 0 else "use_loaded", met=i != 0,
          model="remote:gpt-4o-mini" if i == 0 else "llama3.2:3b",
          task="code_generation")
    loader = d(h0 + 20 * MIN, urgency="batch", wait=40.0, action="load", task="analysis")
    rig.load(h0 + 20 * MIN, "load", decision=loader, duration=12.0)
    rig.load(h0 + 25 * MIN, "load", duration=4.0)
    rig.load(h0 + 26 * MIN, "evict", duration=1.0)
    rig.load(h0 + 27 * MIN, "fail", duration=None)
    d(h1 + 5 * MIN, urgency="background", wait=30.0, residency=r1, model="qwen2.5-coder:7b")
    d(h1 + 6 * MIN, urgency="background", wait=30.0, residency=r1, model="qwen2.5-coder:7b")
    return {"h0": h0, "h1": h1, "late": late, "rig": rig}


def values(report):
    return {x["name"]: x for x in report["metrics"]}


def test_24h_window_by_hand(history):
    r = values(reports.slo_report("24h"))
    assert r[M.P95]["value"] == 6.0
    assert r[M.P95]["detail"] == {"source": "mixed", "first_token": 2, "response": 1, "estimated": 2, "unknown": 0,
                                  "samples": 5, "first_token_gateway": 1, "first_token_caller": 1}
    assert r[M.P95]["met"] is False
    assert r[M.QUALITY_MET]["value"] == pytest.approx(11 / 13)  # 13 decisions, 2 missed the floor
    assert r[M.FALLBACK_RATE]["value"] == pytest.approx(1 / 13)
    assert r[M.FALLBACK_RATE]["met"] is False
    assert r[M.LOADS_PER_HOUR]["value"] == pytest.approx(2 / 3) and r[M.LOADS_PER_HOUR]["met"] is True
    assert r[M.VRAM_EFFICIENCY]["value"] == pytest.approx((6144 * 3600 + 6144 * 1800) / (24576 * 3 * 3600))
    assert r[M.VRAM_EFFICIENCY]["value"] == 0.125
    assert r[M.VRAM_EFFICIENCY]["met"] is False
    # the series: 24 complete hours + the current one; H1 had no interactive request
    series = {p["hour"]: p for p in r[M.P95]["series"]}
    assert len(series) == 25
    assert series[history["h0"]]["value"] == 6.0
    assert series[history["h1"]]["value"] is None and series[history["h1"]]["met"] is None
    q = {p["hour"]: p["value"] for p in r[M.QUALITY_MET]["series"]}
    assert q[history["h1"]] == 1.0
    empty_hour = history["h1"] + HOUR
    assert all(next(p for p in x["series"] if p["hour"] == empty_hour)["value"] is None for x in r.values())


def test_rollups_give_the_same_figures_and_are_idempotent(history):
    before = reports.slo_report("24h")
    assert before["hours_from_rollups"] == 0
    n = rollups.rollup_range(history["h0"] - 2 * HOUR, history["h1"] + 3 * HOUR)
    assert n == 6
    rows1 = list(m.SloHourlyRollup.objects.order_by("hour").values())
    rollups.rollup_range(history["h0"] - 2 * HOUR, history["h1"] + 3 * HOUR)
    rows2 = list(m.SloHourlyRollup.objects.order_by("hour").values())
    strip = lambda rows: [{k: v for k, v in r.items() if k != "computed_at"} for r in rows]  # noqa: E731
    assert strip(rows1) == strip(rows2) and len(rows2) == 6
    after = reports.slo_report("24h")
    assert after["hours_from_rollups"] == 6
    assert [(x["name"], x["value"]) for x in after["metrics"]] == [(x["name"], x["value"]) for x in before["metrics"]]
    h0 = m.SloHourlyRollup.objects.get(hour=history["h0"])
    assert (h0.decisions, h0.fallbacks, h0.loads, h0.evictions, h0.failures) == (11, 1, 2, 1, 1)
    assert (h0.interactive_first_token, h0.interactive_first_token_gateway) == (2, 1)
    assert values(after)[M.P95]["detail"]["first_token_gateway"] == 1  # read from the rollup
    assert h0.vram_used_mib_s == 6144 * 3600 and h0.vram_usable_mib_s == 24576 * 3600


def test_the_migration_counts_the_gateways_first_tokens_of_hours_rolled_up_before_it(history):
    """0013's backfill gives a rollup made without the split the count compute_hour gives it."""
    import importlib

    from django.db import connection

    backfill = importlib.import_module("models_registry.migrations.0013_rollup_first_token_gateway").BACKFILL_SQL
    rollups.rollup_range(history["h0"], history["h1"] + HOUR)
    m.SloHourlyRollup.objects.update(interactive_first_token_gateway=0)  # as the migration finds them
    with connection.cursor() as cur:
        cur.execute(backfill)
    counts = dict(m.SloHourlyRollup.objects.values_list("hour", "interactive_first_token_gateway"))
    assert counts == {history["h0"]: 1, history["h1"]: 0}


def test_late_outcome_recomputes_its_hour(history):
    rollups.rollup_range(history["h0"], history["h1"] + HOUR)
    assert values(reports.slo_report("24h"))[M.P95]["value"] == 6.0
    late = history["late"]
    outcomes.record_outcome(late.pk, 1500, True, None)
    rollups.mark_hour_dirty(late.created_at)  # what record_outcome will call
    row = m.SloHourlyRollup.objects.get(hour=history["h0"])
    assert row.dirty_at is not None
    # read from raw rows at once: the late 1.5 s response (no first token) replaces the 6.0 s
    # expected wait: [0.4, 0.5, 0.9, 1.5, 2.0] -> 2.0
    report = reports.slo_report("24h")
    assert values(report)[M.P95]["value"] == 2.0
    assert values(report)[M.P95]["detail"]["response"] == 2
    assert values(report)[M.P95]["detail"]["estimated"] == 1
    assert history["h0"] in rollups.hours_to_roll()
    rollups.rollup_due()
    row.refresh_from_db()
    assert row.dirty_at is None
    assert row.interactive_first_token == 2 and row.interactive_observed == 2 and row.interactive_estimated == 1
    report = reports.slo_report("24h")
    assert values(report)[M.P95]["value"] == 2.0
    assert values(report)[M.P95]["met"] is True
    assert history["h0"] not in rollups.hours_to_roll()


def test_a_first_token_time_is_preferred_to_the_response_time(history):
    # Reported again with the first token at 0.3 s of a 7 s answer: the TTFT is 0.3 s, not 7 s:
    # [0.3, 0.4, 0.5, 0.9, 2.0] -> 2.0 (with the response time it would be [.., 2.0, 7.0] -> 7.0).
    late = history["late"]
    outcomes.record_outcome(late.pk, 7000, True, None, first_token_ms=300)
    r = values(reports.slo_report("24h"))[M.P95]
    assert r["value"] == 2.0
    assert (r["detail"]["first_token"], r["detail"]["response"], r["detail"]["estimated"]) == (3, 1, 1)
    outcomes.record_outcome(late.pk, 7000, True, None)  # reported again without it: the upper bound
    assert values(reports.slo_report("24h"))[M.P95]["value"] == 7.0


def test_a_first_token_after_the_response_is_refused(history):
    with pytest.raises(errors.BadInput, match="first_token_ms"):
        outcomes.record_outcome(history["late"].pk, 1000, True, None, first_token_ms=1001)
    assert not m.DecisionOutcome.objects.filter(decision=history["late"]).exists()


def test_mark_hour_dirty_without_rollup_and_for_the_current_hour(history):
    rollups.mark_hour_dirty(history["h0"] + 5 * MIN)
    row = m.SloHourlyRollup.objects.get(hour=history["h0"])
    assert row.computed_at is None and row.dirty_at is not None
    assert values(reports.slo_report("24h"))[M.P95]["value"] == 6.0  # placeholder ignored: raw rows
    rollups.mark_hour_dirty(dt.datetime.now(dt.timezone.utc))
    assert m.SloHourlyRollup.objects.count() == 1


def test_empty_database_is_no_data(rig):
    r = reports.slo_report("30d")
    assert len(r["metrics"][0]["series"]) == 721
    for x in r["metrics"]:
        assert x["value"] is None and x["met"] is None, x
        assert x["target"] is not None  # seeded by the migration
    assert rollups.hours_to_roll() == []


def test_targets_are_data(history):
    t = m.SloTarget.objects.get(name=M.P95)
    t.target = 7.0
    t.save()
    assert values(reports.slo_report("24h"))[M.P95]["met"] is True
    m.SloTarget.objects.filter(name=M.P95).update(enabled=False)
    assert values(reports.slo_report("24h"))[M.P95]["met"] is None
    assert t.history.count() == 1  # simple-history records edits


def test_fallback_and_thrash_reports(history):
    f = reports.fallbacks_report("24h")
    assert (f["decisions"], f["fallbacks"]) == (13, 1)
    tasks = {x["task_type"]: x for x in f["by_task_type"]}
    assert (tasks["code_generation"]["decisions"], tasks["code_generation"]["fallbacks"]) == (5, 1)
    assert tasks["code_generation"]["rate"] == 0.2
    assert sum(x["fallbacks"] for x in f["by_model"]) == 1
    hours = {x["hour"]: x for x in f["by_hour"]}
    assert hours[history["h0"]]["fallbacks"] == 1 and hours[history["h1"]]["fallbacks"] == 0
    t = reports.thrash_report("24h")
    assert (t["loads"], t["evictions"], t["failures"]) == (2, 1, 1)
    assert (t["loads_per_hour"], t["observed_hours"]) == (pytest.approx(2 / 3), 3.0)
    by_task = {x["task_type"]: x for x in t["by_task_type"]}
    assert by_task["analysis"]["loads"] == 1 and by_task[None]["loads"] == 1
    by_model = {x["model"]: x for x in t["by_model"]}
    assert by_model["llama3.2:3b"]["loads"] == 2


def test_quality_report_observed_vs_admin(history):
    q = reports.quality_report("30d")
    (row,) = q["rows"]
    assert (row["model"], row["task_type"], row["ratings"]) == ("qwen2.5-coder:7b", "general", 2)
    assert row["observed_mean"] == pytest.approx(0.8)
    admin = m.QualityScore.objects.filter(model__tag="qwen2.5-coder:7b", task_type__name="general").first()
    assert row["admin_score"] == (admin.score if admin else None)


def test_retention_deletes_only_rolled_up_old_decisions(history, settings):
    old = base_hour(72)
    rig = history["rig"]
    d_old = rig.decision(old + 5 * MIN, urgency="background", action="fallback", met=False, rating=None)
    ev = rig.load(old + 6 * MIN, decision=d_old)
    m.DecisionOutcome.objects.create(decision=d_old, reported_at=old, response_ms=100, success=True)
    unrolled = rig.decision(old + HOUR + 5 * MIN, urgency="background")
    settings.TOWEROPS_DECISION_RAW_DAYS = 2
    rollups.rollup_hour(old)
    before = reports.slo_report("7d")
    assert retention.prune_raw_decisions() == 1
    assert not m.SelectionDecision.objects.filter(pk=d_old.pk).exists()
    assert m.SelectionDecision.objects.filter(pk=unrolled.pk).exists()
    ev.refresh_from_db()
    assert ev.decision_id is None
    after = reports.slo_report("7d")
    assert [x["value"] for x in after["metrics"]] == [x["value"] for x in before["metrics"]]
    settings.TOWEROPS_DECISION_RAW_DAYS = 0
    rollups.rollup_hour(old + HOUR)
    assert retention.prune_raw_decisions() == 0


def test_celery_tasks_are_thin_wrappers(history, settings):
    from models_registry.slo import tasks

    assert tasks.rollup_hour.apply(args=[history["h0"].isoformat()]).get().startswith("rolled up")
    assert tasks.rollup_hour(history["h0"].replace(tzinfo=None).isoformat()).endswith("11 decisions")
    assert m.SloHourlyRollup.objects.get(hour=history["h0"]).decisions == 11
    assert tasks.rollup_hour(rollups.floor_hour(dt.datetime.now(dt.timezone.utc)).isoformat()) == "hour not over yet"
    assert tasks.rollup_due_hours() >= 2  # H1 and the hours around it
    # Everything was rolled; only the previous hour stays due while it settles (the first
    # SETTLE_S of an hour: a load requested before the hour ended may still be recorded).
    now = timeutil.utcnow()
    prev = rollups.floor_hour(now) - dt.timedelta(hours=1)
    settling = now < prev + dt.timedelta(hours=1, seconds=rollups.settle_s())
    assert rollups.hours_to_roll(now) == ([prev] if settling else [])
    assert m.SloHourlyRollup.objects.get(hour=prev).computed_at is not None
    settings.TOWEROPS_DECISION_RAW_DAYS = 30
    assert tasks.prune_decisions() == 0
    assert "slo-rollups" in settings.CELERY_BEAT_SCHEDULE and "prune-decisions" in settings.CELERY_BEAT_SCHEDULE


def test_cached_rollups_are_reread_once_their_row_changes(history):
    """hour_data keeps the rollup rows it parsed (rollups.rollup_rows), by row version: a row
    recomputed — even at the same `now`, so with the same computed_at — is read again."""
    now = timeutil.utcnow()
    rollups.rollup_range(history["h0"], history["h1"] + HOUR, now)
    first = rollups.rollup_rows(history["h0"], history["h1"] + HOUR)
    assert rollups.rollup_rows(history["h0"], history["h1"] + HOUR)[history["h0"]][1] is first[history["h0"]][1]
    assert values(reports.slo_report("24h"))[M.P95]["value"] == 6.0
    outcomes.record_outcome(history["late"].pk, 1500, True, None)
    rollups.rollup_hour(history["h0"], now)  # same computed_at as before
    again = rollups.rollup_rows(history["h0"], history["h1"] + HOUR)
    assert again[history["h0"]][1] is not first[history["h0"]][1]
    assert again[history["h1"]][1] is first[history["h1"]][1]  # unchanged: not parsed again
    report = reports.slo_report("24h")
    assert report["hours_from_rollups"] == 2
    # first tokens 0.4 and 0.9 s, response-only 2.0 and (the late one) 1.5 s, critical's wait 0.5 s:
    # the nearest-rank p95 of five is the largest, 2.0 (it was the late one's 6.0 s expected wait).
    assert values(report)[M.P95]["value"] == 2.0


def test_one_read_of_the_hours_serves_every_report_of_a_page(history):
    now = timeutil.utcnow()
    data = rollups.hour_data(rollups.window_bounds("24h", now)[0], now)
    assert reports.slo_report("24h", now, data) == reports.slo_report("24h", now)
    assert reports.fallbacks_report("24h", now, data) == reports.fallbacks_report("24h", now)
    assert reports.thrash_report("24h", now, data) == reports.thrash_report("24h", now)


def test_window_label_sums_equal_an_hour_by_hour_sum_in_order():
    """_sum_counts keeps the sum of the leading cached rollup hours between pages: it must give
    the same counts, in the same first-appearance order, as adding every hour in turn."""
    import dataclasses

    h = base_hour(10)

    def hour(i, source, counts):
        return dataclasses.replace(rollups._empty(h + i * HOUR), source=source, decision_counts=counts)

    data = [hour(0, "empty", {}), hour(1, "rollup", {"b": 1, "a": 2}), hour(2, "rollup", {"c": 1}),
            hour(3, "raw", {"d": 5, "a": 1}), hour(4, "rollup", {"b": 7, "e": 1})]

    def naive(hours):
        out = {}
        for x in hours:
            for k, n in x.decision_counts.items():
                out[k] = out.get(k, 0) + n
        return list(out.items())

    for _ in range(2):  # computed, then from the kept prefix sum
        assert list(reports._sum_counts(data, "decision_counts").items()) == naive(data)
    changed = [data[0], hour(1, "rollup", {"a": 1}), *data[2:]]  # a row re-read: a new object
    assert list(reports._sum_counts(changed, "decision_counts").items()) == naive(changed)
