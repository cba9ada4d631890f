"""The console: server-rendered pages, kept live with HTMX fragments.

One function view per page. Each renders `console/<page>.html`, or only one of its
`{% partialdef %}` fragments (`page.html#fragment`) when the request comes from HTMX, so
every page also reads without JavaScript (links and forms keep a plain href/action).
Everyone logged in reads; only staff edit (checked here, never only in a template).
"""
from __future__ import annotations

import datetime as dt
import json
from collections import defaultdict
from functools import wraps

from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.db.models import Q
from django.http import Http404
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from django.views.decorators.http import require_GET, require_POST

from models_registry import models as m
from models_registry import reports, services

PAGE_SIZE = 50
ACTIVE = ("requested", "loading", "loaded", "unloading")


def staff_required(view):
    """Logged in (else the login page) and staff (else 403): the console's edit permission."""

    @wraps(view)
    @login_required
    def wrapper(request, *args, **kwargs):
        if not request.user.is_staff:
            raise PermissionDenied("staff only")
        return view(request, *args, **kwargs)

    return wrapper


def _template(request, page: str, fragment: str) -> str:
    name = f"console/{page}.html"
    return f"{name}#{fragment}" if request.htmx else name


# --------------------------------------------------------------------------- dashboard


def _dashboard_context(now: dt.datetime) -> dict:
    state = services.fleet_state(now)
    # Per-GPU slices of every active residency (a split model holds several GPUs).
    slices = defaultdict(list)
    placements = (
        m.ResidencyGpu.objects.filter(residency__state__in=ACTIVE)
        .select_related("residency__model", "gpu__host")
        .only("vram_mib", "residency__state", "residency__model__tag", "gpu__index", "gpu__host__name")
    )
    for p in placements:
        slices[p.gpu.key].append({"model": p.residency.model.tag, "mib": p.vram_mib, "state": p.residency.state})
    hosts: dict[str, list] = {}
    for g in state["gpus"]:
        total = g["total_mib"] or 1
        models_ = sorted(slices.get(g["key"], []), key=lambda s: -s["mib"])
        for s in models_:
            s["pct"] = 100.0 * s["mib"] / total
        g["segments"] = models_
        g["reserved_pct"] = 100.0 * g["reserved_mib"] / total
        g["free_pct"] = max(0.0, 100.0 * g["free_mib"] / total)
        hosts.setdefault(g["key"].split("/")[0], []).append(g)
    for r in state["residents"]:
        r["idle_s"] = (now - r["last_used_at"]).total_seconds() if r["last_used_at"] else None
    decisions = (
        m.SelectionDecision.objects.select_related("task_type", "model", "endpoint")
        .only("created_at", "urgency", "action", "quality", "met_floor", "expected_wait_s",
              "task_type__name", "model__tag", "endpoint__name")
        .order_by("-created_at", "-id")[:15]
    )
    return {"hosts": hosts, "endpoints": state["endpoints"], "residents": state["residents"],
            "decisions": decisions, "now": now}


@require_GET
@login_required
def dashboard(request):
    ctx = _dashboard_context(timezone.now())
    return render(request, _template(request, "dashboard", "live"), ctx)


# --------------------------------------------------------------------------- logs (keyset pagination)


def _parse_time(value: str | None):
    if not value:
        return None
    ts = parse_datetime(value)
    if ts is None:
        return None
    return timezone.make_aware(ts) if timezone.is_naive(ts) else ts


def _keyset(qs, request, field: str):
    """One page, newest first, on (field, id): `?after=<iso>_<id>` continues after that row."""
    cursor = request.GET.get("after", "")
    if "_" in cursor:
        ts_s, _, id_s = cursor.rpartition("_")
        ts = _parse_time(ts_s)
        if ts is not None and id_s.isdigit():
            qs = qs.filter(Q(**{f"{field}__lt": ts}) | Q(**{field: ts, "id__lt": int(id_s)}))
    rows = list(qs.order_by(f"-{field}", "-id")[: PAGE_SIZE + 1])
    more = len(rows) > PAGE_SIZE
    rows = rows[:PAGE_SIZE]
    next_cursor = f"{getattr(rows[-1], field).isoformat()}_{rows[-1].id}" if more else None
    params = request.GET.copy()
    params.pop("after", None)
    next_query = None
    if next_cursor:
        params["after"] = next_cursor
        next_query = params.urlencode()
    return rows, next_query


def _time_filters(qs, request, field: str, errors: list):
    for key, lookup in (("since", "gte"), ("until", "lt")):
        raw = request.GET.get(key)
        if raw:
            ts = _parse_time(raw)
            if ts is None:
                errors.append(f"{key}: not a date and time (YYYY-MM-DD HH:MM)")
            else:
                qs = qs.filter(**{f"{field}__{lookup}": ts})
    return qs


def _exact_filters(qs, request, lookups: dict[str, str]):
    """Apply ?param=value filters ({param: ORM lookup}); returns the queryset and the form values."""
    f = {k: request.GET.get(k, "") for k in (*lookups, "since", "until")}
    return qs.filter(**{lookup: f[param] for param, lookup in lookups.items() if f[param]}), f


