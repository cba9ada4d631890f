"""The dashboard: GPUs, endpoints, residents, the gateway's queues and the newest decisions, live."""

from __future__ import annotations

import datetime as dt
import logging
from collections import defaultdict

import redis
from django.contrib.auth.decorators import login_required
from django.db.models import Count
from django.shortcuts import render
from django.utils import timezone
from django.views.decorators.http import require_GET

from models_registry import conf
from models_registry import models as m
from models_registry.console.views.common import _template
from models_registry.gateway import admission
from models_registry.runtime import fleet

K = m.LoadEvent.Kind
log = logging.getLogger(__name__)


def _dashboard_context(now: dt.datetime) -> dict:
    state = fleet.fleet_state(now)
    # Per-GPU slices of every active residency (a split model holds several GPUs).
    slices = defaultdict(list)
    placements = (
        m.ResidencyGpu.objects.filter(residency__state__in=m.Residency.ACTIVE_STATES)
        .select_related("residency__model", "gpu__host")
        .only("vram_mib", "residency__state", "residency__model__tag", "gpu__index", "gpu__host__name")
    )
    for p in placements:
        slices[p.gpu.key].append({"model": p.residency.model.tag, "mib": p.vram_mib, "state": p.residency.state})
    hosts: dict[str, list] = {}
    for g in state["gpus"]:
        total = g["total_mib"] or 1
        models_ = sorted(slices.get(g["key"], []), key=lambda s: -s["mib"])
        for s in models_:
            s["pct"] = 100.0 * s["mib"] / total
        g["segments"] = models_
        g["reserved_pct"] = 100.0 * g["reserved_mib"] / total
        g["free_pct"] = max(0.0, 100.0 * g["free_mib"] / total)
        hosts.setdefault(g["key"].split("/")[0], []).append(g)
    for r in state["residents"]:
        r["idle_s"] = (now - r["last_used_at"]).total_seconds() if r["last_used_at"] else None
    decisions = (
        m.SelectionDecision.objects.select_related("task_type", "model", "endpoint")
        .only("created_at", "urgency", "action", "quality", "met_floor", "expected_wait_s",
              "task_type__name", "model__tag", "endpoint__name")
        .order_by("-created_at", "-id")[:15]
    )
    return {"hosts": hosts, "endpoints": state["endpoints"], "residents": state["residents"],
            "decisions": decisions, "now": now, "thrash": recent_thrash(now), "queues": gateway_queues()}


def gateway_queues() -> dict:
    """Each endpoint's admission queue (per model: in flight of its slots, waiting per urgency class).

    The console runs in the web process, not the gateway's: it reads the queue every gateway
    process shares in Redis. A gateway without Redis keeps its queue in its own memory, out of
    sight here. `error` says why there is nothing to show."""
    url = conf.value("TOWEROPS_GATEWAY_REDIS_URL")
    out = {"urgencies": admission.URGENCIES, "endpoints": [], "error": ""}
    if not url:
        out["error"] = "no gateway queue state (no Redis configured)"
        return out
    try:
        queues = admission.read_queues_sync(url, conf.value("TOWEROPS_GATEWAY_REDIS_PREFIX"))
    except (redis.RedisError, OSError) as exc:  # the page still answers without its Redis
        log.debug("dashboard: gateway queues unreadable", exc_info=True)
        out["error"] = f"gateway queue state unavailable ({type(exc).__name__})"
        return out
    for name in sorted(queues):
        e = queues[name]
        models_ = [{"model": tag, "in_flight": q["in_flight"], "slots": q["slots"],
                    "waiting": [q["waiting"][u] for u in admission.URGENCIES]}
                   for tag, q in sorted(e["models"].items())]
        out["endpoints"].append({"endpoint": name, "in_flight": e["in_flight"],
                                 "waiting": [e["waiting"][u] for u in admission.URGENCIES], "models": models_})
    return out


THRASH_WINDOW = dt.timedelta(minutes=10)


def recent_thrash(now: dt.datetime) -> dict:
    """Loads and evictions of the last 10 minutes, against the loads-per-hour target's pace (a tenth
    of an hour's budget per 6 minutes): `over` when the loads already exceed it."""
    counts = dict(m.LoadEvent.objects.filter(kind__in=(K.LOAD, K.EVICT), requested_at__gte=now - THRASH_WINDOW)
                  .values_list("kind").annotate(n=Count("id")).values_list("kind", "n"))
    target = m.SloTarget.objects.filter(name=m.SloTarget.Name.LOADS_PER_HOUR, enabled=True).first()
    pace = target.target * THRASH_WINDOW / dt.timedelta(hours=1) if target else None
    loads = counts.get(K.LOAD, 0)
    thrash = m.LoadEvent.objects.filter(kind=K.LOAD, thrash=True, requested_at__gte=now - THRASH_WINDOW).count() \
        if loads else 0
    return {"loads": loads, "evictions": counts.get(K.EVICT, 0), "thrash_loads": thrash,
            "minutes": int(THRASH_WINDOW.total_seconds() // 60),
            "target": target.target if target else None, "pace": pace, "over": pace is not None and loads > pace}


@require_GET
@login_required
def dashboard(request):
    ctx = _dashboard_context(timezone.now())
    return render(request, _template(request, "dashboard", "live"), ctx)
