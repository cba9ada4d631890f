"""The v1 API of the model registry: thin views — validate, call a service, shape the reply."""
from __future__ import annotations

from django.db.models import Prefetch
from django.http import JsonResponse
from django.shortcuts import get_object_or_404
from ninja import Router

from models_registry import conf, errors
from models_registry import models as m
from models_registry.api.auth import ApiKeyAuth, require
from models_registry.api.schemas import (
    CatalogChoicesOut,
    DecisionOut,
    ErrorOut,
    FallbacksOut,
    FeedbackIn,
    FeedbackOut,
    LearningOut,
    ModelOut,
    OutcomeIn,
    OutcomeOut,
    PreloadIn,
    QualityOut,
    ResidencyOut,
    SelectIn,
    SelectOut,
    SloOut,
    StateOut,
    ThrashOut,
    Window,
)
from models_registry.learning import quality as observed_quality
from models_registry.learning import signals
from models_registry.policy import SelectionRequest
from models_registry.runtime import fleet, reservations
from models_registry.selection import outcomes, service
from models_registry.slo import reports
from models_registry.timeutil import utcnow

router = Router(auth=ApiKeyAuth(), tags=["selection"])
ERRORS = {400: ErrorOut, 401: ErrorOut, 403: ErrorOut, 404: ErrorOut, 409: ErrorOut, 415: ErrorOut, 422: ErrorOut,
          429: ErrorOut, 503: ErrorOut}


@router.post("/select", response={200: SelectOut, **ERRORS})
def select_model(request, payload: SelectIn):
    """Choose the model for one request; record the decision and reserve VRAM for a load."""
    require(request, "select")
    req = SelectionRequest(
        task_type=payload.task_type,
        urgency=payload.urgency,
        min_quality=payload.min_quality,
        max_wait_s=payload.max_wait_s,
        expected_output_tokens=payload.expected_output_tokens,
        input_tokens=payload.input_tokens,
    )
    result = service.select_and_record(req, client=payload.client, dry_run=payload.dry_run)
    d = result.decision
    # Serialised directly: the hot path skips re-validating a reply we just built field by
    # field (SelectOut still documents it, and tests check the shape).
    return JsonResponse({
        "decision_id": result.record.pk if result.record else None,
        "model": d.model,
        "endpoint": d.endpoint,
        "gpus": list(d.gpus),
        "action": d.action,
        "expected_wait_s": d.expected_wait_s,
        "expected_prefill_s": d.expected_prefill_s,
        "expected_response_s": d.expected_response_s,
        "quality": d.quality,
        "met_floor": d.met_floor,
        "warned": d.warned,
        "reason": d.reason,
        "evictions": [
            {"model": e.model, "endpoint": e.endpoint, "gpus": list(e.gpus), "vram_mib": e.vram_mib} for e in d.evictions
        ],
        "alternatives": [
            {
                "model": c.model,
                "quality": c.quality,
                "expected_wait_s": c.expected_wait_s,
                "score": c.score,
                "rejected_because": c.rejected_because,
            }
            for c in d.candidates
            if c.model != d.model
        ],
        "policy_version": d.policy_version,
    })


def _decision_out(row: m.SelectionDecision) -> dict:
    outcome = getattr(row, "outcome", None)
    return {
        "id": row.pk,
        "created_at": row.created_at,
        "client": row.client,
        "task_type": row.task_type.name,
        "urgency": row.urgency,
        "min_quality": row.min_quality,
        "max_wait_s": row.max_wait_s,
        "expected_output_tokens": row.expected_output_tokens,
        "input_tokens": row.input_tokens,
        "model": row.model.tag if row.model else None,
        "endpoint": row.endpoint.name if row.endpoint else None,
        "gpus": row.gpu_keys,
        "action": row.action,
        "expected_wait_s": row.expected_wait_s,
        "expected_response_s": row.expected_response_s,
        "quality": row.quality,
        "met_floor": row.met_floor,
        "warned": row.warned,
        "reason": row.reason,
        "evictions": row.evictions,
        "candidates": row.candidates,
        "policy_version": row.policy_version,
        "decision_us": row.decision_us,
        "outcome": _outcome_out(outcome) if outcome else None,
    }


def _outcome_out(o: m.DecisionOutcome) -> dict:
    return {
        "decision_id": o.decision_id,
        "response_ms": o.response_ms,
        "first_token_ms": o.first_token_ms,
        "success": o.success,
        "rating": o.rating,
        "reported_at": o.reported_at,
    }


@router.get("/decisions/{decision_id}", response={200: DecisionOut, **ERRORS})
def get_decision(request, decision_id: int):
    require(request, "read")
    row = get_object_or_404(
        m.SelectionDecision.objects.select_related("task_type", "model", "endpoint", "outcome"), pk=decision_id
    )
    return _decision_out(row)


@router.post("/decisions/{decision_id}/outcome", response={200: OutcomeOut, **ERRORS})
def report_outcome(request, decision_id: int, payload: OutcomeIn):
    """What actually happened: feeds the interactive p95 (time to first token: `first_token_ms` when given,
    else `response_ms` as an upper bound) and observed quality. Reporting again replaces it. 404 once the
    decision is pruned; 409 for a decision of an hour already pruned and sealed (docs/retention.md)."""
    require(request, "select")
    outcome = outcomes.record_outcome(decision_id, payload.response_ms, payload.success, payload.rating,
                                      first_token_ms=payload.first_token_ms)
    if outcome is None:
        raise errors.NotFound(f"no decision {decision_id}")
    return _outcome_out(outcome)


