"""The catalog editor: a model × task-type grid of quality scores, edited in place by staff."""
import pytest
from django.urls import reverse

from models_registry import models as m
from tests.web.conftest import HX


def _cell(tag="mistral:7b", task="analysis"):
    model = m.LlmModel.objects.get(tag=tag)
    task_type = m.TaskType.objects.get(name=task)
    return model, task_type, reverse("console:update_score", args=[model.pk, task_type.pk])


@pytest.mark.django_db
def test_the_grid_shows_every_model_and_task_type(viewer_client, tower):
    html = viewer_client.get(reverse("console:catalog")).content.decode()
    for tag in m.LlmModel.objects.values_list("tag", flat=True):
        assert tag in html
    for name in m.TaskType.objects.values_list("name", flat=True):
        assert name in html
    assert "Only staff can edit" in html and "<form method=\"post\" action=\"/catalog/" not in html


@pytest.mark.django_db
def test_staff_edit_a_cell_over_htmx_and_the_history_follows(staff_client, alice, tower):
    model, task, url = _cell()
    response = staff_client.post(url, {"score": "0.91"}, **HX)
    html = response.content.decode()
    assert response.status_code == 200
    assert html.lstrip().startswith(f'<td class="cell" id="cell-{model.pk}-{task.pk}"')
    assert 'value="0.91"' in html
    assert response["HX-Trigger"] == "scores-changed"
    history = staff_client.get(reverse("console:catalog"), **HX).content.decode()
    assert history.lstrip().startswith('<section id="history"')
    assert "alice" in history and "0.86 → 0.91" in history
    assert m.QualityScore.objects.get(model=model, task_type=task).score == 0.91
    assert m.QualityScore.history.first().history_user == alice


@pytest.mark.django_db
@pytest.mark.parametrize("bad, message", [("high", "not a number"), ("1.5", "must be between 0 and 1")])
def test_bad_input_is_shown_in_the_cell_and_changes_nothing(staff_client, tower, bad, message):
    model, task, url = _cell()
    response = staff_client.post(url, {"score": bad}, **HX)
    html = response.content.decode()
    assert response.status_code == 422
    assert message in html and f'value="{bad}"' in html and "has-error" in html
    assert m.QualityScore.objects.get(model=model, task_type=task).score == 0.86


@pytest.mark.django_db
def test_without_javascript_a_post_redirects_or_shows_the_error_on_the_page(staff_client, tower):
    _, _, url = _cell()
    assert staff_client.post(url, {"score": "0.5"}).status_code == 302
    response = staff_client.post(url, {"score": "nope"})
    assert response.status_code == 422
    assert b"<html" in response.content and b"not a number" in response.content


@pytest.mark.django_db
def test_an_empty_cell_removes_the_score(staff_client, tower):
    model, task, url = _cell()
    staff_client.post(url, {"score": ""}, **HX)
    assert not m.QualityScore.objects.filter(model=model, task_type=task).exists()


@pytest.mark.django_db
def test_viewers_get_403_when_editing(viewer_client, tower):
    model, task, url = _cell()
    assert viewer_client.post(url, {"score": "0.1"}, **HX).status_code == 403
    assert m.QualityScore.objects.get(model=model, task_type=task).score == 0.86


@pytest.mark.django_db
def test_anonymous_edits_go_to_the_login_page(client, tower):
    _, _, url = _cell()
    assert client.post(url, {"score": "0.1"}).status_code == 302
