"""The monitoring shipped in deploy/: Prometheus rules (promtool), their unit tests, the example
Prometheus configuration, and the Grafana dashboard, whose every query must parse and name only
metrics that GET /metrics exposes.

promtool comes with Debian's `prometheus` package (.ci/run installs it); without it these
tests say they were skipped.
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "towerops-rules.yml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "towerops-rules.test.yml"
EXAMPLE_CONFIG = ROOT / "deploy" / "prometheus" / "prometheus.example.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "towerops-dashboard.json"
PROMTOOL = shutil.which("promtool")

needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool is missing: apt-get install -y prometheus")


def promtool(*args, cwd=None) -> subprocess.CompletedProcess:
    r = subprocess.run([PROMTOOL, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    return r


def dashboard_queries() -> list[str]:
    """Every PromQL expression of the dashboard, Grafana's interval variables replaced by a duration."""
    out = []

    def walk(panels):
        for p in panels:
            walk(p.get("panels", []))
            out.extend(t["expr"] for t in p.get("targets", []) if t.get("expr"))

    walk(json.loads(DASHBOARD.read_text())["panels"])
    return [re.sub(r"\$__(rate_)?interval|\$__range", "5m", q) for q in out]


def rule_queries() -> list[str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [r["expr"] for g in groups for r in g["rules"]]


def recorded_names() -> set[str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return {r["record"] for g in groups for r in g["rules"] if "record" in r}


_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool",
             "offset", "inf", "nan", "atan2"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: identifiers that are not functions, keywords,
    label names (inside {…} or a grouping clause) or durations (inside […])."""
    s = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings: label values
    s = re.sub(r"\{[^}]*\}", " ", s)  # label matchers
    s = re.sub(r"\[[^\]]*\]", " ", s)  # ranges and subqueries
    s = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", s)
    names = set()
    for match in re.finditer(r"(?<![\w.])([A-Za-z_:][A-Za-z0-9_:]*)(\s*\()?", s):
        name, call = match.group(1), match.group(2)
        if not call and name.lower() not in _KEYWORDS:
            names.add(name)
    return names


def test_metric_names_reads_promql_as_expected():
    expr = ('histogram_quantile(0.95, sum by (le, model) (rate(towerops_x_bucket{urgency=~"a|b", le="5.0"}[5m])))'
            ' / on() group_left() scalar(towerops_y) > bool 1e3 and time() - towerops_z offset 5m')
    assert metric_names(expr) == {"towerops_x_bucket", "towerops_y", "towerops_z"}


@pytest.fixture
def exposed(tower, client) -> set[str]:
    """Every sample name GET /metrics can give, from its # TYPE lines (a family with no samples
    right now is still declared): a counter's samples end in _total (the TYPE line may say it
    already), a histogram's in _bucket, _sum and _count."""
    r = client.get("/metrics")
    assert r.status_code == 200
    names = set()
    for line in r.content.decode().splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            if kind == "counter":
                names.add(name if name.endswith("_total") else name + "_total")
            elif kind == "histogram":
                names.update(name + s for s in ("_bucket", "_sum", "_count"))
            else:
                names.add(name)
    assert "towerops_time_to_first_token_seconds_bucket" in names
    return names


def test_the_dashboard_queries_only_metrics_that_metrics_exposes(exposed):
    queries = dashboard_queries()
    assert len(queries) >= 20
    used = set().union(*map(metric_names, queries))
    assert used - exposed == set(), f"the dashboard queries metrics /metrics does not expose: {used - exposed}"
    # and it shows the families this dashboard exists for
    assert {"towerops_time_to_first_token_seconds_bucket", "towerops_expected_wait_seconds_bucket",
            "towerops_endpoint_up", "towerops_endpoint_loaded_models",
            "towerops_model_load_duration_seconds_bucket"} <= used


def test_the_alert_rules_use_only_exposed_or_recorded_metrics(exposed):
    used = set().union(*map(metric_names, rule_queries()))
    unknown = used - exposed - recorded_names()
    assert unknown == set(), f"the rules query metrics /metrics does not expose: {unknown}"


@needs_promtool
def test_the_rules_pass_promtool_check():
    out = promtool("check", "rules", RULES).stdout
    assert "SUCCESS" in out


@needs_promtool
def test_the_alerts_fire_in_promtools_unit_tests():
    promtool("test", "rules", RULE_TESTS.name, cwd=RULE_TESTS.parent)


@needs_promtool
def test_every_dashboard_query_is_valid_promql(tmp_path):
    # promtool has no "parse this query" command: the queries become recording rules it checks.
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query_{i}", "expr": q} for i, q in enumerate(dashboard_queries())]}]}
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump(rules))
    promtool("check", "rules", path)


@needs_promtool
def test_the_example_prometheus_config_passes_promtool(tmp_path):
    key = tmp_path / "towerops-api-key"
    key.write_text("tow_example\n")
    config = EXAMPLE_CONFIG.read_text().replace("/etc/prometheus/towerops-api-key", str(key))
    (tmp_path / "prometheus.yml").write_text(config)
    shutil.copy(RULES, tmp_path / RULES.name)
    promtool("check", "config", tmp_path / "prometheus.yml")
