"""Edits to the catalog keep a history of who changed what, when (django-simple-history)."""
import pytest

from models_registry import models as m


@pytest.mark.django_db
def test_admin_edit_of_a_quality_score_records_the_user(tower, django_user_model, client):
    admin = django_user_model.objects.create_superuser("root", "", "pw-for-tests-123")
    client.force_login(admin)
    score = m.QualityScore.objects.get(model__tag="mistral:7b", task_type__name="analysis")
    url = f"/admin/models_registry/qualityscore/{score.pk}/change/"
    response = client.post(url, {"model": score.model_id, "task_type": score.task_type_id, "score": "0.9"})
    assert response.status_code == 302, response.content[:500]
    latest = score.history.first()
    assert latest.score == 0.9
    assert latest.history_user == admin
    assert latest.prev_record.score == 0.86


@pytest.mark.django_db
def test_profile_import_records_the_named_user(django_user_model):
    from django.core.management import call_command

    from tests.conftest import TOWER_PROFILE

    ops = django_user_model.objects.create_user("ops")
    call_command("load_profile", str(TOWER_PROFILE), "--user", "ops")
    record = m.UrgencyClass.history.filter(name="critical").first()
    assert record.history_user == ops
    assert record.history_type == "+"


@pytest.mark.django_db
def test_preload_window_model_changes_are_in_the_history(tower):
    window = m.PreloadWindow.objects.get(name="night")
    window.models.add(m.LlmModel.objects.get(tag="llama3.2:3b"))
    assert window.history.count() >= 2
    latest = window.history.first()
    assert sorted(latest.models.values_list("llmmodel__tag", flat=True)) == ["llama3.2:3b", "tinyllama"]
