"""Health probes: /healthz (this process answers) and /readyz (the whole stack does its job).

They live in the app, not in towerops/, because readiness is a rule about the app's own data:
how fresh an endpoint's state sync must be, how long a load may stay unresolved, when beat
counts as gone. A process can be alive and useless (Ollama's #17408: generation dead for
hours while its health check stayed green), so /readyz checks the work, not the listeners:

* database: a query answers;
* broker: a connection opens;
* endpoints: at least one endpoint was synced and up within 3 sync intervals (this proves
  beat, the central worker, that host's agent and its Ollama, end to end);
* loads: no residency stuck in `requested`/`loading` past the bound after which
  resolve_stale_loads fails it (if one is, the resolver is not running);
* beat: its heartbeat task ran within 3 intervals.

Each check gives ``{"status": "ok"|"fail", "detail": ...}``; the reply is 200 when all pass,
503 otherwise. No authentication: probes call the app server directly; the details say what
failed, never a URL or a credential.
"""
from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable

from django.conf import settings
from django.db import connection
from django.http import JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_safe

from models_registry import conf
from models_registry import models as m
from models_registry.timeutil import utcnow

log = logging.getLogger(__name__)

BROKER_TIMEOUT_S = 2.0


def _ok(detail: str) -> dict:
    return {"status": "ok", "detail": detail}


def _fail(detail: str) -> dict:
    return {"status": "fail", "detail": detail}


def _sweep_s(name: str, default: float) -> float:
    """How often beat runs a scheduled task (settings.CELERY_BEAT_SCHEDULE), in seconds."""
    return float(settings.CELERY_BEAT_SCHEDULE.get(name, {}).get("schedule", default))


def check_database(now: dt.datetime) -> dict:
    with connection.cursor() as cur:
        cur.execute("SELECT 1")
        cur.fetchone()
    return _ok("answers")


def check_broker(now: dt.datetime) -> dict:
    from celery import current_app

    with current_app.connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=BROKER_TIMEOUT_S)
    return _ok(f"{conn.transport_cls} connection opens")


def check_endpoints(now: dt.datetime) -> dict:
    bound_s = max(30.0, 3 * _sweep_s("sync-endpoints", 10))
    rows = list(m.Endpoint.objects.values_list("name", "is_up", "last_checked_at"))
    fresh = [name for name, up, checked in rows if up and checked and (now - checked).total_seconds() <= bound_s]
    summary = f"{len(fresh)} of {len(rows)} endpoints up and synced in the last {bound_s:.0f} s"
    return _ok(summary) if fresh else _fail(summary)


def check_loads(now: dt.datetime) -> dict:
    from models_registry.runtime.tasks import LOAD_TIMEOUT_S, REQUESTED_TIMEOUT_S

    # resolve_stale_loads fails these once past their timeout; give it two of its sweeps.
    grace = dt.timedelta(seconds=2 * _sweep_s("stale-loads", 30))
    stuck = m.Residency.objects.filter(
        state=m.Residency.State.LOADING, loaded_at__lt=now - dt.timedelta(seconds=LOAD_TIMEOUT_S) - grace
    ) | m.Residency.objects.filter(
        state=m.Residency.State.REQUESTED, requested_at__lt=now - dt.timedelta(seconds=REQUESTED_TIMEOUT_S) - grace
    )
    names = [f"{tag} on {endpoint} ({state})" for tag, endpoint, state in
             stuck.values_list("model__tag", "endpoint__name", "state").order_by("pk")[:5]]
    if names:
        return _fail(f"stuck past the load timeout, not resolved: {', '.join(names)}")
    return _ok("no load stuck past its timeout")


def check_beat(now: dt.datetime) -> dict:
    interval = conf.value("TOWEROPS_HEARTBEAT_INTERVAL_S")
    beat_at = m.ServiceHeartbeat.objects.filter(service="beat").values_list("beat_at", flat=True).first()
    if beat_at is None:
        return _fail("no heartbeat yet (beat and the central worker must run)")
    age = (now - beat_at).total_seconds()
    if age > 3 * interval:
        return _fail(f"last heartbeat {age:.0f} s ago (bound {3 * interval:.0f} s): beat or the central worker is down")
    return _ok(f"last heartbeat {age:.0f} s ago")


CHECKS: dict[str, Callable[[dt.datetime], dict]] = {
    "database": check_database,
    "broker": check_broker,
    "endpoints": check_endpoints,
    "loads": check_loads,
    "beat": check_beat,
}


def run_checks(now: dt.datetime) -> dict[str, dict]:
    results = {}
    for name, check in CHECKS.items():
        try:
            results[name] = check(now)
        except Exception as exc:  # a probe reports every failure; it never raises
            log.warning("readiness check %s failed: %s", name, exc)
            results[name] = _fail(f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}")
    return results


@never_cache
@require_safe
def healthz(request):
    """The process is alive and answers (no database, no broker)."""
    return JsonResponse({"status": "ok"})


@never_cache
@require_safe
def readyz(request):
    """Database, broker, a fresh endpoint, no stuck load and a live beat: 200, else 503."""
    checks = run_checks(utcnow())
    ready = all(c["status"] == "ok" for c in checks.values())
    return JsonResponse({"status": "ok" if ready else "fail", "checks": checks}, status=200 if ready else 503)
