"""API keys: `Authorization: Bearer <key>`, stored hashed, with scopes select / read / admin.

401 without a valid key (none, wrong, revoked, another scheme); 403 with the wrong scope on
every route; `manage.py create_api_key` prints a working key as its last line.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.db import connection

from models_registry import models as m
from models_registry.api import auth

from .conftest import SELECT, Api, put_loaded

pytestmark = pytest.mark.django_db

SELECT_BODY = {"task_type": "general", "urgency": "critical"}


def routes(decision_id: int):
    """(method, path, body, the scope it needs) for every v1 route."""
    return [
        ("post", SELECT, SELECT_BODY, "select"),
        ("post", f"/api/v1/decisions/{decision_id}/outcome", {"response_ms": 5, "success": True}, "select"),
        ("get", f"/api/v1/decisions/{decision_id}", None, "read"),
        ("get", "/api/v1/state", None, "read"),
        ("get", "/api/v1/models", None, "read"),
        ("post", "/api/v1/models/mistral:7b/preload", None, "admin"),
        ("post", "/api/v1/models/llama3.2:3b/unload", None, "admin"),
    ]


@pytest.fixture
def decision_id(tower):
    from models_registry.policy import SelectionRequest
    from models_registry.selection import service

    put_loaded("llama3.2:3b")
    return service.select_and_record(SelectionRequest("general", "critical")).record.pk


def call(api: Api, method: str, path: str, body, **kw):
    return api.post(path, body, **kw) if method == "post" else api.get(path, **kw)


def snapshot():
    """What a refused request must leave unchanged."""
    return (
        m.SelectionDecision.objects.count(),
        m.DecisionOutcome.objects.count(),
        sorted(m.Residency.objects.values_list("pk", "state")),
    )


def assert_json_error(r, status):
    assert r.status_code == status, r.content
    assert r["Content-Type"].startswith("application/json")
    assert r.json()["detail"]


# --------------------------------------------------------------------------- 401


@pytest.mark.parametrize("route", range(7))
@pytest.mark.parametrize(
    "header",
    [
        None,  # no Authorization header at all
        "Bearer",
        "Bearer ",
        "Bearer tow_not-a-real-key",
        "Basic dXNlcjpwYXNz",
        "tow_just-the-key-without-a-scheme",
    ],
)
def test_401_without_a_valid_key(client, decision_id, route, header):
    method, path, body, _ = routes(decision_id)[route]
    before = snapshot()
    extra = {"HTTP_AUTHORIZATION": header} if header is not None else {}
    if method == "post":
        r = client.post(path, "" if body is None else json.dumps(body), content_type="application/json", **extra)
    else:
        r = client.get(path, **extra)
    assert_json_error(r, 401)
    assert snapshot() == before


def test_401_with_a_revoked_key(client, tower, make_key):
    key = make_key("select", "read", "admin")
    api = Api(client, key)
    assert api.get("/api/v1/state").status_code == 200
    m.ApiKey.objects.update(revoked_at=dt.datetime.now(dt.timezone.utc))
    auth._cache.clear()  # (another process, or CACHE_TTL_S later)
    before = snapshot()
    for method, path, body, _ in routes(1):
        assert_json_error(call(api, method, path, body), 401)
    assert snapshot() == before


def test_a_revoked_key_stops_working_within_the_cache_ttl(client, tower, make_key, monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr(auth.time, "monotonic", lambda: clock[0])
    api = Api(client, make_key("read"))
    assert api.get("/api/v1/state").status_code == 200
    m.ApiKey.objects.update(revoked_at=dt.datetime.now(dt.timezone.utc))
    clock[0] += auth.CACHE_TTL_S / 2
    assert api.get("/api/v1/state").status_code == 200  # still cached: documented
    clock[0] += auth.CACHE_TTL_S
    assert api.get("/api/v1/state").status_code == 401


def test_last_used_at_is_recorded(client, tower, make_key):
    api = Api(client, make_key("read"))
    assert m.ApiKey.objects.get().last_used_at is None
    assert api.get("/api/v1/state").status_code == 200
    assert m.ApiKey.objects.get().last_used_at is not None


# --------------------------------------------------------------------------- 403


@pytest.mark.parametrize("route", range(7))
def test_403_with_the_wrong_scope(client, decision_id, make_key, route):
    method, path, body, needed = routes(decision_id)[route]
    for scopes in (("select",), ("read",), ("admin",), ("select", "read"), ("read", "admin"), ("select", "admin")):
        if needed in scopes:
            continue
        auth._cache.clear()
        api = Api(client, make_key(*scopes))
        before = snapshot()
        r = call(api, method, path, body)
        assert_json_error(r, 403)
        assert needed in r.json()["detail"]
        assert snapshot() == before


@pytest.mark.parametrize("route", range(7))
def test_the_right_scope_alone_is_enough(client, decision_id, make_key, route, captured_loads, captured_unloads):
    method, path, body, needed = routes(decision_id)[route]
    r = call(Api(client, make_key(needed)), method, path, body)
    assert r.status_code == 200, r.content


# --------------------------------------------------------------------------- create_api_key


def test_create_api_key_prints_a_working_key_as_its_last_line(client, tower, captured_loads):
    out = StringIO()
    call_command("create_api_key", "ci-runner", "--scopes", "select,read", stdout=out)
    lines = out.getvalue().strip().splitlines()
    key = lines[-1].strip()
    assert key.startswith(auth.KEY_PREFIX) and len(key) > 30
    row = m.ApiKey.objects.get(name="ci-runner")
    assert sorted(row.scopes) == ["read", "select"]

    api = Api(client, key)
    assert api.post(SELECT, {**SELECT_BODY, "dry_run": True}).status_code == 200
    assert api.get("/api/v1/state").status_code == 200
    assert api.post("/api/v1/models/mistral:7b/preload").status_code == 403


def test_create_api_key_default_scopes_are_select_and_read(tower):
    out = StringIO()
    call_command("create_api_key", "default", stdout=out)
    assert sorted(m.ApiKey.objects.get(name="default").scopes) == ["read", "select"]


def test_keys_are_stored_hashed(tower):
    out = StringIO()
    call_command("create_api_key", "hashed", "--scopes", "admin", stdout=out)
    key = out.getvalue().strip().splitlines()[-1]
    row = m.ApiKey.objects.get(name="hashed")
    assert row.hashed_key == hashlib.sha256(key.encode()).hexdigest()
    assert len(row.prefix) <= 12 < len(key)  # only a recognisable prefix is kept in clear
    # the plain key is nowhere in the table
    with connection.cursor() as cur:
        cur.execute("SELECT t::text FROM models_registry_apikey t")
        dump = "\n".join(r[0] for r in cur.fetchall())
    assert key not in dump
    assert key[len(auth.KEY_PREFIX):] not in dump


@pytest.mark.parametrize("scopes", ["select,root", "superuser", "", " , ", "READ"])
def test_create_api_key_rejects_unknown_scopes(tower, scopes):
    with pytest.raises(CommandError) as exc:
        call_command("create_api_key", "bad", "--scopes", scopes, stdout=StringIO())
    assert "allowed" in str(exc.value)
    assert not m.ApiKey.objects.filter(name="bad").exists()


def test_create_api_key_sets_the_gateway_defaults_of_the_key(tower):
    out = StringIO()
    call_command("create_api_key", "ide", "--scopes", "infer", "--task", "code_generation", "--urgency", "interactive",
                 stdout=out)
    row = m.ApiKey.objects.get(name="ide")
    assert (row.scopes, row.default_task, row.default_urgency) == (["infer"], "code_generation", "interactive")
    assert "task code_generation, urgency interactive" in out.getvalue()


def test_create_api_key_refuses_an_unknown_task_naming_the_allowed_ones(tower):
    with pytest.raises(CommandError) as exc:
        call_command("create_api_key", "bad", "--scopes", "infer", "--task", "poetry", stdout=StringIO())
    assert "--task: unknown task type 'poetry'; allowed: " in str(exc.value) and "code_generation" in str(exc.value)
    assert not m.ApiKey.objects.filter(name="bad").exists()
