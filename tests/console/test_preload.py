"""The preload-window editor: the week, a live fit preview, and refusing windows that can never fit."""
import pytest
from django.urls import reverse

from models_registry import models as m
from tests.console.conftest import HX


def _post_data(**over):
    data = {"name": "standup", "days_of_week": ["0", "2", "4"], "start_time": "08:30", "end_time": "10:00",
            "timezone": "Europe/Berlin", "enabled": "on",
            "models": [str(m.LlmModel.objects.get(tag="mistral:7b").pk)]}
    data.update(over)
    return data


def _ids(*tags):
    return [str(m.LlmModel.objects.get(tag=t).pk) for t in tags]


@pytest.mark.django_db
def test_the_list_shows_the_week_and_every_window(viewer_client, tower):
    html = viewer_client.get(reverse("console:preload")).content.decode()
    for w in m.PreloadWindow.objects.all():
        assert w.name in html
    assert "Mon–Fri" in html and "every day" in html  # the profile's coding hours and evening windows
    assert 'class="week"' in html and "slot on" in html
    assert "new window" not in html and "Disable" not in html  # a viewer reads only


@pytest.mark.django_db
def test_viewers_cannot_open_the_editor_or_post(viewer_client, tower):
    assert viewer_client.get(reverse("console:preload_new")).status_code == 403
    assert viewer_client.post(reverse("console:preload_new"), _post_data()).status_code == 403
    assert not m.PreloadWindow.objects.filter(name="standup").exists()


@pytest.mark.django_db
def test_staff_create_a_window_and_its_history_names_them(staff_client, alice, tower):
    response = staff_client.post(reverse("console:preload_new"), _post_data())
    assert response.status_code == 302 and response["Location"] == reverse("console:preload")
    w = m.PreloadWindow.objects.get(name="standup")
    assert (w.days_of_week, w.start_time.isoformat(), w.end_time.isoformat(), w.timezone) == (
        [0, 2, 4], "08:30:00", "10:00:00", "Europe/Berlin")
    assert [mo.tag for mo in w.models.all()] == ["mistral:7b"]
    assert w.history.first().history_user == alice


@pytest.mark.django_db
def test_a_window_whose_models_never_fit_is_refused_and_nothing_is_saved(staff_client, tower):
    data = _post_data(models=_ids("qwen2.5-coder:32b", "llama3.2:3b"))
    response = staff_client.post(reverse("console:preload_new"), data)
    html = response.content.decode()
    assert response.status_code == 422
    assert "can never be warm together: qwen2.5-coder:32b (20.0 GB)" in html
    assert 'id="never-fits"' in html
    assert not m.PreloadWindow.objects.filter(name="standup").exists()


@pytest.mark.django_db
def test_the_htmx_preview_shows_the_warm_set_and_never_saves(staff_client, tower):
    data = _post_data(models=_ids("mistral:7b", "qwen2.5-coder:7b"), name="")
    response = staff_client.post(reverse("console:preload_new"), data, **HX)
    html = response.content.decode()
    assert response.status_code == 200 and html.lstrip().startswith('<section id="preview">')
    assert 'id="fits"' in html and "mistral:7b" in html and "would load on" in html
    assert "slot on edited" in html or "slot edited" in html
    assert m.PreloadWindow.objects.count() == 3  # the profile's three, untouched


@pytest.mark.django_db
def test_the_check_button_previews_without_javascript(staff_client, tower):
    response = staff_client.post(reverse("console:preload_new"), {**_post_data(), "check": "1"})
    assert response.status_code == 200 and b"<html" in response.content and b'id="warm-set"' in response.content
    assert not m.PreloadWindow.objects.filter(name="standup").exists()


@pytest.mark.django_db
@pytest.mark.parametrize("field, value, message", [
    ("timezone", "Mars/Olympus", "unknown time zone"),
    ("end_time", "08:30", "a window cannot end where it starts"),
    ("days_of_week", [], "pick at least one day"),
    ("days_of_week", ["7"], "Select a valid choice"),
    ("start_time", "25:00", "Enter a valid time"),
    ("models", [], "pick at least one model"),
])
def test_bad_input_names_the_field_and_changes_nothing(staff_client, tower, field, value, message):
    response = staff_client.post(reverse("console:preload_new"), _post_data(**{field: value}))
    html = response.content.decode()
    assert response.status_code == 422
    assert f'id="field-{field}"' in html and message in html
    field_html = html.split(f'id="field-{field}"', 1)[1].split('<div class="field', 1)[0]
    assert message in field_html
    assert m.PreloadWindow.objects.count() == 3


