"""The catalog editor: quality scores, floors and urgency parameters, edited in place."""

from __future__ import annotations

from collections import defaultdict

from django.contrib.auth.decorators import login_required
from django.http import Http404
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_POST

from models_registry import conf
from models_registry import models as m
from models_registry.learning import quality as observed_quality
from models_registry.console.views.common import staff_required
from models_registry.selection import world as state

# The catalog's editable numbers: (history model, field, label of the row, allowed range).
_EDITABLE = {
    "score": (m.QualityScore, "score", (0.0, 1.0)),
    "quality_floor": (m.TaskType, "quality_floor", (0.0, 1.0)),
    "patience_s": (m.UrgencyClass, "patience_s", (0.0, 86_400.0)),
    "wait_weight": (m.UrgencyClass, "wait_weight", (0.0, 1.0)),
}


def _parse_number(raw: str, field: str) -> tuple[float | None, str | None]:
    """(value, error) for one edited number; empty gives (None, None)."""
    if not raw:
        return None, None
    try:
        value = float(raw)
    except ValueError:
        return None, "not a number"
    lo, hi = _EDITABLE[field][2]
    if not lo <= value <= hi:
        return None, f"must be between {lo:g} and {hi:g}"
    return value, None


def _history_of(model, fields: list[str], label, limit: int) -> list[dict]:
    """Recent changes of `fields` in one history table: who, when, what, old → new."""
    hist = list(model.history.select_related("history_user").order_by("-history_date", "-history_id")[:limit])
    versions = defaultdict(list)  # every version of the rows seen, newest first: one query
    for h in model.history.filter(id__in={h.id for h in hist}).order_by("-history_date", "-history_id"):
        versions[h.id].append(h)
    out = []
    for h in hist:
        vs = versions[h.id]
        i = next((k for k, v in enumerate(vs) if v.history_id == h.history_id), None)
        prev = vs[i + 1] if i is not None and i + 1 < len(vs) else None
        for f in fields:
            old = getattr(prev, f) if prev is not None else None
            new = None if h.history_type == "-" else getattr(h, f)
            if h.history_type == "~" and old == new:
                continue
            out.append({"when": h.history_date, "id": h.history_id,
                        "who": h.history_user.username if h.history_user else "(system)",
                        "what": label(h, f), "old": old, "new": new})
    return out


def _config_history(limit: int = 30) -> list[dict]:
    """Quality scores, task floors and urgency patience/weights: the newest changes first."""
    models_ = dict(m.LlmModel.objects.values_list("id", "tag"))
    tasks = dict(m.TaskType.objects.values_list("id", "name"))
    rows = (
        _history_of(m.QualityScore, ["score"],
                    lambda h, f: f"{models_.get(h.model_id, f'#{h.model_id}')} × {tasks.get(h.task_type_id, '?')}", limit)
        + _history_of(m.TaskType, ["quality_floor"], lambda h, f: f"{h.name} floor", limit)
        + _history_of(m.UrgencyClass, ["patience_s", "wait_weight"],
                      lambda h, f: f"{h.name} {'patience (s)' if f == 'patience_s' else 'wait weight'}", limit)
    )
    rows.sort(key=lambda r: (r["when"], r["id"]), reverse=True)
    return rows[:limit]


def _catalog_context(errors: dict | None = None, observed_message: str = "", observed_error: str = "") -> dict:
    """The grid, the floors, the urgency classes and the observed quality; `errors` maps (field, id)
    -> (raw, message); the observed_* texts say what accepting a proposal did."""
    errors = errors or {}
    models_ = list(m.LlmModel.objects.only("id", "tag", "kind", "enabled"))
    tasks = list(m.TaskType.objects.only("id", "name", "quality_floor"))
    for t in tasks:
        t.raw, t.error = errors.get(("quality_floor", t.id), (None, None))
    scores = {(q.model_id, q.task_type_id): q.score for q in m.QualityScore.objects.all()}
    grid = [
        {"model": mo, "cells": [{"model": mo, "task": t, "score": scores.get((mo.id, t.id))} for t in tasks]}
        for mo in models_
    ]
    for row in grid:
        for c in row["cells"]:
            if ("score", (c["model"].id, c["task"].id)) in errors:
                c["value"], c["error"] = errors[("score", (c["model"].id, c["task"].id))]
    urgencies = list(m.UrgencyClass.objects.all())
    for u in urgencies:
        u.cells = []
        for f in ("patience_s", "wait_weight"):
            raw, error = errors.get((f, u.id), (None, None))
            u.cells.append({"u": u, "field": f, "value": getattr(u, f), "raw": raw, "error": error})
    return {"tasks": tasks, "grid": grid, "urgencies": urgencies, "history": _config_history(),
            **_observed_context(observed_message, observed_error)}


