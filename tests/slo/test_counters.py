"""The /metrics counters never go back: scraped before and after a prune, re-rolls, timeout
changes, a late outcome and a restart (a fresh process on the same database), they stay exactly
equal when nothing new happened, and only grow when something did."""
from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys

import pytest
from prometheus_client.parser import text_string_to_metric_families

from models_registry import models as m
from models_registry.slo import retention, rollups
from tests.integration.conftest import ROOT, _test_database_url

from .conftest import base_hour

MIN = dt.timedelta(minutes=1)
HOUR = dt.timedelta(hours=1)
COUNTED = ("counter", "histogram")


def counters(text: str) -> dict[tuple, float]:
    """Every sample of the counter and histogram families: {(sample name, labels): value}."""
    out = {}
    for fam in text_string_to_metric_families(text):
        if fam.type in COUNTED:
            for s in fam.samples:
                if not s.name.endswith("_created"):
                    out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def scrape(client) -> dict[tuple, float]:
    r = client.get("/metrics")
    assert r.status_code == 200, r.content
    return counters(r.content.decode())


def scrape_from_a_new_process() -> dict[tuple, float]:
    """A restarted server: a new process (no caches) on the same (committed) test database."""
    code = ("import django; django.setup(); from prometheus_client import generate_latest; "
            "from models_registry.slo.prometheus import REGISTRY; print(generate_latest(REGISTRY).decode())")
    env = {**os.environ, "DATABASE_URL": _test_database_url(), "DJANGO_SETTINGS_MODULE": "towerops.settings"}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=120, check=True)
    return counters(out.stdout)


def never_less(before: dict, after: dict) -> None:
    lost = {k: (v, after.get(k)) for k, v in before.items() if after.get(k, -1) < v}
    assert not lost, f"counters went back: {lost}"


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("slo_targets")
def test_counters_stay_equal_across_prune_rerolls_timeouts_late_outcomes_and_a_restart(rig, settings, client,
                                                                                      make_key):
    settings.TOWEROPS_DECISION_RAW_DAYS = 2
    settings.TOWEROPS_LOAD_TIMEOUT_S = 600
    d = rig.decision
    hours = [base_hour(72), base_hour(50), base_hour(49), base_hour(5)]
    late = []
    for i, h in enumerate(hours):
        d(h + 5 * MIN, action="fallback", model="remote:gpt-4o-mini", urgency="background", decision_us=300)
        late.append(d(h + 6 * MIN, task="code_generation", decision_us=40 + i))
        asker = d(h + 7 * MIN, action="load", task="analysis", urgency="batch", model="qwen2.5-coder:7b")
        rig.load(h + 7 * MIN, decision=asker, model="qwen2.5-coder:7b", duration=3.0 + i)
        rig.load(h + 9 * MIN, "evict", duration=1.0)
        rig.load(h + 10 * MIN, "fail", duration=None)
    first = scrape(client)
    decisions = sum(v for (name, _), v in first.items() if name == "towerops_decisions_total")
    assert decisions == 12
    steps = []

    def step(what, grows: str | None = None):
        """Every counter equal to the first scrape, except the family `grows` (fed by an outcome
        that arrived): it may only grow, never go back."""
        nonlocal first
        now = scrape(client)
        same = {k: v for k, v in now.items() if not (grows and k[0].startswith(grows))}
        before = {k: v for k, v in first.items() if not (grows and k[0].startswith(grows))}
        assert same == before, f"after {what}: {set(same.items()) ^ set(before.items())}"
        if grows:
            assert all(now.get(k, 0) >= v for k, v in first.items() if k[0].startswith(grows))
            assert any(now[k] > first.get(k, 0) for k in now if k[0].startswith(grows))
        first = now
        steps.append(what)

    rollups.rollup_due()
    step("the beat's rollups")
    assert retention.prune_raw_decisions() == 9
    assert m.SloHourlyRollup.objects.filter(sealed_at__isnull=False).count() == 3
    step("the prune")
    settings.TOWEROPS_LOAD_TIMEOUT_S = 7200
    step("the load timeout raised")
    rollups.rollup_due()
    step("the beat at the raised timeout")
    settings.TOWEROPS_LOAD_TIMEOUT_S = 60
    rollups.rollup_due()
    step("the beat at a lowered timeout")
    r = client.post(f"/api/v1/decisions/{late[-1].pk}/outcome", {"response_ms": 700, "success": True},
                    content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {make_key('select')}")
    assert r.status_code == 200, r.content
    step("a late outcome", grows="towerops_time_to_first_token_seconds")  # the outcome's own observation
    rollups.rollup_due()
    step("the beat after the late outcome")
    rollups.rollup_range(hours[0] - HOUR, rollups.floor_hour(dt.datetime.now(dt.timezone.utc)))
    step("every hour re-rolled by hand")
    assert scrape_from_a_new_process() == first
    steps.append("a restart")
    assert len(steps) == 9

    d(dt.datetime.now(dt.timezone.utc), decision_us=90)  # something new: counters grow, none goes back
    grown = scrape(client)
    never_less(first, grown)
    assert sum(v for (name, _), v in grown.items() if name == "towerops_decisions_total") == decisions + 1
