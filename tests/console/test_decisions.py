"""The decisions log (filters, keyset pages) and a decision's detail page."""
import datetime as dt

import pytest
from django.urls import reverse
from django.utils import timezone

from models_registry import models as m
from models_registry.console.views import logs as views
from models_registry.slo import rollups
from tests.console.conftest import HX
from tests.helpers import make_decision


@pytest.mark.django_db
def test_the_log_lists_decisions_newest_first(viewer_client, decisions):
    response = viewer_client.get(reverse("console:decisions"))
    html = response.content.decode()
    assert response.status_code == 200 and "<html" in html
    assert html.index(f">{decisions[1].pk}</a>") < html.index(f">{decisions[0].pk}</a>")


@pytest.mark.django_db
def test_filters_narrow_the_table_and_htmx_gets_only_the_table(viewer_client, decisions):
    response = viewer_client.get(reverse("console:decisions"), {"task_type": "general", "urgency": "batch"}, **HX)
    html = response.content.decode()
    assert "<html" not in html and html.lstrip().startswith('<div id="table"')
    assert f">{decisions[1].pk}</a>" in html
    assert f">{decisions[0].pk}</a>" not in html


@pytest.mark.django_db
def test_a_bad_time_filter_is_shown_in_place(viewer_client, decisions):
    response = viewer_client.get(reverse("console:decisions"), {"since": "yesterday"}, **HX)
    assert response.status_code == 200
    assert b"since: not a date and time" in response.content


@pytest.mark.django_db
def test_pages_continue_after_the_last_row(viewer_client, tower, monkeypatch):
    monkeypatch.setattr(views, "PAGE_SIZE", 2)
    now = timezone.now()
    rows = [make_decision(at=now - dt.timedelta(seconds=i)) for i in range(5)]
    first = viewer_client.get(reverse("console:decisions"))
    assert first.context["next_query"]
    second = viewer_client.get(reverse("console:decisions") + "?" + first.context["next_query"])
    assert [d.pk for d in first.context["rows"]] == [rows[0].pk, rows[1].pk]
    assert [d.pk for d in second.context["rows"]] == [rows[2].pk, rows[3].pk]


@pytest.mark.django_db
def test_the_detail_shows_every_candidate_and_why_it_lost(viewer_client, decisions):
    d = decisions[0]
    response = viewer_client.get(reverse("console:decision_detail", args=[d.pk]))
    html = response.content.decode()
    assert response.status_code == 200
    assert len(d.candidates) > 1
    for c in d.candidates:
        assert c["model"] in html
        if c["rejected_because"]:
            assert c["rejected_because"].replace("'", "&#x27;").replace(">", "&gt;").replace("<", "&lt;") in html
    assert "not reported" in html


@pytest.mark.django_db
def test_the_detail_shows_a_reported_outcome(viewer_client, decisions):
    o = m.DecisionOutcome.objects.create(decision=decisions[0], reported_at=timezone.now(), response_ms=812,
                                         success=True, rating=0.9)
    html = viewer_client.get(reverse("console:decision_detail", args=[decisions[0].pk])).content.decode()
    outcome = html.split("<dt>outcome</dt>", 1)[1].split("</dd>", 1)[0]
    assert "812 ms" in outcome and "rating 0.9" in outcome and "first token" not in outcome
    o.first_token_ms = 140
    o.save()
    html = viewer_client.get(reverse("console:decision_detail", args=[decisions[0].pk])).content.decode()
    assert "first token 140 ms · 812 ms" in html
    assert "first token" in html.split("<dt>expected</dt>", 1)[1].split("</dd>", 1)[0]  # the expected one


@pytest.mark.django_db
def test_an_unknown_decision_is_404(viewer_client):
    assert viewer_client.get(reverse("console:decision_detail", args=[999999])).status_code == 404


@pytest.mark.django_db
def test_pages_continue_through_rows_of_the_same_time(viewer_client, tower, monkeypatch):
    """The cursor is (time, id): rows sharing a timestamp are split across pages by id, none lost
    or repeated (the view bounds the scan with time <= cursor, then breaks ties on id)."""
    monkeypatch.setattr(views, "PAGE_SIZE", 2)
    at = timezone.now()
    rows = [make_decision(at=at - dt.timedelta(seconds=1 if i < 2 else 0)) for i in range(5)]
    seen, query = [], ""
    for _ in range(4):
        response = viewer_client.get(reverse("console:decisions") + "?" + query)
        seen += [d.pk for d in response.context["rows"]]
        query = response.context["next_query"]
        if not query:
            break
    expected = sorted(rows, key=lambda d: (d.created_at, d.pk), reverse=True)
    assert seen == [d.pk for d in expected]


