"""The catalog editor: a model × task-type grid of quality scores, edited in place by staff."""
import pytest
from django.urls import reverse

from models_registry import models as m
from tests.console.conftest import HX


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
    assert response["HX-Trigger"] == "catalog-changed"
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


# -- task floors and urgency classes ---------------------------------------------------------


@pytest.mark.django_db
def test_staff_raise_a_floor_in_place_and_the_grid_remarks_the_cells_below_it(staff_client, alice, tower):
    task = m.TaskType.objects.get(name="analysis")
    mistral = m.LlmModel.objects.get(tag="mistral:7b")
    response = staff_client.post(reverse("console:update_floor", args=[task.pk]), {"quality_floor": "0.9"}, **HX)
    html = response.content.decode()
    assert response.status_code == 200 and html.lstrip().startswith('<table class="grid" id="grid">')
    assert response["HX-Trigger"] == "catalog-changed"
    cell = html.split(f'id="cell-{mistral.pk}-{task.pk}"', 1)[1].split("</td>", 1)[0]
    assert 'class="below"' in cell  # mistral's 0.86 is now below the 0.90 floor
    task.refresh_from_db()
    assert task.quality_floor == 0.9 and task.history.first().history_user == alice
    history = staff_client.get(reverse("console:catalog"), **HX).content.decode()
    assert "analysis floor" in history and "0.75 → 0.9" in history


@pytest.mark.django_db
def test_a_floor_edit_takes_effect_in_the_next_selection(staff_client, tower):
    from models_registry.policy import SelectionRequest
    from models_registry.selection import service

    task = m.TaskType.objects.get(name="general")
    staff_client.post(reverse("console:update_floor", args=[task.pk]), {"quality_floor": "0.99"}, **HX)
    d = service.select_and_record(SelectionRequest("general", "batch"), dry_run=True).decision
    assert d.action == "fallback" or not d.met_floor  # no local model reaches 0.99 for general


@pytest.mark.django_db
@pytest.mark.parametrize("field, raw, message", [
    ("quality_floor", "1.2", "must be between 0 and 1"), ("quality_floor", "x", "not a number"),
    ("quality_floor", "", "required"),
])
def test_a_bad_floor_is_shown_in_its_header_and_changes_nothing(staff_client, tower, field, raw, message):
    task = m.TaskType.objects.get(name="analysis")
    response = staff_client.post(reverse("console:update_floor", args=[task.pk]), {field: raw}, **HX)
    html = response.content.decode()
    assert response.status_code == 422 and "HX-Trigger" not in response
    header = html.split(f'id="floor-{task.pk}"', 1)[1].split("</th>", 1)[0]
    assert message in header and f'value="{raw}"' in header
    task.refresh_from_db()
    assert task.quality_floor == 0.75


@pytest.mark.django_db
def test_staff_edit_urgency_patience_and_wait_weight(staff_client, alice, tower):
    u = m.UrgencyClass.objects.get(name="interactive")
    url = reverse("console:update_urgency", args=[u.pk, "patience_s"])
    response = staff_client.post(url, {"patience_s": "8"}, **HX)
    assert response.status_code == 200 and f'id="urgency-{u.pk}-patience_s"' in response.content.decode()
    bad = staff_client.post(reverse("console:update_urgency", args=[u.pk, "wait_weight"]), {"wait_weight": "-1"}, **HX)
    assert bad.status_code == 422 and b"must be between 0 and 1" in bad.content
    u.refresh_from_db()
    assert (u.patience_s, u.wait_weight) == (8.0, 0.05)
    history = staff_client.get(reverse("console:catalog"), **HX).content.decode()
    assert "interactive patience (s)" in history and "5 → 8" in history and "alice" in history
    assert staff_client.post(reverse("console:update_urgency", args=[u.pk, "name"]), {"name": "x"}).status_code == 404


