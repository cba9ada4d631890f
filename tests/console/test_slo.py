"""The SLO page: the five metrics against their targets, per-hour charts, fallback and thrash reports."""
import json

import pytest
from django.urls import reverse

from models_registry.slo import metrics
from tests.console.conftest import HX


@pytest.mark.django_db
def test_the_page_shows_the_five_metrics_and_chart_data(viewer_client, decisions):
    response = viewer_client.get(reverse("console:slo"))
    html = response.content.decode()
    assert response.status_code == 200 and "<html" in html
    for title in ("Interactive time to first token, p95", "Model loads per hour", "VRAM efficiency",
                  "Quality floor met", "Fallback rate"):
        assert f"<h2>{title}</h2>" in html
    # units and targets in words, not ids and comparators
    assert "target: under 5 s" in html and "target: over 80 %" in html and "target: under 10 loads/h" in html
    assert "fraction" not in html and "lt 5.0" not in html and ">interactive_p95_s<" not in html
    assert 'hx-trigger="every 60s"' in html  # refreshes by itself
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


@pytest.mark.django_db
def test_shares_are_percent_and_charts_say_their_unit(viewer_client, decisions):
    from models_registry import models as m

    m.SelectionDecision.objects.filter(pk=decisions[0].pk).update(action="fallback")
    response = viewer_client.get(reverse("console:slo"))
    html = response.content.decode()
    card = html.split('id="metric-fallback_rate"')[1].split("</section>")[0]
    assert "<strong>50.0 %</strong>" in card and "missed" in card  # 1 of 2 decisions, target under 5 %
    charts = {c["id"]: c for c in response.context["charts"]}
    fallback = charts["chart-fallback_rate"]
    assert fallback["unit"] == "%" and fallback["target"] == 5.0 and 50.0 in fallback["y"]
    assert charts["chart-interactive_p95_s"]["unit"] == "s" and charts["chart-loads_per_hour"]["unit"] == "loads/h"
    assert all(c["label"] for c in charts.values())  # the page writes their legends


def test_display_numbers_and_targets():
    from models_registry.console import slo_display as D

    assert D.number(metrics.P95, 3.851) == "3.85 s" and D.number(metrics.FALLBACK_RATE, 0.047) == "4.7 %"
    assert D.number(metrics.LOADS_PER_HOUR, None) == "no data"
    assert D.target_text(metrics.VRAM_EFFICIENCY, {"comparator": "gt", "value": 0.8, "enabled": True}) == "over 80 %"
    assert D.target_text(metrics.P95, {"comparator": "le", "value": 5.0, "enabled": False}) == "at most 5 s (off)"


@pytest.mark.django_db
def test_the_p95_card_says_which_first_tokens_the_gateway_measured(viewer_client, tower):
    """A gateway request's first token is measured there; the card's source counts tell it from a
    caller's report and from the estimates of decisions without an outcome."""
    import datetime as dt

    from django.utils import timezone

    from models_registry import models as m
    from tests.helpers import make_decision

    now = timezone.now()
    By, Source = m.DecisionOutcome.MeasuredBy, m.SelectionDecision.Source
    for i, (source, by) in enumerate(((Source.GATEWAY, By.GATEWAY), (Source.GATEWAY, By.GATEWAY),
                                      (Source.API, By.CALLER))):
        d = make_decision("general", "interactive", now - dt.timedelta(minutes=i + 1), source=source)
        m.DecisionOutcome.objects.create(decision=d, reported_at=now, response_ms=2000, first_token_ms=300,
                                         success=True, measured_by=by)
    make_decision("general", "interactive", now - dt.timedelta(minutes=5))  # no outcome: its quoted wait
    html = viewer_client.get(reverse("console:slo"), {"window": "1h"}).content.decode()
    card = " ".join(html.split('id="metric-interactive_p95_s"')[1].split("</section>")[0].split())
    assert ("3 first-token times (2 measured at the gateway, 1 reported by callers), 0 reported response times"
            in card) and "1 expected waits" in card


@pytest.mark.django_db
def test_the_thrash_section_counts_thrash_loads_by_model(viewer_client, tower):
    import datetime as dt

    from django.utils import timezone

    from models_registry import models as m

    for thrash in (True, False):
        m.LoadEvent.objects.create(model=m.LlmModel.objects.get(tag="mistral:7b"),
                                   endpoint=m.Endpoint.objects.get(name="tower-amd"), kind="load", trigger="selection",
                                   requested_at=timezone.now() - dt.timedelta(minutes=5), thrash=thrash)
    html = viewer_client.get(reverse("console:slo"), {"window": "1h"}, **HX).content.decode()
    section = " ".join(html.split("<h2>Thrash</h2>")[1].split("</section>")[0].split())
    assert "2 loads (1 thrash load: a model loaded back less than 10 min after its eviction" in section
    assert "<th>thrash loads</th>" in section
    assert "<tr><td>mistral:7b</td><td>2</td><td>1</td>" in section
