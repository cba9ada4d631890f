from django import forms
from django.contrib import admin
from django.template.response import TemplateResponse
from django.utils import timezone
from simple_history.admin import SimpleHistoryAdmin

from models_registry import models as m
from models_registry.api.auth import issue_secret


class QualityScoreInline(admin.TabularInline):
    model = m.QualityScore
    extra = 0


class GpuInline(admin.TabularInline):
    model = m.Gpu
    extra = 0


@admin.register(m.Host)
class HostAdmin(SimpleHistoryAdmin):
    list_display = ("name", "queue", "last_seen_at")
    inlines = [GpuInline]


@admin.register(m.Gpu)
class GpuAdmin(SimpleHistoryAdmin):
    list_display = ("__str__", "vendor", "total_mib", "reserved_mib", "uuid")
    list_filter = ("vendor", "host")


@admin.register(m.Endpoint)
class EndpointAdmin(SimpleHistoryAdmin):
    list_display = ("name", "host", "base_url", "is_up", "version", "last_checked_at")
    list_filter = ("is_up", "host")
    filter_horizontal = ("gpus",)


@admin.register(m.LlmModel)
class LlmModelAdmin(SimpleHistoryAdmin):
    list_display = ("tag", "kind", "vram_mib", "load_s", "tokens_per_s", "prefill_tokens_per_s", "enabled", "pinned")
    list_filter = ("kind", "enabled", "pinned")
    search_fields = ("tag", "family")
    inlines = [QualityScoreInline]


@admin.register(m.TaskType)
class TaskTypeAdmin(SimpleHistoryAdmin):
    list_display = ("name", "quality_floor", "default_output_tokens", "default_input_tokens")


@admin.register(m.QualityScore)
class QualityScoreAdmin(SimpleHistoryAdmin):
    list_display = ("model", "task_type", "score")
    list_filter = ("task_type",)


@admin.register(m.UrgencyClass)
class UrgencyClassAdmin(SimpleHistoryAdmin):
    list_display = ("name", "patience_s", "wait_weight", "eviction_penalty", "use_loaded_if_acceptable")


@admin.register(m.PreloadWindow)
class PreloadWindowAdmin(SimpleHistoryAdmin):
    list_display = ("name", "days_of_week", "start_time", "end_time", "timezone", "enabled")
    filter_horizontal = ("models",)


@admin.register(m.LoadTimeEstimate)
class LoadTimeEstimateAdmin(admin.ModelAdmin):
    list_display = ("model", "endpoint", "seconds", "samples", "updated_at")


class ReadOnlyAdmin(admin.ModelAdmin):
    """History is append-only: the admin shows it and changes nothing."""

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(m.GpuSnapshot)
class GpuSnapshotAdmin(ReadOnlyAdmin):
    list_display = ("gpu", "taken_at", "used_mib", "free_mib", "util_pct", "temperature_c", "power_w")
    list_filter = ("gpu",)
    date_hierarchy = "taken_at"
    show_full_result_count = False


@admin.register(m.Residency)
class ResidencyAdmin(ReadOnlyAdmin):
    list_display = ("model", "endpoint", "state", "trigger", "vram_mib", "ready_at", "last_used_at", "busy_until")
    list_filter = ("state", "endpoint")


@admin.register(m.SelectionDecision)
class SelectionDecisionAdmin(ReadOnlyAdmin):
    list_display = ("id", "created_at", "task_type", "urgency", "model", "action", "expected_wait_s", "warned")
    list_filter = ("action", "urgency", "task_type", "warned")
    date_hierarchy = "created_at"
    show_full_result_count = False


@admin.register(m.DecisionOutcome)
class DecisionOutcomeAdmin(ReadOnlyAdmin):
    list_display = ("decision", "reported_at", "first_token_ms", "response_ms", "success", "rating")


