"""Celery tasks of learning: the weekly preload-window suggestion (beat, on the central queue)."""
from __future__ import annotations

from celery import shared_task

from models_registry import conf
from models_registry.learning import windows


@shared_task
def suggest_preload_windows() -> str:
    """Beat, weekly (TOWEROPS_PRELOAD_SUGGEST suggest or auto): learn the windows from the decision
    history and open a suggestion (superseding the open one); in auto mode accept it at once when
    the replay's estimate is no worse than the current windows'. Safe to run twice: each run
    supersedes the last open suggestion, and accepting one that matches the windows changes nothing."""
    mode = conf.value("TOWEROPS_PRELOAD_SUGGEST")
    if mode == "off":
        return "off"
    s = windows.suggest()
    if s is None:
        return "not enough history"
    if mode == "auto":
        if windows.no_worse(s.estimate["suggested"], s.estimate["current"]):
            windows.accept(s.pk, automatic=True)
            return f"suggestion {s.pk} applied"
        return f"suggestion {s.pk} left open: its estimate is worse than the current windows'"
    return f"suggestion {s.pk} open"
