"""Every console page needs a login; the login page is the console's own, throttled by django-axes."""
import pytest
from django.urls import reverse

PAGES = ["console:dashboard", "console:decisions", "console:load_events", "console:catalog", "console:slo"]


@pytest.mark.django_db
@pytest.mark.parametrize("name", PAGES)
def test_it_redirects_anonymous_visitors_to_the_login_page(client, name):
    url = reverse(name)
    response = client.get(url)
    assert response.status_code == 302
    assert response["Location"] == f"{reverse('console:login')}?next={url}"


@pytest.mark.django_db
def test_a_viewer_logs_in_with_the_form_and_lands_on_the_dashboard(client, bob, tower):
    response = client.post(reverse("console:login"), {"username": "bob", "password": "bob-password"})
    assert response.status_code == 302
    assert response["Location"] == reverse("console:dashboard")
    assert client.get(reverse("console:dashboard")).status_code == 200


@pytest.mark.django_db
def test_repeated_failed_logins_lock_the_account_out(client, bob, settings):
    settings.AXES_FAILURE_LIMIT = 3
    for _ in range(3):
        client.post(reverse("console:login"), {"username": "bob", "password": "wrong"})
    response = client.post(reverse("console:login"), {"username": "bob", "password": "bob-password"})
    assert response.status_code == 429
    assert b"Too many failed logins" in response.content


@pytest.mark.django_db
def test_the_admin_login_still_works(client, alice):
    response = client.post("/admin/login/?next=/admin/", {"username": "alice", "password": "alice-password"})
    assert response.status_code == 302
    assert client.get("/admin/").status_code == 200


@pytest.mark.django_db
def test_logout_is_a_post(viewer_client):
    response = viewer_client.post(reverse("console:logout"))
    assert response.status_code == 302
    assert viewer_client.get(reverse("console:dashboard")).status_code == 302
