"""The evidence each answer leaves about its model's quality for its task type.

Each kind is a value (how good: 1 good, 0 bad) and a weight (how many answers' worth of evidence;
the admin's score is worth TOWEROPS_LEARNING_PRIOR_STRENGTH of them). One signal per decision and
kind; a later one of the same kind replaces it. Why these weights (docs/learning.md):

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

from django.db import transaction

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


def _put(decision_id: int, model_id: int, task_type: int, kind: str, value: float, now: dt.datetime) -> None:
    weight = WEIGHTS[kind][1]
    m.QualitySignal.objects.update_or_create(
        decision_id=decision_id, kind=kind,
        defaults={"model_id": model_id, "task_type_id": task_type, "value": value, "weight": weight,
                  "created_at": now},
    )


def _decision(decision_id: int) -> tuple[int, int] | None:
    """(model id, task type id) of a decision that chose a model, else None."""
    return (m.SelectionDecision.objects.filter(pk=decision_id, model__isnull=False)
            .values_list("model_id", "task_type_id").first())


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
               .order_by("-reported_at")
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
    m.QualitySignal.objects.filter(decision_id=earlier_id, kind=Kind.ANSWERED).delete()
    _put(earlier_id, earlier_model, task, kind, WEIGHTS[kind][0], now)
