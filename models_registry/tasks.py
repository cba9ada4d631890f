"""Celery tasks: the agent's work on each host. Tasks take ids and are idempotent.

Loads, unloads, state sync and telemetry run on the host's own queue (`Host.queue`), so
each host's agent talks to its own Ollama and GPUs; fan-out and policy tasks run on
`central`. Every task is safe to run twice: it re-reads the row and does nothing when
the work is already done.
"""
from __future__ import annotations

import datetime as dt
import logging

from celery import shared_task
from django.conf import settings
from django.db import transaction
from django.db.models import DateTimeField, F, Value

from models_registry import models as m
from models_registry.services import utcnow

log = logging.getLogger(__name__)

LOAD_TIMEOUT_S = float(getattr(settings, "TOWEROPS_LOAD_TIMEOUT_S", 600))
REQUESTED_TIMEOUT_S = float(getattr(settings, "TOWEROPS_REQUESTED_TIMEOUT_S", 120))
EWMA_ALPHA = 0.3  # weight of the newest load time in the learned estimate


def _client(endpoint: m.Endpoint, load_timeout: float | None = None):
    from models_registry.ollama import OllamaClient

    return OllamaClient(endpoint.base_url, load_timeout=load_timeout or LOAD_TIMEOUT_S)


def _queue_of(residency_id: int) -> str:
    return m.Residency.objects.filter(pk=residency_id).values_list("endpoint__host__queue", flat=True).first() or "central"


def enqueue_load(residency_id: int, decision_id: int | None = None) -> None:
    """Queue the load on the host's agent once the reservation is committed."""
    queue = _queue_of(residency_id)
    transaction.on_commit(lambda: execute_load.apply_async(args=[residency_id], queue=queue))


def enqueue_unload(residency_id: int, trigger: str) -> None:
    queue = _queue_of(residency_id)
    transaction.on_commit(lambda: execute_unload.apply_async(args=[residency_id, trigger], queue=queue))


def _gpu_keys(residency: m.Residency) -> list[str]:
    return [p.gpu.key for p in residency.placements.select_related("gpu__host")]


def learn_load_time(model_id: int, endpoint_id: int, seconds: float) -> None:
    """Update the EWMA of load seconds for this model on this endpoint."""
    with transaction.atomic():
        est = m.LoadTimeEstimate.objects.select_for_update().filter(model_id=model_id, endpoint_id=endpoint_id).first()
        if est is None:
            m.LoadTimeEstimate.objects.create(model_id=model_id, endpoint_id=endpoint_id, seconds=seconds, samples=1)
        else:
            est.seconds = EWMA_ALPHA * seconds + (1 - EWMA_ALPHA) * est.seconds
            est.samples += 1
            est.save(update_fields=["seconds", "samples", "updated_at"])


