"""GET /metrics: Prometheus exposition through prometheus-client, read from the database on scrape.

A custom Collector (not process-local counters): every gunicorn worker answers a scrape
with the same numbers, computed from the hourly rollups plus the raw rows of the hours
not rolled up yet (slo.counters), so counters stay monotonic across workers and restarts.
Gauges (endpoints, residents, GPUs, the 24 h SLO figures) are read as they are now.
Each family has one unit, named in it (`_seconds`, `_bytes`, `_ratio`, `_per_hour`).

Time to first token (`towerops_time_to_first_token_seconds`) comes from reported outcomes
only, labelled by its `source`: `first_token` (the caller's measured first_token_ms) or
`response` (its response_ms when it sent no first-token time: an upper bound). Decisions
without an outcome are not in it; their policy estimate is in `towerops_expected_wait_seconds`
(every decision that chose a model, at the time it was taken). An outcome reported again
replaces the old one, so its sample can move between buckets (a rare dip Prometheus reads as a
counter reset). The labelled histograms start with the hours rolled up after migration 0009.

Access: a bearer API key with the `read` scope, or a client address listed in
TOWEROPS_METRICS_ALLOW_IPS (addresses or networks, comma-separated; default
127.0.0.1,::1; empty: keys only). Behind a reverse proxy REMOTE_ADDR is the proxy's.
"""
from __future__ import annotations

import ipaddress
import logging

from django.db import DatabaseError, connection
from django.http import HttpRequest, HttpResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)

from models_registry import conf
from models_registry import models as m
from models_registry.slo import metrics, reports, rollups
from models_registry.slo.counters import totals
from models_registry.timeutil import utcnow

log = logging.getLogger(__name__)
MIB = 1024 * 1024

# The 24 h SLO figures, one family each: (family, its target's family, scale to the family's unit).
SLO_FAMILIES = {
    metrics.P95: ("towerops_slo_interactive_ttft_p95_seconds", "towerops_slo_interactive_ttft_p95_target_seconds",
                  "p95 of the time to first token of critical and interactive decisions"),
    metrics.LOADS_PER_HOUR: ("towerops_slo_loads_per_hour", "towerops_slo_loads_target_per_hour",
                             "completed model loads per observed hour"),
    metrics.VRAM_EFFICIENCY: ("towerops_slo_vram_efficiency_ratio", "towerops_slo_vram_efficiency_target_ratio",
                              "useful / usable VRAM-seconds"),
    metrics.QUALITY_MET: ("towerops_slo_quality_met_ratio", "towerops_slo_quality_met_target_ratio",
                          "share of decisions whose model met the task's quality floor"),
    metrics.FALLBACK_RATE: ("towerops_slo_fallback_ratio", "towerops_slo_fallback_target_ratio",
                            "share of decisions sent to a remote fallback"),
}


def _buckets(edges, counts, scale=1.0) -> list[tuple[str, float]]:
    out, cum = [], 0
    for edge, c in zip(edges, counts):
        cum += c
        out.append((repr(float(edge) * scale), cum))
    out.append(("+Inf", sum(counts)))
    return out


def latest_snapshots() -> list[dict]:
    """The newest snapshot of every GPU, with the GPU's configuration (snapshot fields None without one)."""
    latest = {s.gpu_id: s for s in m.GpuSnapshot.objects.latest_per_gpu()}
    out = []
    for g in m.Gpu.objects.select_related("host").order_by("host__name", "index"):
        s = latest.get(g.pk)
        out.append({
            "host": g.host.name, "index": g.index, "name": g.name, "vendor": g.vendor, "total_mib": g.total_mib,
            "reserved_mib": g.reserved_mib, "snap_total_mib": s.total_mib if s else None,
            "used_mib": s.used_mib if s else None, "free_mib": s.free_mib if s else None,
            "util_pct": s.util_pct if s else None, "taken_at": s.taken_at if s else None,
        })
    return out


