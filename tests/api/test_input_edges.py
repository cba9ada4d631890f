"""The API's edges (issue 13, defect 10): JSON bodies only, JSON answers only, rate limits per
address, a schema that says what a selection may name, and /metrics that stays plain text."""
from __future__ import annotations

import codecs
import json

import pytest
from django.db import OperationalError
from django.urls import reverse

from models_registry import models as m
from tests.api.conftest import SELECT, put_loaded
from tests.api.test_bad_input import assert_json_error, state_of_db

OK = {"task_type": "general", "urgency": "interactive"}
pytestmark = pytest.mark.django_db


@pytest.fixture
def loaded(tower):
    return put_loaded("llama3.2:3b")


def post(client, key, body: bytes | str, **extra):
    return client.generic("POST", SELECT, body, HTTP_AUTHORIZATION=f"Bearer {key}", **extra)


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data"])
def test_a_body_that_is_not_declared_json_is_415(client, make_key, loaded, content_type):
    key = make_key("select")
    before = state_of_db()
    r = post(client, key, json.dumps(OK), content_type=content_type)
    assert r.status_code == 415 and r["Content-Type"].startswith("application/json")
    assert "application/json" in r.json()["detail"] and content_type in r.json()["detail"]
    assert state_of_db() == before


def test_a_body_without_a_content_type_is_415(client, make_key, loaded):
    before = state_of_db()
    r = client.generic("POST", SELECT, json.dumps(OK), content_type="",
                       HTTP_AUTHORIZATION=f"Bearer {make_key('select')}")
    assert r.status_code == 415 and "got none" in r.json()["detail"]
    assert state_of_db() == before


def test_a_byte_order_mark_is_400_saying_so(client, make_key, loaded):
    before = state_of_db()
    r = post(client, make_key("select"), codecs.BOM_UTF8 + json.dumps(OK).encode(), content_type="application/json")
    assert r.status_code == 400 and "byte-order mark" in r.json()["detail"]
    assert state_of_db() == before


def test_json_with_a_charset_or_a_json_suffix_type_is_accepted(client, make_key, loaded):
    key = make_key("select")
    for ctype in ("application/json; charset=utf-8", "application/vnd.towerops+json"):
        r = post(client, key, json.dumps({**OK, "dry_run": True}), content_type=ctype)
        assert r.status_code == 200, (ctype, r.content)


def test_a_number_too_large_to_be_finite_is_422_naming_the_field(api, loaded):
    detail = assert_json_error(api.post(SELECT, raw='{"task_type": "general", "urgency": "batch", "max_wait_s": 1e400}'), 422)
    assert detail[0]["loc"][-1] == "max_wait_s"


def test_an_unknown_api_path_is_a_json_404_even_with_a_newline(api):
    for path in ("/api/v1/models/llama3%0A/preload", "/api/v1/nothing-here", "/api/v2/select"):
        r = api.post(path, {})
        assert r.status_code == 404, path
        assert r["Content-Type"].startswith("application/json") and "detail" in r.json()


def test_wrong_keys_from_one_address_are_throttled_and_others_are_not(client, make_key, loaded):
    good = make_key("select", "read")
    statuses = [client.get("/api/v1/state", HTTP_AUTHORIZATION="Bearer tow_wrong", REMOTE_ADDR="10.9.9.9").status_code
                for _ in range(40)]
    assert statuses[:30] == [401] * 30
    assert set(statuses[30:]) == {429}
    r = client.get("/api/v1/state", HTTP_AUTHORIZATION=f"Bearer {good}", REMOTE_ADDR="10.9.9.9")
    assert r.status_code == 429 and int(r["Retry-After"]) > 0 and "invalid API key" in r.json()["detail"]
    assert client.get("/api/v1/state", HTTP_AUTHORIZATION=f"Bearer {good}", REMOTE_ADDR="10.9.9.8").status_code == 200


def test_every_api_call_counts_against_the_address_rate(client, make_key, loaded, settings):
    settings.TOWEROPS_API_RATE = "5/m"
    key = make_key("read")
    statuses = [client.get("/api/v1/models", HTTP_AUTHORIZATION=f"Bearer {key}", REMOTE_ADDR="10.1.1.1").status_code
                for _ in range(7)]
    assert statuses == [200] * 5 + [429] * 2
    assert client.get("/api/v1/models", HTTP_AUTHORIZATION=f"Bearer {key}", REMOTE_ADDR="10.1.1.2").status_code == 200


def test_failed_logins_from_one_address_lock_it_out_whatever_the_username(client, bob, settings):
    settings.AXES_FAILURE_LIMIT = 3
    for name in ("carol", "dave", "erin"):
        client.post(reverse("console:login"), {"username": name, "password": "wrong"}, REMOTE_ADDR="10.2.2.2")
    locked = client.post(reverse("console:login"), {"username": "bob", "password": "bob-password"}, REMOTE_ADDR="10.2.2.2")
    assert locked.status_code == 429
    elsewhere = client.post(reverse("console:login"), {"username": "bob", "password": "bob-password"},
                            REMOTE_ADDR="10.2.2.3")
    assert elsewhere.status_code == 302


def test_the_schema_lists_the_catalogs_task_types_and_the_urgencies(api, loaded):
    schema = api.get("/api/v1/openapi.json").json()
    props = schema["components"]["schemas"]["SelectIn"]["properties"]
    assert props["task_type"]["enum"] == sorted(m.TaskType.objects.values_list("name", flat=True))
    assert props["urgency"]["enum"] == ["critical", "interactive", "background", "batch"]
    assert "at most response_ms" in schema["components"]["schemas"]["OutcomeIn"]["properties"]["first_token_ms"]["description"]
    listed = api.get("/api/v1/task-types").json()
    assert [t["name"] for t in listed["task_types"]] == props["task_type"]["enum"]
    assert listed["urgencies"] == ["critical", "interactive", "background", "batch"]


def test_metrics_with_a_key_while_the_database_is_down_is_a_plain_503(client, monkeypatch, db):
    from models_registry.api import auth

    def down(token):
        raise OperationalError("connection to server at 127.0.0.1, port 5432 failed: Connection refused")

    monkeypatch.setattr(auth, "_lookup", down)
    r = client.get("/metrics", HTTP_AUTHORIZATION="Bearer tow_anything")
    assert r.status_code == 503 and r["Content-Type"].startswith("text/plain") and b"database" in r.content


def test_an_unreachable_rate_limit_cache_lets_calls_through_instead_of_failing_them(client, make_key, loaded,
                                                                                    settings, caplog):
    """The cache is the broker's Redis by default: its outage must not become an API outage (fail open, logged)."""
    import socket

    from django.core.cache import caches

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache",
                                   "LOCATION": f"redis://127.0.0.1:{dead}/2"}}
    caches.close_all()
    settings.TOWEROPS_API_RATE = "5/m"
    key = make_key("read")
    statuses = [client.get("/api/v1/models", HTTP_AUTHORIZATION=f"Bearer {key}").status_code for _ in range(7)]
    assert statuses == [200] * 7
    assert client.get("/api/v1/models", HTTP_AUTHORIZATION="Bearer tow_wrong").status_code == 401
    assert "API rate limits not enforced: their cache is unreachable" in caplog.text