@shared_task(bind=True, acks_late=True, max_retries=0, soft_time_limit=LOAD_TIMEOUT_S + 30)
def execute_load(self, residency_id: int) -> str:
    """requested → loading → loaded | failed. Evictions marked `unloading` on the same endpoint go first."""
    with transaction.atomic():
        r = m.Residency.objects.select_for_update().select_related("model", "endpoint").filter(pk=residency_id).first()
        if r is None or r.state != "requested":
            return f"nothing to do ({r.state if r else 'gone'})"
        r.state, r.loaded_at = "loading", utcnow()
        r.save(update_fields=["state", "loaded_at"])
    endpoint, model = r.endpoint, r.model
    started = utcnow()
    client = _client(endpoint)
    try:
        # Inside the try: an eviction that cannot reach the endpoint fails this load now
        # instead of leaving it `loading` until resolve_stale_loads.
        for victim in m.Residency.objects.filter(endpoint=endpoint, state="unloading").values_list("pk", flat=True):
            execute_unload(victim, "selection" if r.trigger == "selection" else r.trigger, evict=True)
        started = utcnow()
        client.load(model.tag, keep_alive=endpoint.keep_alive, num_ctx=endpoint.num_ctx)
    except Exception as exc:  # OllamaError, OllamaUnavailable or anything else: the VRAM must be released
        finished = utcnow()
        with transaction.atomic():
            updated = m.Residency.objects.filter(pk=r.pk, state="loading").update(
                state="failed", ended_at=finished, error=str(exc)[:2000]
            )
            if updated:
                m.LoadEvent.objects.create(
                    model=model, endpoint=endpoint, gpu_keys=_gpu_keys(r), kind="fail", trigger=r.trigger,
                    requested_at=r.requested_at, started_at=started, finished_at=finished,
                    duration_s=(finished - started).total_seconds(), vram_mib=r.vram_mib, error=str(exc)[:2000],
                    residency=r, decision=r.decisions.first(),
                )
        log.warning("load of %s on %s failed: %s", model.tag, endpoint.name, exc)
        return f"failed: {exc}"
    finished = utcnow()
    duration = (finished - started).total_seconds()
    # A load's answer carries no expiry: ask /api/ps, so that a model Ollama drops at its
    # keep_alive before the next sync is recorded as `expiry`, not `external`.
    from models_registry.ollama import OllamaClientError

    try:
        running = client.running(model.tag)
    except OllamaClientError:  # the load succeeded; the expiry is only bookkeeping
        running = None
    with transaction.atomic():
        updated = m.Residency.objects.filter(pk=r.pk, state="loading").update(
            state="loaded",
            ready_at=finished,
            expires_at=running.expires_at if running else None,
            # The queue behind the load was estimated from the predicted ready_at: move it by
            # however much earlier or later the load really finished (SQL reads the old ready_at).
            busy_until=F("busy_until") - (F("ready_at") - Value(finished, output_field=DateTimeField())),
        )
        if updated:
            m.LoadEvent.objects.create(
                model=model, endpoint=endpoint, gpu_keys=_gpu_keys(r), kind="load", trigger=r.trigger,
                requested_at=r.requested_at, started_at=started, finished_at=finished, duration_s=duration,
                vram_mib=r.vram_mib, residency=r, decision=r.decisions.first(),
            )
    if updated:
        learn_load_time(model.pk, endpoint.pk, duration)
    return f"loaded {model.tag} on {endpoint.name} in {duration:.1f} s"


@shared_task(bind=True, acks_late=True, max_retries=3, default_retry_delay=5)
def execute_unload(self, residency_id: int, trigger: str = "admin", evict: bool = False) -> str:
    """unloading → unloaded, confirmed through /api/ps (Ollama unloads asynchronously)."""
    from models_registry.ollama import OllamaUnavailable

    r = m.Residency.objects.select_related("model", "endpoint").filter(pk=residency_id).first()
    if r is None or r.state not in ("unloading",):
        return f"nothing to do ({r.state if r else 'gone'})"
    started = utcnow()
    client = _client(r.endpoint)
    try:
        client.unload(r.model.tag)
        gone = client.wait_unloaded(r.model.tag, timeout=60)
    except OllamaUnavailable as exc:
        raise self.retry(exc=exc, countdown=2 ** self.request.retries)
    if not gone:
        # Still listed by /api/ps (busy, or slow to free): ask again later rather than book
        # VRAM as free that is not. If the retries run out, the state sync confirms it.
        raise self.retry(countdown=2 ** self.request.retries)
    finished = utcnow()
    with transaction.atomic():
        if m.Residency.objects.filter(pk=r.pk, state="unloading").update(state="unloaded", ended_at=finished):
            m.LoadEvent.objects.create(
                model=r.model, endpoint=r.endpoint, gpu_keys=_gpu_keys(r), kind="evict" if evict else "unload",
                trigger=trigger, requested_at=started, started_at=started, finished_at=finished,
                duration_s=(finished - started).total_seconds(), vram_mib=r.vram_mib, residency=r,
            )
    return f"unloaded {r.model.tag} from {r.endpoint.name}"


@shared_task
def resolve_stale_loads() -> int:
    """A load never stays `loading` for ever: a killed worker or a hung endpoint is resolved as failed."""
    now = utcnow()
    stale = m.Residency.objects.filter(
        state="loading", loaded_at__lt=now - dt.timedelta(seconds=LOAD_TIMEOUT_S)
    ) | m.Residency.objects.filter(state="requested", requested_at__lt=now - dt.timedelta(seconds=REQUESTED_TIMEOUT_S))
    count = 0
    for r in stale.select_related("model", "endpoint"):
        with transaction.atomic():
            if m.Residency.objects.filter(pk=r.pk, state=r.state).update(
                state="failed", ended_at=now, error=f"timed out in state {r.state}"
            ):
                m.LoadEvent.objects.create(
                    model=r.model, endpoint=r.endpoint, gpu_keys=_gpu_keys(r), kind="fail", trigger=r.trigger,
                    requested_at=r.requested_at, started_at=r.loaded_at, finished_at=now,
                    vram_mib=r.vram_mib, error=f"timed out in state {r.state}", residency=r,
                )
                count += 1
    return count


