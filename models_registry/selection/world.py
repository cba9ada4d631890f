"""Read the world from the database into the policy's immutable World, in few queries.

The configuration (catalog, scores, task types, urgency classes, GPUs, endpoints) changes
rarely and is cached per process for TOWEROPS_CONFIG_TTL_S; the live part (endpoint health,
residency, the latest GPU snapshot) is read on every call: three queries.
"""
from __future__ import annotations

import datetime as dt
import json
import math
import threading
import time
import weakref
from collections.abc import Mapping
from dataclasses import dataclass

from django.db import connection

from models_registry import conf
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
from models_registry.catalog.profile import wanted_at
from models_registry.policy.ollama_rules import max_loaded_models
from models_registry.policy.ollama_rules import num_parallel as ollama_num_parallel
from models_registry.selection import advisory


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
    endpoint_max_loaded: dict[str, int]
    endpoint_slots: dict[str, int]  # requests each model serves at once there (OLLAMA_NUM_PARALLEL)
    # The enabled preload windows, ((name, days, start, end, timezone, tags), ...), and the enabled
    # local models: World.wanted is catalog.profile.wanted_at of these at the World's time.
    windows: tuple
    local_models: frozenset
    model_ids: dict[str, int]
    task_ids: dict[str, int]
    gpu_ids: dict[str, int]
    endpoint_ids: dict[str, int]
    params: PolicyParams


@dataclass(frozen=True)
class LiveLoad:
    """What the gateway knows for certain about one model on one endpoint: requests in flight
    and waiting for a slot there, and the seconds until a new request of the asking urgency
    would start (models_registry/gateway/admission.py)."""

    in_flight: int
    waiting: int
    busy_s: float


_cache: dict = {"config": None, "at": 0.0}
_lock = threading.Lock()


def invalidate_config() -> None:
    _cache["config"] = None


def cached_config() -> Config | None:
    """The cached Config while it is fresh, else None (reads nothing: safe in an event loop)."""
    cfg = _cache["config"]
    return cfg if cfg is not None and time.monotonic() - _cache["at"] < conf.value("TOWEROPS_CONFIG_TTL_S") else None


