"""Reconcile TowerOps' books with an endpoint's /api/ps, and mark the endpoint up or down.

Models someone else loaded appear with trigger `external`; models Ollama dropped on its own
(keep_alive expiry, its own eviction) end with a LoadEvent (`expiry` when their expires_at has
passed, else `external`).

Keep-warm: on an endpoint whose keep_alive is forever, a loaded model whose /api/ps expiry is
finite had its timer reset by a client that sent its own keep_alive (LangChain sends "5m"); it is
pinned again (a load request with the endpoint's keep_alive and num_ctx, which Ollama answers at
once for a loaded model), so keep-warm holds whatever clients send.
"""
from __future__ import annotations

import datetime as dt
import logging

from django.db.models import Q

from models_registry import models as m
from models_registry import timeutil
from models_registry.catalog.durations import keeps_forever
from models_registry.policy.ollama_rules import model_key
from models_registry.runtime import lifecycle, loads
from models_registry.runtime.lifecycle import Event
from models_registry.runtime.ollama import OllamaClient, OllamaError, OllamaUnavailable
from models_registry.runtime.reservations import lock_reservations
from models_registry.transactions import atomic_with_retry

log = logging.getLogger(__name__)

S = m.Residency.State
K = m.LoadEvent.Kind
T = m.LoadEvent.Trigger
SYNC_TIMEOUT_S = 10.0


def sync_endpoint(endpoint_id: int, *, load_timeout_s: float, requested_timeout_s: float) -> str:
    """Mark the endpoint up or down; when up, make the books say what its /api/ps says.

    Every correction is a LoadEvent with its reason. Loads past their bound are ended first (booked
    loaded if Ollama has the model); `unloading` residencies that no task is finishing any more (the
    unload task gave up or was lost, the load that was to evict them never ran) are unloaded for
    real: Ollama is asked again while it lists them, and they are booked unloaded once it does not."""
    endpoint = m.Endpoint.objects.select_related("host").filter(pk=endpoint_id).first()
    if endpoint is None:
        return "gone"
    client = OllamaClient(endpoint.base_url, load_timeout=SYNC_TIMEOUT_S)
    now = timeutil.utcnow()
    try:
        version = client.version()
        running = {r.name: r for r in client.ps()}
    except (OllamaUnavailable, OllamaError) as exc:
        m.Endpoint.objects.filter(pk=endpoint.pk).update(is_up=False, last_checked_at=now, last_error=str(exc)[:2000])
        return f"{endpoint.name} down: {exc}"
    m.Endpoint.objects.filter(pk=endpoint.pk).update(is_up=True, version=version, last_checked_at=now, last_error="")
    m.Host.objects.filter(pk=endpoint.host_id).update(last_seen_at=now)
    loads.resolve_stale_loads(now, load_timeout_s=load_timeout_s, requested_timeout_s=requested_timeout_s,
                              endpoint_id=endpoint.pk, running=set(running))
    tags = {model_key(t): t for t in m.LlmModel.objects.values_list("tag", flat=True)}
    listed = {}  # tag -> (the name /api/ps gives, its entry), for the models TowerOps manages
    for name, info in running.items():
        tag = tags.get(model_key(name))
        if tag is not None:  # else a model TowerOps does not manage; its VRAM shows in telemetry
            listed[tag] = (name, info)
    keep_warm = keeps_forever(endpoint.keep_alive)
    repin: list[str] = []
    unload_again: list[str] = []
    active = {r.model.tag: r for r in m.Residency.objects.active().filter(endpoint=endpoint).select_related("model")}
    load_pending = any(r.state in (S.REQUESTED, S.LOADING) for r in active.values())
    for tag, r in active.items():
        name, info = listed.get(tag, (None, None))
        if r.state == S.LOADED and info is not None:
            if info.expires_at:
                m.Residency.objects.filter(pk=r.pk, state=S.LOADED).update(expires_at=info.expires_at)
                if keep_warm and not info.keeps_forever(now):
                    repin.append(name)
        elif r.state == S.LOADED and r.ready_at is not None and r.ready_at >= now:
            pass  # loaded after /api/ps answered: the next sync judges it
        elif r.state == S.LOADED:  # Ollama dropped it on its own
            expired = r.expires_at is not None and r.expires_at <= now
            lifecycle.transition(
                r.pk, S.LOADED, S.UNLOADED, ended_at=now,
                event=Event(K.UNLOAD, trigger=T.EXPIRY if expired else T.EXTERNAL, requested_at=now, finished_at=now),
            )
        elif r.state == S.UNLOADING and not _owned_by_a_task(r, now, load_pending, load_timeout_s):
            if name is not None:
                unload_again.append(name)  # booked unloaded by a later sync, once Ollama has let it go
            else:
                lifecycle.transition(
                    r.pk, S.UNLOADING, S.UNLOADED, ended_at=now,
                    event=Event(K.UNLOAD, trigger=r.unload_trigger or T.EXTERNAL, requested_at=now, finished_at=now,
                                reason="confirmed by the state sync: gone from /api/ps, no task was finishing it"),
                )
        # requested, loading: their load task owns them (stale ones were ended above)
    strangers = [tag for tag in listed if tag not in active]
    if strangers:
        atomic_with_retry(_adopt_external, endpoint, [(tag, listed[tag][1]) for tag in strangers], now)
    for name in unload_again:  # HTTP outside any transaction
        try:
            client.unload(name)
            log.info("%s: asked Ollama to unload %s, which no task was unloading any more", endpoint.name, name)
        except (OllamaUnavailable, OllamaError) as exc:
            log.warning("could not ask %s to unload %s: %s", endpoint.name, name, exc)
    pinned = 0
    for name in repin:
        try:
            client.load(name, keep_alive=endpoint.keep_alive, num_ctx=endpoint.num_ctx)
            pinned += 1
        except (OllamaUnavailable, OllamaError) as exc:
            log.warning("keep-warm: could not pin %s on %s again: %s", name, endpoint.name, exc)
    out = f"{endpoint.name} up: {len(running)} running"
    if pinned:
        log.info("keep-warm: pinned %d model(s) on %s again after a client's keep_alive", pinned, endpoint.name)
        out += f", {pinned} pinned again"
    if unload_again:
        out += f", {len(unload_again)} unloaded again"
    return out


