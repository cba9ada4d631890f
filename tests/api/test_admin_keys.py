"""API keys made in the admin: generated, stored as hash and prefix, shown once, and they work."""
from __future__ import annotations

import re

import pytest

from models_registry import models as m
from models_registry.api.auth import hash_key

ADD = "/admin/models_registry/apikey/add/"


@pytest.mark.django_db
def test_a_key_made_in_the_admin_is_shown_once_and_works_against_the_api(admin_client, admin_user, tower):
    r = admin_client.post(ADD, {"name": "grafana", "scopes": ["read", "select"]})
    assert r.status_code == 200, r.content
    assert "no-store" in r["Cache-Control"]
    page = r.content.decode()
    secret = re.search(r'id="api-key-secret"[^>]*value="(tow_[A-Za-z0-9_-]+)"', page).group(1)
    assert "shown only this once" in page
    row = m.ApiKey.objects.get(name="grafana")
    assert row.hashed_key == hash_key(secret) and row.prefix == secret[:10] and len(secret) > 40
    assert row.scopes == ["read", "select"] and row.created_by == admin_user
    # the secret is stored nowhere and shown nowhere again
    assert secret not in admin_client.get(f"/admin/models_registry/apikey/{row.pk}/change/").content.decode()
    assert secret not in admin_client.get("/admin/models_registry/apikey/").content.decode()

    auth = {"HTTP_AUTHORIZATION": f"Bearer {secret}"}
    state = admin_client.get("/api/v1/state", **auth)
    assert state.status_code == 200 and {e["name"] for e in state.json()["endpoints"]} == {"tower-amd", "tower-nvidia"}
    select = admin_client.post("/api/v1/select", {"task_type": "general", "urgency": "batch", "dry_run": True},
                               content_type="application/json", **auth)
    assert select.status_code == 200 and select.json()["model"]
    unload = admin_client.post("/api/v1/models/llama3.2:3b/unload", {}, content_type="application/json", **auth)
    assert unload.status_code == 403 and "admin" in unload.json()["detail"]  # no admin scope


@pytest.mark.django_db
def test_the_add_form_refuses_a_key_without_scopes_and_creates_nothing(admin_client):
    r = admin_client.post(ADD, {"name": "nothing"})
    assert r.status_code == 200 and "This field is required" in r.content.decode()
    r = admin_client.post(ADD, {"name": "bad", "scopes": ["root"]})
    assert "Select a valid choice" in r.content.decode()
    assert not m.ApiKey.objects.exists()


@pytest.mark.django_db
def test_revoking_in_the_admin_stops_the_key(admin_client, tower):
    from models_registry.api import auth

    admin_client.post(ADD, {"name": "ci", "scopes": ["read"]})
    row = m.ApiKey.objects.get(name="ci")
    r = admin_client.post(ADD, {"name": "other", "scopes": ["read"]})
    secret = re.search(r'value="(tow_[^"]+)"', r.content.decode()).group(1)
    assert admin_client.get("/api/v1/state", HTTP_AUTHORIZATION=f"Bearer {secret}").status_code == 200
    other = m.ApiKey.objects.get(name="other")
    admin_client.post("/admin/models_registry/apikey/", {"action": "revoke", "_selected_action": [other.pk]})
    auth._cache.clear()  # the 5 s lookup cache, as if 5 s went by
    assert admin_client.get("/api/v1/state", HTTP_AUTHORIZATION=f"Bearer {secret}").status_code == 401
    row.refresh_from_db()
    assert row.revoked_at is None  # only the selected key
