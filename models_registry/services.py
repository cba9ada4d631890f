"""The imperative shell: database reads and writes around the pure parts."""
from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import time
from dataclasses import asdict, dataclass, field

from django.db import connection, transaction

from models_registry import models as m
from models_registry import policy, reports
from models_registry.policy import Decision, Eviction, SelectionRequest, World
from models_registry.policy.codec import world_from_dict, world_to_dict
from models_registry.profile import Profile, gb_to_mib
from models_registry.state import Config, read_world


@dataclass
class ImportSummary:
    created: dict[str, int] = field(default_factory=dict)
    updated: dict[str, int] = field(default_factory=dict)
    _seen: set = field(default_factory=set)  # (kind, pk) already counted

    def count(self, kind: str, created: bool, changed: bool, pk=None) -> None:
        if (kind, pk) in self._seen:
            return
        if created or changed:
            self._seen.add((kind, pk))
        if created:
            self.created[kind] = self.created.get(kind, 0) + 1
        elif changed:
            self.updated[kind] = self.updated.get(kind, 0) + 1

    def touch(self, kind: str, obj) -> None:
        """A many-to-many change: an update, unless the row was just created (or already counted)."""
        self.count(kind, False, True, obj.pk)

    def __str__(self) -> str:
        def fmt(d):
            return ", ".join(f"{v} {k}" for k, v in sorted(d.items())) or "nothing"

        return f"created {fmt(self.created)}; updated {fmt(self.updated)}"


def _upsert(model, lookup: dict, values: dict, summary: ImportSummary, kind: str, user=None):
    """Create or update one row; save (and so write history) only when something changed."""
    obj = model.objects.filter(**lookup).first()
    created = obj is None
    if created:
        obj = model(**lookup)
    changed = created or any(getattr(obj, k) != v for k, v in values.items())
    if changed:
        for k, v in values.items():
            setattr(obj, k, v)
        if user is not None and hasattr(obj, "history"):
            obj._history_user = user
        obj.save()
    summary.count(kind, created, changed, obj.pk)
    return obj


@transaction.atomic
def import_profile(profile: Profile, user=None) -> ImportSummary:
    """Write a validated profile: creates and updates, never deletes (history refers to rows).

    All in one transaction: a failure leaves the database as it was.
    """
    s = ImportSummary()
    for h in profile.hosts:
        host = _upsert(m.Host, {"name": h.name}, {"queue": h.queue_name}, s, "hosts", user)
        gpus = {}
        for g in h.gpus:
            gpus[g.index] = _upsert(
                m.Gpu,
                {"host": host, "index": g.index},
                {
                    "vendor": g.vendor,
                    "name": g.name,
                    "uuid": g.uuid,
                    "total_mib": g.total_mib,
                    "reserved_mib": g.reserved_mib,
                },
                s,
                "GPUs",
                user,
            )
        for e in h.endpoints:
            ep = _upsert(
                m.Endpoint,
                {"name": e.name},
                {
                    "host": host,
                    "base_url": e.base_url,
                    "allow_split": e.allow_split,
                    "num_ctx": e.num_ctx,
                    "keep_alive": e.keep_alive,
                },
                s,
                "endpoints",
                user,
            )
            wanted = {gpus[i].pk for i in e.gpus}
            if set(ep.gpus.values_list("pk", flat=True)) != wanted:
                ep.gpus.set(wanted)
                s.touch("endpoints", ep)
    tasks = {}
    for t in profile.task_types:
        tasks[t.name] = _upsert(
            m.TaskType,
            {"name": t.name},
            {
                "description": t.description,
                "quality_floor": t.quality_floor,
                "default_output_tokens": t.default_output_tokens,
                "default_input_tokens": t.default_input_tokens,
            },
            s,
            "task types",
            user,
        )
    for u in profile.urgency_classes:
        _upsert(
            m.UrgencyClass,
            {"name": u.name},
            {
                "patience_s": u.patience_s,
                "wait_weight": u.wait_weight,
                "eviction_penalty": u.eviction_penalty,
                "use_loaded_if_acceptable": u.use_loaded_if_acceptable,
            },
            s,
            "urgency classes",
            user,
        )
    llms = {}
    for md in profile.models:
        llms[md.tag] = _upsert(
            m.LlmModel,
            {"tag": md.tag},
            {
                "kind": md.kind,
                "family": md.family,
                "parameters_b": md.parameters_b,
                "quantization": md.quantization,
                "file_size_mib": gb_to_mib(md.file_size_gb) if md.file_size_gb is not None else None,
                "vram_mib": md.vram_mib,
                "context_length": md.context_length,
                "load_s": md.load_s,
                "tokens_per_s": md.tokens_per_s,
                "prefill_tokens_per_s": md.prefill_tokens_per_s,
                "remote_latency_s": md.remote_latency_s,
                "enabled": md.enabled,
                "pinned": md.pinned,
            },
            s,
            "models",
            user,
        )
        for task, score in md.quality.items():
            _upsert(
                m.QualityScore,
                {"model": llms[md.tag], "task_type": tasks.get(task) or m.TaskType.objects.get(name=task)},
                {"score": score},
                s,
                "quality scores",
                user,
            )
    for w in profile.preload_windows:
        win = _upsert(
            m.PreloadWindow,
            {"name": w.name},
            {
                "days_of_week": w.day_numbers,
                "start_time": w.start,
                "end_time": w.end,
                "timezone": w.timezone,
                "enabled": w.enabled,
            },
            s,
            "preload windows",
            user,
        )
        wanted = {llms[t].pk if t in llms else m.LlmModel.objects.get(tag=t).pk for t in w.models}
        if set(win.models.values_list("pk", flat=True)) != wanted:
            win.models.set(wanted)
            s.touch("preload windows", win)
    return s


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