def load_config() -> Config:
    now = time.monotonic()
    cfg = _cache["config"]
    if cfg is not None and now - _cache["at"] < conf.value("TOWEROPS_CONFIG_TTL_S"):
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
    speeds: dict[int, list[tuple[str, float, float]]] = {}
    for model_id, ep, seconds, samples, tps, pps in m.LoadTimeEstimate.objects.values_list(
            "model_id", "endpoint__name", "seconds", "samples", "tokens_per_s", "prefill_tokens_per_s"):
        if samples:  # a row made by the gateway's speeds alone carries the catalog's load_s, not a measurement
            learned.setdefault(model_id, []).append((ep, seconds))
        if tps or pps:
            speeds.setdefault(model_id, []).append((ep, tps or 0.0, pps or 0.0))
    rows = list(m.LlmModel.objects.all())
    models = tuple(
        ModelView(
            tag=r.tag,
            kind=r.kind,
            vram_mib=r.vram_mib,
            load_s=r.load_s,
            load_s_by_endpoint=tuple(sorted(learned.get(r.pk, ()))),
            speeds_by_endpoint=tuple(sorted(speeds.get(r.pk, ()))),
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
    max_loaded = dict(m.Endpoint.objects.values_list("name", "max_loaded_models"))
    parallel = dict(m.Endpoint.objects.values_list("name", "num_parallel"))
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
        # Ollama's own limit as the server applies it (0 in the profile: 3 per GPU)
        endpoint_max_loaded={name: max_loaded_models(max_loaded.get(name), len(endpoint_gpus.get(name, ())))
                             for name, _, _, _ in endpoints},
        endpoint_slots={name: ollama_num_parallel(parallel.get(name)) for name, _, _, _ in endpoints},
        windows=tuple(
            (w.name, tuple(w.days_of_week), w.start_time, w.end_time, w.timezone, tuple(mo.tag for mo in w.models.all()))
            for w in m.PreloadWindow.objects.filter(enabled=True).prefetch_related("models").order_by("name")),
        local_models=frozenset(x.tag for x in models if x.kind == "local" and x.enabled),
        model_ids={r.tag: r.pk for r in rows},
        task_ids=dict(m.TaskType.objects.values_list("name", "pk")),
        gpu_ids={g.key: g.pk for g in gpu_rows},
        endpoint_ids={name: pk for name, pk, _, _ in endpoints},
        params=PolicyParams(**conf.value("TOWEROPS_POLICY")),
    )


_RESIDENTS_SQL = """
SELECT r.id, lm.tag, e.name, r.state, r.ready_at, r.last_used_at, r.advisory, lm.pinned, r.used_by,
       COALESCE(array_agg(h.name || '/' || g.index ORDER BY g.index) FILTER (WHERE g.id IS NOT NULL), '{}'),
       COALESCE(array_agg(rg.vram_mib ORDER BY g.index) FILTER (WHERE g.id IS NOT NULL), '{}')
FROM models_registry_residency r
JOIN models_registry_llmmodel lm ON lm.id = r.model_id
JOIN models_registry_endpoint e ON e.id = r.endpoint_id
LEFT JOIN models_registry_residencygpu rg ON rg.residency_id = r.id
LEFT JOIN models_registry_gpu g ON g.id = rg.gpu_id
LEFT JOIN models_registry_host h ON h.id = g.host_id
WHERE r.state IN """ + m.ACTIVE_RESIDENCY_STATES_SQL + """
GROUP BY r.id, lm.tag, e.name, lm.pinned
ORDER BY r.id
"""

_SNAPSHOTS_SQL = m.LATEST_SNAPSHOT_PER_GPU_SQL  # columns: GpuSnapshot's (gpu_id second, free_mib sixth)


def _used_by(value) -> tuple[tuple[str, float], ...]:
    if isinstance(value, str):  # a raw cursor hands jsonb over as text
        if value == "{}":
            return ()
        value = json.loads(value)
    return tuple(sorted(value.items())) if value else ()


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


def read_world(
    now: dt.datetime, live: Mapping[tuple[str, str], LiveLoad] | None = None,
) -> tuple[World, Config, dict[tuple[str, str], int]]:
    """The World as of `now`, the Config it came from, and {(model, endpoint): residency id}.

    The three live queries go to the server as one string, in one round trip (Django's
    psycopg cursor binds parameters client-side, so several statements are allowed).
    A resident's queue is the advisory selections booked on it (advisory.py) plus, with `live`,
    the gateway's own requests in flight and waiting there.
    """
    cfg = load_config()
    now_s = now.timestamp()
    slot = cfg.params.queue_slot_s or 1.0
    slots = cfg.endpoint_slots
    residents, residency_ids = [], {}
    with connection.cursor() as cur:
        _prepare_once(cur)
        cur.execute(_EXECUTE_SQL, [now - dt.timedelta(seconds=conf.value("TOWEROPS_SNAPSHOT_FRESH_S"))])
        up = dict(cur.fetchall())
        cur.nextset()
        for rid, tag, ep, state, ready_at, last_used_at, booked, pinned, used_by, gkeys, gmibs in cur.fetchall():
            # The queue after the model is ready, per parallel slot (the load itself is ready_at).
            busy_s = advisory.busy_s(booked, now_s, _ts(ready_at), slots.get(ep, 1)) if booked != "[]" else 0.0
            in_flight = max(0, math.ceil(busy_s / slot)) if busy_s > 0 else 0
            if live is not None and (here := live.get((tag, ep))) is not None:
                busy_s += here.busy_s
                in_flight += here.in_flight + here.waiting
            residents.append(
                ResidentView(
                    model=tag,
                    endpoint=ep,
                    vram_by_gpu=tuple(zip(gkeys, gmibs)),
                    state=state,
                    ready_at=_ts(ready_at),
                    last_used_at=_ts(last_used_at),
                    in_flight=in_flight,
                    pinned=pinned,
                    busy_s=busy_s,
                    used_by=_used_by(used_by),
                )
            )
            residency_ids[(tag, ep)] = rid
        cur.nextset()
        measured = {row[1]: row[5] for row in cur.fetchall()}
    ids_to_key = {v: k for k, v in cfg.gpu_ids.items()}
    # A snapshot does not yet show reservations still on their way in (requested, loading):
    # take them off the measured figure too, or two loads could be placed on one free block.
    pending: dict[str, int] = {}
    for r in residents:
        if r.state in (m.Residency.State.REQUESTED, m.Residency.State.LOADING):
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
                     cfg.endpoint_ctx.get(name), cfg.endpoint_max_loaded.get(name, 0))
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
        wanted=wanted_at(cfg.windows, cfg.local_models, now),
    )
    return world, cfg, residency_ids
