"""The console's URLs (views in models_registry/console/views/, one module per page), mounted at / by towerops/urls.py."""
from django.contrib.auth import views as auth_views
from django.urls import path

from models_registry.console.views import catalog, dashboard, logs, preload, replay, slo, vram

app_name = "console"

urlpatterns = [
    path("", dashboard.dashboard, name="dashboard"),
    path("login/", auth_views.LoginView.as_view(redirect_authenticated_user=True), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("decisions/", logs.decisions, name="decisions"),
    path("decisions/<int:pk>/", logs.decision_detail, name="decision_detail"),
    path("load-events/", logs.load_events, name="load_events"),
    path("catalog/", catalog.catalog, name="catalog"),
    path("catalog/<int:model_id>/<int:task_id>/", catalog.update_score, name="update_score"),
    path("slo/", slo.slo, name="slo"),
    path("catalog/floor/<int:task_id>/", catalog.update_floor, name="update_floor"),
    path("catalog/observed/<int:model_id>/<int:task_id>/accept/", catalog.accept_quality, name="accept_quality"),
    path("catalog/urgency/<int:urgency_id>/<str:field>/", catalog.update_urgency, name="update_urgency"),
    path("vram/", vram.vram_history, name="vram"),
    path("preload/", preload.preload_windows, name="preload"),
    path("preload/new/", preload.preload_edit, name="preload_new"),
    path("preload/<int:pk>/", preload.preload_edit, name="preload_edit"),
    path("preload/<int:pk>/toggle/", preload.preload_toggle, name="preload_toggle"),
    path("preload/suggestions/<int:pk>/<str:action>/", preload.preload_suggestion, name="preload_suggestion"),
    path("replay/", replay.replay_runs, name="replay_runs"),
    path("replay/<int:pk>/", replay.replay_run, name="replay_run"),
    path("replay/<int:pk>/plots/<str:name>", replay.replay_plot, name="replay_plot"),
]
