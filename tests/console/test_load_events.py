"""The load events log: filters and the HTMX table fragment."""
import datetime as dt

import pytest
from django.urls import reverse
from django.utils import timezone

from models_registry import models as m
from tests.console.conftest import HX


@pytest.fixture
def events(tower):
    now = timezone.now()
    ep = m.Endpoint.objects.first()
    mk = lambda tag, kind, ago: m.LoadEvent.objects.create(
        model=m.LlmModel.objects.get(tag=tag), endpoint=ep, kind=kind, trigger="selection",
        requested_at=now - dt.timedelta(minutes=ago), duration_s=3.5, vram_mib=4608)
    return [mk("qwen2.5-coder:7b", "load", 5), mk("mistral:7b", "evict", 3)]


@pytest.mark.django_db
def test_the_page_lists_events(viewer_client, events):
    response = viewer_client.get(reverse("console:load_events"))
    html = response.content.decode()
    assert response.status_code == 200 and "<html" in html
    assert "qwen2.5-coder:7b" in html and "evict" in html


@pytest.mark.django_db
def test_filtering_by_kind_over_htmx_returns_the_table_only(viewer_client, events):
    html = viewer_client.get(reverse("console:load_events"), {"kind": "evict"}, **HX).content.decode()
    assert html.lstrip().startswith('<div id="table"')
    rows = html.split("<tbody>")[1]
    assert "mistral:7b" in rows and "qwen2.5-coder:7b" not in rows
