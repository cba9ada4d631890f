"""VRAM history per GPU."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import Http404
from django.shortcuts import render
from django.utils import timezone
from django.views.decorators.http import require_GET

from models_registry import conf
from models_registry import models as m
from models_registry.console.views.common import _template
from models_registry.slo import vram


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
           "telemetry_s": conf.value("TOWEROPS_TELEMETRY_INTERVAL_S")}
    if gpu is not None:
        h = vram.history(gpu, window, now)
        ctx["h"] = h
        if not h["x"]:  # the empty state says when the GPU last reported
            ctx["last_snapshot"] = (m.GpuSnapshot.objects.filter(gpu=gpu).order_by("-taken_at")
                                    .values_list("taken_at", flat=True).first())
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
