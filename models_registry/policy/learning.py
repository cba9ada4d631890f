"""Observed quality: a Beta posterior per model × task type, and exploration within a stated regret.

Pure: standard library only; randomness comes in as a ``draw(alpha, beta)`` function.

THE ESTIMATOR (docs/learning.md)
================================
A model's quality for a task type is read as the probability that one of its answers is good
enough. The admin's score ``s`` is the prior: Beta(s·k, (1−s)·k), worth ``k`` answers
(TOWEROPS_LEARNING_PRIOR_STRENGTH, 20). Each signal (learning/signals.py: a value ``y`` in 0..1,
how good, and a weight ``w``, how many answers' worth) adds w·y to alpha and w·(1−y) to beta.
Conjugate, so the posterior is Beta(s·k + Σw·y, (1−s)·k + Σw·(1−y)); its mean is the estimate,
its equal-tailed 90 % credible interval the interval; ``evidence`` is Σw, ``count`` the signals.
A model with no admin score for the task has prior mean 0 (it is not a candidate for the task:
the policy needs a score to consider it; learning does not invent one).

A PROPOSAL to the admin (shadow mode): the rounded mean, when the admin's score lies outside the
posterior's 90 % interval (the evidence says it is wrong, not just noisy) and the change is at
least 0.02.

EXPLORATION (active mode)
=========================
Optimistic Thompson sampling, bounded: for a non-critical request, each model that is loaded on
an up endpoint and whose posterior mean meets the request's floor gets, for this one decision,
quality = clamp(draw(alpha, beta), mean, mean + max_regret). Only upwards and only for loaded
models, so a draw can make a loaded model win where it would not, never make a load win (the
live path and the replay drop an explored decision that loads and decide on the means): no load
is made to explore, and no model below the floor is tried. A choice made on a raised quality
gives up at most ``max_regret`` of expected score against the choice on the means — the regret
budget per request (TOWEROPS_LEARNING_EXPLORE_REGRET, 0.02). As evidence grows the draws
concentrate on the mean and exploration fades by itself.
"""
from __future__ import annotations

import dataclasses
import math
from functools import lru_cache
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from .select import select
from .types import Decision, SelectionRequest, World

INTERVAL = 0.90
PROPOSE_MIN_CHANGE = 0.02


@dataclass(frozen=True, slots=True)
class Evidence:
    """Signals summed for one model × task type: Σw·y, Σw·(1−y), and how many signals."""

    good: float = 0.0
    bad: float = 0.0
    count: int = 0

    def add(self, value: float, weight: float) -> Evidence:
        return Evidence(self.good + weight * value, self.bad + weight * (1.0 - value), self.count + 1)

    @property
    def weight(self) -> float:
        return self.good + self.bad


@dataclass(frozen=True, slots=True)
class Estimate:
    prior: float  # the admin's score
    alpha: float
    beta: float
    mean: float
    low: float
    high: float
    evidence: float  # Σ weights
    count: int  # signals

    @property
    def proposal(self) -> float | None:
        """The score to propose to the admin, or None (module docstring)."""
        if self.count == 0 or self.low <= self.prior <= self.high:
            return None
        proposed = round(self.mean, 2)
        return proposed if abs(proposed - self.prior) >= PROPOSE_MIN_CHANGE - 1e-9 else None


def estimate(prior: float, strength: float, evidence: Evidence = Evidence(), level: float = INTERVAL) -> Estimate:
    """The posterior of a model × task type (module docstring)."""
    if not 0.0 <= prior <= 1.0:
        raise ValueError(f"prior must be within 0..1, not {prior!r}")
    if strength <= 0:
        raise ValueError(f"strength must be positive, not {strength!r}")
    # A prior of exactly 0 or 1 would make Beta degenerate: keep it inside by a hair.
    p = min(max(prior, 1e-6), 1.0 - 1e-6)
    a = p * strength + evidence.good
    b = (1.0 - p) * strength + evidence.bad
    low, high = _interval(a, b, level)
    return Estimate(prior, a, b, a / (a + b), low, high, evidence.weight, evidence.count)


@lru_cache(maxsize=4096)
def _interval(a: float, b: float, level: float) -> tuple[float, float]:
    """The equal-tailed credible interval of Beta(a, b) (cached: the live path recomputes every
    pair's estimate each few seconds, and most pairs' evidence has not moved)."""
    tail = (1.0 - level) / 2.0
    return beta_quantile(tail, a, b), beta_quantile(1.0 - tail, a, b)


# ----------------------------------------------------------------------------- the Beta distribution


def _betacf(a: float, b: float, x: float) -> float:
    """The continued fraction of the incomplete beta function (modified Lentz)."""
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 400):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-12:
            break
    return h