def endpoints_now() -> list[dict]:
    """Every endpoint with its host, health, and its residents counted by state, with the age of
    the oldest load still on its way (requested or loading)."""
    with connection.cursor() as cur:
        cur.execute(
            """
            SELECT e.name, h.name, e.is_up, e.last_checked_at, h.last_seen_at,
                   count(r.id) FILTER (WHERE r.state = 'loaded'),
                   count(r.id) FILTER (WHERE r.state IN ('requested', 'loading')),
                   count(r.id) FILTER (WHERE r.state = 'unloading'),
                   min(coalesce(r.loaded_at, r.requested_at)) FILTER (WHERE r.state IN ('requested', 'loading'))
            FROM models_registry_endpoint e
            JOIN models_registry_host h ON h.id = e.host_id
            LEFT JOIN models_registry_residency r
                   ON r.endpoint_id = e.id AND r.state IN ('requested', 'loading', 'loaded', 'unloading')
            GROUP BY e.id, h.id ORDER BY e.name
            """
        )
        cols = ("endpoint", "host", "up", "checked_at", "host_seen_at", "loaded", "loading", "unloading",
                "oldest_load_started")
        return [dict(zip(cols, row)) for row in cur.fetchall()]


def _labelled(fam: HistogramMetricFamily, edges, body: dict, names) -> HistogramMetricFamily:
    """Adds the histograms of `body` ({ids key: {"h", "s"}}) to `fam`, their ids named by
    `names(key) -> label values`; keys that name the same labels are added together."""
    merged: dict[tuple, dict] = {}
    for key, h in body.items():
        metrics.merge_labelled(merged, {"x": {names(key): h}})
    for labels, h in sorted(merged.get("x", {}).items()):
        fam.add_metric(list(labels), _buckets(edges, h["h"]), sum_value=h["s"])
    return fam


