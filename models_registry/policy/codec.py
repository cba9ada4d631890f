"""World and Decision to plain JSON-able dicts and back: decisions store the World they saw,
so any past decision can be replayed against a new policy."""
from __future__ import annotations

from dataclasses import asdict

from models_registry.policy.types import (
    EndpointView,
    GpuView,
    ModelView,
    PolicyParams,
    ResidentView,
    TaskTypeView,
    UrgencyView,
    World,
)


def world_to_dict(world: World) -> dict:
    return {
        "now": world.now,
        "gpus": [asdict(g) for g in world.gpus],
        "endpoints": [asdict(e) for e in world.endpoints],
        "residents": [asdict(r) for r in world.residents],
        "models": [{**asdict(m), "quality": dict(m.quality)} for m in world.models],
        "task_types": [asdict(t) for t in world.task_types],
        "urgencies": [asdict(u) for u in world.urgencies],
        "params": asdict(world.params),
        "wanted": list(world.wanted),
    }


def world_from_dict(d: dict) -> World:
    return World(
        now=d["now"],
        gpus=tuple(GpuView(**g) for g in d["gpus"]),
        endpoints=tuple(EndpointView(**{**e, "gpus": tuple(e["gpus"])}) for e in d["endpoints"]),
        residents=tuple(
            ResidentView(**{**r, "vram_by_gpu": tuple((g, int(m)) for g, m in r["vram_by_gpu"]),
                            "used_by": tuple((u, float(t)) for u, t in r.get("used_by") or ())})
            for r in d["residents"]
        ),
        models=tuple(
            ModelView(**{**m, "load_s_by_endpoint": tuple((e, float(s)) for e, s in m["load_s_by_endpoint"])})
            for m in d["models"]
        ),
        task_types=tuple(TaskTypeView(**t) for t in d["task_types"]),
        urgencies=tuple(UrgencyView(**u) for u in d["urgencies"]),
        params=PolicyParams(**d["params"]),
        wanted=tuple(d.get("wanted") or ()),
    )
