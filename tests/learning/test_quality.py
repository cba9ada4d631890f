"""Observed quality against the database: the signals a rating leaves, the estimate the API and
the console show, accepting a proposal (with its history), and active mode's live selection —
the same decision the replay's learner takes on the same world, estimates and draws."""
from __future__ import annotations

import datetime as dt

import pytest
from django.utils import timezone

from models_registry import models as m
from models_registry import policy
from models_registry.learning import quality
from models_registry.learning.signals import record_gateway_answer
from models_registry.policy.learning import Evidence, estimate
from models_registry.replay.learning import HiddenTruth, Learner
from models_registry.selection import service
from models_registry.selection.world import read_world
from tests.api.conftest import Api
from tests.helpers import make_decision

pytestmark = pytest.mark.django_db


@pytest.fixture
def api(client, make_key):
    return Api(client, make_key("select", "read", name="learning"))


def _rate(api, decision_id, rating, success=True):
    r = api.post(f"/api/v1/decisions/{decision_id}/outcome", {"response_ms": 900, "success": success, "rating": rating})
    assert r.status_code == 200, r.content
    return r


def _chat_decisions(n, tag):
    """n chat decisions of ``tag`` (the policy's choice replaced, as if it had chosen it)."""
    model = m.LlmModel.objects.get(tag=tag)
    out = []
    for _ in range(n):
        d = make_decision("chat", "interactive")
        m.SelectionDecision.objects.filter(pk=d.pk).update(model=model, action="use_loaded")
        out.append(d.pk)
    return out


def test_a_rating_is_a_signal_and_rating_again_replaces_it(api, tower):
    (d,) = _chat_decisions(1, "llama3.2:3b")
    _rate(api, d, 0.3)
    _rate(api, d, 0.6)
    (s,) = m.QualitySignal.objects.filter(decision_id=d)
    assert (s.kind, s.value, s.weight, s.model.tag, s.task_type.name) == ("rating", 0.6, 1.0, "llama3.2:3b", "chat")
    # An outcome without a rating adds no signal.
    (other,) = _chat_decisions(1, "llama3.2:3b")
    api.post(f"/api/v1/decisions/{other}/outcome", {"response_ms": 900, "success": True})
    assert not m.QualitySignal.objects.filter(decision_id=other).exists()


def test_the_api_reports_the_posterior_and_the_proposal(api, tower):
    for i, d in enumerate(_chat_decisions(30, "llama3.2:3b")):
        _rate(api, d, 1.0 if i < 18 else 0.0)  # 18 of 30 good
    (d,) = _chat_decisions(1, "llama3.2:3b")
    record_gateway_answer(d, "ok", "stop", 120, "", False, timezone.now())  # an answer taken: 0.25 good
    body = api.get("/api/v1/learning/quality").json()
    assert body["mode"] == "shadow" and body["prior_strength"] == 20
    (row,) = body["rows"]
    expect = estimate(0.84, 20, Evidence(18.25, 12.0, 31))  # llama3.2:3b's chat score is 0.84
    assert (row["model"], row["task_type"], row["admin_score"], row["signals"]) == ("llama3.2:3b", "chat", 0.84, 31)
    assert row["mean"] == pytest.approx(expect.mean) and row["mean"] == pytest.approx((16.8 + 18.25) / 50.25)
    assert (row["low"], row["high"]) == (pytest.approx(expect.low), pytest.approx(expect.high))
    assert row["evidence"] == pytest.approx(30.25)
    assert row["high"] < 0.84 and row["proposal"] == round(expect.mean, 2)


def test_accepting_a_proposal_sets_the_score_with_its_evidence_in_the_history(api, tower, alice):
    for i, d in enumerate(_chat_decisions(30, "llama3.2:3b")):
        _rate(api, d, 1.0 if i < 15 else 0.0)
    model, task = m.LlmModel.objects.get(tag="llama3.2:3b"), m.TaskType.objects.get(name="chat")
    old, new = quality.accept_proposal(model.pk, task.pk, alice)
    score = m.QualityScore.objects.get(model=model, task_type=task)
    assert (old, new, score.score) == (0.84, new, new) and new == round((16.8 + 15) / 50, 2)
    h = score.history.first()
    assert h.history_user == alice and "accepted observed quality" in h.history_change_reason
    assert "30 signals" in h.history_change_reason
    # Accepted: the score now sits inside the interval, so there is nothing more to accept.
    with pytest.raises(quality.NoProposal):
        quality.accept_proposal(model.pk, task.pk, alice)
    assert m.QualityScore.objects.get(model=model, task_type=task).score == new
    with pytest.raises(quality.NoProposal, match="no observed evidence"):
        quality.accept_proposal(m.LlmModel.objects.get(tag="mistral:7b").pk, task.pk, alice)