class TowerOpsCollector:
    def collect(self):
        tasks, models_, endpoints = reports._names()
        task_name = lambda i: reports._name(tasks, i) or ""  # noqa: E731
        model_name = lambda i: reports._name(models_, i) or ""  # noqa: E731
        endpoint_name = lambda i: reports._name(endpoints, i) or ""  # noqa: E731
        tot = totals()

        decisions = CounterMetricFamily(
            "towerops_decisions", "Selection decisions recorded", labels=["action", "task_type", "urgency"]
        )
        agg: dict[tuple, int] = {}
        for key, n in tot.decision_counts.items():
            action, task, urgency, _model = key.split("|")
            k = (action, task_name(task), urgency)
            agg[k] = agg.get(k, 0) + n
        for k, n in sorted(agg.items()):
            decisions.add_metric(list(k), n)
        yield decisions

        yield _histogram(
            "towerops_decision_duration_seconds", "Time the policy took per decision (decision_us)",
            metrics.DECISION_US_EDGES, tot.decision_us_hist, tot.decision_us_sum / 1e6, scale=1e-6,
        )

        hists = tot.hists
        yield _labelled(
            HistogramMetricFamily(
                "towerops_time_to_first_token_seconds",
                "Time to first token from reported outcomes; source: first_token (measured) or response "
                "(the response time, an upper bound, when no first-token time was reported)",
                labels=["urgency", "task_type", "model", "source"]),
            metrics.WAIT_EDGES_S, hists.get("ttft", {}),
            lambda k: (lambda u, t, mo, src: (u, task_name(t), model_name(mo), src))(*k.split("|")),
        )
        yield _labelled(
            HistogramMetricFamily(
                "towerops_expected_wait_seconds",
                "The policy's expected wait until the first token, per decision that chose a model",
                labels=["urgency", "task_type", "model"]),
            metrics.WAIT_EDGES_S, hists.get("wait", {}),
            lambda k: (lambda u, t, mo: (u, task_name(t), model_name(mo)))(*k.split("|")),
        )

        fams = {
            m.LoadEvent.Kind.LOAD: CounterMetricFamily("towerops_model_loads", "Completed model loads", labels=["model", "endpoint"]),
            m.LoadEvent.Kind.EVICT: CounterMetricFamily("towerops_model_evictions", "Models evicted for another load",
                                         labels=["model", "endpoint"]),
            m.LoadEvent.Kind.UNLOAD: CounterMetricFamily("towerops_model_unloads", "Models unloaded (admin, expiry)",
                                          labels=["model", "endpoint"]),
            m.LoadEvent.Kind.FAIL: CounterMetricFamily("towerops_model_load_failures", "Failed model loads",
                                        labels=["model", "endpoint"]),
            rollups.THRASH: CounterMetricFamily(
                "towerops_model_thrash_loads", "Completed loads of a model evicted from the same endpoint less "
                "than 10 minutes before (of towerops_model_loads)", labels=["model", "endpoint"]),
        }
        per: dict[tuple, int] = {}
        for key, n in tot.load_counts.items():
            kind, model, endpoint, _task = key.split("|")
            k = (kind, model_name(model), endpoint_name(endpoint))
            per[k] = per.get(k, 0) + n
        for (kind, model, endpoint), n in sorted(per.items()):
            if kind in fams:
                fams[kind].add_metric([model, endpoint], n)
        yield from fams.values()

        yield _labelled(
            HistogramMetricFamily("towerops_model_load_duration_seconds", "Duration of completed model loads",
                                  labels=["model", "endpoint"]),
            metrics.LOAD_DURATION_EDGES_S, hists.get("load", {}),
            lambda k: (lambda mo, e: (model_name(mo), endpoint_name(e)))(*k.split("|")),
        )

        yield from self._fleet()
        yield from self._slo()

    def _fleet(self):
        now = utcnow()
        ep_labels = ["endpoint", "host"]
        up = GaugeMetricFamily("towerops_endpoint_up", "1 when the endpoint's last check reached its Ollama server",
                               labels=ep_labels)
        checked = GaugeMetricFamily("towerops_endpoint_last_check_timestamp_seconds",
                                    "When the state sync last checked the endpoint (absent: never)", labels=ep_labels)
        loaded = GaugeMetricFamily("towerops_endpoint_loaded_models", "Models loaded on the endpoint now",
                                   labels=ep_labels)
        loading = GaugeMetricFamily("towerops_endpoint_loading_models",
                                    "Loads on their way on the endpoint (requested or loading)", labels=ep_labels)
        unloading = GaugeMetricFamily("towerops_endpoint_unloading_models", "Models being unloaded on the endpoint",
                                      labels=ep_labels)
        oldest = GaugeMetricFamily("towerops_endpoint_oldest_load_age_seconds",
                                   "Age of the endpoint's oldest load still requested or loading (0: none)",
                                   labels=ep_labels)
        seen = GaugeMetricFamily("towerops_host_last_seen_timestamp_seconds",
                                 "When the host's agent last reported GPU telemetry (absent: never)", labels=["host"])
        hosts_seen = {}
        for e in endpoints_now():
            lv = [e["endpoint"], e["host"]]
            up.add_metric(lv, 1 if e["up"] else 0)
            if e["checked_at"] is not None:
                checked.add_metric(lv, e["checked_at"].timestamp())
            loaded.add_metric(lv, e["loaded"])
            loading.add_metric(lv, e["loading"])
            unloading.add_metric(lv, e["unloading"])
            started = e["oldest_load_started"]
            oldest.add_metric(lv, max(0.0, (now - started).total_seconds()) if started else 0.0)
            if e["host_seen_at"] is not None:
                hosts_seen[e["host"]] = e["host_seen_at"]
        for host, at in sorted(hosts_seen.items()):
            seen.add_metric([host], at.timestamp())
        timeout = GaugeMetricFamily("towerops_load_timeout_seconds",
                                    "TOWEROPS_LOAD_TIMEOUT_S: a load still loading after this is failed")
        timeout.add_metric([], conf.value("TOWEROPS_LOAD_TIMEOUT_S"))
        yield from (up, checked, loaded, loading, unloading, oldest, seen, timeout)

        labels = ["host", "gpu", "name", "vendor"]
        total = GaugeMetricFamily("towerops_gpu_vram_total_bytes", "GPU VRAM (latest snapshot)", labels=labels)
        used = GaugeMetricFamily("towerops_gpu_vram_used_bytes", "GPU VRAM in use (latest snapshot)", labels=labels)
        free = GaugeMetricFamily("towerops_gpu_vram_free_bytes", "GPU VRAM free (latest snapshot)", labels=labels)
        reserved = GaugeMetricFamily("towerops_gpu_vram_reserved_bytes", "VRAM held back for other processes",
                                     labels=labels)
        util = GaugeMetricFamily("towerops_gpu_utilization_ratio", "GPU utilisation 0..1 (latest snapshot)",
                                 labels=labels)
        taken = GaugeMetricFamily("towerops_gpu_snapshot_timestamp_seconds", "When the latest snapshot was taken",
                                  labels=labels)
        for g in latest_snapshots():
            lv = [g["host"], str(g["index"]), g["name"], g["vendor"]]
            reserved.add_metric(lv, g["reserved_mib"] * MIB)
            total.add_metric(lv, (g["snap_total_mib"] or g["total_mib"]) * MIB)
            if g["taken_at"] is not None:
                used.add_metric(lv, g["used_mib"] * MIB)
                free.add_metric(lv, g["free_mib"] * MIB)
                taken.add_metric(lv, g["taken_at"].timestamp())
                if g["util_pct"] is not None:
                    util.add_metric(lv, g["util_pct"] / 100.0)
        yield from (total, used, free, reserved, util, taken)

    def _slo(self):
        report = reports.slo_report("24h")
        met = GaugeMetricFamily("towerops_slo_met", "1 when the 24 h value meets its target, 0 when not "
                                "(absent: no data or no target)", labels=["slo"])
        has = GaugeMetricFamily("towerops_slo_has_data", "1 when the 24 h window has data for this SLO",
                                labels=["slo"])
        for mt in report["metrics"]:
            value_name, target_name, what = SLO_FAMILIES[mt["name"]]
            value = GaugeMetricFamily(value_name, f"SLO {mt['name']} over the last 24 h: {what} (absent: no data)")
            target = GaugeMetricFamily(target_name, f"Target of SLO {mt['name']} (absent: none enabled)",
                                       labels=["comparator"])
            has.add_metric([mt["name"]], 0 if mt["value"] is None else 1)
            if mt["value"] is not None:
                value.add_metric([], mt["value"])
            t = mt["target"]
            if t and t["enabled"]:
                target.add_metric([t["comparator"]], t["value"])
            if mt["met"] is not None:
                met.add_metric([mt["name"]], 1 if mt["met"] else 0)
            yield from (value, target)
        yield from (met, has)