# --------------------------------------------------------------------------- selection


# One lock for every selection that reserves VRAM: loads are rare (the SLO is < 10 an hour),
# so serialising them costs nothing, and two selections can never both take the same MiB.
RESERVATION_LOCK = 0x746F7765  # "towe"


class UnknownChoice(ValueError):
    """A request names a task type or urgency that does not exist."""

    def __init__(self, field: str, value: str, allowed: list[str]):
        self.field, self.value, self.allowed = field, value, allowed
        super().__init__(f"{field}: unknown value {value!r}; allowed: {', '.join(allowed)}")


def validate_request(req: SelectionRequest, cfg: Config) -> None:
    tasks = [t.name for t in cfg.task_types]
    if req.task_type not in tasks:
        raise UnknownChoice("task_type", req.task_type, sorted(tasks))
    urgencies = [u.name for u in cfg.urgencies]
    if req.urgency not in urgencies:
        raise UnknownChoice("urgency", req.urgency, [u for u in m.UrgencyClass.Name.values if u in urgencies])


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
             r.pinned, r.busy_s]
            for r in world.residents
        ],
    }


# The order of a resident in input_state (older rows lack the later fields: defaults apply).
_RESIDENT_FIELDS = ("model", "endpoint", "state", "vram_by_gpu", "ready_at", "last_used_at", "in_flight", "pinned", "busy_s")


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
        }
    )


@dataclass
class SelectionResult:
    decision: Decision
    record: m.SelectionDecision | None
    residency_id: int | None = None


def _decide(req: SelectionRequest, now: dt.datetime) -> tuple[Decision, World, Config, dict, int]:
    world, cfg, rids = read_world(now)
    validate_request(req, cfg)
    t0 = time.perf_counter_ns()
    decision = policy.select(world, req)
    return decision, world, cfg, rids, (time.perf_counter_ns() - t0) // 1000


def select_and_record(
    req: SelectionRequest, *, client: str = "", dry_run: bool = False, now: dt.datetime | None = None
) -> SelectionResult:
    """Decide, and unless dry_run record the decision and reserve VRAM for a load, atomically.

    A load's reservation (a Residency in state requested) is made under RESERVATION_LOCK
    after re-reading the state, so concurrent selections never over-commit a GPU. The load
    itself is queued for the host's agent when the transaction commits.
    """
    now = now or utcnow()
    decision, world, cfg, rids, us = _decide(req, now)
    if dry_run:
        return SelectionResult(decision, None)
    if decision.action == "load":
        with transaction.atomic():
            _lock_reservations()
            decision, world, cfg, rids, us = _decide(req, now)  # the state may have moved meanwhile
            residency_id = None
            if decision.action == "load":
                residency_id = _reserve(
                    cfg, decision.model, decision.endpoint, _vram_by_gpu(decision, world), decision.evictions,
                    trigger="selection", now=now, load_s=decision.expected_wait_s or 0.0,
                    busy_s=decision.expected_response_s or 0.0,
                )
            elif decision.action in ("use_loaded", "wait_for_load"):
                residency_id = rids.get((decision.model, decision.endpoint))
            record = _record(req, client, decision, world, cfg, now, us, residency_id)
            if decision.action == "load":
                from models_registry import tasks  # tasks imports this module

                tasks.enqueue_load(residency_id, decision_id=record.pk)
            else:
                _mark_used(residency_id, decision, now)
        return SelectionResult(decision, record, residency_id)
    # The common path reserves nothing: one INSERT, durable on its own, then the estimate
    # of how busy the model is, in its own transaction that does not wait for the disk.
    residency_id = rids.get((decision.model, decision.endpoint)) if decision.action != "fallback" else None
    record = _record(req, client, decision, world, cfg, now, us, residency_id)
    _mark_used(residency_id, decision, now)
    return SelectionResult(decision, record, residency_id)


