"""Select and record: read the world, call the pure policy, write the decision (and a load's reservation)."""
from __future__ import annotations

import dataclasses
import datetime as dt
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass

from django.db import connection

from models_registry import models as m
from models_registry import policy
from models_registry.errors import UnknownChoice
from models_registry.learning import quality
from models_registry.policy import Decision, SelectionRequest, World
from models_registry.runtime import dispatch
from models_registry.runtime.reservations import lock_reservations, reserve
from models_registry.selection import advisory
from models_registry.selection.records import record_decision
from models_registry.selection.world import Config, LiveLoad, read_world
from models_registry.timeutil import utcnow
from models_registry.transactions import atomic_with_retry


def validate_request(req: SelectionRequest, cfg: Config) -> None:
    tasks = [t.name for t in cfg.task_types]
    if req.task_type not in tasks:
        raise UnknownChoice("task_type", req.task_type, sorted(tasks))
    urgencies = [u.name for u in cfg.urgencies]
    if req.urgency not in urgencies:
        raise UnknownChoice("urgency", req.urgency, [u for u in m.UrgencyClass.Name.values if u in urgencies])


@dataclass
class SelectionResult:
    decision: Decision
    record: m.SelectionDecision | None
    residency_id: int | None = None
    # With defer_write: call it (any thread) to INSERT the decision and mark the model used; it
    # returns the record. The decision is made; only its row is written later.
    write: Callable[[], m.SelectionDecision] | None = None


@dataclass(frozen=True)
class Ask:
    """What the gateway adds to a selection: a model named by the caller (served as asked), the
    endpoints that already failed this request, its live queue counts, the attempt it retries."""

    model: str | None = None
    exclude_endpoints: Collection[str] = ()
    live: Mapping[tuple[str, str], LiveLoad] | None = None
    retry_of: int | None = None
    # The gateway forwards to local Ollama servers only: a remote model is no answer it can give.
    local_only: bool = False


_API = Ask()


def _decide(req: SelectionRequest, now: dt.datetime, ask: Ask) -> tuple[Decision, World, Config, dict, int, bool]:
    world, cfg, rids = read_world(now, live=ask.live)
    if ask.exclude_endpoints:
        # A failed endpoint is, to the policy, down for this request.
        world = dataclasses.replace(world, endpoints=tuple(
            dataclasses.replace(e, up=False) if e.key in ask.exclude_endpoints else e for e in world.endpoints))
    if ask.local_only:
        world = dataclasses.replace(world, models=tuple(
            dataclasses.replace(m, enabled=False) if m.kind != "local" and m.enabled else m for m in world.models))
    validate_request(req, cfg)
    t0 = time.perf_counter_ns()
    explored = False
    if ask.model is not None:
        decision = policy.select_named(world, req, ask.model)
    elif quality.active():  # TOWEROPS_LEARNING_MODE=active: observed quality, bounded exploration
        decision, explored = quality.select_active(world, req)
    else:
        decision = policy.select(world, req)
    return decision, world, cfg, rids, (time.perf_counter_ns() - t0) // 1000, explored


def select_and_record(
    req: SelectionRequest, *, client: str = "", dry_run: bool = False, now: dt.datetime | None = None,
    source: str = "api", ask: Ask = _API, defer_write: bool = False,
) -> SelectionResult:
    """Decide, and unless dry_run record the decision and reserve VRAM for a load, atomically.

    A load's reservation (a Residency in state requested) is made under RESERVATION_LOCK
    after re-reading the state, so concurrent selections never over-commit a GPU. The load
    itself is queued for the host's agent when the transaction commits. `source` says who asked:
    "api" (an advisory selection: its queue time is booked, see advisory.py) or "gateway" (the
    request is forwarded and counted live by the gateway, so nothing is booked).
    `defer_write` (the gateway): when the decision reserves nothing (not a load), its INSERT is
    left to the caller (`SelectionResult.write`), who runs it while the request is on its way to
    Ollama instead of before.
    """
    now = now or utcnow()
    decision, world, cfg, rids, us, explored = _decide(req, now, ask)
    if dry_run:
        return SelectionResult(decision, None)
    gateway = source == "gateway"
    if decision.action == "load":
        # A deadlock or serialization failure (transactions.py) runs the whole decision again.
        return atomic_with_retry(_decide_and_reserve, req, client, now, ask, source)
    # The common path reserves nothing: one INSERT, durable on its own, then the estimate
    # of how busy the model is, in its own transaction that does not wait for the disk.
    residency_id = rids.get((decision.model, decision.endpoint)) if decision.action != "fallback" else None

    def write() -> m.SelectionDecision:
        record = record_decision(req, client, decision, world, cfg, now, us, residency_id,
                                 source=source, retry_of=ask.retry_of, explored=explored)
        _mark_used(residency_id, decision, now, record.pk, req.urgency, gateway=gateway)
        return record

    if defer_write:
        return SelectionResult(decision, None, residency_id, write)
    return SelectionResult(decision, write(), residency_id)


