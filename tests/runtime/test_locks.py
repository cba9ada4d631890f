"""No deadlocks by construction: the runtime locks only the rows it means (docs/failure-behaviour.md).

Real transactions on their own connections (threads), real PostgreSQL locks: the test stages the
interleaving that deadlocked in production, step by step, instead of hoping a race reproduces it.
"""
from __future__ import annotations

import threading

from django.db import connection, transaction

from models_registry import models as m
from models_registry import timeutil
from models_registry.runtime import tasks

from .conftest import AMD, in_thread

LOCK_WAIT_SQL = """SELECT count(*) FROM pg_stat_activity
                   WHERE datname = current_database() AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()"""


def someone_waits_for_a_lock() -> bool:
    with connection.cursor() as cur:
        cur.execute(LOCK_WAIT_SQL)
        return cur.fetchone()[0] > 0


def test_a_load_starting_does_not_deadlock_with_a_decision_being_recorded(tx_ops):
    """Defect 2. A decision's foreign-key checks lock (FOR KEY SHARE) its model, then its residency;
    execute_load used to lock the residency, its model and its endpoint FOR UPDATE, in that order.
    Staged: the decision has its model lock, the load starts, then the decision needs the residency."""
    rid = tx_ops.reserve("tinyllama", AMD)
    r = m.Residency.objects.get(pk=rid)
    task_type = m.TaskType.objects.first()
    has_model_lock = threading.Event()

    def record_a_decision():
        with transaction.atomic():
            # Django's foreign keys are checked at COMMIT (deferred), model first, then residency;
            # checked at each INSERT instead, the same locks come one statement apart, to be staged.
            with connection.cursor() as cur:
                cur.execute("SET CONSTRAINTS ALL IMMEDIATE")
            fields = {"created_at": timeutil.utcnow(), "task_type": task_type, "urgency": "batch", "reason": "r",
                      "policy_version": "t", "model_id": r.model_id, "action": "wait_for_load"}
            m.SelectionDecision.objects.create(**fields)  # FOR KEY SHARE on the model row
            has_model_lock.set()
            # Go on once the load has either moved past its first step or is stuck behind us.
            deadline = timeutil.utcnow().timestamp() + 10
            while (m.Residency.objects.get(pk=rid).state == "requested" and not someone_waits_for_a_lock()
                   and timeutil.utcnow().timestamp() < deadline):
                pass
            m.SelectionDecision.objects.create(**fields, residency_id=rid)  # ... and on the residency row
        return "recorded"

    recorder, recorded = in_thread(record_a_decision)
    assert has_model_lock.wait(10)
    loaded = tasks.execute_load(rid)
    recorder.join(10)
    assert "error" not in recorded, recorded  # a deadlock kills one of the two
    assert loaded.startswith("loaded tinyllama on tower-amd")
    assert m.Residency.objects.get(pk=rid).state == "loaded"
    assert m.SelectionDecision.objects.filter(residency_id=rid).count() == 1