@admin.register(m.LoadEvent)
class LoadEventAdmin(ReadOnlyAdmin):
    list_display = ("requested_at", "model", "endpoint", "kind", "trigger", "duration_s", "error")
    list_filter = ("kind", "trigger", "endpoint")
    date_hierarchy = "requested_at"
    show_full_result_count = False


class ApiKeyForm(forms.ModelForm):
    scopes = forms.MultipleChoiceField(
        choices=[(s, s) for s in m.ApiKey.SCOPES], widget=forms.CheckboxSelectMultiple,
        help_text="select: ask for models and report outcomes; read: state, decisions, reports, /metrics; "
                  "admin: preload and unload models; infer: the gateway's Ollama and OpenAI APIs")

    class Meta:
        model = m.ApiKey
        fields = ("name", "scopes", "default_task", "default_urgency", "revoked_at")
        help_texts = {"default_task": "the task type of this key's gateway requests when neither the model name "
                                      "nor X-TowerOps-Task gives one",
                      "default_urgency": "the urgency of its gateway requests without X-TowerOps-Urgency "
                                         "(empty: interactive)"}

    def clean_default_task(self):
        task = self.cleaned_data.get("default_task", "")
        if task and not m.TaskType.objects.filter(name=task).exists():
            allowed = ", ".join(m.TaskType.objects.order_by("name").values_list("name", flat=True))
            raise forms.ValidationError(f"unknown task type {task!r}; allowed: {allowed}")
        return task


@admin.register(m.ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    """Keys are made here as by `manage.py create_api_key`: the secret is generated, only its hash
    and prefix are stored, and the page after Save shows it once (never stored, never sent again)."""

    form = ApiKeyForm
    list_display = ("name", "prefix", "scopes", "created_by", "created_at", "revoked_at", "last_used_at")
    actions = ["revoke"]

    def get_fields(self, request, obj=None):
        return ("name", "scopes", "default_task", "default_urgency") if obj is None else (
            "name", "prefix", "scopes", "default_task", "default_urgency", "created_by", "created_at",
            "last_used_at", "revoked_at")

    def get_readonly_fields(self, request, obj=None):
        return () if obj is None else ("prefix", "created_by", "created_at", "last_used_at")

    def save_model(self, request, obj, form, change):
        if not change:
            obj.created_by = request.user
            obj.scopes = sorted(set(obj.scopes))
            request._api_key_secret = issue_secret(obj)
        super().save_model(request, obj, form, change)

    def response_add(self, request, obj, post_url_continue=None):
        response = TemplateResponse(request, "admin/models_registry/apikey/created.html", {
            **self.admin_site.each_context(request), "opts": self.opts, "key": obj,
            "secret": request._api_key_secret, "title": f"API key {obj.name!r} created",
        })
        response["Cache-Control"] = "no-store"
        return response

    @admin.action(description="Revoke the selected API keys")
    def revoke(self, request, queryset):
        n = queryset.filter(revoked_at__isnull=True).update(revoked_at=timezone.now())
        self.message_user(request, f"{n} key(s) revoked; they stop working within a few seconds.")


@admin.register(m.SloTarget)
class SloTargetAdmin(SimpleHistoryAdmin):
    list_display = ("name", "comparator", "target", "enabled", "description")
    list_editable = ("comparator", "target", "enabled")


@admin.register(m.SloHourlyRollup)
class SloHourlyRollupAdmin(ReadOnlyAdmin):
    list_display = ("hour", "decisions", "fallbacks", "met_floor", "loads", "computed_at", "dirty_at", "settled_at",
                    "sealed_at")
    date_hierarchy = "hour"
    show_full_result_count = False


@admin.register(m.ReplayRun)
class ReplayRunAdmin(ReadOnlyAdmin):
    """Stored `manage.py replay` runs (the console shows them at /replay/); delete old ones here."""

    list_display = ("id", "created_at", "trace", "profile", "mapping", "sample", "seed", "requests")
    exclude = ("summaries",)

    def has_delete_permission(self, request, obj=None):
        return request.user.is_superuser