def _loaded(tag, endpoint):
    model, ep = m.LlmModel.objects.get(tag=tag), m.Endpoint.objects.get(name=endpoint)
    now = timezone.now()
    r = m.Residency.objects.create(model=model, endpoint=ep, state="loaded", trigger="admin", vram_mib=model.vram_mib,
                                   requested_at=now, loaded_at=now, ready_at=now, last_used_at=now)
    m.ResidencyGpu.objects.create(residency=r, gpu=ep.gpus.first(), vram_mib=model.vram_mib)


class _Draws:
    """A fixed sequence of Beta draws, the same for the live path and the replay's learner."""

    def __init__(self, values):
        self.values = list(values)

    def betavariate(self, a, b):
        return self.values.pop(0)


def test_active_mode_selects_by_the_estimates_live_as_in_the_replay(api, tower, settings, monkeypatch):
    _loaded("llama3.2:3b", "tower-nvidia")
    _loaded("mistral:7b", "tower-amd")
    for i, d in enumerate(_chat_decisions(40, "llama3.2:3b")):
        _rate(api, d, 1.0 if i < 24 else 0.0)  # llama: 24 of 40 -> 0.68
    for i, d in enumerate(_chat_decisions(10, "mistral:7b")):
        _rate(api, d, 1.0 if i < 9 else 0.0)  # mistral: 9 of 10 -> 0.853
    req = policy.SelectionRequest("chat", "interactive")
    shadow = service.select_and_record(req, dry_run=True).decision
    assert shadow.model == "llama3.2:3b"  # shadow mode: the catalog (0.84 > 0.83) decides

    settings.TOWEROPS_LEARNING_MODE = "active"
    quality.invalidate()
    draws = [0.99, 0.99]  # both raised by the budget (0.02): mistral still wins (0.87 vs 0.70)
    monkeypatch.setattr(quality, "_rng", _Draws(draws))
    now = timezone.now()
    world, _, _ = read_world(now)  # the world the live decision sees (before it books its own turn)
    live = service.select_and_record(req, client="t", now=now)
    assert (live.decision.model, live.decision.action) == ("mistral:7b", "use_loaded")
    assert live.record.explored and "exploring" in live.decision.reason
    assert m.SelectionDecision.objects.get(pk=live.record.pk).explored

    # The replay's learner on the same world, estimates and draws takes the same decision.
    learner = Learner(HiddenTruth({("llama3.2:3b", "chat"): 0.6}, mode="active"), world)
    learner.estimates = quality.estimates_by_tag()
    learner._draws = _Draws(draws)
    replayed = learner.decide(world, req, world.now)
    assert replayed == live.decision

    # A critical request never explores.
    monkeypatch.setattr(quality, "_rng", _Draws([]))  # a draw would raise IndexError
    critical = service.select_and_record(policy.SelectionRequest("chat", "critical"), client="t")
    assert not critical.record.explored and "exploring" not in critical.decision.reason


def _evidence_rows():
    return sorted((e.model_id, e.task_type_id, round(e.good, 9), round(e.bad, 9), e.count)
                  for e in m.QualityEvidence.objects.filter(count__gt=0))


def test_the_summed_evidence_follows_every_signal_change(api, tower):
    """Ratings given and replaced, answers taken and then withdrawn by a re-ask, an escalation: the
    running sums the estimate reads equal the signals summed again from scratch."""
    from models_registry.learning import signals

    llama = _chat_decisions(3, "llama3.2:3b")
    (mistral,) = _chat_decisions(1, "mistral:7b")
    now = timezone.now()
    _rate(api, llama[0], 0.2)
    _rate(api, llama[0], 0.9)  # replaces 0.2
    record_gateway_answer(llama[1], "ok", "stop", 100, "c1", False, now)  # answered
    m.DecisionOutcome.objects.create(decision_id=llama[1], reported_at=now, response_ms=500, success=True,
                                     measured_by="gateway", result="ok", conversation="c1")
    later = now + dt.timedelta(seconds=1)
    record_gateway_answer(llama[2], "ok", "stop", 100, "c1", False, later)  # asked again: llama[1] regenerated
    m.DecisionOutcome.objects.create(decision_id=llama[2], reported_at=later, response_ms=500, success=True,
                                     measured_by="gateway", result="ok", conversation="c1")
    # A bigger model named for the same conversation: the newest answer to it, llama[2]'s, escalated.
    record_gateway_answer(mistral, "error", "", None, "c1", True, later + dt.timedelta(seconds=1))
    kinds = sorted(m.QualitySignal.objects.values_list("decision_id", "kind"))
    assert kinds == sorted([(llama[0], "rating"), (llama[1], "regenerated"), (llama[2], "escalated"),
                            (mistral, "error")])
    running = _evidence_rows()
    signals.recount(timezone.now())
    assert running == _evidence_rows()
    model = m.LlmModel.objects.get(tag="llama3.2:3b")
    e = m.QualityEvidence.objects.get(model=model, task_type__name="chat")
    assert (e.good, e.bad, e.count) == (pytest.approx(0.9), pytest.approx(0.1 + 1.0 + 1.0), 3)
