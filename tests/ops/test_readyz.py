"""/readyz: database, broker, a fresh endpoint, no stuck load, a live beat; 200 or 503 with every check."""
import datetime as dt

import pytest
from django.db import connection
from django.urls import reverse

from models_registry import models as m
from models_registry.runtime.tasks import LOAD_TIMEOUT_S
from models_registry.timeutil import utcnow

pytestmark = pytest.mark.django_db


@pytest.fixture
def healthy(tower):
    """The Tower with both endpoints just synced and a fresh beat heartbeat."""
    now = utcnow()
    m.Endpoint.objects.update(is_up=True, last_checked_at=now)
    m.ServiceHeartbeat.objects.create(service="beat", beat_at=now)


def ready(client) -> tuple[int, dict]:
    response = client.get(reverse("readyz"))
    return response.status_code, response.json()


def failing(body: dict) -> dict:
    return {name: c["detail"] for name, c in body["checks"].items() if c["status"] != "ok"}


def test_a_healthy_stack_is_ready_with_every_check_reported(client, healthy):
    status, body = ready(client)
    assert status == 200
    assert body["status"] == "ok"
    assert set(body["checks"]) == {"database", "broker", "endpoints", "loads", "beat"}
    assert failing(body) == {}
    assert body["checks"]["endpoints"]["detail"].startswith("2 of 2 endpoints up")


def test_without_a_beat_heartbeat_it_is_not_ready(client, healthy):
    m.ServiceHeartbeat.objects.all().delete()
    status, body = ready(client)
    assert status == 503 and body["status"] == "fail"
    assert list(failing(body)) == ["beat"]
    assert "no heartbeat yet" in failing(body)["beat"]


def test_a_stale_heartbeat_names_its_age_and_bound(client, healthy, settings):
    settings.TOWEROPS_HEARTBEAT_INTERVAL_S = 30
    m.ServiceHeartbeat.objects.update(beat_at=utcnow() - dt.timedelta(seconds=300))
    status, body = ready(client)
    assert status == 503
    assert "last heartbeat 300 s ago (bound 90 s)" in failing(body)["beat"]


def test_endpoints_that_are_down_or_not_synced_lately_make_it_not_ready(client, healthy):
    m.Endpoint.objects.filter(name="tower-amd").update(is_up=False)
    assert ready(client)[0] == 200  # one fresh endpoint is enough
    m.Endpoint.objects.filter(name="tower-nvidia").update(last_checked_at=utcnow() - dt.timedelta(minutes=5))
    status, body = ready(client)
    assert status == 503
    assert list(failing(body)) == ["endpoints"]
    assert failing(body)["endpoints"].startswith("0 of 2 endpoints up")


def test_a_load_stuck_past_its_timeout_makes_it_not_ready(client, healthy):
    model, endpoint = m.LlmModel.objects.get(tag="mistral:7b"), m.Endpoint.objects.get(name="tower-amd")
    long_ago = utcnow() - dt.timedelta(seconds=LOAD_TIMEOUT_S + 600)
    r = m.Residency.objects.create(model=model, endpoint=endpoint, state="loading", vram_mib=5000,
                                   requested_at=long_ago, loaded_at=utcnow())
    assert ready(client)[0] == 200  # loading since just now: within its timeout
    m.Residency.objects.filter(pk=r.pk).update(loaded_at=long_ago)
    status, body = ready(client)
    assert status == 503
    assert failing(body) == {"loads": "stuck past the load timeout, not resolved: mistral:7b on tower-amd (loading)"}


def test_an_unreachable_broker_makes_it_not_ready(client, healthy, monkeypatch):
    monkeypatch.setenv("CELERY_BROKER_URL", "redis://127.0.0.1:9/0")  # Celery reads it first; port 9: nothing listens
    status, body = ready(client)
    assert status == 503
    assert list(failing(body)) == ["broker"]


@pytest.mark.django_db(transaction=True)
def test_an_unreachable_database_fails_every_check_that_reads_it_and_healthz_stays_up(client):
    connection.close()
    saved = dict(connection.settings_dict)
    connection.settings_dict.update(HOST="127.0.0.1", PORT="9")
    try:
        status, body = ready(client)
        healthz = client.get(reverse("healthz")).status_code
    finally:
        connection.close()
        connection.settings_dict.clear()
        connection.settings_dict.update(saved)
    assert status == 503
    assert set(failing(body)) == {"database", "endpoints", "loads", "beat"}
    assert failing(body)["database"].startswith("OperationalError")
    assert healthz == 200
