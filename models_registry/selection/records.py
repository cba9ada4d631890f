"""A decision as a row: the INSERT on every selection's path, and the input it saw (to replay it)."""
from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import asdict

from django.db import connection

from models_registry import models as m
from models_registry.policy import Decision, SelectionRequest, World
from models_registry.policy.codec import world_from_dict, world_to_dict
from models_registry.selection.world import Config

_current_config: dict = {"cfg": None, "id": None}


def config_snapshot_id(world: World, cfg: Config) -> int:
    """The ConfigSnapshot row for this Config, created once per distinct content."""
    if _current_config["cfg"] is not cfg:
        full = world_to_dict(world)
        body = {key: full[key] for key in ("models", "task_types", "urgencies", "params")}
        body["gpus"] = [{**g, "measured_free_mib": None} for g in full["gpus"]]  # live: in input_state
        body["endpoints"] = [{**e, "up": None} for e in full["endpoints"]]
        text = json.dumps(body, sort_keys=True)
        digest = hashlib.sha256(text.encode()).hexdigest()
        row, _ = m.ConfigSnapshot.objects.get_or_create(sha256=digest, defaults={"body": body})
        # Holding the Config itself (not its id()) means a new Config can never be mistaken for it.
        _current_config["cfg"], _current_config["id"] = cfg, row.pk
    return _current_config["id"]


def live_state(world: World) -> dict:
    """The part of the World that changes between decisions (the rest is in ConfigSnapshot)."""
    return {
        "now": world.now,
        "gpus_measured_free_mib": {g.key: g.measured_free_mib for g in world.gpus if g.measured_free_mib is not None},
        "endpoints_down": [e.key for e in world.endpoints if not e.up],
        "residents": [
            [r.model, r.endpoint, r.state, [list(x) for x in r.vram_by_gpu], r.ready_at, r.last_used_at, r.in_flight,
             r.pinned, r.busy_s, [list(x) for x in r.used_by]]
            for r in world.residents
        ],
        "wanted": list(world.wanted),
    }


# The order of a resident in input_state (older rows lack the later fields: defaults apply).
_RESIDENT_FIELDS = ("model", "endpoint", "state", "vram_by_gpu", "ready_at", "last_used_at", "in_flight", "pinned", "busy_s",
                    "used_by")


def world_from_record(config_body: dict, live: dict) -> World:
    """Rebuild the World a past decision saw, to replay it against another policy."""
    down = set(live["endpoints_down"])
    measured = live["gpus_measured_free_mib"]
    return world_from_dict(
        {
            "now": live["now"],
            "gpus": [{**g, "measured_free_mib": measured.get(g["key"])} for g in config_body["gpus"]],
            "endpoints": [{**e, "up": e["key"] not in down} for e in config_body["endpoints"]],
            "residents": [
                dict(zip(_RESIDENT_FIELDS, r))
                for r in live["residents"]
            ],
            "models": config_body["models"],
            "task_types": config_body["task_types"],
            "urgencies": config_body["urgencies"],
            "params": config_body["params"],
            "wanted": live.get("wanted", []),
        }
    )


_DECISION_COLUMNS = (
    "created_at", "client", "task_type_id", "urgency", "min_quality", "max_wait_s", "expected_output_tokens",
    "input_tokens",
    "model_id", "endpoint_id", "gpu_keys", "action", "expected_wait_s", "expected_response_s", "quality",
    "met_floor", "warned", "reason", "evictions", "candidates", "input_state", "config_id", "policy_version",
    "decision_us", "residency_id", "source", "retry_of_id", "explored",
)
_JSON_COLUMNS = {"evictions", "candidates", "input_state"}
# Written by hand rather than through the ORM: this INSERT is on every selection's path and
# compiling it costs more than running it. The columns are SelectionDecision's own.
_INSERT_DECISION_SQL = "INSERT INTO models_registry_selectiondecision ({}) VALUES ({}) RETURNING id".format(
    ", ".join(_DECISION_COLUMNS),
    ", ".join("%s::jsonb" if c in _JSON_COLUMNS else "%s" for c in _DECISION_COLUMNS),
)


def record_decision(
    req: SelectionRequest, client: str, decision: Decision, world: World, cfg: Config, now: dt.datetime,
    us: int, residency_id: int | None, *, source: str = "api", retry_of: int | None = None, explored: bool = False,
) -> m.SelectionDecision:
    values = {
        "created_at": now,
        "client": client[:200],
        "task_type_id": cfg.task_ids[req.task_type],
        "urgency": req.urgency,
        "min_quality": req.min_quality,
        "max_wait_s": req.max_wait_s,
        "expected_output_tokens": req.expected_output_tokens,
        "input_tokens": req.input_tokens,
        "model_id": cfg.model_ids.get(decision.model) if decision.model else None,
        "endpoint_id": cfg.endpoint_ids.get(decision.endpoint) if decision.endpoint else None,
        "gpu_keys": list(decision.gpus),
        "action": decision.action,
        "expected_wait_s": decision.expected_wait_s,
        "expected_response_s": decision.expected_response_s,
        "quality": decision.quality,
        "met_floor": decision.met_floor,
        "warned": decision.warned,
        "reason": decision.reason,
        "evictions": [asdict(e) for e in decision.evictions],
        "candidates": candidates_json(decision),
        "input_state": live_state(world),
        "config_id": config_snapshot_id(world, cfg),
        "policy_version": decision.policy_version,
        "decision_us": us,
        "residency_id": residency_id,
        "source": source,
        "retry_of_id": retry_of,
        "explored": explored,
    }
    params = [json.dumps(values[c]) if c in _JSON_COLUMNS else values[c] for c in _DECISION_COLUMNS]
    with connection.cursor() as cur:
        cur.execute(_INSERT_DECISION_SQL, params)
        pk = cur.fetchone()[0]
    record = m.SelectionDecision(id=pk, **values)
    record._state.adding = False
    return record


def candidates_json(decision: Decision) -> list[dict]:
    return [
        {
            "model": c.model,
            "quality": c.quality,
            "endpoint": c.endpoint,
            "gpus": list(c.gpus),
            "action": c.action,
            "expected_wait_s": c.expected_wait_s,
            "expected_response_s": c.expected_response_s,
            "score": c.score,
            "evictions": [e.model for e in c.evictions],
            "rejected_because": c.rejected_because,
        }
        for c in decision.candidates
    ]
