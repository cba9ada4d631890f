"""/healthz: the process answers, without touching the database or the broker."""
import pytest
from django.urls import reverse


@pytest.mark.django_db
def test_it_answers_ok_without_a_single_query(client, django_assert_num_queries):
    with django_assert_num_queries(0):
        response = client.get(reverse("healthz"))
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}
    assert "no-cache" in response["Cache-Control"]


def test_it_needs_no_login_and_no_https_redirect(client, settings):
    settings.SECURE_SSL_REDIRECT = True  # production: probes still reach it over plain HTTP
    response = client.get("/healthz")
    assert response.status_code == 200


def test_it_answers_head_for_load_balancers_and_refuses_writes(client):
    assert client.head("/healthz").status_code == 200
    assert client.post("/healthz").status_code == 405
