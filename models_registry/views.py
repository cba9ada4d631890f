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

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.db.models import Q
from django.http import Http404, HttpResponseNotAllowed
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from django.views.decorators.http import require_GET, require_POST

from models_registry import models as m
from models_registry import preload, reports, services, state, vram
from models_registry.forms import PreloadWindowForm

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


def _cursor(request) -> tuple[dt.datetime, int] | None:
    ts_s, _, id_s = request.GET.get("after", "").rpartition("_")
    ts = _parse_time(ts_s) if ts_s else None
    return (ts, int(id_s)) if ts is not None and id_s.isdigit() else None


def _keyset(qs, request, field: str):
    """One page, newest first, on (field, id): `?after=<iso>_<id>` continues after that row.

    The redundant `field <= ts` bounds the index scan: with the OR alone PostgreSQL walks the
    time index from the newest row and filters (3 s for a page 25 days back in 10 M decisions)."""
    cursor = _cursor(request)
    if cursor is not None:
        ts, after_id = cursor
        qs = qs.filter(Q(**{f"{field}__lt": ts}) | Q(**{field: ts, "id__lt": after_id}), **{f"{field}__lte": ts})
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


def _exact_filters(qs, request, lookups: dict[str, str], resolved: dict | None = None):
    """Apply ?param=value filters ({param: ORM lookup}); returns the queryset and the form values,
    and fills ``resolved`` with each applied filter as {column: value} (None if one matches nothing).

    A lookup across a foreign key (`model__tag`, a unique name) is resolved to the id first, so
    PostgreSQL plans `model_id = 7` with its statistics and the (model, time) index; through a
    join it plans for an average model and walks the time index: all 10 M decisions for a model
    that was never chosen. An unknown name matches nothing (no query)."""
    f = {k: request.GET.get(k, "") for k in (*lookups, "since", "until")}
    for param, lookup in lookups.items():
        if not f[param]:
            continue
        fk, _, name = lookup.partition("__")
        if not name:
            qs = qs.filter(**{lookup: f[param]})
            if resolved is not None:
                resolved[lookup] = f[param]
            continue
        related = qs.model._meta.get_field(fk).related_model
        pk = related._default_manager.filter(**{name: f[param]}).values_list("pk", flat=True).first()
        qs = qs.filter(**{f"{fk}_id": pk}) if pk is not None else qs.none()
        if resolved is not None:
            resolved[f"{fk}_id"] = pk
    return qs, f


@require_GET
@login_required
def decisions(request):
    qs = m.SelectionDecision.objects.select_related("task_type", "model", "endpoint").defer(
        "candidates", "input_state", "evictions", "reason"
    )
    labels: dict = {}
    qs, f = _exact_filters(
        qs, request, {"task_type": "task_type__name", "urgency": "urgency", "action": "action", "model": "model__tag"},
        labels,
    )
    errors: list[str] = []
    qs = _time_filters(qs, request, "created_at", errors)
    if len(labels) >= 2 and None not in labels.values() and not errors:
        # A combination of filters: read only the hours the rollups say hold the page's rows.
        cursor = _cursor(request)
        uppers = [x for x in (_parse_time(f["until"]), cursor[0] if cursor else None) if x is not None]
        floor = reports.decision_scan_floor(labels, min(uppers, default=timezone.now()),
                                            _parse_time(f["since"]), PAGE_SIZE + 1)
        if floor is not None:
            qs = qs.filter(created_at__gte=floor)
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


def _catalog_context(errors: dict | None = None) -> dict:
    """The grid, the floors and the urgency classes; `errors` maps (field, id) -> (raw, message)."""
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
    return {"tasks": tasks, "grid": grid, "urgencies": urgencies, "history": _config_history()}


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


# --------------------------------------------------------------------------- SLOs


@require_GET
@login_required
def slo(request):
    window = request.GET.get("window", "24h")
    if window not in reports.WINDOWS:
        raise Http404("unknown window")
    now = timezone.now()
    data = reports.hour_data(reports.window_bounds(window, now)[0], now)  # read once for the three reports
    report = reports.slo_report(window, now, data)
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
        "fallbacks": reports.fallbacks_report(window, now, data), "thrash": reports.thrash_report(window, now, data),
    }
    return render(request, _template(request, "slo", "body"), ctx)



# --------------------------------------------------------------------------- preload windows


def _preload_context(world, form=None, edited: preload.WindowSpec | None = None, pk: int | None = None) -> dict:
    specs = preload.saved_specs(exclude_id=pk)
    grid = preload.week(specs, world, edited)
    ctx = {"grid": grid, "days": preload.DAYS, "hours": range(24), "tz": preload.display_tz().key, "form": form,
           "vram_mib": {mo.tag: mo.vram_mib for mo in world.models}}
    if edited is not None:
        ctx["preview"] = preload.preview(edited, world, grid)
    return ctx


