"""The console's URLs (views in models_registry/views.py), mounted at / by towerops/urls.py."""
from django.contrib.auth import views as auth_views
from django.urls import path

from models_registry import views

app_name = "console"

urlpatterns = [
    path("", views.dashboard, name="dashboard"),
    path("login/", auth_views.LoginView.as_view(redirect_authenticated_user=True), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("decisions/", views.decisions, name="decisions"),
    path("decisions/<int:pk>/", views.decision_detail, name="decision_detail"),
    path("load-events/", views.load_events, name="load_events"),
    path("catalog/", views.catalog, name="catalog"),
    path("catalog/<int:model_id>/<int:task_id>/", views.update_score, name="update_score"),
    path("slo/", views.slo, name="slo"),
    path("catalog/floor/<int:task_id>/", views.update_floor, name="update_floor"),
    path("catalog/urgency/<int:urgency_id>/<str:field>/", views.update_urgency, name="update_urgency"),
    path("vram/", views.vram_history, name="vram"),
    path("preload/", views.preload_windows, name="preload"),
    path("preload/new/", views.preload_edit, name="preload_new"),
    path("preload/<int:pk>/", views.preload_edit, name="preload_edit"),
    path("preload/<int:pk>/toggle/", views.preload_toggle, name="preload_toggle"),
    path("replay/", views.replay_runs, name="replay_runs"),
    path("replay/<int:pk>/", views.replay_run, name="replay_run"),
    path("replay/<int:pk>/plots/<str:name>", views.replay_plot, name="replay_plot"),
]