# --------------------------------------------------------------------------- state sync


@shared_task
def sync_all_endpoints() -> int:
    """Fan out: each endpoint is synced by its own host's agent."""
    rows = list(m.Endpoint.objects.values_list("pk", "host__queue"))
    for pk, queue in rows:
        sync_endpoint.apply_async(args=[pk], queue=queue, expires=30)
    return len(rows)


@shared_task
def sync_endpoint(endpoint_id: int) -> str:
    """Reconcile Residency with Ollama's /api/ps; mark the endpoint up or down.

    Models someone else loaded appear with trigger `external`; models Ollama dropped on
    its own (keep_alive expiry, its own eviction) end with a LoadEvent (`expiry` when their
    expires_at has passed, else `external`).

    Keep-warm: on an endpoint whose keep_alive is forever, a loaded model whose /api/ps
    expiry is finite had its timer reset by a client that sent its own keep_alive (LangChain
    sends "5m"); it is pinned again (a load request with the endpoint's keep_alive and num_ctx,
    which Ollama answers at once for a loaded model), so keep-warm holds whatever clients send.
    """
    from models_registry.durations import keeps_forever
    from models_registry.ollama import OllamaError, OllamaUnavailable

    endpoint = m.Endpoint.objects.select_related("host").filter(pk=endpoint_id).first()
    if endpoint is None:
        return "gone"
    client = _client(endpoint, load_timeout=10)
    now = utcnow()
    try:
        version = client.version()
        running = {r.name: r for r in client.ps()}
    except (OllamaUnavailable, OllamaError) as exc:
        m.Endpoint.objects.filter(pk=endpoint.pk).update(is_up=False, last_checked_at=now, last_error=str(exc)[:2000])
        return f"{endpoint.name} down: {exc}"
    m.Endpoint.objects.filter(pk=endpoint.pk).update(is_up=True, version=version, last_checked_at=now, last_error="")
    m.Host.objects.filter(pk=endpoint.host_id).update(last_seen_at=now)
    tags = {_canonical(t): t for t in m.LlmModel.objects.values_list("tag", flat=True)}
    keep_warm = keeps_forever(endpoint.keep_alive)
    repin: list[str] = []
    with transaction.atomic():
        active = {
            r.model.tag: r
            for r in m.Residency.objects.select_for_update()
            .select_related("model")
            .filter(endpoint=endpoint, state__in=["requested", "loaded", "loading", "unloading"])
        }
        seen = set()
        for name, info in running.items():
            tag = tags.get(_canonical(name))
            if tag is None:
                continue  # a model TowerOps does not manage; its VRAM shows in telemetry
            seen.add(tag)
            r = active.get(tag)
            if r is None:
                _adopt_external(endpoint, tag, info, now)
            elif r.state == "loaded" and info.expires_at:
                m.Residency.objects.filter(pk=r.pk).update(expires_at=info.expires_at)
                if keep_warm and not info.keeps_forever(now):
                    repin.append(name)
        for tag, r in active.items():
            if tag in seen or r.state in ("requested", "loading"):
                continue  # the load task owns these
            if r.state == "unloading":
                # Gone from /api/ps while TowerOps was unloading it: confirmed here when the
                # unload task died or gave up, so the VRAM never stays booked for ever.
                if m.Residency.objects.filter(pk=r.pk, state="unloading").update(state="unloaded", ended_at=now):
                    m.LoadEvent.objects.create(
                        model=r.model, endpoint=endpoint, gpu_keys=_gpu_keys(r), kind="unload", trigger="external",
                        requested_at=now, finished_at=now, vram_mib=r.vram_mib, residency=r,
                        error="confirmed by the state sync, not by the unload task",
                    )
                continue
            expired = r.expires_at is not None and r.expires_at <= now
            m.Residency.objects.filter(pk=r.pk).update(state="unloaded", ended_at=now)
            m.LoadEvent.objects.create(
                model=r.model, endpoint=endpoint, gpu_keys=_gpu_keys(r), kind="unload",
                trigger="expiry" if expired else "external", requested_at=now, finished_at=now, vram_mib=r.vram_mib,
                residency=r,
            )
    pinned = 0
    for name in repin:  # outside the transaction: no row lock is held across HTTP
        try:
            client.load(name, keep_alive=endpoint.keep_alive, num_ctx=endpoint.num_ctx)
            pinned += 1
        except (OllamaUnavailable, OllamaError) as exc:
            log.warning("keep-warm: could not pin %s on %s again: %s", name, endpoint.name, exc)
    if pinned:
        log.info("keep-warm: pinned %d model(s) on %s again after a client's keep_alive", pinned, endpoint.name)
        return f"{endpoint.name} up: {len(running)} running, {pinned} pinned again"
    return f"{endpoint.name} up: {len(running)} running"