_DECISION_COLUMNS = (
    "created_at", "client", "task_type_id", "urgency", "min_quality", "max_wait_s", "expected_output_tokens",
    "input_tokens",
    "model_id", "endpoint_id", "gpu_keys", "action", "expected_wait_s", "expected_response_s", "quality",
    "met_floor", "warned", "reason", "evictions", "candidates", "input_state", "config_id", "policy_version",
    "decision_us", "residency_id",
)
_JSON_COLUMNS = {"evictions", "candidates", "input_state"}
# Written by hand rather than through the ORM: this INSERT is on every selection's path and
# compiling it costs more than running it. The columns are SelectionDecision's own.
_INSERT_DECISION_SQL = "INSERT INTO models_registry_selectiondecision ({}) VALUES ({}) RETURNING id".format(
    ", ".join(_DECISION_COLUMNS),
    ", ".join("%s::jsonb" if c in _JSON_COLUMNS else "%s" for c in _DECISION_COLUMNS),
)


def _record(
    req: SelectionRequest, client: str, decision: Decision, world: World, cfg: Config, now: dt.datetime,
    us: int, residency_id: int | None,
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


def _service_s(decision: Decision) -> float:
    """How long the request holds its model: reading its prompt, then generating."""
    if decision.expected_response_s is None or decision.expected_wait_s is None:
        return 0.0
    return max(0.0, decision.expected_response_s - decision.expected_wait_s + decision.expected_prefill_s)


# SKIP LOCKED: when another selection is updating the row right now, skip this update rather
# than queue behind it. Under heavy concurrency to one model the estimate then runs low,
# never blocks; at a tower's rates (a few requests a second per model) nothing is skipped.
_MARK_USED_SQL = (
    "UPDATE models_registry_residency SET last_used_at = %s, "
    "busy_until = GREATEST(COALESCE(busy_until, %s), %s) + %s "
    "WHERE id = (SELECT id FROM models_registry_residency WHERE id = %s FOR UPDATE SKIP LOCKED)"
)


def _mark_used(residency_id: int | None, decision: Decision, now: dt.datetime) -> None:
    """Push the residency's busy_until out by this request's prefill and generation time.

    The request queues behind what is already there, so busy_until moves by its own
    service time only (the rest of its wait is the queue busy_until already describes). The row is
    shared by every request to that model: outside a caller's transaction it is updated in
    its own, in one round trip, without waiting for the disk (these are estimates), so no
    lock on it is held across a durable COMMIT.
    """
    if residency_id is None:
        return
    params = [now, now, now, dt.timedelta(seconds=_service_s(decision)), residency_id]
    with connection.cursor() as cur:
        if connection.in_atomic_block:
            cur.execute(_MARK_USED_SQL, params)  # part of the caller's transaction
        else:
            try:
                cur.execute(f"BEGIN; SET LOCAL synchronous_commit = off; {_MARK_USED_SQL}; COMMIT", params)
            except Exception:
                cur.execute("ROLLBACK")  # never leave the connection inside the failed BEGIN
                raise


def _vram_by_gpu(decision: Decision, world: World) -> tuple[tuple[str, int], ...]:
    """How the chosen load's VRAM spreads over its GPU(s)."""
    need = next(x.vram_mib for x in world.models if x.tag == decision.model)
    if len(decision.gpus) == 1:
        return ((decision.gpus[0], need),)
    placement = policy.place(world, decision.model)  # a split: the same placement code decides the shares
    if placement is None or placement.endpoint != decision.endpoint:
        raise RuntimeError(f"split placement of {decision.model} changed under the lock")
    return placement.vram_by_gpu


def _lock_reservations() -> None:
    with connection.cursor() as cur:
        cur.execute("SELECT pg_advisory_xact_lock(%s)", [RESERVATION_LOCK])


def _reserve(
    cfg: Config,
    tag: str,
    endpoint: str,
    vram_by_gpu: tuple[tuple[str, int], ...],
    evictions: tuple[Eviction, ...],
    *,
    trigger: str,
    now: dt.datetime,
    load_s: float,
    busy_s: float = 0.0,
) -> int:
    """A Residency in state requested for the new model; the models it evicts go to unloading.

    Callers hold RESERVATION_LOCK and have just read the world under it."""
    for ev in evictions:
        m.Residency.objects.filter(
            model_id=cfg.model_ids[ev.model], endpoint_id=cfg.endpoint_ids[ev.endpoint], state="loaded"
        ).update(state="unloading")
    residency = m.Residency.objects.create(
        model_id=cfg.model_ids[tag],
        endpoint_id=cfg.endpoint_ids[endpoint],
        state="requested",
        trigger=trigger,
        vram_mib=sum(mib for _, mib in vram_by_gpu),
        requested_at=now,
        ready_at=now + dt.timedelta(seconds=load_s),
        last_used_at=now if busy_s else None,
        busy_until=now + dt.timedelta(seconds=busy_s) if busy_s else None,
    )
    m.ResidencyGpu.objects.bulk_create(
        [m.ResidencyGpu(residency=residency, gpu_id=cfg.gpu_ids[key], vram_mib=mib) for key, mib in vram_by_gpu]
    )
    return residency.pk


# --------------------------------------------------------------------------- outcomes, state, admin loads


class DomainError(Exception):
    status = 409


class NotFound(DomainError):
    status = 404


class BadInput(DomainError):
    status = 422


class NoRoom(DomainError):
    status = 409


def record_outcome(decision_id: int, response_ms: int, success: bool, rating: float | None,
                   first_token_ms: int | None = None):
    """Store (or replace) what happened to a decision. `first_token_ms`, when the caller streamed,
    is the interactive p95's preferred source; without it `response_ms` stands in (an upper bound)."""
    if first_token_ms is not None and first_token_ms > response_ms:
        raise BadInput(f"first_token_ms ({first_token_ms}) cannot be more than response_ms ({response_ms})")
    created_at = m.SelectionDecision.objects.filter(pk=decision_id).values_list("created_at", flat=True).first()
    if created_at is None:
        return None
    outcome, _ = m.DecisionOutcome.objects.update_or_create(
        decision_id=decision_id,
        defaults={"response_ms": response_ms, "first_token_ms": first_token_ms, "success": success,
                  "rating": rating, "reported_at": utcnow()},
    )
    reports.mark_hour_dirty(created_at)  # a late outcome changes its hour's p95: recompute that rollup
    return outcome


def fleet_state(now: dt.datetime | None = None) -> dict:
    now = now or utcnow()
    world, cfg, rids = read_world(now)
    free = policy.free_mib_by_gpu(world)
    allocated: dict[str, int] = {}
    for r in world.residents:
        for key, mib in r.vram_by_gpu:
            allocated[key] = allocated.get(key, 0) + mib
    with connection.cursor() as cur:
        cur.execute(
            "SELECT g.id, s.taken_at, s.free_mib FROM models_registry_gpu g CROSS JOIN LATERAL ("
            " SELECT taken_at, free_mib FROM models_registry_gpusnapshot WHERE gpu_id = g.id"
            " ORDER BY taken_at DESC LIMIT 1) s"
        )
        latest = {gpu_id: (taken_at, free_mib) for gpu_id, taken_at, free_mib in cur.fetchall()}
    vendors = dict(m.Gpu.objects.values_list("pk", "vendor"))
    gpus = []
    for g in world.gpus:
        gid = cfg.gpu_ids[g.key]
        taken_at, measured = latest.get(gid, (None, None))
        gpus.append(
            {
                "key": g.key,
                "name": g.name,
                "vendor": vendors.get(gid, ""),
                "total_mib": g.total_mib,
                "reserved_mib": g.reserved_mib,
                "allocated_mib": allocated.get(g.key, 0),
                "free_mib": free.get(g.key, 0),
                "measured_free_mib": measured,
                "measured_at": taken_at,
            }
        )
    rows = (
        m.Residency.objects.filter(state__in=m.Residency.ACTIVE_STATES)
        .select_related("model", "endpoint")
        .prefetch_related("placements__gpu__host")
        .order_by("endpoint__name", "model__tag")
    )
    residents = [
        {
            "residency_id": r.pk,
            "model": r.model.tag,
            "endpoint": r.endpoint.name,
            "gpus": [p.gpu.key for p in r.placements.all()],
            "state": r.state,
            "vram_mib": r.vram_mib,
            "ready_at": r.ready_at,
            "last_used_at": r.last_used_at,
            "expires_at": r.expires_at,
            "trigger": r.trigger,
        }
        for r in rows
    ]
    endpoints = [
        {
            "name": e.name,
            "base_url": e.base_url,
            "up": e.is_up,
            "version": e.version,
            "gpus": list(cfg.endpoint_gpus.get(e.name, ())),
            "last_checked_at": e.last_checked_at,
        }
        for e in m.Endpoint.objects.order_by("name")
    ]
    return {"gpus": gpus, "endpoints": endpoints, "residents": residents}


def request_load(tag: str, *, trigger: str, endpoint: str | None = None, now: dt.datetime | None = None,
                 protect: tuple[str, ...] = ()) -> dict:
    """Reserve and queue a load of `tag` outside a selection (admin, preload window).

    Placed by the same code as selections, under the same lock; an already-active
    residency is returned as it is (idempotent)."""
    now = now or utcnow()
    with transaction.atomic():
        _lock_reservations()
        world, cfg, rids = read_world(now)
        if tag not in cfg.model_ids:
            raise NotFound(f"unknown model {tag!r}")
        existing = [(ep, rid) for (t, ep), rid in rids.items() if t == tag and (endpoint is None or ep == endpoint)]
        if existing:
            ep, rid = sorted(existing)[0]
            state = m.Residency.objects.filter(pk=rid).values_list("state", flat=True).first()
            return {"residency_id": rid, "model": tag, "endpoint": ep, "state": state, "detail": f"already {state} on {ep}"}
        if endpoint is not None:
            if endpoint not in cfg.endpoint_ids:
                raise NotFound(f"unknown endpoint {endpoint!r}")
            # Only the named endpoint may take it: to the placement code, the others are down.
            world = dataclasses.replace(
                world, endpoints=tuple(e if e.key == endpoint else dataclasses.replace(e, up=False) for e in world.endpoints)
            )
        placement = policy.place(world, tag, protect=protect)
        if placement is None:
            raise NoRoom(f"{tag} does not fit on any up endpoint{' ' + endpoint if endpoint else ''} without evicting a busy or pinned model")
        residency_id = _reserve(
            cfg, tag, placement.endpoint, placement.vram_by_gpu, placement.evictions,
            trigger=trigger, now=now, load_s=placement.load_s,
        )
        from models_registry import tasks  # tasks imports this module

        tasks.enqueue_load(residency_id)
    evicts = ", ".join(e.model for e in placement.evictions)
    return {
        "residency_id": residency_id,
        "model": tag,
        "endpoint": placement.endpoint,
        "state": "requested",
        "detail": f"loading on {placement.endpoint}" + (f" after evicting {evicts}" if evicts else ""),
    }


def admin_preload(tag: str, endpoint: str | None = None) -> dict:
    return request_load(tag, trigger="admin", endpoint=endpoint)


def request_unload(tag: str, *, trigger: str, endpoint: str | None = None) -> dict:
    with transaction.atomic():
        rows = list(
            m.Residency.objects.select_for_update()
            .filter(model__tag=tag, state__in=["requested", "loading", "loaded"])
            .filter(**({"endpoint__name": endpoint} if endpoint else {}))
            .select_related("endpoint")
        )
        if not rows:
            if not m.LlmModel.objects.filter(tag=tag).exists():
                raise NotFound(f"unknown model {tag!r}")
            return {"residency_id": None, "model": tag, "endpoint": endpoint, "state": None, "detail": "not loaded"}
        from models_registry import tasks  # tasks imports this module

        for r in rows:
            r.state = "unloading"
            r.save(update_fields=["state"])
            tasks.enqueue_unload(r.pk, trigger=trigger)
    first = rows[0]
    return {
        "residency_id": first.pk,
        "model": tag,
        "endpoint": first.endpoint.name,
        "state": "unloading",
        "detail": "unloading from " + ", ".join(r.endpoint.name for r in rows),
    }


def admin_unload(tag: str, endpoint: str | None = None) -> dict:
    return request_unload(tag, trigger="admin", endpoint=endpoint)