@pytest.mark.django_db
def test_a_model_filter_is_resolved_to_its_id_first(viewer_client, decisions):
    """The view looks the tag up, then filters decisions on model_id (PostgreSQL plans it with
    the model's statistics); a tag of no model lists nothing without reading decisions."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    tag = decisions[0].model.tag
    with CaptureQueriesContext(connection) as q:
        response = viewer_client.get(reverse("console:decisions"), {"model": tag})
    assert {d.pk for d in response.context["rows"]} == {d.pk for d in decisions if d.model_id == decisions[0].model_id}
    listing = [x["sql"] for x in q.captured_queries if "models_registry_selectiondecision" in x["sql"]]
    assert len(listing) == 1 and '"models_registry_selectiondecision"."model_id" = ' in listing[0]
    with CaptureQueriesContext(connection) as q:
        response = viewer_client.get(reverse("console:decisions"), {"model": "no-such-model"})
    assert list(response.context["rows"]) == [] and b"no decisions match" in response.content
    assert not [x for x in q.captured_queries if "models_registry_selectiondecision" in x["sql"]]


@pytest.mark.django_db
def test_a_filter_combination_reads_only_the_hours_the_rollups_say_hold_its_rows(viewer_client, tower, monkeypatch):
    """Two filters have no index together; the hourly rollups' counts bound the scan to the hours
    holding the page's rows. The pages are the same as an unbounded query's, also across an hour
    whose rollup is missing (read, not skipped), and an empty combination reads only the hours
    not rolled up yet."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext


    monkeypatch.setattr(views, "PAGE_SIZE", 3)
    now = timezone.now()
    top = rollups.floor_hour(now)
    base = make_decision("general", "batch", at=now)
    fields = {f.attname: getattr(base, f.attname) for f in m.SelectionDecision._meta.concrete_fields
              if f.attname != "id"}
    m.SelectionDecision.objects.bulk_create([
        m.SelectionDecision(**{**fields, "created_at": top - dt.timedelta(hours=h) + dt.timedelta(minutes=k),
                               "urgency": "batch" if h in (2, 5) else "interactive"})
        for h in range(1, 8) for k in range(4)
    ])
    for h in range(1, 8):
        rollups.rollup_hour(top - dt.timedelta(hours=h), now=now)
    m.SloHourlyRollup.objects.filter(hour=top - dt.timedelta(hours=4)).delete()  # never rolled up
    expected = list(m.SelectionDecision.objects.filter(task_type__name="general", urgency="batch")
                    .order_by("-created_at", "-id").values_list("pk", flat=True))
    assert len(expected) == 9

    seen, query, bounds = [], {"task_type": "general", "urgency": "batch"}, []
    url = reverse("console:decisions")
    while True:
        with CaptureQueriesContext(connection) as q:
            page = viewer_client.get(url + "?" + query) if isinstance(query, str) else viewer_client.get(url, query)
        seen += [d.pk for d in page.context["rows"]]
        listing = [x["sql"] for x in q.captured_queries if 'FROM "models_registry_selectiondecision"' in x["sql"]
                   and "ORDER BY" in x["sql"] and "LIMIT 1" not in x["sql"]]
        assert len(listing) == 1
        bounds.append('"created_at" >= ' in listing[0])
        if not page.context["next_query"]:
            break
        query = page.context["next_query"]
    assert seen == expected
    assert all(bounds)

    with CaptureQueriesContext(connection) as q:
        page = viewer_client.get(url, {"task_type": "general", "urgency": "critical"})
    assert list(page.context["rows"]) == []
    listing = [x for x in q.captured_queries if "ORDER BY" in x["sql"] and "selectiondecision" in x["sql"]
               and "LIMIT 1" not in x["sql"]]
    # Read from the hour with no rollup (4 h ago) on: every rolled-up hour below it holds none.
    floor = (top - dt.timedelta(hours=4)).strftime("%Y-%m-%d %H:00:00")
    assert len(listing) == 1 and f'"created_at" >= \'{floor}' in listing[0]["sql"]
    rollups.rollup_hour(top - dt.timedelta(hours=4), now=now)
    with CaptureQueriesContext(connection) as q:
        page = viewer_client.get(url, {"task_type": "general", "urgency": "critical"})
    listing = [x for x in q.captured_queries if "ORDER BY" in x["sql"] and "selectiondecision" in x["sql"]
               and "LIMIT 1" not in x["sql"]]
    # Only the hours not rolled up: the current one, and the last one while it settles (the first
    # minutes of an hour: rollups.rollup_hour returns None for it then).
    settled = m.SloHourlyRollup.objects.filter(hour=top - dt.timedelta(hours=1), computed_at__isnull=False).exists()
    floor = (top if settled else top - dt.timedelta(hours=1)).strftime("%Y-%m-%d %H:00:00")
    assert f'"created_at" >= \'{floor}' in listing[0]["sql"]


def _row(html: str, pk: int) -> list[str]:
    """The text of each cell of decision `pk`'s row in the log."""
    import re

    row = html.split(f'<tr data-decision="{pk}">', 1)[1].split("</tr>", 1)[0]
    return [" ".join(re.sub(r"<[^>]+>", " ", c).split()) for c in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)]


