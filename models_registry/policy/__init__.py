"""TowerOps' decision core: pure functions over immutable snapshots (standard library only).

    select(world, request) -> Decision         which model serves a request, and why
    select_named(world, request, tag)          where a model the caller named is served (gateway)
    place(world, tag) -> Placement | None      where a fresh load of a model would go
    place_many(world, tags) -> {tag: Placement | None}   a warm set, never over-committing
    free_mib_by_gpu(world) -> {gpu key: MiB}   the VRAM bookkeeping both use
    fit_warm_set(world, tags), never_fits(world, tags)   preload windows' fit checks
    select_learned(world, request, estimates, draw, regret)   active learning: select on observed quality

The scoring rule is documented once, in models_registry/policy/select.py.
"""
from .placement import free_mib_by_gpu, place, place_many, recency
from .named import select_named
from .select import POLICY_VERSION, PolicyInputError, select
from .learning import Estimate, Evidence, estimate, select_learned
from .types import (
    Candidate,
    Decision,
    EndpointView,
    Eviction,
    GpuView,
    ModelView,
    Placement,
    PolicyParams,
    ResidentView,
    SelectionRequest,
    TaskTypeView,
    UrgencyView,
    World,
)
from .warmset import WarmSetFit, empty_tower, fit_warm_set, never_fits

__all__ = [
    "WarmSetFit",
    "empty_tower",
    "fit_warm_set",
    "never_fits",
    "POLICY_VERSION",
    "Candidate",
    "Decision",
    "EndpointView",
    "Eviction",
    "GpuView",
    "ModelView",
    "Placement",
    "PolicyInputError",
    "PolicyParams",
    "ResidentView",
    "SelectionRequest",
    "TaskTypeView",
    "UrgencyView",
    "World",
    "free_mib_by_gpu",
    "place",
    "place_many",
    "recency",
    "select",
    "select_named",
    "Estimate",
    "Evidence",
    "estimate",
    "select_learned",
]
