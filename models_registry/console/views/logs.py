"""The decision and load-event logs: filters and keyset pagination."""

from __future__ import annotations

import datetime as dt
import json

from django.contrib.auth.decorators import login_required
from django.db.models import Q
from django.shortcuts import get_object_or_404, render
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from django.views.decorators.http import require_GET

from models_registry import models as m
from models_registry.console import decision_log
from models_registry.console.views.common import _template

PAGE_SIZE = 50


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
    # The outcome comes in the same query (a LEFT JOIN on its unique decision id): the measured
    # first token beside the quoted wait, no query per row.
    qs = m.SelectionDecision.objects.select_related("task_type", "model", "endpoint", "outcome").defer(
        "candidates", "input_state", "evictions", "reason", "outcome__error"
    )
    labels: dict = {}
    qs, f = _exact_filters(
        qs, request, {"task_type": "task_type__name", "urgency": "urgency", "action": "action", "model": "model__tag"},
        labels,
    )
    # Not one of the rollups' labels, so apart from them, and no scan bound with it (the rollups'
    # counts, not split by source, would skip hours holding the page's rows).
    f["source"] = request.GET.get("source", "")
    if f["source"]:
        qs = qs.filter(source=f["source"])
    errors: list[str] = []
    qs = _time_filters(qs, request, "created_at", errors)
    if len(labels) >= 2 and None not in labels.values() and not errors and not f["source"]:
        # A combination of filters: read only the hours the rollups say hold the page's rows.
        cursor = _cursor(request)
        uppers = [x for x in (_parse_time(f["until"]), cursor[0] if cursor else None) if x is not None]
        floor = decision_log.decision_scan_floor(labels, min(uppers, default=timezone.now()),
                                            _parse_time(f["since"]), PAGE_SIZE + 1)
        if floor is not None:
            qs = qs.filter(created_at__gte=floor)
    rows, next_query = _keyset(qs, request, "created_at")
    ctx = {
        "rows": rows, "next_query": next_query, "f": f, "errors": errors,
        "task_types": m.TaskType.objects.values_list("name", flat=True),
        "urgencies": m.UrgencyClass.Name.values, "actions": m.SelectionDecision.Action.values,
        "models": m.LlmModel.objects.values_list("tag", flat=True),
        "sources": m.SelectionDecision.Source.choices,
    }
    return render(request, _template(request, "decisions", "table"), ctx)


@require_GET
@login_required
def decision_detail(request, pk: int):
    d = get_object_or_404(
        m.SelectionDecision.objects.select_related("task_type", "model", "endpoint", "config"), pk=pk
    )
    outcome = m.DecisionOutcome.objects.filter(decision=d).first()
    # The time to first token as measured, against the wait the decision quoted.
    ttft_s = outcome.first_token_ms / 1000.0 if outcome and outcome.first_token_ms is not None else None
    late_s = ttft_s - d.expected_wait_s if ttft_s is not None and d.expected_wait_s is not None else None
    ctx = {
        "d": d,
        "outcome": outcome,
        "ttft_s": ttft_s, "late_s": late_s, "early_s": None if late_s is None else -late_s,
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
