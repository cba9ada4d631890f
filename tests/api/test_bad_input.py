"""Every class of bad input gets a clear JSON error and changes nothing; never a 500.

Unknown choices and schema violations → 422 naming the field; unparseable bodies → 400;
an oversized body → 413; the database unavailable → 503 with a JSON body, after which the
API recovers by itself (tested through Django's real WSGI handler, as gunicorn runs it,
so that the end-of-request connection clean-up the test client skips really happens).
"""
from __future__ import annotations

import io
import json
import sys
import time

import psycopg
import pytest
from django.core.handlers.wsgi import WSGIHandler
from django.db import OperationalError, connection

from models_registry import models as m
from tests.helpers import free_port

from .conftest import SELECT, put_loaded

pytestmark = pytest.mark.django_db

OK = {"task_type": "general", "urgency": "critical"}


def state_of_db():
    """Everything a request could have changed."""
    return (
        m.SelectionDecision.objects.count(),
        m.ConfigSnapshot.objects.count(),
        m.DecisionOutcome.objects.count(),
        sorted(m.Residency.objects.values_list("pk", "state", "last_used_at", "busy_until")),
    )


def assert_json_error(r, status):
    assert r.status_code == status, (r.status_code, r.content)
    assert r["Content-Type"].startswith("application/json"), r["Content-Type"]
    detail = r.json()["detail"]
    assert detail
    return detail


def field_error(detail, name):
    """The entry of a 422's detail list that names `name`."""
    for e in detail:
        if e["loc"][-1] == name:
            return e
    raise AssertionError(f"no error names {name!r}: {detail}")


@pytest.fixture
def loaded(tower):
    return put_loaded("llama3.2:3b")


# --------------------------------------------------------------------------- unknown choices


def test_unknown_task_type_is_422_naming_the_field_and_the_allowed_values(api, loaded):
    before = state_of_db()
    r = api.post(SELECT, {"task_type": "poetry", "urgency": "critical"})
    e = field_error(assert_json_error(r, 422), "task_type")
    assert e["loc"] == ["body", "task_type"]
    assert "poetry" in e["msg"]
    assert e["allowed"] == sorted(["general", "troubleshooting", "code_generation", "analysis", "chat",
                                   "summarization"])
    assert state_of_db() == before


def test_unknown_urgency_is_422_naming_the_field_and_the_allowed_values(api, loaded):
    before = state_of_db()
    r = api.post(SELECT, {"task_type": "general", "urgency": "asap"})
    e = field_error(assert_json_error(r, 422), "urgency")
    assert "asap" in e["msg"]
    assert e["allowed"] == ["critical", "interactive", "background", "batch"]
    assert state_of_db() == before


def test_unknown_choice_with_dry_run_is_also_422(api, loaded):
    r = api.post(SELECT, {"task_type": "poetry", "urgency": "critical", "dry_run": True})
    assert_json_error(r, 422)


# --------------------------------------------------------------------------- unparseable bodies → 400

UNPARSEABLE = {
    "truncated": '{"task_type": "general", "urgency": ',
    "trailing comma": '{"task_type": "general", "urgency": "critical",}',
    "single quotes": "{'task_type': 'general', 'urgency': 'critical'}",
    "not utf-8": b'{"task_type": "\xff\xfe", "urgency": "critical"}',
    "garbage": "\x00\x01\x02",
    "deeply nested": "[" * 100_000 + "]" * 100_000,
}


@pytest.mark.parametrize("body", UNPARSEABLE.values(), ids=UNPARSEABLE.keys())
def test_malformed_json_is_400(api, loaded, body):
    before = state_of_db()
    assert_json_error(api.post(SELECT, raw=body), 400)
    assert state_of_db() == before


# --------------------------------------------------------------------------- schema violations → 422

