"""Replay a trace through a policy on a profile's simulated tower, in virtual time.

Requests arrive in trace order; each is handed to the policy (``replay.policies``: ``towerops``,
the production decision core, and the references ``ollama_default``, ``always_best`` and
``clairvoyant``), which decides; the tower (``replay.tower``) accounts for it: loads, VRAM per
GPU, queues, keep-alive. Events in the future (load completions, keep-alive expiries, preload
ticks) are applied, in time order, before each arrival.
"""
from __future__ import annotations

import datetime as dt
from typing import Callable, Iterable

from .learning import HiddenTruth, Learner
from .policies import DEFAULT_POLICIES, POLICIES, WARMUP_S, TowerOpsPolicy
from .tower import SimError, SimResult
from .traces import Request

__all__ = ["DEFAULT_POLICIES", "POLICIES", "SimError", "SimResult", "simulate"]


def simulate(profile, requests: Iterable[Request], policy: str, *, start: dt.datetime | None = None,
             progress: Callable[[int], None] | None = None, warmup_s: float = WARMUP_S,
             truth: HiddenTruth | None = None) -> SimResult:
    """Run ``requests`` (sorted by arrival) through ``policy`` on the profile's tower.

    ``start`` (an aware datetime) is the wall-clock time of virtual time 0: with it, the
    towerops policy runs the profile's preload windows; without it, none. ``warmup_s``: the
    preload ticks start this long before the first request (default a week; 0: the trace meets
    an empty tower, with the first tick at its first request). ``truth`` (towerops only): the
    models' hidden true quality, learned from ratings drawn from it (replay/learning.py); the
    result's ``learner`` holds what was learned and chosen.
    """
    if start is not None and start.tzinfo is None:
        raise ValueError("start must be an aware datetime (with a time zone)")
    requests = requests if isinstance(requests, list) else list(requests)
    world = profile.to_world(0.0)
    pol = POLICIES[policy](world, profile, start, warmup_s)
    if truth is not None:
        if not isinstance(pol, TowerOpsPolicy):
            raise ValueError("a hidden truth is learned by the towerops policy only")
        pol.learner = Learner(truth, world)
    pol.prepare(requests)
    served = []
    handle = pol.handle
    for i, req in enumerate(requests):
        served.append(handle(req))
        if progress is not None and (i & 1023) == 1023:
            progress(1024)
    if progress is not None:
        progress(len(served) & 1023)
    end = max((s.end for s in served), default=0.0)
    end = max(end, max((s.req.arrival_s for s in served), default=0.0)) + 1e-6
    pol.finish(end)
    pol.tower.close(end)
    usable = float(sum(pol.tower.usable.values()))
    result = SimResult(policy, served, pol.tower.loads, pol.tower.spans, usable, end,
                       pol.tower.vram_samples, dict(pol.tower.max_used), pol.tower.info, start)
    result.learner = getattr(pol, "learner", None)
    return result