def beta_cdf(x: float, a: float, b: float) -> float:
    """The regularized incomplete beta function I_x(a, b): P(X <= x) for X ~ Beta(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    ln = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    front = math.exp(ln)
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def beta_quantile(q: float, a: float, b: float) -> float:
    """The x with I_x(a, b) = q (bisection: 40 halvings, 1e-12, far below any score's precision)."""
    lo, hi = 0.0, 1.0
    for _ in range(40):
        mid = (lo + hi) / 2.0
        if beta_cdf(mid, a, b) < q:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2.0


# ----------------------------------------------------------------------------- the policy's world

Estimates = Mapping[tuple[str, str], Estimate]  # (model tag, task type) -> posterior


def policy_quality(est: Estimate, floor: float) -> float:
    """The quality active mode gives the policy: the posterior mean, except that a model whose
    interval still reaches the task's floor keeps meeting it (at the floor) while its evidence
    weighs less than the admin's score (the prior's strength): a few unlucky ratings must not push
    a model out for good (below the floor it would serve nothing more, and so never be rated
    again), and once the evidence outweighs the admin, the mean decides."""
    strength = est.alpha + est.beta - est.evidence
    if est.mean < floor <= est.high and est.evidence < strength:
        return floor
    return est.mean


def learned_world(world: World, estimates: Estimates) -> World:
    """``world`` with each model's quality per task type replaced by ``policy_quality`` (active mode)."""
    if not estimates:
        return world
    learned = _learned_models(world.models, world.task_types, estimates)
    return dataclasses.replace(world, models=learned) if learned is not world.models else world


_last: list = [None, None, None, None]  # (models, task types, estimates, result): the live path repeats them


def _learned_models(models, task_types, estimates: Estimates):
    """The models with the learned qualities (the same tuple when none changes); the last result
    is kept, since the live path passes the same catalog and estimates for seconds on end. So an
    estimates mapping is never changed in place: a change is a new mapping (as the callers do)."""
    last = _last
    if last[0] is models and last[1] is task_types and last[2] is estimates:
        return last[3]
    floors = {t.name: t.quality_floor for t in task_types}
    by_tag: dict[str, dict[str, float]] = {}
    for (tag, task), est in estimates.items():
        if est.count:
            by_tag.setdefault(tag, {})[task] = policy_quality(est, floors.get(task, 0.0))
    out, changed_any = [], False
    for mv in models:
        changed = by_tag.get(mv.tag)
        if changed:
            changed = {t: q for t, q in changed.items() if t in mv.quality}
        if changed:
            out.append(dataclasses.replace(mv, quality={**mv.quality, **changed}))
            changed_any = True
        else:
            out.append(mv)
    result = tuple(out) if changed_any else models
    last[:] = [models, task_types, estimates, result]
    return result


def explore(world: World, request: SelectionRequest, estimates: Estimates, draw: Callable[[float, float], float],
            max_regret: float, critical: frozenset[str] = frozenset({"critical"})) -> tuple[World, dict[str, float]]:
    """``world`` (already the learned one) with the raised qualities of this request's exploration,
    and {model: its learned quality} of the models raised (empty: no exploration). Module docstring."""
    if max_regret <= 0 or request.urgency in critical or not estimates:
        return world, {}
    task = request.task_type
    floor = next((t.quality_floor for t in world.task_types if t.name == task), None)
    if floor is None:
        return world, {}
    if request.min_quality is not None:
        floor = max(floor, request.min_quality)
    up = {e.key for e in world.endpoints if e.up}
    loaded = {r.model for r in world.residents if r.state == "loaded" and r.endpoint in up}
    raised: dict[str, float] = {}
    models = []
    for mv in world.models:
        est = estimates.get((mv.tag, task)) if mv.tag in loaded and mv.enabled else None
        base = mv.quality.get(task, 0.0)  # the learned world's: policy_quality
        if est is None or base < floor:
            models.append(mv)
            continue
        q = min(max(draw(est.alpha, est.beta), base), base + max_regret, 1.0)
        if q > base:
            raised[mv.tag] = base
            mv = dataclasses.replace(mv, quality={**mv.quality, task: q})
        models.append(mv)
    if not raised:
        return world, {}
    return dataclasses.replace(world, models=tuple(models)), raised


def select_learned(world: World, request: SelectionRequest, estimates: Estimates,
                   draw: Callable[[float, float], float], max_regret: float) -> tuple[Decision, bool]:
    """Active mode's selection, live and in the replay: ``select`` on the learned world, exploring
    (module docstring). Returns the decision and whether it was an exploring one; an exploring
    decision states the model's mean as its quality, and its reason says it explored."""
    learned = learned_world(world, estimates)
    tried, raised = explore(learned, request, estimates, draw, max_regret)
    if raised:
        d = select(tried, request)
        if d.model in raised and d.action != "load":
            mean = raised[d.model]
            drawn = next((c.quality for c in d.candidates if c.model == d.model), mean)
            return dataclasses.replace(
                d, quality=mean,
                reason=f"{d.reason} (exploring: quality drawn {drawn:.3f} for this request, estimate {mean:.3f})",
            ), True
        if d.action != "load" and d.model not in raised:
            return d, False  # the draws changed nothing: the same choice as on the means
    return select(learned, request), False