def _observed_context(message: str = "", error: str = "") -> dict:
    """Observed quality beside the admin's scores (learning/quality.py), with the proposals."""
    return {"observed": observed_quality.observed(), "learning_mode": conf.value("TOWEROPS_LEARNING_MODE"),
            "prior_strength": conf.value("TOWEROPS_LEARNING_PRIOR_STRENGTH"),
            "observed_message": message, "observed_error": error}


@require_GET
@login_required
def catalog(request):
    if request.htmx:  # the history table, refreshed after each edit (the `catalog-changed` event)
        return render(request, "console/catalog.html#history", {"history": _config_history()})
    return render(request, "console/catalog.html", _catalog_context())


def _after_edit(request, error: bool, fragment: str, ctx: dict, page_errors: dict):
    """HTMX: the edited fragment (422 on bad input) and, on success, the `catalog-changed`
    event the history table reloads on. A plain form post: the page, or a redirect to it."""
    if not request.htmx:
        if error:
            return render(request, "console/catalog.html", _catalog_context(page_errors), status=422)
        return redirect("console:catalog")
    response = render(request, f"console/catalog.html#{fragment}", ctx, status=422 if error else 200)
    if not error:
        response["HX-Trigger"] = "catalog-changed"
    return response


@require_POST
@staff_required
def update_score(request, model_id: int, task_id: int):
    """Set one quality score (0..1; empty clears it)."""
    model = get_object_or_404(m.LlmModel, pk=model_id)
    task = get_object_or_404(m.TaskType, pk=task_id)
    raw = request.POST.get("score", "").strip()
    score, error = _parse_number(raw, "score")
    existing = m.QualityScore.objects.filter(model=model, task_type=task).first()
    if error is None:
        if score is None:
            if existing:
                existing.delete()
        elif existing is None:
            m.QualityScore.objects.create(model=model, task_type=task, score=score)
        elif existing.score != score:
            existing.score = score
            existing.save(update_fields=["score"])
        state.invalidate_config()
    cell = {"model": model, "task": task,
            "score": existing.score if error and existing else score, "value": raw, "error": error}
    return _after_edit(request, bool(error), "cell", {"cell": cell}, {("score", (model.id, task.id)): (raw, error)})


@require_POST
@staff_required
def update_floor(request, task_id: int):
    """Set a task type's quality floor (0..1). HTMX gets the whole grid back: the cells below
    the floor are marked again."""
    task = get_object_or_404(m.TaskType, pk=task_id)
    raw = request.POST.get("quality_floor", "").strip()
    value, error = _parse_number(raw, "quality_floor")
    if value is None and error is None:
        error = "required"
    if error is None and value != task.quality_floor:
        task.quality_floor = value
        task.save(update_fields=["quality_floor"])
        state.invalidate_config()
    errors = {("quality_floor", task.id): (raw, error)} if error else {}
    return _after_edit(request, bool(error), "grid", _catalog_context(errors), errors)


@require_POST
@staff_required
def update_urgency(request, urgency_id: int, field: str):
    """Set an urgency class's patience (seconds) or wait weight."""
    if field not in ("patience_s", "wait_weight"):
        raise Http404("not an editable field")
    urgency = get_object_or_404(m.UrgencyClass, pk=urgency_id)
    raw = request.POST.get(field, "").strip()
    value, error = _parse_number(raw, field)
    if value is None and error is None:
        error = "required"
    if error is None and value != getattr(urgency, field):
        setattr(urgency, field, value)
        urgency.save(update_fields=[field])
        state.invalidate_config()
    cell = {"u": urgency, "field": field, "value": getattr(urgency, field), "raw": raw, "error": error}
    return _after_edit(request, bool(error), "ucell", {"cell": cell}, {(field, urgency.id): (raw, error)})


@require_POST
@staff_required
def accept_quality(request, model_id: int, task_id: int):
    """Set a quality score to the observed proposal (recorded in the score's history with its
    evidence). HTMX: the observed-quality section, and the grid out of band (its cell changed)."""
    get_object_or_404(m.QualityScore, model_id=model_id, task_type_id=task_id)
    try:
        old, new = observed_quality.accept_proposal(model_id, task_id, request.user)
    except observed_quality.NoProposal as exc:
        message, error = "", str(exc)
    else:
        model = m.LlmModel.objects.filter(pk=model_id).values_list("tag", flat=True).first()
        task = m.TaskType.objects.filter(pk=task_id).values_list("name", flat=True).first()
        message, error = f"{model} × {task}: {old:.2f} → {new:.2f} (accepted from observed quality)", ""
    if not request.htmx:
        if error:
            return render(request, "console/catalog.html", _catalog_context(observed_error=error), status=409)
        return redirect("console:catalog")
    ctx = {**_catalog_context(observed_message=message, observed_error=error), "grid_oob": not error}
    response = render(request, "console/catalog.html#accepted", ctx, status=409 if error else 200)
    if not error:
        response["HX-Trigger"] = "catalog-changed"
    return response
