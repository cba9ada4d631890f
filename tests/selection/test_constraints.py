"""The database itself refuses rows that make no sense, whatever code writes them."""
import datetime as dt

import pytest
from django.db import IntegrityError, transaction

from models_registry import models as m


def _rejects(fn):
    with pytest.raises(IntegrityError):
        with transaction.atomic():
            fn()


@pytest.mark.django_db
def test_quality_score_outside_0_1_is_rejected(tower):
    model = m.LlmModel.objects.get(tag="tinyllama")
    task = m.TaskType.objects.get(name="code_generation")
    m.QualityScore.objects.filter(model=model, task_type=task).delete()
    _rejects(lambda: m.QualityScore.objects.create(model=model, task_type=task, score=1.2))
    _rejects(lambda: m.QualityScore.objects.create(model=model, task_type=task, score=-0.1))
    m.QualityScore.objects.create(model=model, task_type=task, score=1.0)


@pytest.mark.django_db
def test_gpu_reserving_more_than_its_total_is_rejected():
    host = m.Host.objects.create(name="h", queue="host.h")
    _rejects(lambda: m.Gpu.objects.create(host=host, index=0, vendor="amd", name="x", total_mib=1000, reserved_mib=1001))
    m.Gpu.objects.create(host=host, index=0, vendor="amd", name="x", total_mib=1000, reserved_mib=1000)


@pytest.mark.django_db
def test_duplicate_model_tag_is_rejected():
    m.LlmModel.objects.create(tag="mistral:7b", vram_mib=5000)
    _rejects(lambda: m.LlmModel.objects.create(tag="mistral:7b", vram_mib=4000))


@pytest.mark.django_db
def test_local_model_without_vram_is_rejected_but_remote_is_fine():
    _rejects(lambda: m.LlmModel.objects.create(tag="x:1b", kind="local", vram_mib=0))
    m.LlmModel.objects.create(tag="remote:x", kind="remote", vram_mib=0)


@pytest.mark.django_db
def test_preload_window_ending_where_it_starts_is_rejected():
    _rejects(
        lambda: m.PreloadWindow.objects.create(
            name="w", days_of_week=[0], start_time=dt.time(9), end_time=dt.time(9)
        )
    )
    _rejects(
        lambda: m.PreloadWindow.objects.create(
            name="w", days_of_week=[7], start_time=dt.time(9), end_time=dt.time(10)
        )
    )
    m.PreloadWindow.objects.create(name="w", days_of_week=[0], start_time=dt.time(9), end_time=dt.time(10))


@pytest.mark.django_db
def test_one_active_residency_per_model_and_endpoint(tower):
    model = m.LlmModel.objects.get(tag="tinyllama")
    ep = m.Endpoint.objects.get(name="tower-amd")
    now = dt.datetime.now(dt.timezone.utc)
    m.Residency.objects.create(model=model, endpoint=ep, state="loaded", vram_mib=1024, requested_at=now)
    _rejects(lambda: m.Residency.objects.create(model=model, endpoint=ep, state="requested", vram_mib=1024, requested_at=now))
    # Ended residencies are history and do not count.
    m.Residency.objects.filter(model=model).update(state="unloaded")
    m.Residency.objects.create(model=model, endpoint=ep, state="requested", vram_mib=1024, requested_at=now)


@pytest.mark.django_db
def test_api_key_scopes_are_limited_to_known_ones():
    _rejects(lambda: m.ApiKey.objects.create(name="k", prefix="p", hashed_key="a" * 64, scopes=["root"]))
    _rejects(lambda: m.ApiKey.objects.create(name="k", prefix="p", hashed_key="b" * 64, scopes=[]))
    m.ApiKey.objects.create(name="k", prefix="p", hashed_key="c" * 64, scopes=["select", "read"])


@pytest.mark.parametrize(
    "start,end,when,active",
    [
        ((9, 0), (17, 0), "2026-11-23 08:59", False),  # Monday
        ((9, 0), (17, 0), "2026-11-23 09:00", True),
        ((9, 0), (17, 0), "2026-11-23 17:00", False),
        ((9, 0), (17, 0), "2026-11-28 10:00", False),  # Saturday: not in the days
        ((22, 0), (9, 0), "2026-11-23 23:30", True),
        ((22, 0), (9, 0), "2026-11-24 03:00", True),  # Tuesday early: Monday's night
        ((22, 0), (9, 0), "2026-11-24 09:30", False),
        ((22, 0), (9, 0), "2026-11-23 03:00", False),  # Monday early: Sunday's night, Sunday not listed
    ],
)
def test_preload_window_activity_wraps_midnight(start, end, when, active):
    window = m.PreloadWindow(
        name="w", days_of_week=[0, 1, 2, 3, 4], start_time=dt.time(*start), end_time=dt.time(*end), timezone="UTC"
    )
    at = dt.datetime.fromisoformat(when).replace(tzinfo=dt.timezone.utc)
    assert window.is_active(at) is active


def test_the_hand_written_decision_insert_names_every_column_of_the_table():
    """records.record_decision writes SelectionDecision by hand for speed: it must keep up with the model."""
    from models_registry.selection import records

    concrete = {f.column for f in m.SelectionDecision._meta.concrete_fields} - {"id"}
    assert set(records._DECISION_COLUMNS) == concrete
