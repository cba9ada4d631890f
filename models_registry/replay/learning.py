"""Learning in the replay: a hidden truth, outcomes drawn from it, and what learning made of them.

A ``HiddenTruth`` gives some models' *true* quality per task type, different from the catalog's
and hidden from the policy. The towerops policy then decides as the live path does in the given
mode (``policy.learning.select_learned`` for ``active``; plain ``select`` for ``shadow``, which
only learns), and every answer a local model gives is rated by its caller: 1 with probability
the model's true quality, else 0 (a rating: weight 1, as learning/signals.py weighs one). A
rating counts from the moment the answer ends (a caller rates what it has read), so the policy
learns no sooner than it could live.

``oracle`` mode is the reference: the policy is told the truth (as if the catalog were right),
and explores nothing; what the learning policy gives up against it is its regret.
"""
from __future__ import annotations

import heapq
import random
from collections.abc import Mapping
from dataclasses import dataclass, field

from models_registry.policy import Decision, SelectionRequest, World, select
from models_registry.policy.learning import Estimate, Evidence, estimate, learned_world, select_learned

MODES = ("active", "shadow", "oracle")


@dataclass(frozen=True)
class HiddenTruth:
    """The true quality of some (model tag, task type) pairs (the others: the catalog's)."""

    quality: Mapping[tuple[str, str], float]
    mode: str = "active"
    seed: int = 1
    prior_strength: float = 20.0
    max_regret: float = 0.02

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, not {self.mode!r}")
        for key, q in self.quality.items():
            if not 0.0 <= q <= 1.0:
                raise ValueError(f"true quality of {key[0]} for {key[1]} must be within 0..1, not {q!r}")

    @classmethod
    def parse(cls, data, source: str = "truth") -> HiddenTruth:
        """From a what-if file's ``truth:`` section: ``{mode, seed, prior_strength, max_regret,
        quality: [{model, task_type, quality}]}``; a bad field is named."""
        if not isinstance(data, dict):
            raise ValueError(f"{source}: a mapping with quality (a list) and optionally mode, seed, prior_strength, max_regret")
        unknown = set(data) - {"quality", "mode", "seed", "prior_strength", "max_regret"}
        if unknown:
            raise ValueError(f"{source}.{sorted(unknown)[0]}: unknown field (allowed: quality, mode, seed, "
                             "prior_strength, max_regret)")
        items = data.get("quality")
        if not isinstance(items, list) or not items:
            raise ValueError(f"{source}.quality: a list of {{model, task_type, quality}}")
        quality = {}
        for i, item in enumerate(items):
            if not isinstance(item, dict) or set(item) != {"model", "task_type", "quality"}:
                raise ValueError(f"{source}.quality[{i}]: give model, task_type and quality")
            q = item["quality"]
            if not isinstance(q, (int, float)) or isinstance(q, bool) or not 0 <= q <= 1:
                raise ValueError(f"{source}.quality[{i}].quality: a number within 0..1, not {q!r}")
            quality[(str(item["model"]), str(item["task_type"]))] = float(q)
        return cls(quality, mode=str(data.get("mode", "active")), seed=int(data.get("seed", 1)),
                   prior_strength=float(data.get("prior_strength", 20.0)),
                   max_regret=float(data.get("max_regret", 0.02)))


@dataclass
class Chosen:
    arrival_s: float
    task: str
    model: str | None
    action: str | None
    explored: bool
    true_quality: float | None
    means: dict  # the policy's estimate of each hidden pair when it decided (the prior before evidence)


