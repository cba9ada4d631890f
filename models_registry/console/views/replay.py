"""Trace replay runs: their summaries and plots."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.shortcuts import get_object_or_404, render
from django.views.decorators.http import require_GET

from models_registry import models as m
from models_registry.console.views.logs import _keyset

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
