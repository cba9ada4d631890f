"""The evidence each answer leaves about its model's quality for its task type.

Each kind is a value (how good: 1 good, 0 bad) and a weight (how many answers' worth of evidence;
the admin's score is worth TOWEROPS_LEARNING_PRIOR_STRENGTH of them). One signal per decision and
kind; a later one of the same kind replaces it. Each change moves its pair's QualityEvidence (the
sums the estimate reads) in the same transaction. Why these weights (docs/learning.md):

==============  =====  ======  =================================================================
kind            value  weight  when
==============  =====  ======  =================================================================
rating          r      1.0     a caller rates the answer r in 0..1 (the outcome API's ``rating``,
                               or ``POST /api/v1/decisions/{id}/feedback`` with the id from the
                               gateway's ``X-TowerOps-Decision-Id``): the one direct judgement
answered       1      0.25    the gateway delivered the whole answer (``done_reason: stop``);
                               weak: most answers are never judged at all, and silence is mild
                               approval. Withdrawn when the same conversation is asked again
error           0      0.5     the model failed to answer (Ollama's error); half: a failure is as
                               often the runner's as the model's
truncated       0      0.25    the answer was cut at the length limit (``done_reason: length``):
                               often the caller's own ``num_predict``, so weak
cancelled       0      0.5     the client left after the first token: it did not want the rest
                               (leaving *before* the first token is a wait, not a quality, signal)
regenerated     0      1.0     the same conversation sent again within REASK_S, to any model
                               chosen by TowerOps: the answer was not taken
escalated       0      1.0     the same conversation sent again within REASK_S naming a bigger
                               model (more parameters): the caller judged it too weak
==============  =====  ======  =================================================================
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json

from django.db import connection, transaction

from models_registry import models as m

Kind = m.QualitySignal.Kind
REASK_S = 600.0  # "asked again" means within 10 minutes of the earlier answer

# kind -> (value, weight); a rating's value is the rating.
WEIGHTS: dict[str, tuple[float, float]] = {
    Kind.RATING: (1.0, 1.0),
    Kind.ANSWERED: (1.0, 0.25),
    Kind.ERROR: (0.0, 0.5),
    Kind.TRUNCATED: (0.0, 0.25),
    Kind.CANCELLED: (0.0, 0.5),
    Kind.REGENERATED: (0.0, 1.0),
    Kind.ESCALATED: (0.0, 1.0),
}


def conversation_digest(body: dict) -> str:
    """A digest of what the model was asked (chat messages, or prompt and system): the same
    conversation sent again has the same one. Empty when there is nothing to recognise."""
    messages = body.get("messages")
    if isinstance(messages, list) and messages:
        asked = [(msg.get("role"), msg.get("content")) for msg in messages if isinstance(msg, dict)]
    elif isinstance(body.get("prompt"), str) and body["prompt"]:
        asked = [("system", body.get("system") or ""), ("user", body["prompt"])]
    else:
        return ""
    text = json.dumps(asked, ensure_ascii=False, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


_ADD_EVIDENCE_SQL = """
INSERT INTO models_registry_qualityevidence AS e (model_id, task_type_id, good, bad, count, updated_at)
VALUES (%(model)s, %(task)s, %(good)s, %(bad)s, %(count)s, %(now)s)
ON CONFLICT (model_id, task_type_id) DO UPDATE SET
    good = e.good + EXCLUDED.good, bad = e.bad + EXCLUDED.bad, count = e.count + EXCLUDED.count,
    updated_at = EXCLUDED.updated_at
"""


def _add_evidence(model_id: int, task_type: int, value: float, weight: float, count: int, now: dt.datetime) -> None:
    """QualityEvidence moves by one signal (count 1), or back by one (weight negative, count -1)."""
    with connection.cursor() as cur:
        cur.execute(_ADD_EVIDENCE_SQL, {"model": model_id, "task": task_type, "good": weight * value,
                                        "bad": weight * (1.0 - value), "count": count, "now": now})


def _put(decision_id: int, model_id: int, task_type: int, kind: str, value: float, now: dt.datetime) -> None:
    """One signal per decision and kind (a later one replaces it), and the pair's evidence with it."""
    weight = WEIGHTS[kind][1]
    with transaction.atomic():
        old = m.QualitySignal.objects.select_for_update().filter(decision_id=decision_id, kind=kind).first()
        if old is None:
            m.QualitySignal.objects.create(decision_id=decision_id, kind=kind, model_id=model_id, task_type_id=task_type,
                                           value=value, weight=weight, created_at=now)
        else:
            _add_evidence(old.model_id, old.task_type_id, old.value, -old.weight, -1, now)
            old.model_id, old.task_type_id, old.value, old.weight, old.created_at = model_id, task_type, value, weight, now
            old.save(update_fields=["model", "task_type", "value", "weight", "created_at"])
        _add_evidence(model_id, task_type, value, weight, 1, now)