INVALID = {
    # name: (body, the field the error must name)
    "task_type not a string": ({"task_type": 5, "urgency": "critical"}, "task_type"),
    "urgency a list": ({"task_type": "general", "urgency": ["critical"]}, "urgency"),
    "min_quality a word": ({**OK, "min_quality": "high"}, "min_quality"),
    "min_quality > 1": ({**OK, "min_quality": 1.5}, "min_quality"),
    "min_quality < 0": ({**OK, "min_quality": -0.1}, "min_quality"),
    "negative max_wait_s": ({**OK, "max_wait_s": -1}, "max_wait_s"),
    "max_wait_s beyond a day": ({**OK, "max_wait_s": 10**9}, "max_wait_s"),
    "negative tokens": ({**OK, "expected_output_tokens": -5}, "expected_output_tokens"),
    "fractional tokens": ({**OK, "expected_output_tokens": 1.5}, "expected_output_tokens"),
    "huge tokens": ({**OK, "expected_output_tokens": 10**30}, "expected_output_tokens"),
    "negative prompt": ({**OK, "input_tokens": -1}, "input_tokens"),
    "prompt as text": ({**OK, "input_tokens": "long"}, "input_tokens"),
    "dry_run a word": ({**OK, "dry_run": "maybe"}, "dry_run"),
    "client an object": ({**OK, "client": {"a": 1}}, "client"),
    "client too long": ({**OK, "client": "x" * 201}, "client"),
    "task_type too long": ({"task_type": "g" * 65, "urgency": "critical"}, "task_type"),
    "task_type empty": ({"task_type": "", "urgency": "critical"}, "task_type"),
    "unknown extra field": ({**OK, "model": "tinyllama"}, "model"),
    "missing task_type": ({"urgency": "critical"}, "task_type"),
    "missing urgency": ({"task_type": "general"}, "urgency"),
    "null task_type": ({"task_type": None, "urgency": "critical"}, "task_type"),
}


@pytest.mark.parametrize("body,field", INVALID.values(), ids=INVALID.keys())
def test_schema_violations_are_422_naming_the_field(api, loaded, body, field):
    before = state_of_db()
    detail = assert_json_error(api.post(SELECT, body), 422)
    field_error(detail, field)
    assert state_of_db() == before


NOT_AN_OBJECT = {"array": "[1, 2]", "string": '"general"', "null": "null", "number": "42", "empty body": ""}


@pytest.mark.parametrize("body", NOT_AN_OBJECT.values(), ids=NOT_AN_OBJECT.keys())
def test_json_that_is_not_an_object_is_422(api, loaded, body):
    before = state_of_db()
    assert_json_error(api.post(SELECT, raw=body), 422)
    assert state_of_db() == before


@pytest.mark.parametrize("literal,field", [("NaN", "min_quality"), ("Infinity", "max_wait_s"),
                                           ("-Infinity", "min_quality")])
def test_non_finite_numbers_are_422(api, loaded, literal, field):
    before = state_of_db()
    body = '{"task_type": "general", "urgency": "critical", "%s": %s}' % (field, literal)
    field_error(assert_json_error(api.post(SELECT, raw=body), 422), field)
    assert state_of_db() == before


def test_all_errors_are_reported_at_once(api, loaded):
    detail = assert_json_error(api.post(SELECT, {"task_type": 1, "urgency": 2, "min_quality": 7}), 422)
    assert {e["loc"][-1] for e in detail} >= {"task_type", "urgency", "min_quality"}


@pytest.mark.parametrize(
    "body,field",
    [
        ({"client": "pager\u0000duty"}, "client"),
        ({"task_type": "gen\u0000eral"}, "task_type"),
    ],
    ids=["NUL in client", "NUL in task_type"],
)
def test_a_nul_character_is_a_client_error(api, loaded, body, field):
    """PostgreSQL text cannot hold NUL: that is the caller's bad input (4xx), not an outage (503)."""
    before = state_of_db()
    r = api.post(SELECT, {**OK, **body})
    assert 400 <= r.status_code < 500, (r.status_code, r.content)
    assert r["Content-Type"].startswith("application/json")
    assert state_of_db() == before


@pytest.mark.parametrize(
    "path,body",
    [
        ("/api/v1/models/llama3.2%003b/unload", None),
        ("/api/v1/models/llama3.2:3b/unload", {"endpoint": "tower\u0000nvidia"}),
        ("/api/v1/models/llama3.2%003b/preload", None),
        ("/api/v1/models/mistral:7b/preload", {"endpoint": "tower\u0000amd"}),
    ],
    ids=["NUL in unload tag", "NUL in unload endpoint", "NUL in preload tag", "NUL in preload endpoint"],
)
def test_a_nul_character_in_admin_routes_is_a_client_error(api, loaded, path, body):
    before = state_of_db()
    r = api.post(path, body)
    assert 400 <= r.status_code < 500, (r.status_code, r.content)
    assert state_of_db() == before


OUTCOME_INVALID = {
    "negative response_ms": ({"response_ms": -1, "success": True}, "response_ms"),
    "rating > 1": ({"response_ms": 10, "success": True, "rating": 2}, "rating"),
    "missing success": ({"response_ms": 10}, "success"),
    "success a list": ({"response_ms": 10, "success": [True]}, "success"),
    "extra field": ({"response_ms": 10, "success": True, "model": "x"}, "model"),
    "negative first_token_ms": ({"response_ms": 10, "first_token_ms": -1, "success": True}, "first_token_ms"),
    "first token after the response": ({"response_ms": 10, "first_token_ms": 11, "success": True}, "first_token_ms"),
}


