"""Predicted preload windows from the decision history: suggest, accept, dismiss (docs/learning.md).

The forecast itself is pure (``learning.forecast``); here it is fed and its result kept:

* demand: the raw ``SelectionDecision`` rows (created_at, task type, urgency) of the last
  ``LEARN_WEEKS`` weeks. Hours whose raw rows were pruned (TOWEROPS_DECISION_RAW_DAYS) are not
  used: the SLO rollups count decisions per hour, not per task type, so the span learned from
  starts at the oldest raw decision still there;
* the estimate: the same history's requests (arrival, task type, urgency; tokens as asked, else
  the task type's defaults) replayed (``replay.simulate``, the towerops policy) on the catalog as
  it is now, with the current windows and with the suggested ones, from the first hour learned;
* accepting replaces the windows: each suggested window is created (or updated, by name), every
  other enabled window is disabled, each save with a history change reason naming the suggestion.
"""
from __future__ import annotations

import datetime as dt

from django.db import transaction
from django.utils import timezone

from models_registry import models as m
from models_registry.catalog.profile import DAY_NAMES, Profile, PreloadWindowSpec
from models_registry.learning.forecast import estimate_demand, recommend_windows
from models_registry.replay import simulate
from models_registry.replay.report import summarize
from models_registry.replay.traces import Request
from models_registry.slo import metrics

LEARN_WEEKS = 4
MIN_HISTORY = dt.timedelta(days=1)  # less than a day of decisions: no suggestion


class SuggestionError(ValueError):
    pass


def catalog_profile() -> Profile:
    """The catalog in the database as a profile (what ``import_profile`` would write back), for the
    replay. Every endpoint is taken as up: the estimate is about the windows, not today's outages."""
    hosts = []
    for h in m.Host.objects.prefetch_related("gpus", "endpoints__gpus").order_by("name"):
        hosts.append({
            "name": h.name, "queue": h.queue,
            "gpus": [{"index": g.index, "vendor": g.vendor, "name": g.name, "uuid": g.uuid,
                      "total_gb": g.total_mib / 1024, "reserved_gb": g.reserved_mib / 1024}
                     for g in sorted(h.gpus.all(), key=lambda g: g.index)],
            "endpoints": [{"name": e.name, "base_url": e.base_url, "gpus": sorted(g.index for g in e.gpus.all()),
                           "allow_split": e.allow_split, "num_ctx": e.num_ctx, "keep_alive": e.keep_alive,
                           "num_parallel": e.num_parallel, "max_loaded_models": e.max_loaded_models}
                          for e in sorted(h.endpoints.all(), key=lambda e: e.name)],
        })
    scores: dict[int, dict[str, float]] = {}
    for model_id, task, score in m.QualityScore.objects.values_list("model_id", "task_type__name", "score"):
        scores.setdefault(model_id, {})[task] = score
    return Profile.model_validate({
        "hosts": hosts,
        "task_types": [{"name": t.name, "quality_floor": t.quality_floor, "default_output_tokens": t.default_output_tokens,
                        "default_input_tokens": t.default_input_tokens} for t in m.TaskType.objects.order_by("name")],
        "urgency_classes": [{"name": u.name, "patience_s": u.patience_s, "wait_weight": u.wait_weight,
                             "eviction_penalty": u.eviction_penalty, "use_loaded_if_acceptable": u.use_loaded_if_acceptable}
                            for u in m.UrgencyClass.objects.order_by("name")],
        "models": [{"tag": mo.tag, "kind": mo.kind, "vram_gb": mo.vram_mib / 1024, "context_length": mo.context_length,
                    "load_s": mo.load_s, "tokens_per_s": mo.tokens_per_s, "prefill_tokens_per_s": mo.prefill_tokens_per_s,
                    "remote_latency_s": mo.remote_latency_s, "enabled": mo.enabled, "pinned": mo.pinned,
                    "quality": scores.get(mo.pk, {})} for mo in m.LlmModel.objects.order_by("tag")],
        "preload_windows": current_windows(),
    })


def current_windows() -> list[dict]:
    """The enabled preload windows, as the profile's window specs (data)."""
    return [{"name": w.name, "days": [DAY_NAMES[d] for d in sorted(set(w.days_of_week))], "start": w.start_time,
             "end": w.end_time, "timezone": w.timezone, "models": sorted(mo.tag for mo in w.models.all())}
            for w in m.PreloadWindow.objects.filter(enabled=True).prefetch_related("models").order_by("name")]


def _history(since: dt.datetime, until: dt.datetime) -> list:
    return list(m.SelectionDecision.objects.filter(created_at__gte=since, created_at__lt=until)
                .order_by("created_at", "id")
                .values_list("created_at", "task_type__name", "urgency", "input_tokens", "expected_output_tokens",
                             "task_type__default_input_tokens", "task_type__default_output_tokens"))


def figures(summary: dict) -> dict:
    """The four figures a suggestion is judged by (and the quality), from a replay summary."""
    slo = summary["slo"]
    return {"vram_efficiency": slo[metrics.VRAM_EFFICIENCY]["value"], "interactive_p95_s": slo[metrics.P95]["value"],
            "loads_per_hour": slo[metrics.LOADS_PER_HOUR]["value"], "thrash_loads": summary["thrash_loads"],
            "mean_quality": summary["mean_quality"], "requests": summary["requests"]}