def _withdraw(decision_id: int, kind: str, now: dt.datetime) -> None:
    """Take a decision's signal of this kind back, and its evidence."""
    for model_id, task, value, weight in (m.QualitySignal.objects.select_for_update()
                                          .filter(decision_id=decision_id, kind=kind)
                                          .values_list("model_id", "task_type_id", "value", "weight")):
        _add_evidence(model_id, task, value, -weight, -1, now)
    m.QualitySignal.objects.filter(decision_id=decision_id, kind=kind).delete()


def _decision(decision_id: int) -> tuple[int, int] | None:
    """(model id, task type id) of a decision that chose a model, else None."""
    return (m.SelectionDecision.objects.filter(pk=decision_id, model__isnull=False)
            .values_list("model_id", "task_type_id").first())


class NotRatable(Exception):
    """A rating for a decision that is not there (``missing``) or chose no model."""

    def __init__(self, message: str, missing: bool):
        super().__init__(message)
        self.missing = missing


def rate(decision_id: int, rating, now: dt.datetime) -> dict:
    """A caller's rating of a decision's answer, as the feedback call gives it (the web API and the
    gateway): checked, stored, and echoed with the decision's model and task type."""
    if isinstance(rating, bool) or not isinstance(rating, (int, float)) or not 0.0 <= rating <= 1.0:
        raise ValueError(f"rating: a number from 0 (useless) to 1 (right), not {rating!r}")
    row = m.SelectionDecision.objects.filter(pk=decision_id).values_list("model__tag", "task_type__name").first()
    if row is None:
        raise NotRatable(f"no decision {decision_id}", missing=True)
    if row[0] is None:
        raise NotRatable(f"decision {decision_id} chose no model: there is no answer to rate", missing=False)
    record_rating(decision_id, float(rating), now)
    return {"decision_id": decision_id, "model": row[0], "task_type": row[1], "rating": float(rating)}


def record_rating(decision_id: int, rating: float, now: dt.datetime) -> bool:
    """A caller's rating of a decision's answer; False when the decision chose no model (or is gone)."""
    row = _decision(decision_id)
    if row is None:
        return False
    _put(decision_id, row[0], row[1], Kind.RATING, float(rating), now)
    return True


def record_gateway_answer(decision_id: int, result: str, done_reason: str, first_token_ms: int | None,
                          conversation: str, named: bool, now: dt.datetime) -> None:
    """What the gateway saw of one answer, and what it says of an earlier answer to the same
    conversation (regenerated or escalated)."""
    row = _decision(decision_id)
    if row is None:
        return
    model_id, task = row
    with transaction.atomic():
        if conversation:
            _asked_again(decision_id, model_id, conversation, named, now)
        if result == "ok":
            kind = Kind.TRUNCATED if done_reason == "length" else Kind.ANSWERED
        elif result == "error":
            kind = Kind.ERROR
        elif result == "cancelled" and first_token_ms is not None:
            kind = Kind.CANCELLED
        else:
            return
        _put(decision_id, model_id, task, kind, WEIGHTS[kind][0], now)


def _asked_again(decision_id: int, model_id: int, conversation: str, named: bool, now: dt.datetime) -> None:
    """The same conversation answered within REASK_S before: that answer was not taken."""
    earlier = (m.DecisionOutcome.objects
               .filter(conversation=conversation, reported_at__gte=now - dt.timedelta(seconds=REASK_S),
                       decision__model__isnull=False)
               .exclude(decision_id=decision_id)
               .order_by("-reported_at", "-decision_id")
               .values_list("decision_id", "decision__model_id", "decision__task_type_id",
                            "decision__model__parameters_b")
               .first())
    if earlier is None:
        return
    earlier_id, earlier_model, task, earlier_size = earlier
    kind = Kind.REGENERATED
    if named and model_id != earlier_model:
        size = m.LlmModel.objects.filter(pk=model_id).values_list("parameters_b", flat=True).first()
        if size is not None and earlier_size is not None and size > earlier_size:
            kind = Kind.ESCALATED
    _withdraw(earlier_id, Kind.ANSWERED, now)
    _put(earlier_id, earlier_model, task, kind, WEIGHTS[kind][0], now)


_RECOUNT_SQL = """
INSERT INTO models_registry_qualityevidence (model_id, task_type_id, good, bad, count, updated_at)
SELECT model_id, task_type_id, SUM(weight * value), SUM(weight * (1 - value)), COUNT(*), %(now)s
FROM models_registry_qualitysignal GROUP BY model_id, task_type_id
"""


def recount(now: dt.datetime) -> int:
    """QualityEvidence summed again from every QualitySignal (after signals were edited or removed by
    hand, e.g. in the admin); the number of pairs."""
    with transaction.atomic(), connection.cursor() as cur:
        cur.execute("LOCK TABLE models_registry_qualitysignal IN SHARE MODE")
        cur.execute("DELETE FROM models_registry_qualityevidence")
        cur.execute(_RECOUNT_SQL, {"now": now})
        return cur.rowcount
