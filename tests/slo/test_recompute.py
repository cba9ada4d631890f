"""The API against an independent recomputation (tests/slo/recompute.py: the README's definitions,
from the records the test wrote) across rollups, late outcomes, pruning and timeout changes, and
over 40 time-travelled days with 30 days of raw decisions.

Either side changing alone fails these tests (test_the_comparison_fails_when_either_side_changes
shows it): a definition changed in metrics.py, a report losing a pruned hour, or recompute.py.
"""
from __future__ import annotations

import datetime as dt

import pytest

from models_registry import models as m
from models_registry.slo import retention, rollups

from .recompute import Dec, Ledger, compare_all

pytestmark = pytest.mark.django_db
UTC = dt.timezone.utc
MIN = dt.timedelta(minutes=1)
HOUR = dt.timedelta(hours=1)
DAY = dt.timedelta(days=1)


@pytest.fixture
def ledger(rig, client, make_key):
    return Ledger(rig, client, make_key("select"))


# --------------------------------------------------------------------------- scenarios


T0 = dt.datetime(2026, 3, 10, 15, 20, tzinfo=UTC)


def _three_days(ledger: Ledger, time_machine) -> dict:
    """Three days up to T0: every source of the p95, fallbacks, loads of every kind, residencies
    across hours, decisions on hour boundaries, ratings, and decisions still without outcome."""
    L = ledger
    day0 = T0.replace(hour=0, minute=0) - 2 * DAY
    time_machine.move_to(day0, tick=False)
    warm = L.residency(day0, 2048)
    made = []
    for i in range((T0 - day0) // HOUR):  # the hours before T0's
        at = day0 + i * HOUR
        if i % 5 == 4:
            continue  # some hours have no decision (observed anyway: a model is resident)
        time_machine.move_to(at + 10 * MIN, tick=False)
        made.append(L.decide(at + 10 * MIN, residency=warm, wait_ms=200 + 37 * i,
                             response_ms=900 + 50 * i if i % 3 == 0 else None,
                             first_token_ms=150 + 11 * i if i % 6 == 0 else None, rating=0.5 + (i % 5) / 10))
        if i % 4 == 0:
            made.append(L.decide(at + 20 * MIN, urgency="background", action="fallback", met=False,
                                 model="remote:gpt-4o-mini", task="code_generation", wait_ms=1500, us=250))
        if i % 7 == 0:
            asker = L.decide(at + 30 * MIN, urgency="critical", action="load", task="analysis",
                             model="qwen2.5-coder:7b", wait_ms=4500 + 100 * i, us=900)
            loaded = L.residency(at + 30 * MIN, 4608, model="qwen2.5-coder:7b", endpoint="tower-amd")
            m.SelectionDecision.objects.filter(pk=asker.id).update(residency_id=loaded.id)
            asker.residency = loaded.id
            L.load(at + 30 * MIN, decision=asker, model="qwen2.5-coder:7b", endpoint="tower-amd", duration=8.0 + i)
            L.end(loaded, at + 150 * MIN)
            L.load(at + 150 * MIN, "evict", model="qwen2.5-coder:7b", endpoint="tower-amd", duration=1.0)
        if i % 11 == 0:
            L.load(at + 40 * MIN, "fail", model="mistral:7b", duration=None)
            L.load(at + 45 * MIN, "unload", model="tinyllama", duration=0.5)
        made.append(L.decide(at + HOUR - dt.timedelta(microseconds=1), urgency="batch", wait_ms=None, us=60))
    time_machine.move_to(T0 - 5 * MIN, tick=False)
    made.append(L.decide(T0 - 5 * MIN, urgency="critical", residency=warm, wait_ms=4950))  # the current hour
    time_machine.move_to(T0, tick=False)
    return {"made": made, "warm": warm}


def test_the_api_equals_the_recomputation_across_rollups_late_outcomes_pruning_and_timeouts(
        ledger, reader, client, settings, time_machine):
    settings.TOWEROPS_LOAD_TIMEOUT_S = 600
    settings.TOWEROPS_DECISION_RAW_DAYS = 1  # the 7-day window reaches back past the retention
    made = _three_days(ledger, time_machine)["made"]
    windows = ("24h", "7d")
    compare_all(reader, client, ledger, windows)  # everything from raw rows

    rollups.rollup_due()
    assert not rollups.hours_to_roll()
    compare_all(reader, client, ledger, windows)  # from rollups

    yesterday = [d for d in made if T0 - 30 * HOUR < d.at < T0 - 20 * HOUR and d.urgency == "interactive"
                 and d.response_ms is None]
    assert len(yesterday) > 3
    assert ledger.late_outcome(yesterday[0], 7000, first_token_ms=6100, rating=0.2) == 200
    assert ledger.late_outcome(yesterday[1], 300) == 200
    assert ledger.late_outcome(yesterday[2], 12_000, rating=1.0) == 200
    compare_all(reader, client, ledger, windows)  # the dirty hours read raw
    rollups.rollup_due()
    compare_all(reader, client, ledger, windows)

    assert retention.prune_raw_decisions() > 20
    sealed = m.SloHourlyRollup.objects.filter(sealed_at__isnull=False).count()
    assert sealed > 20
    compare_all(reader, client, ledger, windows)  # pruned hours: from their sealed rollups
    old = next(d for d in made if d.at < T0 - 2 * DAY)
    assert ledger.late_outcome(old, 100) == 404  # pruned: refused, not stored, not counted
    compare_all(reader, client, ledger, windows)

    for timeout in (3600, 60, 600):
        settings.TOWEROPS_LOAD_TIMEOUT_S = timeout
        compare_all(reader, client, ledger, windows)
        time_machine.shift(20 * MIN)
        rollups.rollup_due()
        compare_all(reader, client, ledger, windows)
    assert m.SloHourlyRollup.objects.filter(sealed_at__isnull=False).count() == sealed


def test_the_comparison_fails_when_either_side_changes(ledger, reader, client, settings, time_machine):
    """The recomputation is not vacuous: one decision changed in the ledger alone, or one sealed
    rollup changed in the database alone, and the comparison fails."""
    settings.TOWEROPS_DECISION_RAW_DAYS = 1
    made = _three_days(ledger, time_machine)["made"]
    rollups.rollup_due()
    retention.prune_raw_decisions()
    compare_all(reader, client, ledger, ("7d",))

    d = next(x for x in made if x.action == "use_loaded" and x.at < T0 - 2 * DAY)
    d.action = "fallback"
    with pytest.raises(AssertionError):
        compare_all(reader, client, ledger, ("7d",))
    d.action = "use_loaded"
    compare_all(reader, client, ledger, ("7d",))

    row = m.SloHourlyRollup.objects.filter(sealed_at__isnull=False, fallbacks__gt=0).first()
    m.SloHourlyRollup.objects.filter(pk=row.pk).update(fallbacks=row.fallbacks - 1)
    with pytest.raises(AssertionError):
        compare_all(reader, client, ledger, ("7d",))


def test_forty_days_with_thirty_days_of_raw_decisions(ledger, reader, client, settings, time_machine):
    """40 days, time-travelled, with TOWEROPS_DECISION_RAW_DAYS=30: the beat rolls up and prunes
    as it would, outcomes arrive up to 31 days late (the last ones refused: their hours were
    pruned), the load timeout goes from 600 s to 3000 s on day 12 and to 120 s on day 26. Every
    day, every 30-day report and every counter equals the recomputation."""
    settings.TOWEROPS_DECISION_RAW_DAYS = 30
    settings.TOWEROPS_LOAD_TIMEOUT_S = 600
    L = ledger
    start = dt.datetime(2026, 1, 5, tzinfo=UTC)
    time_machine.move_to(start, tick=False)
    warm = L.residency(start, 2048)
    days: list[dict[str, Dec]] = []
    refused = 0

    def at(day, hh, mm, ss=0):
        t = start + day * DAY + dt.timedelta(hours=hh, minutes=mm, seconds=ss)
        time_machine.move_to(t, tick=False)
        return t

    def beat():
        rollups.rollup_due()

    for day in range(40):
        if day == 12:
            settings.TOWEROPS_LOAD_TIMEOUT_S = 3000
        if day == 26:
            settings.TOWEROPS_LOAD_TIMEOUT_S = 120
        at(day, 0, 12)
        beat()
        at(day, 0, 20)
        retention.prune_raw_decisions()
        today = {}
        t = at(day, 2, 10)
        today["night"] = L.decide(t, residency=warm, wait_ms=300 + 37 * day,
                                  response_ms=900 + 10 * day if day % 3 == 0 else None,
                                  first_token_ms=200 + day if day % 3 == 0 else None)
        t = at(day, 9, 40)
        fell = day % 4 == 0
        today["morning"] = L.decide(t, urgency="background", action="fallback" if fell else "use_loaded",
                                    met=not fell, model="remote:gpt-4o-mini" if fell else "llama3.2:3b",
                                    residency=None if fell else warm, task="code_generation", wait_ms=2500, us=400)
        # A load requested at 10:59 and recorded when it finishes, after the beat's 11:00 run.
        at(day, 11, 0, 20)
        beat()
        t = at(day, 11, 0, 40)
        if day % 3 == 0:
            L.load(t - 100 * dt.timedelta(seconds=1), model="mistral:7b", duration=100.0)
        at(day, 11, 12)
        beat()
        if day % 7 == 3:
            L.load(at(day, 13, 0), "fail", model="tinyllama", duration=None)
        t = at(day, 17, 25)
        if day % 5 == 0:
            today["evening"] = asker = L.decide(t, urgency="critical", action="load", task="analysis",
                                                model="qwen2.5-coder:7b", wait_ms=4000 + 113 * day, us=1500)
            loaded = L.residency(t, 4608, model="qwen2.5-coder:7b", endpoint="tower-amd")
            m.SelectionDecision.objects.filter(pk=asker.id).update(residency_id=loaded.id)
            asker.residency = loaded.id
            L.load(t, decision=asker, model="qwen2.5-coder:7b", endpoint="tower-amd", duration=9.0)
        else:
            today["evening"] = L.decide(t, urgency="critical" if day % 2 else "interactive", residency=warm,
                                        wait_ms=4000 + 113 * day)
        days.append(today)
        at(day, 18, 0)
        late = [(1, "night", 1100 + day, None, 0.9), (2, "night", 600, 450, None),
                (10, "morning", 3000, None, 0.4), (29, "evening", 5200 + day, 800, 0.7),
                (31, "night", 100, None, None)]
        for back, which, response, first, rating in late:
            if day - back >= 0:
                status = L.late_outcome(days[day - back][which], response, first, rating)
                if back == 31:
                    assert status == 404  # its hour was pruned a day ago
                    refused += 1
                else:
                    assert status == 200
        at(day, 18, 5)
        beat()
        t = at(day, 20, 5)
        if day % 5 == 0:  # the evening's load evicted for another
            L.end(loaded, t)
            L.load(t, "evict", model="qwen2.5-coder:7b", endpoint="tower-amd", duration=1.0)
        at(day, 20, 30)
        compare_all(reader, client, L)
    assert refused == 9
    # By day 39's prune, days 0-8 are past the 30 days: their 3 hours a day with decisions are sealed.
    assert m.SloHourlyRollup.objects.filter(sealed_at__isnull=False).count() == 27
    assert not m.SelectionDecision.objects.filter(created_at__lt=start + 9 * DAY).exists()
    assert m.SelectionDecision.objects.filter(created_at__gte=start + 9 * DAY).count() == 31 * 3