@pytest.mark.parametrize("body,field", OUTCOME_INVALID.values(), ids=OUTCOME_INVALID.keys())
def test_bad_outcomes_are_422(api, loaded, body, field):
    from models_registry.policy import SelectionRequest
    from models_registry.selection import service

    did = service.select_and_record(SelectionRequest("general", "critical")).record.pk
    before = state_of_db()
    field_error(assert_json_error(api.post(f"/api/v1/decisions/{did}/outcome", body), 422), field)
    assert state_of_db() == before


@pytest.mark.parametrize("path,status", [
    ("/api/v1/decisions/abc", 422),
    ("/api/v1/decisions/-1", 404),
    ("/api/v1/decisions/99999999999999999999999", 404),  # beyond bigint
])
def test_bad_decision_ids(api, loaded, path, status):
    assert_json_error(api.get(path), status)


def test_bad_preload_bodies(api, loaded):
    before = state_of_db()
    assert_json_error(api.post("/api/v1/models/mistral:7b/preload", {"zzz": 1}), 422)
    assert_json_error(api.post("/api/v1/models/mistral:7b/preload", [1]), 422)
    assert_json_error(api.post("/api/v1/models/mistral:7b/preload", raw="{"), 400)
    assert_json_error(api.post("/api/v1/models/mistral:7b/preload", {"endpoint": "nope"}), 404)
    assert state_of_db() == before


# --------------------------------------------------------------------------- oversized body → 413


def test_an_oversized_body_is_413(api, loaded, settings):
    before = state_of_db()
    big = json.dumps({**OK, "client": "x" * (settings.DATA_UPLOAD_MAX_MEMORY_SIZE + 1)})
    assert len(big) > settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    detail = assert_json_error(api.post(SELECT, raw=big), 413)
    assert "too large" in detail
    assert state_of_db() == before


