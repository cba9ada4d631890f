"""VRAM history: per GPU and window, from raw snapshots or hourly rollups, with load events marked."""
import re
import datetime as dt

import pytest
import time_machine
from django.urls import reverse

from models_registry import models as m
from models_registry.slo import rollups, vram
from tests.console.conftest import HX

NOW = dt.datetime(2026, 11, 25, 12, 34, 56, tzinfo=dt.timezone.utc)


def _gpu(key="tower/0"):
    return next(g for g in m.Gpu.objects.select_related("host") if g.key == key)


def _snap(gpu, at, used):
    m.GpuSnapshot.objects.create(gpu=gpu, taken_at=at, total_mib=gpu.total_mib, used_mib=used,
                                 free_mib=gpu.total_mib - used)


def _event(kind, at, endpoint="tower-amd", model="mistral:7b"):
    return m.LoadEvent.objects.create(
        model=m.LlmModel.objects.get(tag=model), endpoint=m.Endpoint.objects.get(name=endpoint), kind=kind,
        trigger="selection", requested_at=at, finished_at=at + dt.timedelta(seconds=5), duration_s=5.0)


@pytest.fixture
def clock():
    with time_machine.travel(NOW, tick=False):
        yield


@pytest.mark.django_db
def test_one_hour_buckets_raw_snapshots_and_marks_events_of_the_gpus_endpoints(tower, clock):
    gpu, other = _gpu("tower/0"), _gpu("tower/1")
    t = dt.datetime(2026, 11, 25, 12, 10, 0, tzinfo=dt.timezone.utc)
    _snap(gpu, t + dt.timedelta(seconds=1), 1000)
    _snap(gpu, t + dt.timedelta(seconds=9), 3000)   # the same 10 s bucket: mean 2000, max 3000
    _snap(gpu, t + dt.timedelta(seconds=15), 6000)
    _snap(other, t, 9999)                            # another GPU: not in this chart
    _snap(gpu, NOW - dt.timedelta(hours=2), 7777)    # outside the hour
    _event("load", t)                                # finished at t+5 s: the first bucket
    _event("evict", t + dt.timedelta(seconds=12))    # finished at +17 s: the second
    _event("load", t, endpoint="tower-nvidia")       # another GPU's endpoint
    h = vram.history(gpu, "1h", NOW)
    assert h["x"] == [int(t.timestamp()), int((t + dt.timedelta(seconds=10)).timestamp())]
    assert h["used"] == [2000.0, 6000.0] and h["max"] == [3000, 6000]
    assert h["loads"] == [2000.0, None] and h["unloads"] == [None, 6000.0]
    assert (h["load_count"], h["unload_count"]) == (1, 1)
    assert h["usable_mib"] == gpu.total_mib - gpu.reserved_mib


@pytest.mark.django_db
def test_thirty_days_reads_rollups_and_raw_hours_alike(tower, clock):
    gpu = _gpu()
    h_rolled = dt.datetime(2026, 11, 20, 8, tzinfo=dt.timezone.utc)
    h_raw = dt.datetime(2026, 11, 24, 15, tzinfo=dt.timezone.utc)
    for hour in (h_rolled, h_raw):
        _snap(gpu, hour + dt.timedelta(minutes=5), 2000)
        _snap(gpu, hour + dt.timedelta(minutes=50), 4000)
        _event("load", hour + dt.timedelta(minutes=1))
        _event("unload", hour + dt.timedelta(minutes=40))
    _snap(gpu, NOW - dt.timedelta(minutes=1), 5000)  # the current hour: raw
    rollups.rollup_hour(h_rolled, now=NOW)
    row = m.SloHourlyRollup.objects.get(hour=h_rolled)
    assert row.gpu_vram["gpus"][str(gpu.id)] == [2, 6000, 4000, gpu.total_mib]
    # The raw snapshot is gone from the rolled-up hour: the chart must read the rollup.
    m.GpuSnapshot.objects.filter(taken_at__lt=h_rolled + dt.timedelta(hours=1)).delete()
    h = vram.history(gpu, "30d", NOW)
    points = dict(zip(h["x"], zip(h["used"], h["max"], h["loads"], h["unloads"])))
    assert points[int(h_rolled.timestamp())] == (3000.0, 4000, 3000.0, 3000.0)
    assert points[int(h_raw.timestamp())] == (3000.0, 4000, 3000.0, 3000.0)
    current = NOW.replace(minute=0, second=0)
    assert points[int(current.timestamp())][:2] == (5000.0, 5000)
    assert (h["load_count"], h["unload_count"]) == (2, 2)
    assert h["sources"]["hourly rollups"] == 1


@pytest.mark.django_db
def test_the_page_and_its_fragment(viewer_client, tower, clock):
    gpu = _gpu("tower/1")
    _snap(gpu, NOW - dt.timedelta(minutes=3), 2560)
    _event("load", NOW - dt.timedelta(minutes=4), endpoint="tower-nvidia", model="llama3.2:3b")
    url = reverse("console:vram") + "?gpu=tower/1&window=1h"
    html = viewer_client.get(url).content.decode()
    assert "<html" in html and 'id="vram-chart"' in html and "chart-data" in html
    assert "1 loads, 0 unloads/evictions" in html and "llama3.2:3b" in html
    assert "2560" in html  # the table read without JavaScript
    frag = viewer_client.get(url, **HX).content.decode()
    assert frag.lstrip().startswith('<div id="vram">')
    empty = viewer_client.get(reverse("console:vram") + "?gpu=tower/0&window=1h").content.decode()
    assert 'id="no-data"' in empty and "raw snapshots" not in empty
    # the empty state says why: which agent and queue report this GPU, and that nothing ever came
    assert "No telemetry from tower/0" in empty and "never reported one" in empty
    assert "<code>host.tower</code>" in empty and "has not reported yet" in empty
    _snap(_gpu("tower/0"), NOW - dt.timedelta(hours=3), 1000)
    m.Host.objects.filter(name="tower").update(last_seen_at=NOW - dt.timedelta(hours=3))
    stale = viewer_client.get(reverse("console:vram") + "?gpu=tower/0&window=1h").content.decode()
    stale = re.sub(r"<[^>]+>", "", stale)  # times are <time> elements
    assert "the last reading was taken 2026-11-25 09:34 UTC" in stale and "It last reported 2026-11-25 09:34" in stale
    assert "every 15 s" in empty  # TOWEROPS_TELEMETRY_INTERVAL_S, a float, shown whole


@pytest.mark.django_db
@pytest.mark.parametrize("query", ["?window=2h", "?gpu=nope/9"])
def test_unknown_windows_and_gpus_are_404(viewer_client, tower, query):
    assert viewer_client.get(reverse("console:vram") + query).status_code == 404


def test_anonymous_users_are_sent_to_login(client, db):
    response = client.get(reverse("console:vram"))
    assert response.status_code == 302 and "/login/" in response["Location"]


def test_the_vram_rows_filter_writes_what_the_template_loop_wrote():
    from django.template import Context, Template

    at = dt.datetime(2026, 11, 25, 21, 4, 10, tzinfo=dt.timezone.utc)
    table = [(at, 10240.5, 11000), (at + dt.timedelta(minutes=2), 2.4999, 3), (at, 0.0, 0)]
    loop = Template('{% load console %}{% for x, u, mx in t %}<tr><td>{{ x|when }}</td><td>{{ u|floatformat:0 }}</td>'
                    '<td>{{ mx }}</td></tr>{% endfor %}')
    assert Template("{% load console %}{{ t|vram_rows }}").render(Context({"t": table})) == loop.render(
        Context({"t": table}))
