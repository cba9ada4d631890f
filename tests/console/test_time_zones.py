"""Every time the console shows is in TIME_ZONE and says so ("19:30:00 IST"), on every page; the
API stays UTC (ISO-8601). Read with TIME_ZONE=Asia/Kolkata (UTC+05:30, no clock changes): a
decision made at 14:00 UTC reads 19:30 IST, never "19:30 UTC" nor "14:00" unlabelled."""
from __future__ import annotations

import datetime as dt
import re

import pytest
from django.urls import reverse

from models_registry import models as m
from models_registry.slo import rollups

from .conftest import make_decision

pytestmark = pytest.mark.django_db
NOW = dt.datetime(2026, 11, 25, 15, 25, tzinfo=dt.timezone.utc)
AT = dt.datetime(2026, 11, 25, 14, 0, tzinfo=dt.timezone.utc)  # 19:30 in Kolkata
TIME = re.compile(r"\b\d{2}:\d{2}(:\d{2})?\b")


def visible(html: str) -> str:
    """The page's text as a reader sees it: no tags, attributes, scripts or JSON."""
    html = re.sub(r"<script.*?</script>", " ", html, flags=re.S)
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


def times_with_labels(text: str) -> list[str]:
    """Each time of day in the text with the word after it."""
    return [m.group(0) for m in re.finditer(r"\d{2}:\d{2}(?::\d{2})? ?\S*", text)]


@pytest.fixture
def kolkata(settings, time_machine, tower):
    settings.TIME_ZONE = "Asia/Kolkata"
    time_machine.move_to(NOW, tick=False)
    d = make_decision(at=AT)
    m.DecisionOutcome.objects.create(decision=d, reported_at=AT + dt.timedelta(minutes=1), response_ms=800,
                                     success=True)
    gpu = m.Gpu.objects.get(index=1)
    m.GpuSnapshot.objects.create(gpu=gpu, taken_at=AT, total_mib=gpu.total_mib, used_mib=1000, free_mib=5000,
                                 util_pct=3.0)
    m.LoadEvent.objects.create(model=m.LlmModel.objects.get(tag="mistral:7b"), endpoint=m.Endpoint.objects.get(
        name="tower-nvidia"), kind="load", trigger="selection", requested_at=AT, finished_at=AT, duration_s=3.0)
    m.Endpoint.objects.update(last_checked_at=AT)
    run = m.ReplayRun.objects.create(trace="t.csv", profile="p.yaml", requests=1, summaries=[], start=AT)
    m.ReplayRun.objects.filter(pk=run.pk).update(created_at=AT)
    return {"decision": d, "run": run}


def pages(kolkata):
    d, run = kolkata["decision"], kolkata["run"]
    return {
        "dashboard": reverse("console:dashboard"),
        "decisions": reverse("console:decisions"),
        "decision": reverse("console:decision_detail", args=[d.pk]),
        "load events": reverse("console:load_events"),
        "vram 1h": reverse("console:vram") + "?gpu=tower/1&window=24h",
        "slo": reverse("console:slo") + "?window=1h",
        "replays": reverse("console:replay_runs"),
        "replay": reverse("console:replay_run", args=[run.pk]),
        "catalog": reverse("console:catalog"),  # its change history
    }


def test_every_page_shows_local_times_labelled_with_their_zone(viewer_client, kolkata):
    """(The preload page shows windows' own wall-clock times beside their time zone column, and
    its week in the console's zone, named in the grid's corner: tests/console/test_preload.py.)"""
    for name, url in pages(kolkata).items():
        response = viewer_client.get(url)
        assert response.status_code == 200, name
        text = visible(response.content.decode())
        shown = times_with_labels(text)
        expected = "" if name == "catalog" else "19:3"  # the catalog: when the profile was loaded
        assert any(t.startswith(expected) and t.endswith("IST") for t in shown), (name, shown)
        unlabelled = [t for t in shown if not t.endswith("IST")]
        assert not unlabelled, f"{name}: times without their zone: {unlabelled}"
        assert "times in Asia/Kolkata" in text


def test_the_slo_page_shows_its_window_in_the_console_zone(viewer_client, kolkata):
    """The issue's case: a 14:00-15:25 UTC window was shown as "19:30 → 20:55 UTC"."""
    html = viewer_client.get(reverse("console:slo") + "?window=1h").content.decode()
    text = visible(html)
    assert "Last 1h: 2026-11-25 19:30 IST → 2026-11-25 20:55 IST" in text
    assert "UTC" not in text.split("Last 1h:")[1].split("·")[0]
    assert '<time datetime="2026-11-25T14:00:00Z" title="2026-11-25 14:00:00 UTC">2026-11-25 19:30 IST</time>' in html


def test_the_log_filters_read_times_in_the_console_zone_and_say_so(viewer_client, kolkata):
    url = reverse("console:decisions")
    html = viewer_client.get(url).content.decode()
    assert "since (Asia/Kolkata)" in visible(html) and "until (Asia/Kolkata)" in visible(html)
    d = kolkata["decision"].pk
    assert f">{d}</a>" in viewer_client.get(url + "?since=2026-11-25T19:30").content.decode()
    assert f">{d}</a>" not in viewer_client.get(url + "?since=2026-11-25T19:31").content.decode()


def test_charts_draw_their_time_axis_in_the_console_zone(viewer_client, kolkata):
    html = viewer_client.get(reverse("console:slo") + "?window=24h").content.decode()
    assert 'data-tz="Asia/Kolkata"' in html  # console.js: uPlot's tzDate and the axis label


def test_in_utc_the_console_says_utc(viewer_client, kolkata, settings):
    settings.TIME_ZONE = "UTC"
    text = visible(viewer_client.get(reverse("console:decision_detail", args=[kolkata["decision"].pk])).content.decode())
    assert "2026-11-25 14:00:00 UTC" in text and "IST" not in text


def test_the_api_stays_utc(kolkata, reader):
    d = reader(f"/api/v1/decisions/{kolkata['decision'].pk}").json()
    assert d["created_at"] in ("2026-11-25T14:00:00Z", "2026-11-25T14:00:00+00:00")
    slo = reader("/api/v1/metrics/slo?window=1h").json()
    assert slo["start"] in ("2026-11-25T14:00:00Z", "2026-11-25T14:00:00+00:00")
    assert slo["metrics"][0]["series"][0]["hour"].startswith("2026-11-25T14:00:00")
    assert rollups.floor_hour(NOW) == dt.datetime(2026, 11, 25, 15, tzinfo=dt.timezone.utc)


@pytest.fixture
def reader(client, db):
    from models_registry.api.auth import create_key

    key = create_key("tz", ["read"])[1]
    return lambda path: client.get(path, HTTP_AUTHORIZATION=f"Bearer {key}")
