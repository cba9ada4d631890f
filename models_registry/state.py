"""Read the world from the database into the policy's immutable World, in few queries.

The configuration (catalog, scores, task types, urgency classes, GPUs, endpoints) changes
rarely and is cached per process for CONFIG_TTL_S; the live part (endpoint health,
residency, the latest GPU snapshot) is read on every call: three queries.
"""
from __future__ import annotations

import datetime as dt
import math
import threading
import time
import weakref
from dataclasses import dataclass

from django.conf import settings
from django.db import connection

from models_registry import models as m
from models_registry.policy import (
    EndpointView,
    GpuView,
    ModelView,
    PolicyParams,
    ResidentView,
    TaskTypeView,
    UrgencyView,
    World,
)

CONFIG_TTL_S = float(getattr(settings, "TOWEROPS_CONFIG_TTL_S", 2.0))
SNAPSHOT_FRESH_S = float(getattr(settings, "TOWEROPS_SNAPSHOT_FRESH_S", 60.0))


@dataclass(frozen=True)
class Config:
    """The slowly-changing part of the World, plus the ids the shell needs to write rows."""

    models: tuple[ModelView, ...]
    task_types: tuple[TaskTypeView, ...]
    urgencies: tuple[UrgencyView, ...]
    gpus: tuple[GpuView, ...]
    endpoint_gpus: dict[str, tuple[str, ...]]
    endpoint_split: dict[str, bool]
    endpoint_ctx: dict[str, int]
    model_ids: dict[str, int]
    task_ids: dict[str, int]
    gpu_ids: dict[str, int]
    endpoint_ids: dict[str, int]
    params: PolicyParams


_cache: dict = {"config": None, "at": 0.0}
_lock = threading.Lock()


def invalidate_config() -> None:
    _cache["config"] = None


def load_config() -> Config:
    now = time.monotonic()
    cfg = _cache["config"]
    if cfg is not None and now - _cache["at"] < CONFIG_TTL_S:
        return cfg
    with _lock:
        cfg = _read_config()
        _cache["config"], _cache["at"] = cfg, now
    return cfg


def _read_config() -> Config:
    scores: dict[int, dict[str, float]] = {}
    for model_id, task, score in m.QualityScore.objects.values_list("model_id", "task_type__name", "score"):
        scores.setdefault(model_id, {})[task] = score
    learned: dict[int, list[tuple[str, float]]] = {}
    for model_id, ep, seconds in m.LoadTimeEstimate.objects.values_list("model_id", "endpoint__name", "seconds"):
        learned.setdefault(model_id, []).append((ep, seconds))
    rows = list(m.LlmModel.objects.all())
    models = tuple(
        ModelView(
            tag=r.tag,
            kind=r.kind,
            vram_mib=r.vram_mib,
            load_s=r.load_s,
            load_s_by_endpoint=tuple(sorted(learned.get(r.pk, ()))),
            tokens_per_s=r.tokens_per_s,
            prefill_tokens_per_s=r.prefill_rate,
            quality=scores.get(r.pk, {}),
            enabled=r.enabled,
            pinned=r.pinned,
            remote_latency_s=r.remote_latency_s,
        )
        for r in rows
    )
    gpu_rows = list(m.Gpu.objects.select_related("host"))
    gpus = tuple(GpuView(g.key, g.name, g.total_mib, g.reserved_mib) for g in gpu_rows)
    endpoint_gpus: dict[str, list[str]] = {}
    for ep_name, host, index in m.Endpoint.gpus.through.objects.values_list(
        "endpoint__name", "gpu__host__name", "gpu__index"
    ):
        endpoint_gpus.setdefault(ep_name, []).append(f"{host}/{index}")
    endpoints = list(m.Endpoint.objects.values_list("name", "pk", "allow_split", "num_ctx"))
    return Config(
        models=models,
        task_types=tuple(
            TaskTypeView(t.name, t.quality_floor, t.default_output_tokens, t.default_input_tokens)
            for t in m.TaskType.objects.all()
        ),
        urgencies=tuple(
            UrgencyView(u.name, u.patience_s, u.wait_weight, u.eviction_penalty, u.use_loaded_if_acceptable)
            for u in m.UrgencyClass.objects.all()
        ),
        gpus=gpus,
        endpoint_gpus={name: tuple(sorted(endpoint_gpus.get(name, ()))) for name, _, _, _ in endpoints},
        endpoint_split={name: split for name, _, split, _ in endpoints},
        endpoint_ctx={name: ctx for name, _, _, ctx in endpoints},
        model_ids={r.tag: r.pk for r in rows},
        task_ids=dict(m.TaskType.objects.values_list("name", "pk")),
        gpu_ids={g.key: g.pk for g in gpu_rows},
        endpoint_ids={name: pk for name, pk, _, _ in endpoints},
        params=PolicyParams(**getattr(settings, "TOWEROPS_POLICY", {})),
    )