@require_GET
@login_required
def decisions(request):
    qs = m.SelectionDecision.objects.select_related("task_type", "model", "endpoint").defer(
        "candidates", "input_state", "evictions", "reason"
    )
    qs, f = _exact_filters(
        qs, request, {"task_type": "task_type__name", "urgency": "urgency", "action": "action", "model": "model__tag"}
    )
    errors: list[str] = []
    qs = _time_filters(qs, request, "created_at", errors)
    rows, next_query = _keyset(qs, request, "created_at")
    ctx = {
        "rows": rows, "next_query": next_query, "f": f, "errors": errors,
        "task_types": m.TaskType.objects.values_list("name", flat=True),
        "urgencies": m.UrgencyClass.Name.values, "actions": m.SelectionDecision.Action.values,
        "models": m.LlmModel.objects.values_list("tag", flat=True),
    }
    return render(request, _template(request, "decisions", "table"), ctx)


@require_GET
@login_required
def decision_detail(request, pk: int):
    d = get_object_or_404(
        m.SelectionDecision.objects.select_related("task_type", "model", "endpoint", "config"), pk=pk
    )
    outcome = m.DecisionOutcome.objects.filter(decision=d).first()
    ctx = {
        "d": d,
        "outcome": outcome,
        "candidates": d.candidates,
        "input_state": json.dumps(d.input_state, indent=2, sort_keys=True, default=str),
        "load_events": d.load_events.select_related("model", "endpoint").order_by("requested_at"),
    }
    return render(request, "console/decision_detail.html", ctx)


@require_GET
@login_required
def load_events(request):
    qs = m.LoadEvent.objects.select_related("model", "endpoint")
    qs, f = _exact_filters(
        qs, request, {"model": "model__tag", "kind": "kind", "trigger": "trigger", "endpoint": "endpoint__name"}
    )
    errors: list[str] = []
    qs = _time_filters(qs, request, "requested_at", errors)
    rows, next_query = _keyset(qs, request, "requested_at")
    ctx = {
        "rows": rows, "next_query": next_query, "f": f, "errors": errors,
        "kinds": m.LoadEvent.Kind.values, "triggers": m.LoadEvent.Trigger.values,
        "models": m.LlmModel.objects.values_list("tag", flat=True),
        "endpoints": m.Endpoint.objects.values_list("name", flat=True),
    }
    return render(request, _template(request, "load_events", "table"), ctx)


# --------------------------------------------------------------------------- catalog editor


def _score_history(limit: int = 30) -> list[dict]:
    """Recent quality-score changes, newest first: who, when, old → new."""
    hist = list(
        m.QualityScore.history.select_related("history_user").order_by("-history_date", "-history_id")[:limit]
    )
    prev_ids = {h.id for h in hist}
    # The previous version of each row: one query for all of them.
    older = defaultdict(list)
    for h in m.QualityScore.history.filter(id__in=prev_ids).order_by("-history_date", "-history_id"):
        older[h.id].append(h)
    names = dict(m.LlmModel.objects.values_list("id", "tag")), dict(m.TaskType.objects.values_list("id", "name"))
    out = []
    for h in hist:
        versions = older[h.id]
        i = next((k for k, v in enumerate(versions) if v.history_id == h.history_id), None)
        old = versions[i + 1].score if i is not None and i + 1 < len(versions) else None
        out.append({
            "when": h.history_date, "who": h.history_user.username if h.history_user else "(system)",
            "model": names[0].get(h.model_id, f"#{h.model_id}"), "task_type": names[1].get(h.task_type_id, "?"),
            "old": old, "new": None if h.history_type == "-" else h.score, "type": h.history_type,
        })
    return out


def _catalog_context() -> dict:
    models_ = list(m.LlmModel.objects.only("id", "tag", "kind", "enabled"))
    tasks = list(m.TaskType.objects.only("id", "name", "quality_floor"))
    scores = {(q.model_id, q.task_type_id): q.score for q in m.QualityScore.objects.all()}
    grid = [
        {"model": mo, "cells": [{"model": mo, "task": t, "score": scores.get((mo.id, t.id))} for t in tasks]}
        for mo in models_
    ]
    return {"tasks": tasks, "grid": grid, "history": _score_history()}


@require_GET
@login_required
def catalog(request):
    if request.htmx:  # the history table, refreshed after each edit (the `scores-changed` event)
        return render(request, "console/catalog.html#history", {"history": _score_history()})
    return render(request, "console/catalog.html", _catalog_context())


