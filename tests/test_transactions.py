"""atomic_with_retry: a deadlock or serialization failure PostgreSQL reports is retried; an outage is not.

Real transactions on their own connections (threads) and real PostgreSQL errors.
"""
from __future__ import annotations

import threading

import pytest
from django.db import OperationalError, connection, transaction

from models_registry import models as m
from models_registry import timeutil
from models_registry.transactions import atomic_with_retry, is_conflict


def test_a_deadlock_postgres_reports_is_retried_and_both_transactions_succeed(transactional_db):
    """Two transactions update two rows in opposite orders (the classic deadlock); PostgreSQL aborts one,
    atomic_with_retry runs it again, and both changes are made once."""
    a = m.Host.objects.create(name="a", queue="host.a")
    b = m.Host.objects.create(name="b", queue="host.b")
    both_hold_one = threading.Barrier(2, timeout=10)
    attempts = {"ab": 0, "ba": 0}
    errors = []

    def swap(name: str, first: m.Host, second: m.Host) -> None:
        def body():
            attempts[name] += 1
            m.Host.objects.filter(pk=first.pk).update(last_seen_at=timeutil.utcnow())
            if attempts[name] == 1:
                both_hold_one.wait()
            m.Host.objects.filter(pk=second.pk).update(last_seen_at=timeutil.utcnow())

        try:
            atomic_with_retry(body)
        except Exception as exc:  # noqa: BLE001 - reported to the test
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=swap, args=("ab", a, b)), threading.Thread(target=swap, args=("ba", b, a))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert errors == []
    assert sorted(attempts.values()) == [1, 2]  # the deadlock's victim ran again, once


@pytest.mark.parametrize("sqlstate,conflict", [("40P01", True), ("40001", True), ("57P01", False)])
def test_a_conflict_is_told_apart_from_an_outage(db, sqlstate, conflict):
    """40P01 deadlock, 40001 serialization failure: retry; 57P01 (the server shutting down): an outage."""
    with pytest.raises(OperationalError) as raised, transaction.atomic(), connection.cursor() as cur:
        cur.execute(f"DO $$ BEGIN RAISE EXCEPTION 'staged' USING ERRCODE = '{sqlstate}'; END $$")
    assert is_conflict(raised.value) is conflict


def test_a_call_inside_a_transaction_is_not_retried_there(db):
    """Only the outermost transaction can be run again: inside one, the conflict goes up to it."""
    calls = []

    def body():
        calls.append(1)
        with connection.cursor() as cur:
            cur.execute("DO $$ BEGIN RAISE EXCEPTION 'staged' USING ERRCODE = '40P01'; END $$")

    with pytest.raises(OperationalError), transaction.atomic():
        atomic_with_retry(body)
    assert calls == [1]
