"""The SLO page: the five metrics against their targets, per-hour charts, fallback and thrash reports."""
import json

import pytest
from django.urls import reverse

from models_registry import metrics
from tests.web.conftest import HX


@pytest.mark.django_db
def test_the_page_shows_the_five_metrics_and_chart_data(viewer_client, decisions):
    response = viewer_client.get(reverse("console:slo"))
    html = response.content.decode()
    assert response.status_code == 200 and "<html" in html
    for name in metrics.METRICS:
        assert name in html
    charts = response.context["charts"]
    assert len(charts) == len(metrics.METRICS)
    assert len(charts[0]["x"]) == 25  # 24 complete hours + the current one
    assert 'id="chart-data"' in html and "uPlot.iife.min.js" in html
    assert "Fallbacks" in html and "Thrash" in html


@pytest.mark.django_db
def test_a_window_switch_over_htmx_returns_the_body_only(viewer_client, tower):
    response = viewer_client.get(reverse("console:slo"), {"window": "1h"}, **HX)
    html = response.content.decode()
    assert html.lstrip().startswith('<div id="slo"')
    data = json.loads(html.split('id="chart-data" type="application/json">')[1].split("</script>")[0])
    assert len(data[0]["x"]) == 2


@pytest.mark.django_db
def test_an_unknown_window_is_404(viewer_client, tower):
    assert viewer_client.get(reverse("console:slo"), {"window": "1y"}).status_code == 404


def test_the_met_strip_filter_writes_what_the_template_loop_wrote():
    from django.template import Context, Template

    series = [{"met": v} for v in (True, False, None, True, None)]
    loop = Template('{% for p in s %}{% if p.met is True %}▮{% elif p.met is False %}<span class="down">▮</span>'
                    '{% else %}<span class="muted">·</span>{% endif %}{% endfor %}')
    assert Template("{% load console %}{{ s|met_strip }}").render(Context({"s": series})) == loop.render(
        Context({"s": series}))