@router.post("/decisions/{decision_id}/feedback", response={200: FeedbackOut, **ERRORS}, tags=["learning"])
def give_feedback(request, decision_id: int, payload: FeedbackIn):
    """Rate an answer (0..1): the explicit signal of observed quality (docs/learning.md). The id is the
    gateway's `X-TowerOps-Decision-Id` header, or a select's `decision_id`. Rating again replaces it.
    Keys with the `select` or the `infer` scope."""
    if "select" not in getattr(request, "api_scopes", ()):
        require(request, "infer")  # a gateway user's key
    try:
        return signals.rate(decision_id, payload.rating, utcnow())
    except signals.NotRatable as exc:
        raise (errors.NotFound if exc.missing else errors.DomainError)(str(exc)) from None


@router.get("/learning/quality", response={200: LearningOut, **ERRORS}, tags=["learning"])
def learned_quality(request):
    """Observed quality per model × task type with evidence: the posterior beside the admin's score,
    its 90 % interval, and the proposed score where the evidence contradicts it."""
    require(request, "read")
    rows = [{"model": o.model, "task_type": o.task, "admin_score": o.estimate.prior, "mean": o.estimate.mean,
             "low": o.estimate.low, "high": o.estimate.high, "evidence": o.estimate.evidence,
             "signals": o.estimate.count, "proposal": o.proposal} for o in observed_quality.observed()]
    return {"mode": conf.value("TOWEROPS_LEARNING_MODE"),
            "prior_strength": conf.value("TOWEROPS_LEARNING_PRIOR_STRENGTH"),
            "explore_regret": conf.value("TOWEROPS_LEARNING_EXPLORE_REGRET"), "rows": rows}


@router.get("/state", response={200: StateOut, **ERRORS})
def get_state(request):
    """GPUs with their free VRAM, endpoints, and what is loaded where."""
    require(request, "read")
    return fleet.fleet_state()


@router.get("/task-types", response={200: CatalogChoicesOut, **ERRORS})
def list_task_types(request):
    """The task types and urgencies a selection may name (any scope)."""
    rows = m.TaskType.objects.order_by("name").values(
        "name", "quality_floor", "default_output_tokens", "default_input_tokens", "description")
    defined = set(m.UrgencyClass.objects.values_list("name", flat=True))
    return {"task_types": list(rows), "urgencies": [u for u in m.UrgencyClass.Name.values if u in defined]}


@router.get("/models", response={200: list[ModelOut], **ERRORS})
def list_models(request):
    require(request, "read")
    active = m.Residency.objects.active().select_related("endpoint")
    rows = m.LlmModel.objects.prefetch_related(
        Prefetch("quality_scores", queryset=m.QualityScore.objects.select_related("task_type")),
        Prefetch("residencies", queryset=active, to_attr="active"),
    )
    return [
        {
            "tag": r.tag,
            "kind": r.kind,
            "family": r.family,
            "parameters_b": r.parameters_b,
            "quantization": r.quantization,
            "vram_mib": r.vram_mib,
            "context_length": r.context_length,
            "load_s": r.load_s,
            "tokens_per_s": r.tokens_per_s,
            "enabled": r.enabled,
            "pinned": r.pinned,
            "quality": {q.task_type.name: q.score for q in r.quality_scores.all()},
            "loaded_on": sorted(f"{x.endpoint.name}:{x.state}" for x in r.active),
        }
        for r in rows
    ]


@router.post("/models/{path:tag}/preload", response={200: ResidencyOut, **ERRORS})
def preload_model(request, tag: str, payload: PreloadIn | None = None):
    """Load a model now (admin scope): placed like a selection's load, never over-committing."""
    require(request, "admin")
    _check_path(tag)
    return reservations.admin_preload(tag, endpoint=payload.endpoint if payload else None)


@router.post("/models/{path:tag}/unload", response={200: ResidencyOut, **ERRORS})
def unload_model(request, tag: str, payload: PreloadIn | None = None):
    """Unload a model from every endpoint (or one) that holds it (admin scope)."""
    require(request, "admin")
    _check_path(tag)
    return reservations.admin_unload(tag, endpoint=payload.endpoint if payload else None)


def _check_path(tag: str) -> None:
    if "\x00" in tag or len(tag) > 200:
        raise errors.BadInput("tag: must be at most 200 characters without NUL")


# --------------------------------------------------------------------------- SLOs and reports
# Windows are the last 1/24/168/720 complete hours plus the current partial hour; complete
# hours come from the hourly rollups (models_registry/reports.py), definitions from metrics.py.


@router.get("/metrics/slo", response={200: SloOut, **ERRORS}, tags=["reports"])
def slo_metrics(request, window: Window = "24h"):
    """The five SLO metrics over the window: value, target, met (null: no data), notes and per-hour series."""
    require(request, "read")
    return reports.slo_report(window)


@router.get("/reports/fallbacks", response={200: FallbacksOut, **ERRORS}, tags=["reports"])
def fallbacks_report(request, window: Window = "24h"):
    """Fallbacks to a remote API by model, task type, urgency and hour."""
    require(request, "read")
    return reports.fallbacks_report(window)


@router.get("/reports/thrash", response={200: ThrashOut, **ERRORS}, tags=["reports"])
def thrash_report(request, window: Window = "24h"):
    """Loads, evictions, unloads and failures by model, endpoint, task type and hour."""
    require(request, "read")
    return reports.thrash_report(window)


@router.get("/reports/quality", response={200: QualityOut, **ERRORS}, tags=["reports"])
def quality_report(request, window: Window = "30d"):
    """Observed quality (mean caller rating) per model × task type next to the admin's score."""
    require(request, "read")
    return reports.quality_report(window)
