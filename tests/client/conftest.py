"""The client's tests run against the real server: this module's live server (plain HTTP), the
Tower imported into the committed test database, and API keys made the way an operator makes them.

Loads a selection or a preload would queue for a host's agent are captured (no agent runs here;
tests/client/test_morning_workflow.py runs one)."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.conftest import agent_env, agents, broker_url, start_worker  # noqa: F401  (fixtures: a real agent)

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def live_server(django_db_setup, django_db_blocker):
    """A live server started with plain-HTTP settings (the middleware reads them at start)."""
    from django.test.utils import override_settings
    from pytest_django.live_server_helper import LiveServer

    with django_db_blocker.unblock(), override_settings(
        SECURE_SSL_REDIRECT=False, SESSION_COOKIE_SECURE=False, CSRF_COOKIE_SECURE=False, SECURE_HSTS_SECONDS=0
    ):
        server = LiveServer("localhost")
        yield server
        server.stop()


@pytest.fixture
def keys(tower):
    """Plain keys by scope set: keys["select,read"], keys["read"], keys["select,read,admin"]."""
    from models_registry.api.auth import create_key

    return {scopes: create_key(f"client-{scopes}", scopes.split(","))[1]
            for scopes in ("select,read", "read", "select,read,admin")}


@pytest.fixture
def server(live_server, keys, monkeypatch):
    """TOWEROPS_URL and TOWEROPS_API_KEY (select,read) set for the live server, as a user sets them."""
    monkeypatch.setenv("TOWEROPS_URL", live_server.url)
    monkeypatch.setenv("TOWEROPS_API_KEY", keys["select,read"])
    return live_server


@pytest.fixture
def queued_loads(monkeypatch):
    """Loads the server would send to a host's agent, captured instead: [(args, kwargs)]."""
    from models_registry.runtime import tasks

    calls: list = []
    monkeypatch.setattr(tasks.execute_load, "apply_async", lambda *a, **k: calls.append((a, k)))
    return calls