@dataclass
class Learner:
    """The towerops replay policy's learning state (TowerOpsPolicy.learner)."""

    truth: HiddenTruth
    world: World
    evidence: dict = field(default_factory=dict)
    estimates: dict = field(default_factory=dict)
    log: list[Chosen] = field(default_factory=list)

    def __post_init__(self):
        self.prior = {(m.tag, t): q for m in self.world.models for t, q in m.quality.items()}
        self._pending: list = []  # (answer's end, seq, (model, task), rating)
        self._seq = 0
        self._outcomes = random.Random(self.truth.seed)  # the callers' ratings
        self._draws = random.Random(self.truth.seed + 1)  # the policy's exploration
        self._explored = False
        if self.truth.mode == "oracle":
            self.estimates = {k: Estimate(self.prior.get(k, q), 1.0, 1.0, q, q, q, 0.0, 1)
                              for k, q in self.truth.quality.items()}

    def true_quality(self, model: str, task: str) -> float:
        return self.truth.quality.get((model, task), self.prior.get((model, task), 0.0))

    def decide(self, world: World, request: SelectionRequest, now: float) -> Decision:
        self._absorb(now)
        self._means = {k: (self.estimates[k].mean if k in self.estimates else self.prior.get(k, 0.0))
                       for k in self.truth.quality}
        mode = self.truth.mode
        if mode == "active":
            d, self._explored = select_learned(world, request, self.estimates, self._draws.betavariate,
                                               self.truth.max_regret)
        elif mode == "oracle":
            d, self._explored = select(learned_world(world, self.estimates), request), False
        else:
            d, self._explored = select(world, request), False
        return d

    def answered(self, request, model: str | None, action: str | None, end: float) -> None:
        """After the request is served: log it; a local answer is rated when it ends."""
        task = request.task_type
        tq = self.true_quality(model, task) if model else None
        self.log.append(Chosen(request.arrival_s, task, model, action, self._explored, tq, self._means))
        if model and action != "fallback" and self.truth.mode != "oracle":
            rating = 1.0 if self._outcomes.random() < tq else 0.0
            self._seq += 1
            heapq.heappush(self._pending, (end, self._seq, (model, task), rating))

    def _absorb(self, now: float) -> None:
        pending = self._pending
        while pending and pending[0][0] <= now:
            _, _, key, rating = heapq.heappop(pending)
            ev = self.evidence.get(key, Evidence()).add(rating, 1.0)
            self.evidence[key] = ev
            # A new mapping, never changed in place: the policy keeps its last learned world by identity.
            self.estimates = {**self.estimates, key: estimate(self.prior.get(key, 0.0), self.truth.prior_strength, ev)}

    def proposals(self) -> dict[tuple[str, str], float]:
        """What the console would propose now (shadow mode's output): (model, task) -> score."""
        out = {}
        for key, ev in self.evidence.items():
            p = estimate(self.prior.get(key, 0.0), self.truth.prior_strength, ev).proposal
            if p is not None:
                out[key] = p
        return out


def convergence(log: list[Chosen], task: str, better: str, worse: str, oracle: list[Chosen] | None = None) -> dict:
    """How learning went for one task type between two models (``better`` truly better than ``worse``).

    ``converged_after``: the number of that task type's requests until the policy's estimates order
    the two rightly for good (from the next request on, every decision saw mean(better) > mean(worse));
    None when they never do. Which model serves a request also depends on the queues (a busy model's
    wait costs), so convergence is of the preference, and its effect is measured against ``oracle``
    (the same trace with the truth known): ``regret_after`` = the oracle's mean true quality minus
    this run's, over the requests after convergence (the same requests in both runs)."""
    idx = [i for i, c in enumerate(log) if c.task == task]
    rows = [log[i] for i in idx]
    kb, kw = (better, task), (worse, task)
    wrong = [n + 1 for n, c in enumerate(rows) if not c.means.get(kb, 0.0) > c.means.get(kw, 0.0)]
    last = max(wrong, default=0)
    converged = last < len(rows)
    after = rows[last:] if converged else []

    def mean_quality(items):
        qs = [c.true_quality for c in items if c.true_quality is not None]
        return sum(qs) / len(qs) if qs else None

    out = {
        "requests": len(rows),
        "converged_after": last if converged else None,
        "served_by_better_after": (sum(c.model == better for c in after) / len(after)) if after else None,
        "true_quality_after": mean_quality(after),
        "explored": sum(c.explored for c in rows),
        "explored_loads": sum(c.explored and c.action == "load" for c in rows),
        "regret_after": None,
    }
    if oracle is not None and after:
        same = [oracle[i] for i in idx[last:]]
        q_oracle, q_self = mean_quality(same), out["true_quality_after"]
        if q_oracle is not None and q_self is not None:
            out["oracle_true_quality_after"] = q_oracle
            out["regret_after"] = q_oracle - q_self
    return out


def learning_summary(learner: Learner) -> dict:
    """What a run learned, for its result: per hidden (model, task type), the truth, the catalog's
    score, the final estimate with its evidence, and the proposal; and how many decisions explored."""
    pairs = []
    for (tag, task), true_q in sorted(learner.truth.quality.items()):
        ev = learner.evidence.get((tag, task), Evidence())
        est = estimate(learner.prior.get((tag, task), 0.0), learner.truth.prior_strength, ev)
        pairs.append({"model": tag, "task_type": task, "true_quality": true_q, "catalog": est.prior,
                      "estimate": est.mean, "low": est.low, "high": est.high, "signals": est.count,
                      "proposal": est.proposal,
                      "served": sum(c.model == tag and c.task == task for c in learner.log)})
    return {"mode": learner.truth.mode, "pairs": pairs, "explored": sum(c.explored for c in learner.log),
            "explored_loads": sum(c.explored and c.action == "load" for c in learner.log)}