def _histogram(name, doc, edges, counts, total, scale=1.0) -> HistogramMetricFamily:
    h = HistogramMetricFamily(name, doc)
    h.add_metric([], _buckets(edges, counts, scale), sum_value=total)
    return h


REGISTRY = CollectorRegistry(auto_describe=False)
REGISTRY.register(TowerOpsCollector())


def _allowed_networks() -> list:
    # conf has checked every item (a bad one stops startup), so each parses.
    return [ipaddress.ip_network(item, strict=False) for item in conf.value("TOWEROPS_METRICS_ALLOW_IPS")]


def _address_allowed(addr: str | None) -> bool:
    try:
        ip = ipaddress.ip_address((addr or "").split("%")[0])
    except ValueError:
        return False
    if ip.version == 6 and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return any(ip in net for net in _allowed_networks())


def access(request: HttpRequest) -> int:
    """200 when the caller may scrape, else the status to answer (401 bad key, 403 not allowed)."""
    header = request.META.get("HTTP_AUTHORIZATION", "")
    if header[:7].lower() == "bearer ":
        from models_registry.api.auth import _lookup

        pk, scopes = _lookup(header[7:].strip())
        if pk is None:
            return 401
        if "read" in scopes:
            return 200
        return 403
    return 200 if _address_allowed(request.META.get("REMOTE_ADDR")) else 403


def metrics_view(request: HttpRequest) -> HttpResponse:
    if request.method not in ("GET", "HEAD"):
        return HttpResponse("method not allowed\n", status=405, content_type="text/plain")
    try:
        status = access(request)
    except DatabaseError as exc:  # a key is checked in the database: say so, in plain text like the rest
        log.warning("/metrics: database unavailable: %s", exc)
        return HttpResponse("database unavailable, retry shortly\n", status=503, content_type="text/plain")
    if status != 200:
        msg = {401: "invalid API key\n", 403: "forbidden: a bearer API key with scope read, or an address "
               "in TOWEROPS_METRICS_ALLOW_IPS\n"}[status]
        return HttpResponse(msg, status=status, content_type="text/plain")
    try:
        body = generate_latest(REGISTRY)
    except DatabaseError as exc:
        log.warning("metrics scrape: database unavailable: %s", exc)
        return HttpResponse("database unavailable\n", status=503, content_type="text/plain")
    return HttpResponse(body, content_type=CONTENT_TYPE_LATEST)
