import os

from django.contrib import admin
from django.http import JsonResponse
from django.urls import include, path
from django.views.defaults import page_not_found

from models_registry.ops.health import healthz, readyz
from models_registry.slo.prometheus import metrics_view
from towerops.api import api

def not_found(request, exception=None):
    """Under /api/ every answer is JSON, an unknown path too; elsewhere Django's page."""
    if request.path.startswith("/api/"):
        return JsonResponse({"detail": f"no such API path: {request.path!r}"}, status=404)
    return page_not_found(request, exception)


handler404 = not_found

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/v1/", api.urls),
    path("metrics", metrics_view, name="metrics"),
    path("healthz", healthz, name="healthz"),  # probes: models_registry/ops/health.py
    path("readyz", readyz, name="readyz"),  # Prometheus; access rule in models_registry/prometheus.py
    path("", include("models_registry.console.urls")),  # the console (models_registry/views.py)
]

if os.environ.get("TOWEROPS_BENCH_ENDPOINTS") == "1":  # bench/bench_api.py's baselines; never in production
    from bench.baseline import api as bench_api

    urlpatterns.append(path("bench/", bench_api.urls))