@require_POST
@staff_required
def update_score(request, model_id: int, task_id: int):
    """Set one quality score (0..1; empty clears it). HTMX gets the cell back and a
    `scores-changed` event (the history table reloads on it); a plain form post is
    redirected to the page, or on bad input gets the page with the error in the cell."""
    model = get_object_or_404(m.LlmModel, pk=model_id)
    task = get_object_or_404(m.TaskType, pk=task_id)
    raw = request.POST.get("score", "").strip()
    error = None
    score = None
    if raw:
        try:
            score = float(raw)
        except ValueError:
            error = "not a number"
        else:
            if not 0.0 <= score <= 1.0:
                error = "must be between 0 and 1"
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
    if not request.htmx:
        if error:
            ctx = _catalog_context()
            for row in ctx["grid"]:
                for c in row["cells"]:
                    if c["model"].id == model.id and c["task"].id == task.id:
                        c.update(value=raw, error=error)
            return render(request, "console/catalog.html", ctx, status=422)
        return redirect("console:catalog")
    cell = {"model": model, "task": task,
            "score": existing.score if error and existing else score, "value": raw, "error": error}
    response = render(request, "console/catalog.html#cell", {"cell": cell}, status=422 if error else 200)
    if error is None:
        response["HX-Trigger"] = "scores-changed"
    return response


# --------------------------------------------------------------------------- SLOs


@require_GET
@login_required
def slo(request):
    window = request.GET.get("window", "24h")
    if window not in reports.WINDOWS:
        raise Http404("unknown window")
    now = timezone.now()
    report = reports.slo_report(window, now)
    charts = []
    for metric in report["metrics"]:
        t = metric["target"]
        charts.append({
            "id": f"chart-{metric['name']}",
            "title": metric["name"],
            "x": [int(p["hour"].timestamp()) for p in metric["series"]],
            "y": [p["value"] for p in metric["series"]],
            "target": t["value"] if t else None,
        })
    ctx = {
        "window": window, "windows": list(reports.WINDOWS), "report": report, "charts": charts,
        "fallbacks": reports.fallbacks_report(window, now), "thrash": reports.thrash_report(window, now),
    }
    return render(request, _template(request, "slo", "body"), ctx)



# --------------------------------------------------------------------------- trace replay (#7)

_REPLAY_ROWS = (
    ("interactive TTFT p95", "interactive_p95_s", "s"),
    ("loads / hour", "loads_per_hour", ""),
    ("VRAM efficiency", "vram_efficiency", "%"),
    ("quality met", "quality_met", "%"),
    ("fallback rate", "fallback_rate", "%"),
)


def _replay_value(value, unit: str) -> str:
    if value is None:
        return "no data"
    if unit == "%":
        return f"{value:.1%}"
    return f"{value:.2f}{' s' if unit == 's' else ''}"


def _replay_headline(run: m.ReplayRun) -> list[dict]:
    """Per (profile, policy): how many of the five targets it met."""
    out = []
    for s in run.summaries:
        slo = s.get("slo", {})
        out.append({"profile": s.get("profile", "base"), "policy": s.get("policy"),
                    "met": sum(1 for v in slo.values() if v.get("met") is True), "of": len(slo)})
    return out


@require_GET
@login_required
def replay_runs(request):
    """Stored `manage.py replay` runs, newest first (50 a page, keyset on created_at)."""
    qs = m.ReplayRun.objects.defer("table")
    rows, next_query = _keyset(qs, request, "created_at")
    for r in rows:
        r.headline = _replay_headline(r)
    return render(request, "console/replay_runs.html", {"rows": rows, "next_query": next_query})


@require_GET
@login_required
def replay_run(request, pk: int):
    """One run: its parameters, the five SLOs and extra figures per (profile, policy), its plots."""
    run = get_object_or_404(m.ReplayRun, pk=pk)
    columns = [{"profile": s.get("profile", "base"), "policy": s.get("policy")} for s in run.summaries]
    rows = []
    for label, name, unit in _REPLAY_ROWS:
        cells, target = [], ""
        for s in run.summaries:
            v = s.get("slo", {}).get(name, {})
            target = v.get("target", target)
            cells.append({"text": _replay_value(v.get("value"), unit), "met": v.get("met")})
        rows.append({"label": label, "target": target, "cells": cells})
    extra = [
        ("full response p95", [_replay_value((s.get("response_s") or {}).get("p95"), "s") for s in run.summaries]),
        ("TTFT p50", [_replay_value((s.get("ttft_s") or {}).get("p50"), "s") for s in run.summaries]),
        ("mean quality", [_replay_value(s.get("mean_quality"), "") for s in run.summaries]),
        ("loads", [str(sum((s.get("loads_by_model") or {}).values())) for s in run.summaries]),
        ("requests", [str(s.get("requests", "")) for s in run.summaries]),
    ]
    ctx = {
        "run": run, "columns": columns, "rows": rows, "extra": extra,
        "profiles": len({c["profile"] for c in columns}) > 1,
        "plots": list(run.plots.values_list("name", flat=True)),
    }
    return render(request, "console/replay_run.html", ctx)


@require_GET
@login_required
def replay_plot(request, pk: int, name: str):
    """A stored plot's PNG bytes (served from the database: no CDN, no MEDIA storage)."""
    from django.http import HttpResponse

    plot = get_object_or_404(m.ReplayPlot, run_id=pk, name=name)
    response = HttpResponse(bytes(plot.png), content_type="image/png")
    response["Cache-Control"] = "private, max-age=86400"  # a stored run never changes
    return response