_RESIDENTS_SQL = """
SELECT r.id, lm.tag, e.name, r.state, r.ready_at, r.last_used_at, r.busy_until, lm.pinned,
       COALESCE(array_agg(h.name || '/' || g.index ORDER BY g.index) FILTER (WHERE g.id IS NOT NULL), '{}'),
       COALESCE(array_agg(rg.vram_mib ORDER BY g.index) FILTER (WHERE g.id IS NOT NULL), '{}')
FROM models_registry_residency r
JOIN models_registry_llmmodel lm ON lm.id = r.model_id
JOIN models_registry_endpoint e ON e.id = r.endpoint_id
LEFT JOIN models_registry_residencygpu rg ON rg.residency_id = r.id
LEFT JOIN models_registry_gpu g ON g.id = rg.gpu_id
LEFT JOIN models_registry_host h ON h.id = g.host_id
WHERE r.state IN ('requested', 'loading', 'loaded', 'unloading')
GROUP BY r.id, lm.tag, e.name, lm.pinned
ORDER BY r.id
"""

_SNAPSHOTS_SQL = """
SELECT g.id, s.taken_at, s.free_mib
FROM models_registry_gpu g
CROSS JOIN LATERAL (
    SELECT taken_at, free_mib FROM models_registry_gpusnapshot
    WHERE gpu_id = g.id AND taken_at >= %s ORDER BY taken_at DESC LIMIT 1
) s
"""


def _ts(value: dt.datetime | None) -> float | None:
    return value.timestamp() if value is not None else None


_ENDPOINTS_SQL = "SELECT name, is_up FROM models_registry_endpoint"

# Prepared once per database session (PostgreSQL keeps them across ROLLBACK): planning the
# residency join costs more than running it. Not for PgBouncer in transaction pooling mode.
_PREPARE_SQL = ";\n".join((
    f"PREPARE towerops_endpoints AS {_ENDPOINTS_SQL}",
    f"PREPARE towerops_residents AS {_RESIDENTS_SQL}",
    "PREPARE towerops_snapshots(timestamptz) AS " + _SNAPSHOTS_SQL.replace("%s", "$1"),
))
_EXECUTE_SQL = "EXECUTE towerops_endpoints; EXECUTE towerops_residents; EXECUTE towerops_snapshots(%s)"
_prepared_sessions: "weakref.WeakSet" = weakref.WeakSet()


def _prepare_once(cur) -> None:
    raw = connection.connection  # the psycopg connection: a new one is a new session
    if raw not in _prepared_sessions:
        cur.execute(_PREPARE_SQL)
        _prepared_sessions.add(raw)


def read_world(now: dt.datetime) -> tuple[World, Config, dict[tuple[str, str], int]]:
    """The World as of `now`, the Config it came from, and {(model, endpoint): residency id}.

    The three live queries go to the server as one string, in one round trip (Django's
    psycopg cursor binds parameters client-side, so several statements are allowed).
    """
    cfg = load_config()
    now_s = now.timestamp()
    slot = cfg.params.queue_slot_s or 1.0
    residents, residency_ids = [], {}
    with connection.cursor() as cur:
        _prepare_once(cur)
        cur.execute(_EXECUTE_SQL, [now - dt.timedelta(seconds=SNAPSHOT_FRESH_S)])
        up = dict(cur.fetchall())
        cur.nextset()
        for rid, tag, ep, state, ready_at, last_used_at, busy_until, pinned, gkeys, gmibs in cur.fetchall():
            busy_s = (busy_until.timestamp() - now_s) if busy_until else 0.0
            residents.append(
                ResidentView(
                    model=tag,
                    endpoint=ep,
                    vram_by_gpu=tuple(zip(gkeys, gmibs)),
                    state=state,
                    ready_at=_ts(ready_at),
                    last_used_at=_ts(last_used_at),
                    in_flight=max(0, math.ceil(busy_s / slot)) if busy_s > 0 else 0,
                    pinned=pinned,
                    busy_s=max(0.0, busy_s),
                )
            )
            residency_ids[(tag, ep)] = rid
        cur.nextset()
        measured = {gpu_id: free for gpu_id, _, free in cur.fetchall()}
    ids_to_key = {v: k for k, v in cfg.gpu_ids.items()}
    # A snapshot does not yet show reservations still on their way in (requested, loading):
    # take them off the measured figure too, or two loads could be placed on one free block.
    pending: dict[str, int] = {}
    for r in residents:
        if r.state in ("requested", "loading"):
            for key, mib in r.vram_by_gpu:
                pending[key] = pending.get(key, 0) + mib
    measured_by_key = {
        ids_to_key[g]: max(0, free - pending.get(ids_to_key[g], 0)) for g, free in measured.items() if g in ids_to_key
    }
    gpus = tuple(
        GpuView(g.key, g.name, g.total_mib, g.reserved_mib, measured_by_key.get(g.key)) if g.key in measured_by_key else g
        for g in cfg.gpus
    )
    endpoints = tuple(
        EndpointView(name, cfg.endpoint_gpus.get(name, ()), cfg.endpoint_split.get(name, False), up.get(name, False),
                     cfg.endpoint_ctx.get(name))
        for name in sorted(cfg.endpoint_ids)
    )
    world = World(
        now=now_s,
        gpus=gpus,
        endpoints=endpoints,
        residents=tuple(residents),
        models=cfg.models,
        task_types=cfg.task_types,
        urgencies=cfg.urgencies,
        params=cfg.params,
    )
    return world, cfg, residency_ids