def _canonical(tag: str) -> str:
    return tag if ":" in tag else f"{tag}:latest"


def _adopt_external(endpoint: m.Endpoint, tag: str, info, now: dt.datetime) -> None:
    model = m.LlmModel.objects.get(tag=tag)
    gpus = list(endpoint.gpus.select_related("host").order_by("index"))
    vram = int((getattr(info, "size_vram", 0) or 0) / 2**20) or model.vram_mib
    r = m.Residency.objects.create(
        model=model, endpoint=endpoint, state="loaded", trigger="external", vram_mib=vram,
        requested_at=now, loaded_at=now, ready_at=now, expires_at=info.expires_at,
    )
    target = None
    if gpus:
        # Ollama does not say which GPU; charge the one with the most room (what its scheduler picks).
        target = max(gpus, key=lambda g: g.usable_mib - sum(p.vram_mib for p in g.placements.filter(
            residency__state__in=m.Residency.ACTIVE_STATES)))
        m.ResidencyGpu.objects.create(residency=r, gpu=target, vram_mib=vram)
    m.LoadEvent.objects.create(
        model=model, endpoint=endpoint, gpu_keys=[target.key] if target else [], kind="load", trigger="external",
        requested_at=now, finished_at=now, vram_mib=vram, residency=r,
    )


# --------------------------------------------------------------------------- GPU telemetry


@shared_task
def collect_all_telemetry() -> int:
    queues = list(m.Host.objects.values_list("pk", "queue"))
    for pk, queue in queues:
        record_gpu_snapshots.apply_async(args=[pk], queue=queue, expires=30)
    return len(queues)


@shared_task
def record_gpu_snapshots(host_id: int) -> int:
    """Read this host's GPUs (NVML, AMD sysfs) and append a GpuSnapshot each. Runs on the host itself."""
    from models_registry import collectors

    readings = collectors.read_all()
    host_gpus = list(m.Gpu.objects.filter(host_id=host_id).order_by("index"))
    by_uuid = {g.uuid: g for g in host_gpus if g.uuid}
    # A reading's index counts that vendor's GPUs only (NVML's index, the AMD card ordinal),
    # while a profile's index counts all of the host's GPUs: on the Tower (AMD 0, NVIDIA 1)
    # NVML's GPU 0 is the profile's GPU 1. So, without a uuid, match the n-th GPU of the vendor.
    by_vendor: dict[str, list[m.Gpu]] = {}
    for g in host_gpus:
        by_vendor.setdefault(g.vendor, []).append(g)
    now = utcnow()
    rows, taken = [], set()
    for reading in readings:
        gpu = by_uuid.get(reading.uuid) if reading.uuid else None
        if gpu is None:
            same = by_vendor.get(reading.vendor, [])
            gpu = same[reading.index] if 0 <= reading.index < len(same) else None
            if gpu is not None and gpu.uuid and reading.uuid and gpu.uuid != reading.uuid:
                gpu = None  # the profile names another card by its uuid
        if gpu is None or gpu.pk in taken:
            continue
        taken.add(gpu.pk)
        rows.append(
            m.GpuSnapshot(
                gpu=gpu, taken_at=now, total_mib=reading.total_mib, used_mib=reading.used_mib,
                free_mib=reading.free_mib, util_pct=reading.util_pct, temperature_c=reading.temperature_c,
                power_w=reading.power_w,
            )
        )
    m.GpuSnapshot.objects.bulk_create(rows)
    m.Host.objects.filter(pk=host_id).update(last_seen_at=now)
    return len(rows)


