"""The SLO page: the five targets, fallbacks and thrash over a window."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import Http404
from django.shortcuts import render
from django.utils import timezone
from django.views.decorators.http import require_GET

from models_registry.console import slo_display
from models_registry.console.views.common import _template
from models_registry.slo import reports, rollups


REFRESH_S = 60  # the page re-reads its window this often (one raw hour and the rollups: ~0.2 s)


@require_GET
@login_required
def slo(request):
    window = request.GET.get("window", "24h")
    if window not in rollups.WINDOWS:
        raise Http404("unknown window")
    now = timezone.now()
    data = rollups.hour_data(rollups.window_bounds(window, now)[0], now)  # read once for the three reports
    report = reports.slo_report(window, now, data)
    ctx = {
        "window": window, "windows": list(rollups.WINDOWS), "report": report, "now": now,
        "rows": slo_display.metric_rows(report), "charts": [slo_display.chart(mt) for mt in report["metrics"]],
        "refresh_s": REFRESH_S,
        "fallbacks": reports.fallbacks_report(window, now, data), "thrash": reports.thrash_report(window, now, data),
    }
    return render(request, _template(request, "slo", "body"), ctx)
