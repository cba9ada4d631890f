"""GET /api/v1/metrics/slo and /api/v1/reports/* through Django's test client."""
from __future__ import annotations

import pytest

from models_registry import models as m
from models_registry.slo import metrics as M
from models_registry.slo import rollups

from .test_reports import HOUR, history  # noqa: F401  (fixture)

pytestmark = pytest.mark.django_db


def test_slo_api_shape_and_values(history, reader):  # noqa: F811
    r = reader("/api/v1/metrics/slo?window=24h")
    assert r.status_code == 200, r.content
    body = r.json()
    assert body["window"] == "24h"
    got = {x["name"]: x for x in body["metrics"]}
    assert list(got) == list(M.METRICS)
    assert got[M.P95]["value"] == 6.0 and got[M.P95]["met"] is False
    assert got[M.P95]["target"] == {"comparator": "lt", "value": 5.0, "enabled": True}
    assert got[M.P95]["notes"].startswith("time to first token: 2 first-token times (1 measured at the gateway, "
                                          "1 reported by callers), 1 reported response")
    assert "2 expected waits" in got[M.P95]["notes"]
    assert got[M.VRAM_EFFICIENCY]["value"] == 0.125
    assert len(got[M.FALLBACK_RATE]["series"]) == 25


def test_default_window_and_each_allowed_window(history, reader):  # noqa: F811
    assert reader("/api/v1/metrics/slo").json()["window"] == "24h"
    lengths = {w: len(reader(f"/api/v1/metrics/slo?window={w}").json()["metrics"][0]["series"])
               for w in ("1h", "24h", "7d", "30d")}
    assert lengths == {"1h": 2, "24h": 25, "7d": 169, "30d": 721}
    # the 1h window (previous + current hour) holds none of the history
    one = {x["name"]: x for x in reader("/api/v1/metrics/slo?window=1h").json()["metrics"]}
    assert all(x["value"] is None and x["met"] is None for x in one.values())


@pytest.mark.parametrize("path", ["/api/v1/metrics/slo", "/api/v1/reports/fallbacks", "/api/v1/reports/thrash",
                                  "/api/v1/reports/quality"])
def test_bad_window_is_422_naming_the_field_and_allowed_values(rig, reader, path):
    r = reader(f"{path}?window=2h")
    assert r.status_code == 422
    (err,) = r.json()["detail"]
    assert err["loc"] == ["query", "window"]
    for w in ("1h", "24h", "7d", "30d"):
        assert f"'{w}'" in err["msg"]


def test_reports_need_the_read_scope(rig, client, make_key):
    key = make_key("select")
    for path in ("/api/v1/metrics/slo", "/api/v1/reports/fallbacks", "/api/v1/reports/thrash",
                 "/api/v1/reports/quality"):
        assert client.get(path).status_code == 401
        assert client.get(path, HTTP_AUTHORIZATION=f"Bearer {key}").status_code == 403


def test_fallback_thrash_quality_routes(history, reader):  # noqa: F811
    f = reader("/api/v1/reports/fallbacks?window=7d").json()
    assert (f["decisions"], f["fallbacks"]) == (13, 1)
    assert f["by_model"] == [{"model": "remote:gpt-4o-mini", "fallbacks": 1}]
    assert len(f["by_hour"]) == 169
    t = reader("/api/v1/reports/thrash?window=24h").json()
    assert (t["loads"], t["evictions"], t["failures"]) == (2, 1, 1)
    assert {x["endpoint"]: x["loads"] for x in t["by_endpoint"]} == {"tower-nvidia": 2}
    q = reader("/api/v1/reports/quality").json()
    assert q["window"] == "30d"
    assert [(x["model"], x["task_type"], x["ratings"]) for x in q["rows"]] == [("qwen2.5-coder:7b", "general", 2)]


def test_late_outcome_through_the_api_changes_the_24h_p95(history, reader, make_key, client):  # noqa: F811
    rollups.rollup_range(history["h0"], history["h1"] + HOUR)
    key = make_key("select")
    # first token at 0.3 s of a 7 s answer: [0.3, 0.4, 0.5, 0.9, 2.0] -> 2.0 (7.0 had the response counted)
    r = client.post(f"/api/v1/decisions/{history['late'].pk}/outcome",
                    {"response_ms": 7000, "first_token_ms": 300, "success": True},
                    content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {key}")
    assert r.status_code == 200
    assert (r.json()["first_token_ms"], r.json()["response_ms"]) == (300, 7000)
    got = {x["name"]: x for x in reader("/api/v1/metrics/slo").json()["metrics"]}
    assert got[M.P95]["value"] == 2.0 and got[M.P95]["met"] is True
    assert got[M.P95]["detail"]["first_token"] == 3
    d = reader(f"/api/v1/decisions/{history['late'].pk}").json()
    assert d["outcome"]["first_token_ms"] == 300


def test_a_first_token_after_the_response_is_a_422_naming_the_field(history, make_key, client):  # noqa: F811
    key = make_key("select")
    r = client.post(f"/api/v1/decisions/{history['late'].pk}/outcome",
                    {"response_ms": 1000, "first_token_ms": 1500, "success": True},
                    content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {key}")
    assert r.status_code == 422
    (err,) = r.json()["detail"]
    assert err["loc"][-1] == "first_token_ms" and "1500" in err["msg"]
    assert not m.DecisionOutcome.objects.filter(decision=history["late"]).exists()
