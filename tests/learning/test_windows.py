"""Predicted preload windows on the database: a suggestion from the decision history with the replay's
estimate, accepting it (the windows replaced, every change in the history), dismissing, the weekly task."""
import datetime as dt

import pytest

from models_registry import models as m
from models_registry.learning import tasks, windows

UTC = dt.timezone.utc
MONDAY = dt.datetime(2026, 11, 2, tzinfo=UTC)
NOW = MONDAY + dt.timedelta(weeks=2)


def office_hours_of_code(weeks=2):
    """Code at a desk: 6 interactive code_generation decisions an hour, Mon–Fri 09–17 UTC."""
    task = m.TaskType.objects.get(name="code_generation")
    rows = [m.SelectionDecision(created_at=MONDAY + dt.timedelta(weeks=w, days=d, hours=h, minutes=10 * k),
                                task_type=task, urgency="interactive", reason="test", policy_version="test")
            for w in range(weeks) for d in range(5) for h in range(9, 17) for k in range(6)]
    m.SelectionDecision.objects.bulk_create(rows)


@pytest.fixture
def history(tower):
    office_hours_of_code()


@pytest.mark.django_db
def test_a_suggestion_learns_the_office_hours_and_carries_both_estimates(history):
    s = windows.suggest(NOW, zone="UTC")
    assert s.status == "open" and s.learned_from == MONDAY + dt.timedelta(hours=9) and s.learned_until == NOW
    assert [(w["days"], w["start"], w["end"], w["models"]) for w in s.windows] == [
        (["mon", "tue", "wed", "thu", "fri"], "09:00", "17:00", ["qwen2.5-coder:7b"])]
    for side in ("current", "suggested"):
        fig = s.estimate[side]
        assert fig["requests"] == 480
        assert set(fig) >= {"vram_efficiency", "interactive_p95_s", "loads_per_hour", "thrash_loads"}
        assert 0 < fig["vram_efficiency"] <= 1 and fig["interactive_p95_s"] > 0
    assert s.estimate["weeks_learned"] == pytest.approx((NOW - s.learned_from) / dt.timedelta(weeks=1), abs=0.01)


@pytest.mark.django_db
def test_no_suggestion_without_a_day_of_history(tower):
    assert windows.suggest(NOW) is None
    office_hours_of_code(weeks=1)
    assert windows.suggest(MONDAY + dt.timedelta(hours=20)) is None
    assert not m.WindowSuggestion.objects.exists()


@pytest.mark.django_db
def test_a_newer_suggestion_supersedes_the_open_one(history):
    first = windows.suggest(NOW, zone="UTC")
    second = windows.suggest(NOW + dt.timedelta(hours=1), zone="UTC")
    first.refresh_from_db()
    assert (first.status, second.status) == ("superseded", "open")
    assert windows.open_suggestion() == second


@pytest.mark.django_db
def test_accepting_replaces_the_windows_and_the_history_names_the_suggestion(history, alice):
    s = windows.suggest(NOW, zone="UTC")
    before = set(m.PreloadWindow.objects.filter(enabled=True).values_list("name", flat=True))
    windows.accept(s.pk, alice)
    enabled = m.PreloadWindow.objects.filter(enabled=True)
    assert [(w.name, w.days_of_week, w.start_time, w.end_time, sorted(mo.tag for mo in w.models.all()))
            for w in enabled] == [("predicted 09:00-17:00 mon-fri", [0, 1, 2, 3, 4], dt.time(9), dt.time(17),
                                   ["qwen2.5-coder:7b"])]
    reason = f"suggestion #{s.pk} accepted"
    for name in before:  # disabled, not deleted: the history keeps them
        w = m.PreloadWindow.objects.get(name=name)
        assert not w.enabled
        latest = w.history.first()
        assert (latest.history_change_reason, latest.history_user, latest.enabled) == (reason, alice, False)
    created = enabled.get().history.filter(history_change_reason=reason)
    assert created.exists() and created.first().history_user == alice
    s.refresh_from_db()
    assert (s.status, s.decided_by, s.automatic) == ("accepted", alice, False)
    with pytest.raises(windows.SuggestionError, match="already accepted"):
        windows.accept(s.pk, alice)