def _decide_and_reserve(req: SelectionRequest, client: str, now: dt.datetime, ask: Ask, source: str) -> SelectionResult:
    """Under the reservation lock: decide again (the state may have moved) and book a load's VRAM."""
    gateway = source == "gateway"
    lock_reservations()
    decision, world, cfg, rids, us, explored = _decide(req, now, ask)
    residency_id = None
    if decision.action == "load":
        residency_id = reserve(
            cfg, decision.model, decision.endpoint, decision.vram_by_gpu, decision.evictions,
            trigger=m.LoadEvent.Trigger.SELECTION, now=now, load_s=decision.expected_wait_s or 0.0,
        )
    elif decision.action in ("use_loaded", "wait_for_load"):
        residency_id = rids.get((decision.model, decision.endpoint))
    record = record_decision(req, client, decision, world, cfg, now, us, residency_id,
                             source=source, retry_of=ask.retry_of, explored=explored)
    if decision.action == "load":
        dispatch.enqueue_load(residency_id, decision_id=record.pk)
    # The load's own request is booked too: the next ones queue behind it once the model is ready.
    _mark_used(residency_id, decision, now, record.pk, req.urgency, gateway=gateway)
    return SelectionResult(decision, record, residency_id)


def _service_s(decision: Decision) -> float:
    """How long the request holds its model: reading its prompt, then generating."""
    if decision.expected_response_s is None or decision.expected_wait_s is None:
        return 0.0
    return max(0.0, decision.expected_response_s - decision.expected_wait_s + decision.expected_prefill_s)


def _mark_used(residency_id: int | None, decision: Decision, now: dt.datetime, decision_id: int, urgency: str,
               gateway: bool = False) -> None:
    """Book this request's prefill and generation time on the residency (advisory.py), or for
    a gateway request only mark the model used (the gateway counts its queue live).

    The request queues behind what is already there, so the queue moves by its own
    service time only (the rest of its wait is the queue already booked). The row is
    shared by every request to that model: outside a caller's transaction it is updated in
    its own, in one round trip, without waiting for the disk (these are estimates), so no
    lock on it is held across a durable COMMIT. Under heavy concurrency to one model SKIP LOCKED
    may skip an update (the estimate then runs low, never blocks); at a tower's rates (a few
    requests a second per model) nothing is skipped.
    """
    if residency_id is None:
        return
    if gateway:
        sql, params = advisory.TOUCH_SQL, {"now": now, "now_ts": now.timestamp(), "rid": residency_id,
                                           "urgency": urgency}
    else:
        service = _service_s(decision)
        sql = advisory.MARK_USED_SQL
        params = {"now": now, "now_ts": now.timestamp(), "service": dt.timedelta(seconds=service), "rid": residency_id,
                  "entry": advisory.entry(decision_id, now, service, decision.expected_response_s),
                  "urgency": urgency}
    with connection.cursor() as cur:
        if connection.in_atomic_block:
            cur.execute(sql, params)  # part of the caller's transaction
        else:
            try:
                cur.execute(f"BEGIN; SET LOCAL synchronous_commit = off; {sql}; COMMIT", params)
            except Exception:
                cur.execute("ROLLBACK")  # never leave the connection inside the failed BEGIN
                raise