@pytest.mark.django_db
def test_viewers_cannot_edit_floors_or_urgencies(viewer_client, tower):
    task = m.TaskType.objects.get(name="analysis")
    u = m.UrgencyClass.objects.get(name="interactive")
    assert viewer_client.post(reverse("console:update_floor", args=[task.pk]), {"quality_floor": "0.1"}).status_code == 403
    assert viewer_client.post(reverse("console:update_urgency", args=[u.pk, "patience_s"]),
                              {"patience_s": "1"}).status_code == 403
    html = viewer_client.get(reverse("console:catalog")).content.decode()
    assert 'name="quality_floor"' not in html and 'name="patience_s"' not in html and "floor 0.75" in html


@pytest.mark.django_db
def test_without_javascript_a_bad_floor_shows_the_page_with_the_error(staff_client, tower):
    task = m.TaskType.objects.get(name="analysis")
    response = staff_client.post(reverse("console:update_floor", args=[task.pk]), {"quality_floor": "2"})
    assert response.status_code == 422 and b"<html" in response.content and b"must be between 0 and 1" in response.content
    assert staff_client.post(reverse("console:update_floor", args=[task.pk]), {"quality_floor": "0.5"}).status_code == 302


def _rated(tag: str, task: str, good: int, bad: int):
    """Ratings of good (1) and bad (0) answers by ``tag`` for ``task`` (their evidence summed by recount)."""
    from django.utils import timezone

    from models_registry.learning import signals

    model, task_type = m.LlmModel.objects.get(tag=tag), m.TaskType.objects.get(name=task)
    now = timezone.now()
    m.QualitySignal.objects.bulk_create(
        m.QualitySignal(model=model, task_type=task_type, kind="rating", value=1.0 if i < good else 0.0, weight=1.0,
                        created_at=now)
        for i in range(good + bad))
    signals.recount(now)
    return model, task_type


@pytest.mark.django_db
def test_observed_quality_shows_beside_the_score_with_its_proposal(viewer_client, tower):
    model, task = _rated("llama3.2:3b", "chat", 15, 15)  # 0.84 worth 20 answers + 15 of 30 -> 0.636
    html = viewer_client.get(reverse("console:catalog")).content.decode()
    row = html[html.index(f'id="observed-{model.pk}-{task.pk}"'):]
    row = row[:row.index("</tr>")]
    assert "llama3.2:3b" in row and "0.84" in row and "0.636" in row and "30 signals" in row
    assert "0.64" in row  # the proposal
    assert "Accept" not in row  # viewers see it, staff accept it
    assert "Mode <strong>shadow</strong>" in html


@pytest.mark.django_db
def test_staff_accept_a_proposal_over_htmx_and_the_grid_and_history_follow(staff_client, alice, tower):
    model, task = _rated("llama3.2:3b", "chat", 15, 15)
    url = reverse("console:accept_quality", args=[model.pk, task.pk])
    response = staff_client.post(url, **HX)
    html = response.content.decode()
    assert response.status_code == 200 and response["HX-Trigger"] == "catalog-changed"
    assert html.lstrip().startswith('<section id="observed"')
    assert "0.84 → 0.64 (accepted from observed quality)" in html
    assert '<table class="grid" id="grid" hx-swap-oob="true">' in html  # the edited cell, out of band
    assert m.QualityScore.objects.get(model=model, task_type=task).score == 0.64
    h = m.QualityScore.history.first()
    assert h.history_user == alice and h.history_change_reason.startswith("accepted observed quality 0.636")
    history = staff_client.get(reverse("console:catalog"), **HX).content.decode()
    assert "0.84 → 0.64" in history
    # Accepted: nothing more to accept; asking again says so and changes nothing.
    again = staff_client.post(url, **HX)
    assert again.status_code == 409 and "nothing to accept" in again.content.decode()
    assert m.QualityScore.objects.get(model=model, task_type=task).score == 0.64


@pytest.mark.django_db
def test_only_staff_accept_a_proposal(viewer_client, tower):
    model, task = _rated("llama3.2:3b", "chat", 15, 15)
    response = viewer_client.post(reverse("console:accept_quality", args=[model.pk, task.pk]), **HX)
    assert response.status_code in (302, 403)
    assert m.QualityScore.objects.get(model=model, task_type=task).score == 0.84
