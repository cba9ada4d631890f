"""Advisory selections: the queue time a POST /api/v1/select reserves, one reservation at a time.

TowerOps does not see the requests an advisory caller sends to Ollama itself, so each selection
routed to a loaded model books its expected service time (prompt and answer) on the residency
(`Residency.advisory`: ``[decision id, created ts, service s, expires ts]``). A reservation ends
when its caller posts an outcome or a gateway request adopts it (``release``), and otherwise
expires at its expected response time plus ``TOWEROPS_ADVISORY_GRACE_S`` — so selections nobody uses (the seed's
"select, then take another model when the wait is over 5 s") stop counting instead of piling up
until a phantom queue looks longer than a load. The busy estimate is the queue these
reservations form after the model is ready: each starts on the slot free soonest.

Gateway requests book nothing here: the gateway counts its own requests in flight and waiting
(models_registry/gateway/admission.py) and passes them to read_world.
"""
from __future__ import annotations

import datetime as dt
import json

from django.db import connection

from models_registry import conf
from models_registry.policy import ollama_rules

# Keeps the unexpired reservations and appends this one, in the statement that marks the model used.
# SKIP LOCKED: when another selection is updating the row right now, skip this update rather
# than queue behind it (the estimate then runs low, never blocks).
MARK_USED_SQL = (
    "UPDATE models_registry_residency SET last_used_at = %(now)s, "
    "used_by = used_by || jsonb_build_object(%(urgency)s::text, %(now_ts)s::float8), "
    "busy_until = GREATEST(COALESCE(busy_until, %(now)s), %(now)s) + %(service)s, "
    "advisory = COALESCE((SELECT jsonb_agg(e) FROM jsonb_array_elements(advisory) e "
    "WHERE (e->>3)::float8 > %(now_ts)s), '[]'::jsonb) || %(entry)s::jsonb "
    "WHERE id = (SELECT id FROM models_registry_residency WHERE id = %(rid)s FOR NO KEY UPDATE SKIP LOCKED)"
)
# A gateway request: the model was used now; its queue is counted live by the gateway.
TOUCH_SQL = (
    "UPDATE models_registry_residency SET last_used_at = %(now)s, "
    "used_by = used_by || jsonb_build_object(%(urgency)s::text, %(now_ts)s::float8) "
    "WHERE id = (SELECT id FROM models_registry_residency WHERE id = %(rid)s FOR NO KEY UPDATE SKIP LOCKED)"
)
_RELEASE_SQL = (
    "UPDATE models_registry_residency SET advisory = COALESCE((SELECT jsonb_agg(e) "
    "FROM jsonb_array_elements(advisory) e WHERE (e->>0)::bigint <> %(id)s), '[]'::jsonb) "
    "WHERE id = %(rid)s AND advisory @> %(probe)s::jsonb"
)


def entry(decision_id: int, now: dt.datetime, service_s: float, expected_response_s: float | None) -> str:
    """The JSON array (one reservation) MARK_USED_SQL appends."""
    ts = now.timestamp()
    expires = ts + max(expected_response_s or 0.0, service_s) + conf.value("TOWEROPS_ADVISORY_GRACE_S")
    return json.dumps([[decision_id, ts, service_s, expires]])


def busy_s(advisory: list | str | None, now_ts: float, ready_ts: float | None = None, slots: int = 1) -> float:
    """Seconds a request arriving now waits for a slot after the model is ready (or now, when
    it is): the queue the unexpired reservations form over its ``slots`` parallel slots, served
    in the order they were made (ollama_rules.queue_of, the replay's rule)."""
    if isinstance(advisory, str):  # a raw cursor hands jsonb over as text (Django's loader)
        advisory = json.loads(advisory)
    if not advisory:
        return 0.0
    booked = sorted(((e[1], e[2]) for e in advisory if e[3] > now_ts))
    return ollama_rules.queue_of(booked, slots, now_ts, ready_ts)


def release(decision_id: int, residency_id: int | None) -> None:
    """The reservation is no longer a guess: its outcome arrived, or the gateway took it over."""
    if residency_id is None:
        return
    with connection.cursor() as cur:
        cur.execute(_RELEASE_SQL, {"id": decision_id, "rid": residency_id,
                                   "probe": json.dumps([[decision_id]])})
