"""Observed quality's pure core (policy/learning.py): the Beta posterior against hand-computed
values, the proposal rule, the floor rule, and exploration's bounds."""
from __future__ import annotations

import math
from math import comb

import pytest

from models_registry.policy import SelectionRequest, select
from models_registry.policy.learning import (
    Evidence,
    beta_cdf,
    beta_quantile,
    estimate,
    explore,
    learned_world,
    policy_quality,
    select_learned,
)


def test_posterior_from_a_uniform_prior_and_one_good_answer():
    # prior 0.5 worth 2 answers = Beta(1, 1); one good answer -> Beta(2, 1): CDF x^2.
    e = estimate(0.5, 2, Evidence().add(1.0, 1.0))
    assert (e.alpha, e.beta) == (2.0, 1.0)
    assert e.mean == pytest.approx(2 / 3)
    assert e.low == pytest.approx(math.sqrt(0.05), abs=1e-9)
    assert e.high == pytest.approx(math.sqrt(0.95), abs=1e-9)
    assert (e.evidence, e.count) == (1.0, 1)


def test_posterior_adds_weighted_ratings_to_the_admins_score():
    # 0.8 worth 20 answers = Beta(16, 4); 3 good, 2 bad ratings, a rating of 0.5, an answer taken (0.25 good).
    ev = Evidence()
    for value, weight in [(1, 1), (1, 1), (1, 1), (0, 1), (0, 1), (0.5, 1), (1, 0.25)]:
        ev = ev.add(value, weight)
    e = estimate(0.8, 20, ev)
    assert e.alpha == pytest.approx(16 + 3 + 0.5 + 0.25)
    assert e.beta == pytest.approx(4 + 2 + 0.5)
    assert e.mean == pytest.approx(19.75 / 26.25)
    assert (e.evidence, e.count) == (pytest.approx(6.25), 7)


@pytest.mark.parametrize("a,b,x", [(5, 7, 0.3), (2, 9, 0.1), (12, 3, 0.85), (1, 1, 0.42)])
def test_the_beta_cdf_is_the_binomial_tail(a, b, x):
    # For whole a, b: I_x(a, b) = P(Binomial(a + b - 1, x) >= a).
    n = a + b - 1
    assert beta_cdf(x, a, b) == pytest.approx(sum(comb(n, j) * x**j * (1 - x) ** (n - j) for j in range(a, n + 1)),
                                              abs=1e-12)


@pytest.mark.parametrize("q", [0.05, 0.5, 0.95])
def test_beta_quantiles_in_closed_form(q):
    assert beta_quantile(q, 3, 1) == pytest.approx(q ** (1 / 3), abs=1e-9)  # CDF x^3
    assert beta_quantile(q, 1, 4) == pytest.approx(1 - (1 - q) ** (1 / 4), abs=1e-9)  # CDF 1 - (1-x)^4


def test_a_proposal_only_when_the_evidence_contradicts_the_score():
    # 100 ratings, 70 good, against an admin's 0.84: Beta(86.8, 33.2), mean 0.723, 0.84 far outside.
    wrong = estimate(0.84, 20, Evidence(70, 30, 100))
    assert wrong.mean == pytest.approx(86.8 / 120)
    assert wrong.high < 0.84
    assert wrong.proposal == 0.72
    # Two bad ratings: noise, the score stays inside the interval.
    assert estimate(0.84, 20, Evidence(0, 2, 2)).proposal is None
    # No evidence at all: nothing to propose.
    assert estimate(0.84, 20).proposal is None
    # Sure, but the change is under 0.02 once rounded: no edit for that.
    close = estimate(0.84, 20, Evidence(82_700, 17_300, 100_000))
    assert close.high < 0.84 and close.proposal is None


def test_the_prior_must_be_a_score_and_the_strength_positive():
    with pytest.raises(ValueError, match="prior"):
        estimate(1.2, 20)
    with pytest.raises(ValueError, match="strength"):
        estimate(0.5, 0)


def test_a_model_keeps_the_floor_until_its_evidence_outweighs_the_admin():
    floor = 0.80
    unlucky = estimate(0.81, 20, Evidence(4, 2, 6))  # mean 0.78, interval reaches 0.8, 6 < 20 answers
    assert unlucky.mean < floor <= unlucky.high
    assert policy_quality(unlucky, floor) == floor
    sure = estimate(0.88, 20, Evidence(73, 21, 94))  # 94 answers outweigh the admin's 20: the mean decides
    assert sure.mean < floor and policy_quality(sure, floor) == sure.mean
    good = estimate(0.9, 20, Evidence(9, 1, 10))
    assert policy_quality(good, floor) == good.mean


def _two_loaded(tower, llama_busy_s: float = 0.0):
    return tower.world(tower.res("llama3.2:3b", tower.nvidia, used_ago=1, in_flight=3 if llama_busy_s else 0,
                                 busy_s=llama_busy_s),
                       tower.res("mistral:7b", tower.amd, used_ago=30))


