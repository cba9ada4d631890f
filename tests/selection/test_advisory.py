"""Advisory selections stop leaking (POST /api/v1/select): each books its expected service time on
the model; an outcome ends the booking at once, and a booking nobody uses expires after its
expected response time plus a grace, so the busy estimate forgets it."""
from __future__ import annotations

import datetime as dt

import pytest
from api.conftest import put_loaded

from models_registry import models as m
from models_registry.policy import SelectionRequest
from models_registry.selection import advisory, outcomes, service

pytestmark = pytest.mark.django_db

REQ = SelectionRequest("general", "critical", expected_output_tokens=80)  # 1 s on llama3.2:3b (80 tokens/s)


def _select(now):
    return service.select_and_record(REQ, now=now)


def test_unused_selections_queue_then_expire(tower, monkeypatch, settings):
    settings.TOWEROPS_ADVISORY_GRACE_S = 5.0
    r = put_loaded("llama3.2:3b", last_used_s_ago=3600)
    t0 = dt.datetime.now(dt.timezone.utc)
    waits = [_select(t0).decision.expected_wait_s for _ in range(3)]
    assert waits == [pytest.approx(0.0), pytest.approx(1.0), pytest.approx(2.0)]  # booked one after another
    r.refresh_from_db()
    assert [e[2] for e in r.advisory] == [pytest.approx(1.0)] * 3
    # The third expires last: created + its 3 s expected response + the 5 s grace.
    assert _select(t0 + dt.timedelta(seconds=7.5)).decision.expected_wait_s == pytest.approx(0.0, abs=1e-6)
    r.refresh_from_db()
    assert len(r.advisory) == 2  # the first two expired and were dropped by this booking: the third and this one
    assert max(e[3] for e in r.advisory) > (t0 + dt.timedelta(seconds=7.5)).timestamp()


def test_an_outcome_ends_its_booking_at_once(tower):
    put_loaded("llama3.2:3b", last_used_s_ago=3600)
    t0 = dt.datetime.now(dt.timezone.utc)
    first = _select(t0)
    second = _select(t0)
    assert second.decision.expected_wait_s == pytest.approx(1.0)
    outcomes.record_outcome(first.record.pk, response_ms=300, success=True, rating=None)
    # Served in 0.3 s: its booked second no longer counts; only the second's own booking is left.
    assert _select(t0).decision.expected_wait_s == pytest.approx(1.0)
    r = m.Residency.objects.get(pk=first.residency_id)
    assert first.record.pk not in [e[0] for e in r.advisory]


def test_the_busy_estimate_is_the_queue_the_bookings_form():
    now = 1000.0
    booked = [[1, 990.0, 5.0, 2000.0], [2, 999.0, 2.0, 2000.0], [3, 1000.0, 1.0, 999.0]]  # the third expired
    # 990 -> 995 (done), 999 -> 1001: one second left.
    assert advisory.busy_s(booked, now) == pytest.approx(1.0)
    # Not ready until 1004: the two unexpired bookings queue after it (the load itself is the
    # resident's ready_at, counted apart by the policy).
    assert advisory.busy_s(booked, now, ready_ts=1004.0) == pytest.approx(7.0)
    assert advisory.busy_s([], now) == 0.0
    # Two parallel slots: the two bookings run side by side, one 5 s from 990 (done), one from 999.
    assert advisory.busy_s(booked, now, slots=2) == 0.0
    assert advisory.busy_s(booked, now, ready_ts=1004.0, slots=2) == pytest.approx(2.0)


def test_requests_routed_to_a_loading_model_are_quoted_their_turn(tower):
    """The issue's reproduction: four chat/interactive selections on a cold tower. The first loads
    a model; each later one is quoted the rest of that load plus the turns of those before it."""
    t0 = dt.datetime.now(dt.timezone.utc)
    quotes = []
    for i in range(4):
        out = service.select_and_record(SelectionRequest("chat", "interactive"), now=t0 + dt.timedelta(milliseconds=10 * i))
        quotes.append((out.decision.action, out.decision.model, out.decision.expected_wait_s,
                       out.decision.expected_response_s))
    assert quotes[0][0] == "load" and {q[1] for q in quotes} == {quotes[0][1]}
    assert [q[0] for q in quotes[1:]] == ["wait_for_load"] * 3
    for before, after in zip(quotes, quotes[1:]):
        turn = before[3] - before[2]
        assert after[2] == pytest.approx(before[2] + turn - 0.01, abs=0.05)
