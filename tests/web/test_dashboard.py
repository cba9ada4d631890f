"""The dashboard: hosts, GPUs with VRAM bars, residents, endpoints and the latest decisions."""
import pytest
from django.urls import reverse
from django.utils import timezone

from models_registry import models as m
from tests.web.conftest import HX


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