def _owned_by_a_task(r: m.Residency, now: dt.datetime, load_pending: bool, load_timeout_s: float) -> bool:
    """Whether a task is still finishing this `unloading` residency: its own load (asked to unload
    while loading), or a load pending on the endpoint, which evicts it first."""
    if r.ready_at is None:
        return loads.load_in_flight(r, now, load_timeout_s)
    return load_pending


def _adopt_external(endpoint: m.Endpoint, found: list[tuple[str, object]], now: dt.datetime) -> None:
    """Book models someone else loaded (Ollama lists them, TowerOps has no active residency for them).

    They take VRAM like a reservation, so under the same lock, after checking again that no
    reservation booked the model meanwhile."""
    lock_reservations()
    # Booked meanwhile, or ended after /api/ps answered (an unload that finished since): not strangers.
    booked = set(m.Residency.objects.filter(endpoint=endpoint).filter(
        Q(state__in=m.ACTIVE_RESIDENCY_STATES) | Q(ended_at__gte=now)).values_list("model__tag", flat=True))
    gpus = list(endpoint.gpus.select_related("host").order_by("index"))
    for tag, info in found:
        if tag in booked:
            continue
        model = m.LlmModel.objects.get(tag=tag)
        vram = int((getattr(info, "size_vram", 0) or 0) / 2**20) or model.vram_mib
        target = None
        if gpus:
            # Ollama does not say which GPU; charge the one with the most room (what its scheduler picks).
            target = max(gpus, key=lambda g: g.usable_mib - sum(p.vram_mib for p in g.placements.filter(
                residency__state__in=m.Residency.ACTIVE_STATES)))
        lifecycle.admit(
            state=S.LOADED, gpus=[(target.pk, vram)] if target else [],
            event=Event(K.LOAD, trigger=T.EXTERNAL, finished_at=now),
            model=model, endpoint=endpoint, trigger=T.EXTERNAL, vram_mib=vram,
            requested_at=now, loaded_at=now, ready_at=now, expires_at=info.expires_at,
        )