@pytest.mark.django_db
def test_edit_keeps_the_pk_and_disable_toggles(staff_client, tower):
    w = m.PreloadWindow.objects.get(name="evening")
    page = staff_client.get(reverse("console:preload_edit", args=[w.pk])).content.decode()
    assert 'value="evening"' in page and 'id="fits"' in page
    data = _post_data(name="evening", models=_ids("llama3.2:3b"), start_time="19:00", end_time="23:00")
    assert staff_client.post(reverse("console:preload_edit", args=[w.pk]), data).status_code == 302
    w.refresh_from_db()
    assert w.start_time.hour == 19 and [mo.tag for mo in w.models.all()] == ["llama3.2:3b"]
    assert staff_client.post(reverse("console:preload_toggle", args=[w.pk])).status_code == 302
    w.refresh_from_db()
    assert not w.enabled
    assert w.history.count() >= 3


@pytest.mark.django_db
def test_the_week_marks_hours_where_overlapping_windows_can_never_fit(staff_client, tower, settings):
    settings.TIME_ZONE = "UTC"
    m.LlmModel.objects.filter(tag="deepseek-coder-v2:16b").update(vram_mib=14 * 1024)
    # "coding hours" (Mon–Fri 09–17 UTC) warms qwen2.5-coder:7b and the (now 14 GB) 16b model;
    # a second window that wants another 14 GB model at 10:00 can never be warm with it.
    m.LlmModel.objects.filter(tag="mistral:7b").update(vram_mib=14 * 1024)
    data = _post_data(timezone="UTC", start_time="10:00", end_time="11:00", models=_ids("mistral:7b"),
                      days_of_week=["0"])
    html = staff_client.post(reverse("console:preload_new"), {**data, "check": "1"}).content.decode()
    assert 'id="fits"' in html  # alone it fits
    assert "Overlaps with other windows" in html and "Mon 10:00" in html
    assert "slot on edited misfit" in html


@pytest.mark.django_db
def test_the_preview_says_what_the_window_does_when_the_clocks_change(staff_client, tower, time_machine):
    time_machine.move_to("2026-06-01T12:00:00Z", tick=False)
    data = _post_data(days_of_week=["6"], start_time="02:30", end_time="03:30", timezone="Europe/Berlin")
    html = staff_client.post(reverse("console:preload_new"), data, **HX).content.decode()
    assert 'id="clock-changes"' in html
    assert ("On Sun 2026-10-25, clocks go back at 03:00 CEST to 02:00 CET: this window is open 00:30–02:30 UTC "
            "continuously (2 h; 02:30 CEST → 03:30 CET)") in html
    # the spring change of 2027 lies inside the year ahead, and the window starts in its skipped hour
    assert "On Sun 2027-03-28, clocks go forward at 02:00 CET to 03:00 CEST: this window is open 01:00–01:30 UTC" in html
    utc = staff_client.post(reverse("console:preload_new"), {**data, "timezone": "UTC"}, **HX).content.decode()
    assert 'id="clock-changes"' not in utc  # no clock changes in UTC


@pytest.mark.django_db
def test_the_week_marks_the_hour_we_are_in(viewer_client, tower):
    import datetime as dt
    import re

    import time_machine

    from models_registry.console import preload_grid
    from models_registry.selection import world as state

    # Wednesday 2026-11-25 14:20 UTC (the console's zone): Wednesday's 14:00 slot, and no other
    at = dt.datetime(2026, 11, 25, 14, 20, tzinfo=dt.timezone.utc)
    with time_machine.travel(at, tick=False):
        html = viewer_client.get(reverse("console:preload")).content.decode()
    marked = re.findall(r'data-day="(\d)" data-hour="(\d+)" class="[^"]*\bnow\b[^"]*" aria-current="time"', html)
    assert marked == [("2", "14")]
    assert "(the hour we are in)" in html
    world = state.read_world(at)[0]
    grid = preload_grid.week(preload_grid.saved_specs(), world, now=at)
    assert [(d, h) for d, row in enumerate(grid) for h, s in enumerate(row.slots) if s.now] == [(2, 14)]
    # a week that is not this one has no "now"
    other = preload_grid.week([], world, today=dt.date(2026, 12, 9), now=at)
    assert not any(s.now for row in other for s in row.slots)