@shared_task
def prune_snapshots() -> int:
    """Thin old snapshots: keep every row for RAW_DAYS, then one per GPU per 5 minutes."""
    from django.db import connection

    raw_days = int(getattr(settings, "TOWEROPS_SNAPSHOT_RAW_DAYS", 2))
    cutoff = utcnow() - dt.timedelta(days=raw_days)
    with connection.cursor() as cur:
        cur.execute(
            """
            DELETE FROM models_registry_gpusnapshot s
            USING (
                SELECT id, row_number() OVER (
                    PARTITION BY gpu_id, date_trunc('hour', taken_at),
                                 floor(extract(minute FROM taken_at) / 5)
                    ORDER BY taken_at) AS n
                FROM models_registry_gpusnapshot WHERE taken_at < %s
            ) old
            WHERE s.id = old.id AND old.n > 1
            """,
            [cutoff],
        )
        return cur.rowcount


# --------------------------------------------------------------------------- preload windows


def desired_warm_set(at: dt.datetime) -> list[str]:
    tags: list[str] = []
    for window in m.PreloadWindow.objects.filter(enabled=True).prefetch_related("models").order_by("name"):
        if window.is_active(at):
            for model in window.models.filter(enabled=True, kind="local").order_by("tag"):
                if model.tag not in tags:
                    tags.append(model.tag)
    return tags


@shared_task
def apply_preload_windows() -> dict:
    """Warm what the active windows want (placed like selections); cool what an ended window warmed.

    Cooling applies only on endpoints with a finite keep_alive. On a keep-warm endpoint
    (keep_alive negative: Ollama keeps the model for ever) an ended window's model stays until a
    selection or another window needs its VRAM (both evict idle models, least recently used
    first): unloading it early would free VRAM nobody asked for. The replay simulates this task
    the same way (models_registry/replay/sim.py).
    """
    from models_registry.durations import keeps_forever
    from models_registry.services import NoRoom, request_load, request_unload

    now = utcnow()
    wanted = desired_warm_set(now)
    loaded, skipped, cooled, kept = [], [], [], []
    # Largest first: each load takes the tightest GPU, and small models placed first could
    # take the only GPU a large one fits (policy.warmset.never_fits checks windows the same way).
    size = dict(m.LlmModel.objects.filter(tag__in=wanted).values_list("tag", "vram_mib"))
    for tag in sorted(wanted, key=lambda t: (-size.get(t, 0), t)):
        try:
            result = request_load(tag, trigger="preload", now=now, protect=tuple(wanted))
            if result["detail"].startswith("loading"):
                loaded.append(tag)
        except NoRoom as exc:
            skipped.append(f"{tag}: {exc}")
    idle_since = now - dt.timedelta(minutes=float(getattr(settings, "TOWEROPS_PRELOAD_IDLE_MIN", 5)))
    for r in m.Residency.objects.filter(state="loaded", trigger="preload").select_related("model", "endpoint"):
        busy = r.busy_until is not None and r.busy_until > now
        recently = r.last_used_at is not None and r.last_used_at > idle_since
        if r.model.tag in wanted or r.model.pinned:
            continue
        if keeps_forever(r.endpoint.keep_alive):
            kept.append(r.model.tag)  # keep-warm: evicted on demand only
        elif not busy and not recently:
            request_unload(r.model.tag, trigger="preload", endpoint=r.endpoint.name)
            cooled.append(r.model.tag)
    return {"wanted": wanted, "loading": loaded, "skipped": skipped, "cooling": cooled, "kept_warm": kept}


# --------------------------------------------------------------------------- SLO rollups and retention


@shared_task
def rollup_hour(hour_iso: str) -> str:
    """Recompute one complete clock hour's SLO rollup from raw rows and upsert it (idempotent)."""
    from models_registry import reports

    hour = dt.datetime.fromisoformat(hour_iso)
    if hour.tzinfo is None:
        hour = hour.replace(tzinfo=dt.timezone.utc)
    row = reports.rollup_hour(hour)
    return f"rolled up {row.hour.isoformat()}: {row.decisions} decisions" if row else "hour not over yet"


@shared_task
def rollup_due_hours() -> int:
    """Beat, every few minutes: the previous hour until it settles, dirty hours (late outcomes), missing hours."""
    from models_registry import reports

    return len(reports.rollup_due())


@shared_task
def prune_decisions() -> int:
    """Beat, hourly: delete raw decisions older than TOWEROPS_DECISION_RAW_DAYS whose hour is rolled up."""
    from models_registry import reports

    return reports.prune_raw_decisions()