def replay_estimate(profile: Profile, rows: list, since: dt.datetime, windows: list[dict]) -> dict:
    """The replay's figures of the history ``rows`` on ``profile`` with these windows."""
    requests = [Request((at - since).total_seconds(), task, urgency, inp if inp is not None else d_in,
                        out if out is not None else d_out)
                for at, task, urgency, inp, out, d_in, d_out in rows]
    specs = [PreloadWindowSpec.model_validate(w) for w in windows]
    return figures(summarize(simulate(profile.model_copy(update={"preload_windows": specs}), requests, "towerops",
                                      start=since)))


def no_worse(suggested: dict, current: dict) -> bool:
    """Auto mode's bar: VRAM efficiency no lower, interactive p95 no higher, no more loads/h nor thrash."""
    def le(a, b):  # a <= b, where no data on either side does not count against
        return a is None or b is None or a <= b + 1e-9

    return (le(current["vram_efficiency"], suggested["vram_efficiency"])
            and le(suggested["interactive_p95_s"], current["interactive_p95_s"])
            and le(suggested["loads_per_hour"], current["loads_per_hour"])
            and suggested["thrash_loads"] <= current["thrash_loads"])


def suggest(now: dt.datetime | None = None, *, weeks: int = LEARN_WEEKS, zone: str | None = None) -> m.WindowSuggestion | None:
    """Learn the windows from the last ``weeks`` weeks of decisions and store them as the open
    suggestion (superseding open ones), with the replay's estimate. None: less than a day of history."""
    now = now or timezone.now()
    zone = zone or timezone.get_current_timezone_name()
    since = now - dt.timedelta(weeks=weeks)
    first = m.SelectionDecision.objects.filter(created_at__gte=since, created_at__lt=now).order_by("created_at") \
        .values_list("created_at", flat=True).first()
    if first is None or now - first < MIN_HISTORY:
        return None
    since = first.replace(minute=0, second=0, microsecond=0)
    rows = _history(since, now)
    demand = estimate_demand(((at, task, urgency) for at, task, urgency, *_ in rows), since, now, zone)
    profile = catalog_profile()
    suggested = [w.to_dict() for w in recommend_windows(profile.to_world(0.0), demand)]
    current = current_windows()
    estimate = {"current": replay_estimate(profile, rows, since, current),
                "suggested": replay_estimate(profile, rows, since, [{k: v for k, v in w.items() if k != "endpoints"}
                                                                 for w in suggested]),
                "weeks_learned": round(demand.weeks, 2)}
    with transaction.atomic():
        m.WindowSuggestion.objects.filter(status=m.WindowSuggestion.Status.OPEN).update(
            status=m.WindowSuggestion.Status.SUPERSEDED, decided_at=now)
        return m.WindowSuggestion.objects.create(created_at=now, learned_from=since, learned_until=now,
                                                 windows=suggested, estimate=estimate)


def _open(pk: int) -> m.WindowSuggestion:
    s = m.WindowSuggestion.objects.select_for_update().filter(pk=pk).first()
    if s is None:
        raise SuggestionError(f"suggestion {pk}: no such suggestion")
    if s.status != m.WindowSuggestion.Status.OPEN:
        raise SuggestionError(f"suggestion {pk}: already {s.status}")
    return s


def accept(pk: int, user=None, *, automatic: bool = False, now: dt.datetime | None = None) -> m.WindowSuggestion:
    """Replace the preload windows by the suggestion's (module docstring); every change in the history."""
    now = now or timezone.now()
    with transaction.atomic():
        s = _open(pk)
        reason = f"suggestion #{s.pk} {'applied automatically' if automatic else 'accepted'}"
        tags = {tag for w in s.windows for tag in w["models"]}
        llms = {mo.tag: mo for mo in m.LlmModel.objects.filter(tag__in=tags)}
        missing = sorted(tags - set(llms))
        if missing:
            raise SuggestionError(f"suggestion {pk}: windows.models: {', '.join(missing)} no longer in the catalog")
        names = {w["name"] for w in s.windows}
        for w in m.PreloadWindow.objects.filter(enabled=True).exclude(name__in=names):
            w.enabled = False
            _save(w, reason, user)
        for spec in s.windows:
            w = m.PreloadWindow.objects.filter(name=spec["name"]).first() or m.PreloadWindow(name=spec["name"])
            w.days_of_week = sorted(DAY_NAMES.index(d) for d in spec["days"])
            w.start_time = dt.time.fromisoformat(spec["start"])
            w.end_time = dt.time.fromisoformat(spec["end"])
            w.timezone = spec["timezone"]
            w.enabled = True
            _save(w, reason, user)
            wanted = {llms[t].pk for t in spec["models"]}
            if set(w.models.values_list("pk", flat=True)) != wanted:
                w._change_reason = reason
                w.models.set(wanted)
        s.status = m.WindowSuggestion.Status.ACCEPTED
        s.decided_at, s.decided_by, s.automatic = now, user, automatic
        s.save(update_fields=["status", "decided_at", "decided_by", "automatic"])
    return s


def _save(window: m.PreloadWindow, reason: str, user) -> None:
    window._change_reason = reason
    if user is not None:
        window._history_user = user
    window.save()


def dismiss(pk: int, user=None, *, now: dt.datetime | None = None) -> m.WindowSuggestion:
    with transaction.atomic():
        s = _open(pk)
        s.status = m.WindowSuggestion.Status.DISMISSED
        s.decided_at, s.decided_by = now or timezone.now(), user
        s.save(update_fields=["status", "decided_at", "decided_by"])
    return s


def open_suggestion() -> m.WindowSuggestion | None:
    return m.WindowSuggestion.objects.filter(status=m.WindowSuggestion.Status.OPEN).order_by("-created_at").first()