ESTIMATES = {("llama3.2:3b", "chat"): estimate(0.84, 20, Evidence(60, 20, 80)),  # mean 0.768
             ("mistral:7b", "chat"): estimate(0.83, 20, Evidence(80, 20, 100))}  # mean 0.805


def _draw_high_for(tag):
    est = ESTIMATES[(tag, "chat")]
    return lambda a, b: 1.0 if (a, b) == (est.alpha, est.beta) else 0.0


def test_the_learned_world_carries_the_estimates(tower):
    w = learned_world(_two_loaded(tower), ESTIMATES)
    q = {m.tag: m.quality["chat"] for m in w.models}
    assert q["llama3.2:3b"] == pytest.approx(0.768, abs=1e-3) and q["mistral:7b"] == pytest.approx(0.805, abs=1e-3)
    assert q["tinyllama"] == 0.66  # no evidence: the admin's score
    assert select(w, SelectionRequest("chat", "interactive")).model == "mistral:7b"  # the catalog said llama


def test_exploration_raises_loaded_models_within_the_budget_only(tower):
    w = learned_world(_two_loaded(tower), ESTIMATES)
    req = SelectionRequest("chat", "interactive")
    tried, raised = explore(w, req, ESTIMATES, lambda a, b: 1.0, 0.02)
    q = {m.tag: m.quality["chat"] for m in tried.models}
    assert set(raised) == {"llama3.2:3b", "mistral:7b"}
    assert q["llama3.2:3b"] == pytest.approx(raised["llama3.2:3b"] + 0.02)
    # A draw below the estimate changes nothing (optimistic: only upwards).
    assert explore(w, req, ESTIMATES, lambda a, b: 0.0, 0.02) == (w, {})
    # Never for critical requests, never with a zero budget.
    assert explore(w, SelectionRequest("chat", "critical"), ESTIMATES, lambda a, b: 1.0, 0.02) == (w, {})
    assert explore(w, req, ESTIMATES, lambda a, b: 1.0, 0.0) == (w, {})
    # Not a model that is not loaded, nor one below the request's floor.
    unloaded = learned_world(tower.world(tower.res("mistral:7b", tower.amd)), ESTIMATES)
    assert set(explore(unloaded, req, ESTIMATES, lambda a, b: 1.0, 0.02)[1]) == {"mistral:7b"}
    strict = SelectionRequest("chat", "interactive", min_quality=0.79)
    assert set(explore(w, strict, ESTIMATES, lambda a, b: 1.0, 0.02)[1]) == {"mistral:7b"}


def test_an_exploring_choice_states_the_estimate_and_says_it_explored(tower):
    d, explored = select_learned(_two_loaded(tower), SelectionRequest("chat", "interactive"), ESTIMATES,
                                 _draw_high_for("llama3.2:3b"), 0.1)
    assert explored and (d.model, d.action) == ("llama3.2:3b", "use_loaded")
    assert d.quality == pytest.approx(ESTIMATES[("llama3.2:3b", "chat")].mean)
    assert "exploring" in d.reason
    greedy, explored = select_learned(_two_loaded(tower), SelectionRequest("chat", "interactive"), ESTIMATES,
                                      lambda a, b: 0.0, 0.1)
    assert not explored and greedy.model == "mistral:7b" and "exploring" not in greedy.reason


def test_exploration_never_loads(tower):
    """llama's queue is long, so a raised llama would be served by loading a copy of it: that
    exploring decision is dropped, and the choice on the estimates stands."""
    world, req = _two_loaded(tower, llama_busy_s=300.0), SelectionRequest("chat", "background")
    draw = _draw_high_for("llama3.2:3b")
    learned = learned_world(world, ESTIMATES)
    tried, raised = explore(learned, req, ESTIMATES, draw, 0.1)
    would = select(tried, req)
    assert (would.model, would.action) == ("llama3.2:3b", "load")  # what exploring alone would do
    d, explored = select_learned(world, req, ESTIMATES, draw, 0.1)
    assert (d.model, d.action, explored) == ("mistral:7b", "use_loaded", False)
    assert d == select(learned, req)


def test_a_new_estimates_mapping_is_learned_again(tower):
    """The last learned world is kept for the same catalog and estimates; new estimates are read."""
    world = _two_loaded(tower)
    first = learned_world(world, ESTIMATES)
    assert learned_world(world, ESTIMATES).models is first.models  # the same inputs: kept
    better = {**ESTIMATES, ("llama3.2:3b", "chat"): estimate(0.84, 20, Evidence(95, 5, 100))}
    q = {m.tag: m.quality["chat"] for m in learned_world(world, better).models}
    assert q["llama3.2:3b"] == pytest.approx(better[("llama3.2:3b", "chat")].mean)
