"""The replay pages: /replay/ lists stored `manage.py replay` runs, /replay/<id>/ shows one run's
parameters, SLO table and plots (PNG bytes served from the database)."""
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import call_command
from django.urls import reverse

from models_registry import models as m

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def stored_run(db):
    """A real run of the command: 1 % of the Azure merged trace, two policies, one what-if."""
    call_command("replay", trace=str(ROOT / "data/traces/azure2023_merged_by_service.csv"),
                 profile=str(ROOT / "profiles/tower.yaml"), mapping="azure2023", sample=0.01, seed=3,
                 start="2023-11-16T18:15:46Z", policy="towerops,ollama_default",
                 what_if=[str(ROOT / "profiles/whatif/raise-code-floor.yaml")], stdout=StringIO())
    return m.ReplayRun.objects.get()


@pytest.mark.django_db
def test_the_pages_and_plots_need_a_login(client, stored_run):
    for url in (reverse("console:replay_runs"), reverse("console:replay_run", args=[stored_run.pk]),
                reverse("console:replay_plot", args=[stored_run.pk, "vram.png"])):
        response = client.get(url)
        assert response.status_code == 302, url
        assert response["Location"] == f"{reverse('console:login')}?next={url}"


@pytest.mark.django_db
def test_the_list_shows_each_stored_run_newest_first(viewer_client, stored_run):
    older = m.ReplayRun.objects.create(trace="other.csv", profile="p.yaml", requests=3, summaries=[])
    m.ReplayRun.objects.filter(pk=older.pk).update(created_at=stored_run.created_at.replace(year=2020))
    response = viewer_client.get(reverse("console:replay_runs"))
    html = response.content.decode()
    assert response.status_code == 200
    assert [r.pk for r in response.context["rows"]] == [stored_run.pk, older.pk]
    assert reverse("console:replay_run", args=[stored_run.pk]) in html
    assert "azure2023_merged_by_service.csv" in html and f"<td>{stored_run.requests}</td>" in html
    assert "code floor 0.85" in html  # the what-if's name
    # targets met per (profile, policy), counted from the stored summaries
    met = {(s["profile"], s["policy"]): sum(v["met"] is True for v in s["slo"].values()) for s in stored_run.summaries}
    assert f"towerops @ base {met[('base', 'towerops')]}/5" in html
    assert 'href="/replay/">Replays</a>' in html  # the nav link


@pytest.mark.django_db
def test_the_detail_shows_the_parameters_the_slo_table_and_the_plots(viewer_client, stored_run):
    response = viewer_client.get(reverse("console:replay_run", args=[stored_run.pk]))
    html = response.content.decode()
    assert response.status_code == 200
    assert "time scale 1.0 · sample 0.01 · seed 3" in html
    from models_registry.policy import POLICY_VERSION

    assert f"towerops policy {POLICY_VERSION}" in html  # the decision core the run used
    assert [s["policy_version"] for s in stored_run.summaries] == [POLICY_VERSION, None] * 2
    assert ">Thu 2023-11-16 18:15:46 UTC</time> (preload windows simulated)" in html and "code floor 0.85" in html
    assert [(c["profile"], c["policy"]) for c in response.context["columns"]] == [
        ("base", "towerops"), ("base", "ollama_default"), ("code floor 0.85", "towerops"),
        ("code floor 0.85", "ollama_default")]
    p95 = response.context["rows"][0]
    assert p95["label"] == "interactive TTFT p95" and p95["target"] == "< 5"
    for cell, s in zip(p95["cells"], stored_run.summaries):
        assert cell["text"] == f"{s['slo']['interactive_p95_s']['value']:.2f} s"
        assert cell["met"] is s["slo"]["interactive_p95_s"]["met"]
    vram = response.context["rows"][2]
    assert vram["cells"][0]["text"] == f"{stored_run.summaries[0]['slo']['vram_efficiency']['value']:.1%}"
    assert stored_run.table in html.replace("&gt;", ">").replace("&lt;", "<")
    for name in ("loads_per_hour.png", "vram.png", "wait_cdf.png"):
        assert f'src="{reverse("console:replay_plot", args=[stored_run.pk, name])}"' in html


@pytest.mark.django_db
def test_a_plot_is_served_as_png_from_the_database(viewer_client, stored_run):
    plot = stored_run.plots.get(name="wait_cdf.png")
    response = viewer_client.get(reverse("console:replay_plot", args=[stored_run.pk, "wait_cdf.png"]))
    assert response.status_code == 200 and response["Content-Type"] == "image/png"
    assert response.content == bytes(plot.png) and response.content[:4] == b"\x89PNG"
    assert viewer_client.get(reverse("console:replay_plot", args=[stored_run.pk, "nope.png"])).status_code == 404


@pytest.mark.django_db
def test_an_unknown_run_is_404_and_an_empty_list_says_how_to_make_one(viewer_client):
    assert viewer_client.get(reverse("console:replay_run", args=[999999])).status_code == 404
    html = viewer_client.get(reverse("console:replay_runs")).content.decode()
    assert "no stored replays" in html
