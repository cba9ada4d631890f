"""The preload page's predicted-windows suggestion: shown with its estimate, accepted or dismissed by staff."""
import datetime as dt

import pytest
from django.urls import reverse

from models_registry import models as m
from tests.console.conftest import HX

ESTIMATE = {"current": {"vram_efficiency": 0.473, "interactive_p95_s": 3.55, "loads_per_hour": 0.0, "thrash_loads": 0,
                        "mean_quality": 0.846, "requests": 14490},
            "suggested": {"vram_efficiency": 0.512, "interactive_p95_s": 3.4, "loads_per_hour": 0.005, "thrash_loads": 0,
                          "mean_quality": 0.851, "requests": 14490}, "weeks_learned": 1.0}
WINDOW = {"name": "predicted 09:00-17:00 mon-fri", "days": ["mon", "tue", "wed", "thu", "fri"], "start": "09:00",
          "end": "17:00", "timezone": "UTC", "models": ["qwen2.5-coder:7b"], "endpoints": {"qwen2.5-coder:7b": "tower-amd"}}


def make_suggestion(**over) -> m.WindowSuggestion:
    now = dt.datetime(2026, 11, 16, tzinfo=dt.timezone.utc)
    fields = {"created_at": now, "learned_from": now - dt.timedelta(weeks=2), "learned_until": now,
              "windows": [WINDOW], "estimate": ESTIMATE, **over}
    return m.WindowSuggestion.objects.create(**fields)


def _url(s, action):
    return reverse("console:preload_suggestion", args=[s.pk, action])


@pytest.mark.django_db
def test_the_page_shows_the_open_suggestion_and_its_estimate_beside_the_current_windows(staff_client, tower):
    make_suggestion()
    html = staff_client.get(reverse("console:preload")).content.decode()
    assert 'id="suggestion"' in html and "predicted 09:00-17:00 mon-fri" in html and "on tower-amd" in html
    assert "47.3 %" in html and "51.2 %" in html and "3.55 s" in html and "3.40 s" in html
    assert 'id="accept-suggestion"' in html and 'id="dismiss-suggestion"' in html


@pytest.mark.django_db
def test_viewers_see_the_suggestion_but_cannot_accept_it(viewer_client, tower):
    s = make_suggestion()
    html = viewer_client.get(reverse("console:preload")).content.decode()
    assert 'id="suggestion"' in html and 'id="accept-suggestion"' not in html
    assert viewer_client.post(_url(s, "accept"), **HX).status_code == 403
    s.refresh_from_db()
    assert s.status == "open"


@pytest.mark.django_db
def test_no_suggestion_section_without_an_open_one(viewer_client, tower):
    make_suggestion(status="dismissed")
    assert 'id="suggestion"' not in viewer_client.get(reverse("console:preload")).content.decode()


@pytest.mark.django_db
def test_accepting_over_htmx_returns_the_replaced_windows(staff_client, alice, tower):
    s = make_suggestion()
    response = staff_client.post(_url(s, "accept"), **HX)
    html = response.content.decode()
    assert response.status_code == 200 and html.lstrip().startswith('<div id="preload-body">')
    assert 'id="suggestion"' not in html
    w = m.PreloadWindow.objects.get(name=WINDOW["name"])
    assert w.enabled and w.history.first().history_user == alice
    assert not m.PreloadWindow.objects.get(name="coding hours").enabled
    s.refresh_from_db()
    assert (s.status, s.decided_by) == ("accepted", alice)


@pytest.mark.django_db
def test_dismissing_without_htmx_redirects_and_keeps_the_windows(staff_client, tower):
    s = make_suggestion()
    response = staff_client.post(_url(s, "dismiss"))
    assert response.status_code == 302 and response["Location"] == reverse("console:preload")
    s.refresh_from_db()
    assert s.status == "dismissed"
    assert m.PreloadWindow.objects.get(name="coding hours").enabled


@pytest.mark.django_db
def test_a_decided_suggestion_cannot_be_accepted_again(staff_client, tower):
    s = make_suggestion(status="dismissed")
    response = staff_client.post(_url(s, "accept"), **HX)
    assert response.status_code == 409
    assert f"suggestion {s.pk}: already dismissed" in response.content.decode()
    assert not m.PreloadWindow.objects.filter(name=WINDOW["name"]).exists()


@pytest.mark.django_db
def test_only_post_and_known_actions(staff_client, tower):
    s = make_suggestion()
    assert staff_client.get(_url(s, "accept")).status_code == 405
    assert staff_client.post(_url(s, "delete")).status_code == 404
