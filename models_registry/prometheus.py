"""GET /metrics: Prometheus exposition through prometheus-client, read from the database on scrape.

A custom Collector (not process-local counters): every gunicorn worker answers a scrape
with the same numbers, computed from the hourly rollups plus the raw rows of the hours
not rolled up yet (reports.totals), so counters stay monotonic across workers and restarts.

Access: a bearer API key with the `read` scope, or a client address listed in
TOWEROPS_METRICS_ALLOW_IPS (addresses or networks, comma-separated; default
127.0.0.1,::1; empty: keys only). Behind a reverse proxy REMOTE_ADDR is the proxy's.
"""
from __future__ import annotations

import ipaddress
import logging

from django.conf import settings
from django.db import DatabaseError
from django.http import HttpRequest, HttpResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from models_registry import metrics, reports

log = logging.getLogger(__name__)
MIB = 1024 * 1024


def _buckets(edges, counts, scale=1.0) -> list[tuple[str, float]]:
    out, cum = [], 0
    for edge, c in zip(edges, counts):
        cum += c
        out.append((repr(float(edge) * scale), cum))
    out.append(("+Inf", sum(counts)))
    return out


class TowerOpsCollector:
    def collect(self):
        tasks, models_, endpoints = reports._names()
        tot = reports.totals()

        decisions = CounterMetricFamily(
            "towerops_decisions", "Selection decisions recorded", labels=["action", "task_type", "urgency"]
        )
        agg: dict[tuple, int] = {}
        for key, n in tot.decision_counts.items():
            action, task, urgency, _model = key.split("|")
            k = (action, reports._name(tasks, task) or "", urgency)
            agg[k] = agg.get(k, 0) + n
        for k, n in sorted(agg.items()):
            decisions.add_metric(list(k), n)
        yield decisions

        yield _histogram(
            "towerops_decision_duration_seconds", "Time the policy took per decision (decision_us)",
            metrics.DECISION_US_EDGES, tot.decision_us_hist, tot.decision_us_sum / 1e6, scale=1e-6,
        )

        fams = {
            "load": CounterMetricFamily("towerops_model_loads", "Completed model loads", labels=["model", "endpoint"]),
            "evict": CounterMetricFamily("towerops_model_evictions", "Models evicted for another load",
                                         labels=["model", "endpoint"]),
            "unload": CounterMetricFamily("towerops_model_unloads", "Models unloaded (admin, expiry)",
                                          labels=["model", "endpoint"]),
            "fail": CounterMetricFamily("towerops_model_load_failures", "Failed model loads",
                                        labels=["model", "endpoint"]),
        }
        per: dict[tuple, int] = {}
        for key, n in tot.load_counts.items():
            kind, model, endpoint, _task = key.split("|")
            k = (kind, reports._name(models_, model) or "", reports._name(endpoints, endpoint) or "")
            per[k] = per.get(k, 0) + n
        for (kind, model, endpoint), n in sorted(per.items()):
            if kind in fams:
                fams[kind].add_metric([model, endpoint], n)
        yield from fams.values()

        yield _histogram(
            "towerops_model_load_duration_seconds", "Duration of completed model loads",
            metrics.LOAD_DURATION_EDGES_S, tot.load_duration_hist, tot.load_duration_sum,
        )

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
        for g in reports.latest_snapshots():
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

        report = reports.slo_report("24h")
        value = GaugeMetricFamily("towerops_slo_value", "SLO metric over the last 24 h (absent: no data)",
                                  labels=["slo", "unit"])
        target = GaugeMetricFamily("towerops_slo_target", "SLO target (enabled targets only)",
                                   labels=["slo", "comparator"])
        met = GaugeMetricFamily("towerops_slo_met", "1 when the 24 h value meets its target, 0 when not "
                                "(absent: no data or no target)", labels=["slo"])
        has = GaugeMetricFamily("towerops_slo_has_data", "1 when the 24 h window has data for this SLO",
                                labels=["slo"])
        for mt in report["metrics"]:
            has.add_metric([mt["name"]], 0 if mt["value"] is None else 1)
            if mt["value"] is not None:
                value.add_metric([mt["name"], mt["unit"]], mt["value"])
            t = mt["target"]
            if t and t["enabled"]:
                target.add_metric([mt["name"], t["comparator"]], t["value"])
            if mt["met"] is not None:
                met.add_metric([mt["name"]], 1 if mt["met"] else 0)
        yield from (value, target, met, has)


def _histogram(name, doc, edges, counts, total, scale=1.0) -> HistogramMetricFamily:
    h = HistogramMetricFamily(name, doc)
    h.add_metric([], _buckets(edges, counts, scale), sum_value=total)
    return h


REGISTRY = CollectorRegistry(auto_describe=False)
REGISTRY.register(TowerOpsCollector())


def _allowed_networks() -> list:
    out = []
    for item in getattr(settings, "TOWEROPS_METRICS_ALLOW_IPS", ["127.0.0.1", "::1"]):
        try:
            out.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            log.warning("TOWEROPS_METRICS_ALLOW_IPS: ignoring %r", item)
    return out


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
        from models_registry.auth import _lookup

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
    status = access(request)
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
