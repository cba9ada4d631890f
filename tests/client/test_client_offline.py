"""What the client decides before (or without) a server: where to go, what to send, how it fails."""
from __future__ import annotations

import httpx
import pytest

import towerops
import towerops_client
from towerops_client import TowerModelManager, TowerOpsClient, TowerOpsConfigError, TowerOpsError
from towerops_client.client import fastest_loaded, outcome_body


@pytest.fixture
def no_env(monkeypatch):
    monkeypatch.delenv("TOWEROPS_URL", raising=False)
    monkeypatch.delenv("TOWEROPS_API_KEY", raising=False)


def test_without_a_url_or_a_key_it_says_which_is_missing(no_env, monkeypatch):
    with pytest.raises(TowerOpsConfigError, match="no TowerOps server configured: pass base_url=... or set TOWEROPS_URL"):
        TowerModelManager()
    with pytest.raises(TowerOpsConfigError, match="no TowerOps API key configured: .* TOWEROPS_API_KEY"):
        TowerOpsClient("http://tower:8000")
    with pytest.raises(TowerOpsConfigError, match="must start with http"):
        TowerOpsClient("tower:8000", "k")
    monkeypatch.setenv("TOWEROPS_URL", "http://tower:8000/")
    monkeypatch.setenv("TOWEROPS_API_KEY", "tow_x")
    client = TowerOpsClient()
    assert (client.base_url, client.api_key) == ("http://tower:8000", "tow_x")
    assert isinstance(TowerOpsConfigError("x"), TowerOpsError)  # one except clause catches both


def test_an_unreachable_server_is_a_towerops_error():
    def refuse(request):
        raise httpx.ConnectError("connection refused", request=request)

    with TowerOpsClient("http://t", "k", transport=httpx.MockTransport(refuse)) as client:
        with pytest.raises(TowerOpsError) as exc:
            client.state()
    assert exc.value.status == 0 and "cannot reach TowerOps at http://t" in str(exc.value)


def test_a_proxys_non_json_error_body_is_kept():
    transport = httpx.MockTransport(lambda r: httpx.Response(502, text="Bad Gateway"))
    with TowerOpsClient("http://t", "k", transport=transport) as client, pytest.raises(TowerOpsError) as exc:
        client.state()
    assert (exc.value.status, exc.value.detail) == (502, "Bad Gateway")


def test_outcome_bodies_take_fractional_milliseconds_and_refuse_bad_ratings():
    assert outcome_body(812.6, True, 0.9, first_token_ms=95.4) == {
        "response_ms": 813, "success": True, "first_token_ms": 95, "rating": 0.9}
    assert outcome_body(10, False) == {"response_ms": 10, "success": False}
    with pytest.raises(ValueError, match="rating must be a number from 0 .* to 1 .*, not 5"):
        outcome_body(10, True, rating=5)
    with pytest.raises(ValueError, match="response_ms must be a number of milliseconds"):
        outcome_body(-1, True)
    with pytest.raises(ValueError, match="first_token_ms"):
        outcome_body(10, True, first_token_ms="fast")


def test_fastest_loaded_skips_models_below_the_floor_and_not_loaded():
    state = {"residents": [{"model": "tiny", "state": "loaded", "vram_mib": 700},
                           {"model": "coder", "state": "loaded", "vram_mib": 4600},
                           {"model": "big", "state": "loading", "vram_mib": 9000}]}
    catalog = [{"tag": "tiny", "tokens_per_s": 300, "quality": {"code": 0.1}},
               {"tag": "coder", "tokens_per_s": 45, "quality": {"code": 0.88}},
               {"tag": "big", "tokens_per_s": 400, "quality": {"code": 0.95}}]
    assert fastest_loaded(state, catalog) == "tiny"
    assert fastest_loaded(state, catalog, "code", 0.8) == "coder"
    assert fastest_loaded(state, catalog, "code", 0.9) is None
    assert fastest_loaded(state, catalog, "chat", 0.0) is None  # no score for the task: not good enough


def test_the_client_and_the_server_are_released_together():
    assert towerops_client.__version__ == towerops.__version__ == "0.2.0"
