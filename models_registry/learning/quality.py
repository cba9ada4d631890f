"""Observed quality from the database: the estimates (policy.learning's posterior over the signals
of learning/signals.py), the proposals to the admin, and active mode's selection."""
from __future__ import annotations

import random
import time
from dataclasses import dataclass

from django.db import transaction
from simple_history.utils import update_change_reason

from models_registry import conf
from models_registry import models as m
from models_registry.policy import Decision, SelectionRequest, World
from models_registry.policy.learning import Estimate, Evidence, estimate, select_learned
from models_registry.selection.world import invalidate_config

def _evidence() -> dict[tuple[int, int], Evidence]:
    """(model id, task type id) -> the signals summed (QualityEvidence: one row per pair)."""
    return {(mid, tid): Evidence(good, bad, n) for mid, tid, good, bad, n in
            m.QualityEvidence.objects.filter(count__gt=0).values_list("model_id", "task_type_id", "good", "bad", "count")}


@dataclass(frozen=True)
class Observed:
    """One model × task type as the console shows it."""

    model_id: int
    model: str
    task_id: int
    task: str
    estimate: Estimate

    @property
    def proposal(self) -> float | None:
        return self.estimate.proposal


def observed(with_evidence_only: bool = True) -> list[Observed]:
    """Every scored model × task type's posterior (those with signals, unless asked for all),
    by model then task."""
    strength = conf.value("TOWEROPS_LEARNING_PRIOR_STRENGTH")
    evidence = _evidence()
    out = []
    for mid, tag, tid, task, score in (m.QualityScore.objects.order_by("model__tag", "task_type__name")
                                       .values_list("model_id", "model__tag", "task_type_id", "task_type__name", "score")):
        ev = evidence.get((mid, tid))
        if ev is None and with_evidence_only:
            continue
        out.append(Observed(mid, tag, tid, task, estimate(score, strength, ev or Evidence())))
    return out


def estimates_by_tag() -> dict[tuple[str, str], Estimate]:
    """(model tag, task type) -> posterior, for the scored pairs with evidence (the policy's input)."""
    return {(o.model, o.task): o.estimate for o in observed()}


_cache: dict = {"at": -1e18, "value": {}}


def cached_estimates() -> dict[tuple[str, str], Estimate]:
    """estimates_by_tag, cached per process like the catalog (TOWEROPS_CONFIG_TTL_S)."""
    now = time.monotonic()
    if now - _cache["at"] >= conf.value("TOWEROPS_CONFIG_TTL_S"):
        _cache["value"], _cache["at"] = estimates_by_tag(), now
    return _cache["value"]


def invalidate() -> None:
    _cache["at"] = -1e18


_rng = random.Random()


def active() -> bool:
    return conf.value("TOWEROPS_LEARNING_MODE") == "active"


def select_active(world: World, request: SelectionRequest) -> tuple[Decision, bool]:
    """Active mode's decision on the live world (policy.learning.select_learned) and whether it explored."""
    return select_learned(world, request, cached_estimates(), _rng.betavariate,
                          conf.value("TOWEROPS_LEARNING_EXPLORE_REGRET"))


class NoProposal(Exception):
    """Nothing to accept: the evidence no longer contradicts the admin's score (or there is none)."""


def accept_proposal(model_id: int, task_id: int, user=None) -> tuple[float, float]:
    """Set the quality score to the observed proposal, recorded in the score's history with the
    evidence; (old, new). The estimate is computed again now: what is accepted is what it says now."""
    with transaction.atomic():
        score = m.QualityScore.objects.select_for_update().filter(model_id=model_id, task_type_id=task_id).first()
        if score is None:
            raise NoProposal(f"no quality score for model {model_id} and task type {task_id}")
        ev = _evidence().get((model_id, task_id))
        if ev is None:
            raise NoProposal("no observed evidence for this model and task type")
        est = estimate(score.score, conf.value("TOWEROPS_LEARNING_PRIOR_STRENGTH"), ev)
        proposed = est.proposal
        if proposed is None:
            raise NoProposal("the observed quality no longer contradicts the score: nothing to accept")
        old = score.score
        score.score = proposed
        score._history_user = user
        score.save(update_fields=["score"])
        update_change_reason(score, f"accepted observed quality {est.mean:.3f} "
                                    f"(90 % {est.low:.2f}–{est.high:.2f}, {est.count} signals, weight {est.evidence:.1f})")
    invalidate_config()
    invalidate()
    return old, proposed
