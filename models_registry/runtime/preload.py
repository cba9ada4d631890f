"""The preload beat's work: read the windows and the world, ask the plan, carry it out.

The plan itself (what to load, cool or skip, and in which order) is `policy.preload`, the
rule the replay runs too. Here: the loads are reserved under the reservation lock, in the
plan's order and where it placed them, and queued for the hosts' agents on commit; the
models to cool are unloaded like an admin unload (`reservations.request_unload`).
"""
from __future__ import annotations

import datetime as dt

from django.db import transaction
from django.db.models import Count, Q

from models_registry import conf
from models_registry import models as m
from models_registry.catalog.durations import keeps_forever
from models_registry.policy import preload, upgrade
from models_registry.policy import World
from models_registry.policy.preload import PreloadPlan, WindowView
from models_registry.runtime import dispatch
from models_registry.runtime.reservations import (
    lock_reservations,
    request_unload,
    reserve,
)
from models_registry.learning import quality as observed_quality
from models_registry.policy.learning import learned_world
from models_registry.selection.world import Config, load_config, read_world


def idle_s() -> float:
    """TOWEROPS_PRELOAD_IDLE_MIN in seconds: how long an unwanted preloaded model idles before it is cooled."""
    return conf.value("TOWEROPS_PRELOAD_IDLE_MIN") * 60


def windows_at(at: dt.datetime) -> tuple[WindowView, ...]:
    """Every preload window, open or not at `at` (PreloadWindow.is_active: enabled and open)."""
    return tuple(
        WindowView(w.name, tuple(mo.tag for mo in w.models.all()), w.is_active(at))
        for w in m.PreloadWindow.objects.prefetch_related("models").order_by("name")
    )


def desired_warm_set(at: dt.datetime) -> list[str]:
    """The models the windows open at `at` want warm (policy.preload.warm_set)."""
    return list(preload.warm_set(windows_at(at), load_config().models))


def plan_now(now: dt.datetime) -> tuple[PreloadPlan, World, Config]:
    """The plan for `now`, the world it was made on, and its Config; call it holding the reservation lock."""
    world, cfg, _ = read_world(now)
    if observed_quality.active():  # the beat sees the observed quality the selections see
        world = learned_world(world, observed_quality.cached_estimates())
    preloaded = set(
        m.Residency.objects.filter(state__in=m.Residency.ACTIVE_STATES, trigger=m.Trigger.PRELOAD)
        .values_list("model__tag", "endpoint__name")
    )
    keep_warm = {name for name, keep_alive in m.Endpoint.objects.values_list("name", "keep_alive")
                 if keeps_forever(keep_alive)}
    plan = preload.plan_preload(world, windows_at(now), preloaded=preloaded, keep_warm=keep_warm,
                                idle_s=idle_s())
    return plan, world, cfg


def demand(now: dt.datetime, window_s: float) -> dict[str, int]:
    """Selections per task type within the last ``window_s``: the busy task types moving up serves."""
    since = now - dt.timedelta(seconds=window_s)
    return dict(m.SelectionDecision.objects.filter(created_at__gte=since, created_at__lte=now)
                .values_list("task_type__name").annotate(n=Count("id")).values_list("task_type__name", "n"))


def admin_unloaded(now: dt.datetime, window_s: float) -> frozenset[str]:
    """The models an admin unloaded within the last ``window_s`` (or is unloading): moving up leaves them be."""
    since = now - dt.timedelta(seconds=window_s)
    return frozenset(m.Residency.objects.filter(unload_trigger=m.Trigger.ADMIN)
                     .filter(Q(ended_at__gte=since) | Q(state=m.Residency.State.UNLOADING))
                     .values_list("model__tag", flat=True))


def apply_windows(now: dt.datetime) -> dict:
    """Warm what the open windows want, cool what an ended window warmed (policy.preload's plan);
    when that loads nothing, move up (policy.upgrade's plan: trigger upgrade)."""
    upgraded = None
    with transaction.atomic():
        lock_reservations()
        plan, world, cfg = plan_now(now)
        for p in plan.loads:
            residency_id = reserve(cfg, p.model, p.endpoint, p.vram_by_gpu, p.evictions,
                                   trigger=m.Trigger.PRELOAD, now=now, load_s=p.load_s)
            dispatch.enqueue_load(residency_id)
        cool = plan.cool
        if not plan.loads and cfg.params.upgrade_min_gain < 1.0:  # nothing reserved: the same world
            window_s = cfg.params.recent_use_window_s
            cool, up = upgrade.after_windows(world, plan, demand(now, window_s), admin_unloaded(now, window_s))
            if up is not None:
                residency_id = reserve(cfg, up.model, up.endpoint, up.vram_by_gpu, up.evictions,
                                       trigger=m.Trigger.UPGRADE, now=now, load_s=up.load_s)
                dispatch.enqueue_load(residency_id)
                upgraded = up.model
    for c in cool:
        request_unload(c.model, trigger=m.Trigger.PRELOAD, endpoint=c.endpoint)
    return {
        "wanted": list(plan.wanted),
        "loading": [p.model for p in plan.loads],
        "skipped": [f"{s.model}: {s.reason}" for s in plan.skipped],
        "cooling": [c.model for c in cool],
        "kept_warm": [c.model for c in plan.kept_warm],
        "upgrade": upgraded,
    }