@pytest.fixture
def measured(tower):
    """Four decisions: through the gateway with the first token it measured, through the select API
    with one its caller reported, through the select API with only a response time, and one with
    no outcome."""
    now = timezone.now()
    By, Source = m.DecisionOutcome.MeasuredBy, m.SelectionDecision.Source
    gw = make_decision("general", "interactive", now - dt.timedelta(seconds=4), source=Source.GATEWAY)
    api = make_decision("general", "interactive", now - dt.timedelta(seconds=3), source=Source.API)
    slow = make_decision("general", "batch", now - dt.timedelta(seconds=2), source=Source.API)
    none = make_decision("general", "batch", now - dt.timedelta(seconds=1), source=Source.GATEWAY)
    for d, first, total, by in ((gw, 420, 1800, By.GATEWAY), (api, 1240, 3000, By.CALLER),
                                (slow, None, 2600, By.CALLER)):
        m.DecisionOutcome.objects.create(decision=d, reported_at=now, response_ms=total, first_token_ms=first,
                                         success=True, measured_by=by)
    return {"gateway": gw, "api": api, "slow": slow, "none": none}


@pytest.mark.django_db
def test_each_row_shows_its_source_and_the_measured_first_token_beside_the_quoted_wait(viewer_client, measured):
    html = viewer_client.get(reverse("console:decisions")).content.decode()
    header = html.split("<thead>", 1)[1].split("</thead>", 1)[0]
    assert "<th>source</th>" in header and "<th>quoted wait</th><th>first token</th>" in header
    cols = {name: i for i, name in enumerate(
        ["#", "time", "source", "task type", "urgency", "model", "endpoint", "action", "quoted wait", "first token"])}
    for name, source, first in (("gateway", "gateway", "0.4 s gateway"), ("api", "select API", "1.2 s caller"),
                                ("slow", "select API", "≤ 2.6 s caller"), ("none", "gateway", "—")):
        d = measured[name]
        cells = _row(html, d.pk)
        assert cells[cols["source"]] == source, name
        assert cells[cols["quoted wait"]] == f"{d.expected_wait_s:.1f} s", name
        assert cells[cols["first token"]] == first, name
    gw = html.split(f'<tr data-decision="{measured["gateway"].pk}">', 1)[1].split("</tr>", 1)[0]
    assert 'title="measured by the gateway">gateway</span>' in gw


@pytest.mark.django_db
def test_the_outcomes_come_in_the_listing_query(viewer_client, measured):
    """No query per row: the outcome is joined to the page's one listing query."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as q:
        response = viewer_client.get(reverse("console:decisions"))
    assert len(response.context["rows"]) == 4
    outcome_queries = [x["sql"] for x in q.captured_queries if "models_registry_decisionoutcome" in x["sql"]]
    assert len(outcome_queries) == 1 and "models_registry_selectiondecision" in outcome_queries[0]


@pytest.mark.django_db
def test_the_source_filter(viewer_client, measured):
    Source = m.SelectionDecision.Source
    response = viewer_client.get(reverse("console:decisions"), {"source": Source.GATEWAY}, **HX)
    assert {d.pk for d in response.context["rows"]} == {measured["gateway"].pk, measured["none"].pk}
    html = viewer_client.get(reverse("console:decisions"), {"source": Source.API}).content.decode()
    assert '<option value="api" selected>select API</option>' in html
    # Combined with two labels: no scan bound from the rollups (they do not count by source).
    response = viewer_client.get(reverse("console:decisions"),
                                 {"source": Source.API, "task_type": "general", "urgency": "batch"})
    assert [d.pk for d in response.context["rows"]] == [measured["slow"].pk]


@pytest.mark.django_db
def test_the_detail_shows_the_source_and_the_measured_first_token_against_the_quoted_wait(viewer_client, measured):
    def fact(pk, name):
        html = viewer_client.get(reverse("console:decision_detail", args=[pk])).content.decode()
        import re

        return " ".join(re.sub(r"<[^>]+>", " ", html.split(f"<dt>{name}</dt><dd", 1)[1].split("</dd>", 1)[0]
                               .split(">", 1)[1]).split())

    gw = measured["gateway"]
    assert fact(gw.pk, "source") == "gateway"
    late = 0.42 - gw.expected_wait_s
    word = f"{late:.2f} s later" if late > 0 else f"{-late:.2f} s sooner"
    assert fact(gw.pk, "first token") == (f"quoted {gw.expected_wait_s:.2f} s · measured 0.42 s "
                                          f"(measured by the gateway) · {word} than quoted")
    assert "measured by the gateway" in fact(gw.pk, "outcome")
    api = measured["api"]
    assert fact(api.pk, "source") == "select API"
    assert "measured 1.24 s (reported by the caller)" in fact(api.pk, "first token")
    assert fact(measured["slow"].pk, "first token").endswith(
        "no first-token time (the whole response in 2.60 s, reported by the caller)")
    assert fact(measured["none"].pk, "first token").endswith("· not measured")
