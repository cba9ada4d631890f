"""Import a profile into the catalog: create and update rows, never delete (history points at them)."""
from __future__ import annotations

from dataclasses import dataclass, field

from django.db import transaction

from models_registry import models as m
from models_registry.catalog.profile import Profile, gb_to_mib


@dataclass
class ImportSummary:
    created: dict[str, int] = field(default_factory=dict)
    updated: dict[str, int] = field(default_factory=dict)
    _seen: set = field(default_factory=set)  # (kind, pk) already counted

    def count(self, kind: str, created: bool, changed: bool, pk=None) -> None:
        if (kind, pk) in self._seen:
            return
        if created or changed:
            self._seen.add((kind, pk))
        if created:
            self.created[kind] = self.created.get(kind, 0) + 1
        elif changed:
            self.updated[kind] = self.updated.get(kind, 0) + 1

    def touch(self, kind: str, obj) -> None:
        """A many-to-many change: an update, unless the row was just created (or already counted)."""
        self.count(kind, False, True, obj.pk)

    def __str__(self) -> str:
        def fmt(d):
            return ", ".join(f"{v} {k}" for k, v in sorted(d.items())) or "nothing"

        return f"created {fmt(self.created)}; updated {fmt(self.updated)}"


def _upsert(model, lookup: dict, values: dict, summary: ImportSummary, kind: str, user=None):
    """Create or update one row; save (and so write history) only when something changed."""
    obj = model.objects.filter(**lookup).first()
    created = obj is None
    if created:
        obj = model(**lookup)
    changed = created or any(getattr(obj, k) != v for k, v in values.items())
    if changed:
        for k, v in values.items():
            setattr(obj, k, v)
        if user is not None and hasattr(obj, "history"):
            obj._history_user = user
        obj.save()
    summary.count(kind, created, changed, obj.pk)
    return obj


@transaction.atomic
def import_profile(profile: Profile, user=None) -> ImportSummary:
    """Write a validated profile: creates and updates, never deletes (history refers to rows).

    All in one transaction: a failure leaves the database as it was.
    """
    s = ImportSummary()
    for h in profile.hosts:
        host = _upsert(m.Host, {"name": h.name}, {"queue": h.queue_name}, s, "hosts", user)
        gpus = {}
        for g in h.gpus:
            gpus[g.index] = _upsert(
                m.Gpu,
                {"host": host, "index": g.index},
                {
                    "vendor": g.vendor,
                    "name": g.name,
                    "uuid": g.uuid,
                    "total_mib": g.total_mib,
                    "reserved_mib": g.reserved_mib,
                },
                s,
                "GPUs",
                user,
            )
        for e in h.endpoints:
            ep = _upsert(
                m.Endpoint,
                {"name": e.name},
                {
                    "host": host,
                    "base_url": e.base_url,
                    "allow_split": e.allow_split,
                    "num_ctx": e.num_ctx,
                    "keep_alive": e.keep_alive,
                    "num_parallel": e.num_parallel,
                    "max_loaded_models": e.max_loaded_models,
                },
                s,
                "endpoints",
                user,
            )
            wanted = {gpus[i].pk for i in e.gpus}
            if set(ep.gpus.values_list("pk", flat=True)) != wanted:
                ep.gpus.set(wanted)
                s.touch("endpoints", ep)
    tasks = {}
    for t in profile.task_types:
        tasks[t.name] = _upsert(
            m.TaskType,
            {"name": t.name},
            {
                "description": t.description,
                "quality_floor": t.quality_floor,
                "default_output_tokens": t.default_output_tokens,
                "default_input_tokens": t.default_input_tokens,
            },
            s,
            "task types",
            user,
        )
    for u in profile.urgency_classes:
        _upsert(
            m.UrgencyClass,
            {"name": u.name},
            {
                "patience_s": u.patience_s,
                "wait_weight": u.wait_weight,
                "eviction_penalty": u.eviction_penalty,
                "use_loaded_if_acceptable": u.use_loaded_if_acceptable,
            },
            s,
            "urgency classes",
            user,
        )
    llms = {}
    for md in profile.models:
        llms[md.tag] = _upsert(
            m.LlmModel,
            {"tag": md.tag},
            {
                "kind": md.kind,
                "family": md.family,
                "parameters_b": md.parameters_b,
                "quantization": md.quantization,
                "file_size_mib": gb_to_mib(md.file_size_gb) if md.file_size_gb is not None else None,
                "vram_mib": md.vram_mib,
                "context_length": md.context_length,
                "load_s": md.load_s,
                "tokens_per_s": md.tokens_per_s,
                "prefill_tokens_per_s": md.prefill_tokens_per_s,
                "remote_latency_s": md.remote_latency_s,
                "enabled": md.enabled,
                "pinned": md.pinned,
            },
            s,
            "models",
            user,
        )
        for task, score in md.quality.items():
            _upsert(
                m.QualityScore,
                {"model": llms[md.tag], "task_type": tasks.get(task) or m.TaskType.objects.get(name=task)},
                {"score": score},
                s,
                "quality scores",
                user,
            )
    for w in profile.preload_windows:
        win = _upsert(
            m.PreloadWindow,
            {"name": w.name},
            {
                "days_of_week": w.day_numbers,
                "start_time": w.start,
                "end_time": w.end,
                "timezone": w.timezone,
                "enabled": w.enabled,
            },
            s,
            "preload windows",
            user,
        )
        wanted = {llms[t].pk if t in llms else m.LlmModel.objects.get(tag=t).pk for t in w.models}
        if set(win.models.values_list("pk", flat=True)) != wanted:
            win.models.set(wanted)
            s.touch("preload windows", win)
    return s
