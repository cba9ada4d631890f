"""Preload windows: the week grid, the editor and its preview."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.db import transaction
from django.http import Http404, HttpResponseNotAllowed
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.views.decorators.http import require_GET, require_POST

from models_registry import models as m
from models_registry.console import preload_grid as preload
from models_registry.console.forms import PreloadWindowForm
from models_registry.console.views.common import staff_required
from models_registry.learning import windows as learned
from models_registry.selection import world as state


def _preload_context(world, form=None, edited: preload.WindowSpec | None = None, pk: int | None = None) -> dict:
    specs = preload.saved_specs(exclude_id=pk)
    grid = preload.week(specs, world, edited)
    ctx = {"grid": grid, "days": preload.DAYS, "hours": range(24), "tz": preload.display_tz().key, "form": form,
           "vram_mib": {mo.tag: mo.vram_mib for mo in world.models}}
    if edited is not None:
        ctx["preview"] = preload.preview(edited, world, grid)
    return ctx


def _page_context() -> dict:
    world = state.read_world(timezone.now())[0]
    ctx = _preload_context(world)
    ctx["windows"] = m.PreloadWindow.objects.prefetch_related("models").order_by("start_time", "name")
    ctx["suggestion"] = learned.open_suggestion()
    return ctx


@require_GET
@login_required
def preload_windows(request):
    return render(request, "console/preload.html", _page_context())


@require_POST
@staff_required
def preload_suggestion(request, pk: int, action: str):
    """Accept or dismiss a predicted-windows suggestion; HTMX gets the page's body back (windows
    replaced), a plain POST a redirect to the page."""
    if action not in ("accept", "dismiss"):
        raise Http404(f"no action {action!r} on a suggestion (accept, dismiss)")
    try:
        if action == "accept":
            learned.accept(pk, request.user)
        else:
            learned.dismiss(pk, request.user)
    except learned.SuggestionError as exc:
        ctx = {**_page_context(), "suggestion_error": str(exc)}
        return render(request, "console/preload.html#body" if request.htmx else "console/preload.html", ctx,
                      status=409)
    if request.htmx:
        return render(request, "console/preload.html#body", _page_context())
    return redirect("console:preload")


def _edited_spec(form) -> preload.WindowSpec | None:
    """The submitted window for a preview, once the fields it needs are valid (the name may still be missing)."""
    form.is_valid()
    if not all(k in form.cleaned_data for k in ("days_of_week", "start_time", "end_time", "timezone", "models")):
        return None
    if form.cleaned_data["start_time"] == form.cleaned_data["end_time"]:
        return None
    return preload.WindowSpec(form.unsaved(), sorted(mo.tag for mo in form.cleaned_data["models"]))


@staff_required
def preload_edit(request, pk: int | None = None):
    """Create (no pk) or edit a window. POST with `check` (or HTMX on every change) only
    previews; a save is refused when the window's own models can never fit the tower."""
    window = get_object_or_404(m.PreloadWindow, pk=pk) if pk else None
    world = state.read_world(timezone.now())[0]
    if request.method == "GET":
        form = PreloadWindowForm(instance=window)
        edited = None
        if window is not None:
            edited = preload.WindowSpec(window, sorted(mo.tag for mo in window.models.all()))
        ctx = _preload_context(world, form, edited, pk)
        return render(request, "console/preload_form.html", {**ctx, "window": window})
    if request.method != "POST":
        return HttpResponseNotAllowed(["GET", "POST"])
    form = PreloadWindowForm(request.POST, instance=window)
    edited = _edited_spec(form)
    ctx = {**_preload_context(world, form, edited, pk), "window": window}
    if request.htmx:  # the live preview while editing: never saves
        return render(request, "console/preload_form.html#preview", ctx)
    if form.is_valid() and "check" not in request.POST:
        if ctx["preview"].refused:
            form.add_error("models", _never_fit_message(ctx["preview"], ctx["vram_mib"]))
        else:
            with transaction.atomic():
                form.save()
            return redirect("console:preload")
    status = 422 if form.errors else 200
    return render(request, "console/preload_form.html", ctx, status=status)


def _never_fit_message(pv: preload.Preview, vram_mib: dict) -> str:
    parts = [f"{t} ({vram_mib.get(t, 0) / 1024:.1f} GB)" for t in pv.own_misfits]
    verb = "does" if len(parts) == 1 else "do"
    return (f"can never be warm together: {', '.join(parts)} {verb} not fit the tower even with nothing else "
            f"loaded (largest GPU has {pv.largest_usable_mib / 1024:.1f} GB usable); remove them or split the window")


@require_POST
@staff_required
def preload_toggle(request, pk: int):
    window = get_object_or_404(m.PreloadWindow, pk=pk)
    window.enabled = not window.enabled
    window.save(update_fields=["enabled"])
    return redirect("console:preload")
