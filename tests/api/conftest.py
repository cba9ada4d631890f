"""Fixtures for the v1 API tests: API keys, a JSON client, and clean per-process caches.

The API keeps three per-process caches (the auth lookups, the Config read from the
database, the ConfigSnapshot id); every test starts with all three empty, because a
test database rolled back between tests reuses nothing but would be served stale ids.
"""
from __future__ import annotations

import json

import pytest

SELECT = "/api/v1/select"


class Api:
    """The Django test client speaking JSON with one API key."""

    def __init__(self, client, key: str | None):
        self.client, self.key = client, key

    def _headers(self, key):
        key = self.key if key is ... else key
        return {"HTTP_AUTHORIZATION": f"Bearer {key}"} if key else {}

    def post(self, path, data=None, *, key=..., raw: bytes | str | None = None):
        body = raw if raw is not None else ("" if data is None else json.dumps(data))
        return self.client.post(path, body, content_type="application/json", **self._headers(key))

    def get(self, path, *, key=...):
        return self.client.get(path, **self._headers(key))


@pytest.fixture
def api(client, make_key):
    """A client whose key has every scope."""
    return Api(client, make_key("select", "read", "admin", name="all"))


@pytest.fixture
def captured_loads(monkeypatch):
    """Replaces execute_load.apply_async: records (args, kwargs) of every queued load."""
    from models_registry.runtime import tasks

    calls: list[tuple[tuple, dict]] = []

    def fake_apply_async(*args, **kwargs):
        calls.append((args, kwargs))

    monkeypatch.setattr(tasks.execute_load, "apply_async", fake_apply_async)
    return calls


@pytest.fixture
def captured_unloads(monkeypatch):
    from models_registry.runtime import tasks

    calls: list[tuple[tuple, dict]] = []
    monkeypatch.setattr(tasks.execute_unload, "apply_async", lambda *a, **k: calls.append((a, k)))
    return calls


def put_loaded(tag: str, endpoint: str = "tower-nvidia", *, last_used_s_ago: float | None = 60.0, state="loaded"):
    """A Residency of `tag` on the endpoint's first GPU, as the sync task would leave it."""
    import datetime as dt

    from models_registry import models as m

    now = dt.datetime.now(dt.timezone.utc)
    model = m.LlmModel.objects.get(tag=tag)
    ep = m.Endpoint.objects.get(name=endpoint)
    gpu = ep.gpus.order_by("index").first()
    r = m.Residency.objects.create(
        model=model, endpoint=ep, state=state, trigger="admin", vram_mib=model.vram_mib,
        requested_at=now - dt.timedelta(minutes=10), loaded_at=now - dt.timedelta(minutes=10),
        ready_at=now - dt.timedelta(minutes=9),
        last_used_at=None if last_used_s_ago is None else now - dt.timedelta(seconds=last_used_s_ago),
    )
    m.ResidencyGpu.objects.create(residency=r, gpu=gpu, vram_mib=model.vram_mib)
    return r
