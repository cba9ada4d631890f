import os

from django.contrib import admin
from django.urls import include, path

from models_registry.prometheus import metrics_view
from towerops.api import api

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/v1/", api.urls),
    path("metrics", metrics_view, name="metrics"),  # Prometheus; access rule in models_registry/prometheus.py
    path("", include("models_registry.urls")),  # the console (models_registry/views.py)
]

if os.environ.get("TOWEROPS_BENCH_ENDPOINTS") == "1":  # bench/bench_api.py's baselines; never in production
    from bench.baseline import api as bench_api

    urlpatterns.append(path("bench/", bench_api.urls))
