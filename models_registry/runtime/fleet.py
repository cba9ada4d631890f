"""The fleet as the state API shows it: GPUs with booked and measured VRAM, endpoints, residents."""
from __future__ import annotations

import datetime as dt

from models_registry import models as m
from models_registry import policy
from models_registry.selection.world import read_world
from models_registry.timeutil import utcnow


def fleet_state(now: dt.datetime | None = None) -> dict:
    now = now or utcnow()
    world, cfg, rids = read_world(now)
    free = policy.free_mib_by_gpu(world)
    allocated: dict[str, int] = {}
    for r in world.residents:
        for key, mib in r.vram_by_gpu:
            allocated[key] = allocated.get(key, 0) + mib
    latest = {s.gpu_id: (s.taken_at, s.free_mib) for s in m.GpuSnapshot.objects.latest_per_gpu()}
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
        m.Residency.objects.active()
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