def test_an_oversized_body_on_other_routes_is_413(api, loaded, settings):
    big = "[" + "0," * (settings.DATA_UPLOAD_MAX_MEMORY_SIZE // 2 + 1) + "0]"
    assert_json_error(api.post("/api/v1/models/mistral:7b/preload", raw=big), 413)
    assert_json_error(api.post("/api/v1/decisions/1/outcome", raw=big), 413)


# --------------------------------------------------------------------------- the database unavailable → 503


def test_database_errors_while_reading_the_world_are_503_then_recover(api, loaded, monkeypatch):
    from models_registry.runtime import fleet
    from models_registry.selection import service
    from models_registry.selection import world as state

    def down(*a, **k):
        raise OperationalError("connection to server at 127.0.0.1, port 5432 failed: Connection refused")

    before = state_of_db()
    with monkeypatch.context() as mp:
        mp.setattr(state, "read_world", down)
        mp.setattr(service, "read_world", down)  # these modules imported it by name
        mp.setattr(fleet, "read_world", down)
        for path, body in [(SELECT, OK), (SELECT, {**OK, "dry_run": True})]:
            detail = assert_json_error(api.post(path, body), 503)
            assert "database" in detail
        assert_json_error(api.get("/api/v1/state"), 503)
    assert state_of_db() == before
    assert api.post(SELECT, OK).status_code == 200
    assert api.get("/api/v1/state").status_code == 200


class Wsgi:
    """Calls Django's real WSGI handler, as gunicorn does: request_started / request_finished
    (and so close_old_connections) run around every request, unlike with the test client."""

    def __init__(self, key: str):
        self.handler = WSGIHandler()
        self.key = key

    def __call__(self, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
        raw = json.dumps(body).encode() if body is not None else b""
        environ = {
            "REQUEST_METHOD": method, "PATH_INFO": path, "SCRIPT_NAME": "", "QUERY_STRING": "",
            "SERVER_NAME": "localhost", "SERVER_PORT": "80", "SERVER_PROTOCOL": "HTTP/1.1",
            "HTTP_HOST": "localhost", "REMOTE_ADDR": "127.0.0.1",
            "HTTP_AUTHORIZATION": f"Bearer {self.key}",
            "CONTENT_TYPE": "application/json", "CONTENT_LENGTH": str(len(raw)),
            "wsgi.version": (1, 0), "wsgi.url_scheme": "http", "wsgi.input": io.BytesIO(raw),
            "wsgi.errors": sys.stderr, "wsgi.multithread": False, "wsgi.multiprocess": True,
            "wsgi.run_once": False,
        }
        got = {}

        def start_response(status, headers, exc_info=None):
            got["status"], got["headers"] = int(status.split()[0]), dict(headers)

        result = self.handler(environ, start_response)
        try:
            content = b"".join(result)
        finally:
            result.close()  # fires request_finished, as a WSGI server does
        assert got["headers"]["Content-Type"].startswith("application/json"), (got, content)
        return got["status"], json.loads(content)


def _other_connection():
    s = connection.settings_dict
    return psycopg.connect(dbname=s["NAME"], user=s["USER"], password=s["PASSWORD"] or None,
                           host=s["HOST"] or None, port=s["PORT"] or None, autocommit=True)


def _kill_backend_of(conn) -> None:
    """Terminate `conn`'s server process from a second connection, and wait until it is gone."""
    with conn.cursor() as cur:
        cur.execute("SELECT pg_backend_pid()")
        pid = cur.fetchone()[0]
    with _other_connection() as other:
        assert other.execute("SELECT pg_terminate_backend(%s)", [pid]).fetchone()[0] is True
        for _ in range(250):
            if not other.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", [pid]).fetchone():
                return
            time.sleep(0.02)
    pytest.fail("the backend did not go away")


@pytest.mark.django_db(transaction=True)
def test_a_connection_killed_between_requests_is_replaced_transparently(tower, make_key):
    """A PostgreSQL restart or a DBA drops an idle persistent connection: CONN_HEALTH_CHECKS
    notices before the next request uses it, so the caller sees no error at all."""
    put_loaded("llama3.2:3b")
    call = Wsgi(make_key("select", "read"))
    assert call("POST", SELECT, OK)[0] == 200
    _kill_backend_of(connection)
    status, body = call("POST", SELECT, OK)
    assert status == 200, body
    assert m.SelectionDecision.objects.count() == 2


@pytest.mark.django_db(transaction=True)
def test_a_connection_killed_mid_request_is_503_and_the_next_request_reconnects(tower, make_key, monkeypatch):
    """The connection dies while a selection is under way (after the health check): that request
    gets a 503 with a JSON body and records nothing; the next one reconnects by itself."""
    from models_registry.selection import service

    put_loaded("llama3.2:3b")
    call = Wsgi(make_key("select", "read"))
    assert call("POST", SELECT, OK)[0] == 200
    decisions = m.SelectionDecision.objects.count()

    real_read_world = service.read_world
    kills = []

    def read_world_on_a_dying_connection(*args, **kwargs):
        if not kills:
            kills.append(1)
            _kill_backend_of(connection)
        return real_read_world(*args, **kwargs)  # a real query on a really dead connection

    monkeypatch.setattr(service, "read_world", read_world_on_a_dying_connection)
    status, body = call("POST", SELECT, OK)
    assert kills and status == 503, body
    assert "database" in body["detail"]
    # recovers by itself: the broken connection was dropped at the end of that request
    status, body = call("POST", SELECT, OK)
    assert status == 200, body
    assert call("GET", "/api/v1/state")[0] == 200
    assert m.SelectionDecision.objects.count() == decisions + 1  # the failed request recorded nothing


@pytest.mark.django_db(transaction=True)
def test_an_unreachable_database_is_503_until_it_returns(tower, make_key):
    """PostgreSQL is down (nothing listens on its port): every request is a quick 503, then it recovers."""
    put_loaded("llama3.2:3b")
    call = Wsgi(make_key("select", "read"))
    assert call("POST", SELECT, OK)[0] == 200
    decisions = m.SelectionDecision.objects.count()

    from models_registry.api import auth

    auth._cache.clear()  # the key lookup must hit the database too
    real_port = connection.settings_dict["PORT"]
    connection.close()
    connection.settings_dict["PORT"] = str(free_port())  # a port nobody listens on
    try:
        for method, path, body in [("POST", SELECT, OK), ("POST", SELECT, {**OK, "dry_run": True}),
                                   ("GET", "/api/v1/state", None), ("GET", "/api/v1/models", None)]:
            t0 = time.monotonic()
            status, out = call(method, path, body)
            assert status == 503, (path, out)
            assert "database" in out["detail"]
            assert time.monotonic() - t0 < 5  # refused at once, not hung
    finally:
        connection.close()
        connection.settings_dict["PORT"] = real_port
    status, body = call("POST", SELECT, OK)
    assert status == 200, body
    assert call("GET", "/api/v1/state")[0] == 200
    assert m.SelectionDecision.objects.count() == decisions + 1
