"""The dashboard: hosts, GPUs with VRAM bars, residents, endpoints, the gateway's queues and the latest decisions."""
import pytest
from django.urls import reverse
from django.utils import timezone

from models_registry import models as m
from tests.console.conftest import HX, gateway_queue


@pytest.mark.django_db
def test_the_full_page_shows_each_gpu_and_endpoint(viewer_client, decisions):
    response = viewer_client.get(reverse("console:dashboard"))
    assert response.status_code == 200
    html = response.content.decode()
    assert "<html" in html and 'hx-trigger="every 5s"' in html
    for gpu in m.Gpu.objects.all():
        assert f'data-gpu="{gpu.key}"' in html
    for endpoint in m.Endpoint.objects.all():
        assert endpoint.name in html
    assert reverse("console:decision_detail", args=[decisions[0].pk]) in html


@pytest.mark.django_db
def test_an_htmx_poll_gets_only_the_fragment(viewer_client, tower):
    response = viewer_client.get(reverse("console:dashboard"), **HX)
    html = response.content.decode()
    assert response.status_code == 200
    assert "<html" not in html
    assert html.lstrip().startswith('<div id="live"')


@pytest.mark.django_db
def test_a_loaded_model_is_a_segment_of_its_gpu_bar(viewer_client, tower):
    model = m.LlmModel.objects.get(tag="qwen2.5-coder:7b")
    endpoint = m.Endpoint.objects.first()
    gpu = endpoint.gpus.first()
    r = m.Residency.objects.create(model=model, endpoint=endpoint, state="loaded", vram_mib=model.vram_mib,
                                   requested_at=timezone.now(), last_used_at=timezone.now())
    m.ResidencyGpu.objects.create(residency=r, gpu=gpu, vram_mib=model.vram_mib)
    html = viewer_client.get(reverse("console:dashboard"), **HX).content.decode()
    assert f'title="qwen2.5-coder:7b (loaded): {model.vram_mib} MiB"' in html
    assert "state-loaded" in html


@pytest.mark.django_db
def test_it_works_with_an_empty_fleet(viewer_client):
    response = viewer_client.get(reverse("console:dashboard"))
    assert response.status_code == 200
    assert b"No hosts yet" in response.content


@pytest.mark.django_db
def test_the_thrash_line_turns_red_past_the_hours_budget_pace(viewer_client, tower):
    import datetime as dt

    def load(minutes_ago, kind="load", thrash=False):
        m.LoadEvent.objects.create(model=m.LlmModel.objects.get(tag="mistral:7b"),
                                   endpoint=m.Endpoint.objects.get(name="tower-amd"), kind=kind, trigger="selection",
                                   requested_at=timezone.now() - dt.timedelta(minutes=minutes_ago), thrash=thrash)

    m.SloTarget.objects.update_or_create(name="loads_per_hour", defaults={"comparator": "lt", "target": 12.0})
    load(3)
    load(25)  # outside the 10 minutes
    html = viewer_client.get(reverse("console:dashboard"), **HX).content.decode()
    line = " ".join(html.split('id="thrash"')[1].split("</p>")[0].split())
    assert 'class="thrash"' in html and "<strong>1</strong> model load in the last 10 min" in line
    assert "allows 2.0 per 10 min" in line  # 12 an hour: 2 per 10 minutes
    assert "loaded back" not in line
    load(4, thrash=True)
    load(5)
    load(6, kind="evict")
    html = viewer_client.get(reverse("console:dashboard"), **HX).content.decode()
    line = " ".join(html.split('id="thrash"')[1].split("</p>")[0].split())
    assert 'class="thrash over"' in html and "<strong>3</strong> model loads" in line and "(1 eviction)" in line
    assert "<strong>1</strong> of them loaded back after an eviction" in line
    assert "being loaded back and forth" in line


def _queue_cells(html: str, attr: str) -> list[str]:
    import re

    row = html.split(f"<tr {attr}>", 1)[1].split("</tr>", 1)[0]
    return [" ".join(re.sub(r"<[^>]+>", " ", c).split()) for c in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)]


@pytest.mark.django_db
def test_the_gateway_queues_show_each_endpoint_and_model_by_urgency_from_redis(viewer_client, tower, settings,
                                                                               gateway_queue_prefix):
    """A queue filled through the gateway's own admission (RedisAdmission, the test Redis database):
    the dashboard reads the keys it wrote, as a second gateway process would."""
    from tests.helpers import redis_test_url

    settings.TOWEROPS_GATEWAY_REDIS_URL = redis_test_url()
    with gateway_queue(settings.TOWEROPS_GATEWAY_REDIS_URL, gateway_queue_prefix):
        html = viewer_client.get(reverse("console:dashboard"), **HX).content.decode()
    section = html.split('id="gateway-queues"', 1)[1].split("</section>", 1)[0]
    header = " ".join(section.split("<thead>", 1)[1].split("</thead>", 1)[0].split())
    assert "<th>critical</th><th>interactive</th><th>background</th><th>batch</th>" in header  # admission's order
    assert section.index('data-endpoint="tower-amd"') < section.index('data-endpoint="tower-nvidia"')
    assert _queue_cells(section, 'data-queue="llama3.2:3b|tower-nvidia"') == ["", "llama3.2:3b", "1 / 1",
                                                                              "2", "1", "0", "1"]
    assert _queue_cells(section, 'class="queue-endpoint" data-endpoint="tower-nvidia"') == [
        "tower-nvidia", "all models", "1", "2", "1", "0", "1"]
    assert _queue_cells(section, 'data-queue="qwen2.5-coder:7b|tower-amd"') == ["", "qwen2.5-coder:7b", "1 / 2",
                                                                               "0", "0", "0", "0"]
    # Released and left: the next poll shows nothing queued.
    html = viewer_client.get(reverse("console:dashboard"), **HX).content.decode()
    assert "nothing in flight or waiting at the gateway" in html


@pytest.mark.django_db
def test_without_a_gateway_redis_the_dashboard_says_so(viewer_client, tower, settings):
    settings.TOWEROPS_GATEWAY_REDIS_URL = ""
    html = viewer_client.get(reverse("console:dashboard"), **HX).content.decode()
    section = html.split('id="gateway-queues"', 1)[1].split("</section>", 1)[0]
    assert "no gateway queue state (no Redis configured)" in section and "<table" not in section
    settings.TOWEROPS_GATEWAY_REDIS_URL = "redis://127.0.0.1:1/0"  # nobody listens there
    response = viewer_client.get(reverse("console:dashboard"), **HX)
    assert response.status_code == 200
    assert "gateway queue state unavailable (ConnectionError)" in response.content.decode()