@pytest.mark.django_db
def test_dismissing_leaves_the_windows_alone(history, alice):
    s = windows.suggest(NOW, zone="UTC")
    before = list(m.PreloadWindow.objects.values_list("name", "enabled"))
    windows.dismiss(s.pk, alice)
    s.refresh_from_db()
    assert (s.status, s.decided_by) == ("dismissed", alice)
    assert list(m.PreloadWindow.objects.values_list("name", "enabled")) == before
    with pytest.raises(windows.SuggestionError, match="already dismissed"):
        windows.accept(s.pk)


@pytest.mark.django_db
def test_the_weekly_task_in_auto_mode_applies_a_suggestion_no_worse_than_the_windows(history, settings, monkeypatch):
    monkeypatch.setattr(windows.timezone, "now", lambda: NOW)
    judged = []
    monkeypatch.setattr(windows, "no_worse", lambda suggested, current: judged.append((suggested, current)) or True)
    settings.TOWEROPS_PRELOAD_SUGGEST = "auto"
    settings.TIME_ZONE = "UTC"
    assert tasks.suggest_preload_windows().endswith("applied")
    s = m.WindowSuggestion.objects.get()
    assert judged == [(s.estimate["suggested"], s.estimate["current"])]
    assert (s.status, s.automatic, s.decided_by) == ("accepted", True, None)
    assert list(m.PreloadWindow.objects.filter(enabled=True).values_list("name", flat=True)) == [
        "predicted 09:00-17:00 mon-fri"]
    # (timezone.now is patched here, so history dates are too: found by reason, not by date)
    assert m.PreloadWindow.objects.get(name="night").history.filter(
        history_change_reason=f"suggestion #{s.pk} applied automatically", enabled=False, history_user=None).exists()


@pytest.mark.django_db
def test_the_weekly_task_leaves_a_worse_suggestion_open_and_does_nothing_when_off(history, settings, monkeypatch):
    monkeypatch.setattr(windows.timezone, "now", lambda: NOW)
    monkeypatch.setattr(windows, "no_worse", lambda suggested, current: False)
    settings.TOWEROPS_PRELOAD_SUGGEST = "auto"
    assert "left open" in tasks.suggest_preload_windows()
    assert m.WindowSuggestion.objects.get().status == "open"
    settings.TOWEROPS_PRELOAD_SUGGEST = "off"
    assert tasks.suggest_preload_windows() == "off"
    assert m.WindowSuggestion.objects.count() == 1


def test_no_worse_compares_every_figure():
    base = {"vram_efficiency": 0.5, "interactive_p95_s": 3.0, "loads_per_hour": 0.1, "thrash_loads": 0}
    assert windows.no_worse(dict(base), base)
    assert not windows.no_worse({**base, "vram_efficiency": 0.4}, base)
    assert not windows.no_worse({**base, "interactive_p95_s": 3.5}, base)
    assert not windows.no_worse({**base, "loads_per_hour": 0.2}, base)
    assert not windows.no_worse({**base, "thrash_loads": 1}, base)
    assert windows.no_worse({**base, "interactive_p95_s": None}, base)



@pytest.mark.django_db
def test_the_command_suggests_now_and_says_what_it_did(tower, settings):
    from io import StringIO

    from django.core.management import call_command

    out = StringIO()
    call_command("suggest_preload_windows", stdout=out)
    assert out.getvalue().strip() == "not enough history"  # a new tower: nothing learned, nothing stored
    assert not m.WindowSuggestion.objects.exists()
    settings.TOWEROPS_PRELOAD_SUGGEST = "off"
    out = StringIO()
    call_command("suggest_preload_windows", stdout=out)
    assert out.getvalue().strip() == "off"
