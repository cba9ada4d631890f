"""What the API answers where a residency's life meets a selection: a model still unloading on one
endpoint, and a database conflict that outlived its retries."""
from __future__ import annotations

import psycopg
from django.db import OperationalError
from django.test import RequestFactory

from models_registry import models as m
from towerops import api as towerops_api

from .conftest import SELECT, put_loaded


def test_a_load_is_placed_away_from_an_endpoint_where_the_model_is_still_unloading(
        tower, api, captured_loads, django_capture_on_commit_callbacks):
    """Defect 4: tinyllama is unloading on the NVIDIA endpoint (the tightest fit); the load went there
    anyway and its reservation hit the one-active-residency constraint: 409 "retry", though the AMD GPU
    had room."""
    leaving = put_loaded("tinyllama", "tower-nvidia", state="unloading")
    m.LlmModel.objects.filter(kind="local").exclude(tag="tinyllama").update(enabled=False)
    with django_capture_on_commit_callbacks(execute=True):
        r = api.post(SELECT, {"task_type": "general", "urgency": "batch"})
    assert r.status_code == 200, r.content
    out = r.json()
    assert (out["model"], out["action"], out["endpoint"]) == ("tinyllama", "load", "tower-amd"), out["reason"]
    assert len(captured_loads) == 1
    leaving.refresh_from_db()
    assert leaving.state == "unloading"


def test_a_conflict_that_outlived_its_retries_is_a_409_not_database_unavailable():
    """Defect 2: a deadlock was answered 503 "database unavailable"."""
    try:
        raise OperationalError("deadlock detected") from psycopg.errors.DeadlockDetected("deadlock detected")
    except OperationalError as exc:
        response = towerops_api.database_unavailable(RequestFactory().post(SELECT), exc)
    assert response.status_code == 409
    assert b"retry" in response.content and b"unavailable" not in response.content
    try:
        raise OperationalError("connection refused")
    except OperationalError as exc:
        assert towerops_api.database_unavailable(RequestFactory().post(SELECT), exc).status_code == 503