@require_GET
@login_required
def preload_windows(request):
    world = state.read_world(timezone.now())[0]
    ctx = _preload_context(world)
    ctx["windows"] = m.PreloadWindow.objects.prefetch_related("models").order_by("start_time", "name")
    return render(request, "console/preload.html", ctx)


def _edited_spec(form) -> preload.WindowSpec | None:
    """The submitted window for a preview, once the fields it needs are valid (the name may still be missing)."""
    form.is_valid()
    if not all(k in form.cleaned_data for k in ("days_of_week", "start_time", "end_time", "timezone", "models")):
        return None
    if form.cleaned_data["start_time"] == form.cleaned_data["end_time"]:
        return None
    return preload.WindowSpec(form.unsaved(), sorted(mo.tag for mo in form.cleaned_data["models"]))


@staff_required
def preload_edit(request, pk: int | None = None):
    """Create (no pk) or edit a window. POST with `check` (or HTMX on every change) only
    previews; a save is refused when the window's own models can never fit the tower."""
    window = get_object_or_404(m.PreloadWindow, pk=pk) if pk else None
    world = state.read_world(timezone.now())[0]
    if request.method == "GET":
        form = PreloadWindowForm(instance=window)
        edited = None
        if window is not None:
            edited = preload.WindowSpec(window, sorted(mo.tag for mo in window.models.all()))
        ctx = _preload_context(world, form, edited, pk)
        return render(request, "console/preload_form.html", {**ctx, "window": window})
    if request.method != "POST":
        return HttpResponseNotAllowed(["GET", "POST"])
    form = PreloadWindowForm(request.POST, instance=window)
    edited = _edited_spec(form)
    ctx = {**_preload_context(world, form, edited, pk), "window": window}
    if request.htmx:  # the live preview while editing: never saves
        return render(request, "console/preload_form.html#preview", ctx)
    if form.is_valid() and "check" not in request.POST:
        if ctx["preview"].refused:
            form.add_error("models", _never_fit_message(ctx["preview"], ctx["vram_mib"]))
        else:
            with transaction.atomic():
                form.save()
            return redirect("console:preload")
    status = 422 if form.errors else 200
    return render(request, "console/preload_form.html", ctx, status=status)


def _never_fit_message(pv: preload.Preview, vram_mib: dict) -> str:
    parts = [f"{t} ({vram_mib.get(t, 0) / 1024:.1f} GB)" for t in pv.own_misfits]
    verb = "does" if len(parts) == 1 else "do"
    return (f"can never be warm together: {', '.join(parts)} {verb} not fit the tower even with nothing else "
            f"loaded (largest GPU has {pv.largest_usable_mib / 1024:.1f} GB usable); remove them or split the window")


@require_POST
@staff_required
def preload_toggle(request, pk: int):
    window = get_object_or_404(m.PreloadWindow, pk=pk)
    window.enabled = not window.enabled
    window.save(update_fields=["enabled"])
    return redirect("console:preload")


# --------------------------------------------------------------------------- VRAM history


@require_GET
@login_required
def vram_history(request):
    """One GPU's measured VRAM over a window, with load and unload events marked."""
    gpus = list(m.Gpu.objects.select_related("host").order_by("host__name", "index"))
    window = request.GET.get("window", "24h")
    if window not in vram.WINDOWS:
        raise Http404("unknown window")
    key = request.GET.get("gpu") or (gpus[0].key if gpus else "")
    gpu = next((g for g in gpus if g.key == key), None)
    if gpus and gpu is None:
        raise Http404("unknown GPU")
    now = timezone.now()
    ctx = {"gpus": gpus, "gpu": gpu, "window": window, "windows": list(vram.WINDOWS), "now": now,
           "telemetry_s": settings.TOWEROPS_TELEMETRY_INTERVAL_S}
    if gpu is not None:
        h = vram.history(gpu, window, now)
        ctx["h"] = h
        ctx["charts"] = [{
            "id": "vram-chart", "title": f"{gpu.key} {gpu.name}: VRAM used (MiB)", "unit": "MiB", "x": h["x"],
            "series": [
                {"label": "used (mean)", "y": h["used"], "stroke": "#2563eb"},
                {"label": "used (max)", "y": h["max"], "stroke": "#93c5fd", "width": 1},
                {"label": "usable", "y": [h["usable_mib"]] * len(h["x"]), "stroke": "#dc2626", "dash": [6, 4], "width": 1},
                {"label": "loads", "y": h["loads"], "stroke": "#15803d", "points": True},
                {"label": "unloads / evictions", "y": h["unloads"], "stroke": "#d97706", "points": True},
            ],
        }]
        ctx["events"] = (
            m.LoadEvent.objects.filter(endpoint__gpus=gpu, requested_at__gte=now - vram.WINDOWS[window][0])
            .select_related("model", "endpoint").order_by("-requested_at", "-id")[:20]
        )
    return render(request, _template(request, "vram", "body"), ctx)


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
        "policy_version": next((s["policy_version"] for s in run.summaries if s.get("policy_version")), None),
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
