from django.contrib import admin
from simple_history.admin import SimpleHistoryAdmin

from models_registry import models as m


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


@admin.register(m.ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    list_display = ("name", "prefix", "scopes", "created_at", "revoked_at", "last_used_at")
    readonly_fields = ("prefix", "hashed_key", "created_at", "last_used_at")


@admin.register(m.SloTarget)
class SloTargetAdmin(SimpleHistoryAdmin):
    list_display = ("name", "comparator", "target", "enabled", "description")
    list_editable = ("comparator", "target", "enabled")


@admin.register(m.SloHourlyRollup)
class SloHourlyRollupAdmin(ReadOnlyAdmin):
    list_display = ("hour", "decisions", "fallbacks", "met_floor", "loads", "computed_at", "dirty_at")
    date_hierarchy = "hour"
    show_full_result_count = False


@admin.register(m.ReplayRun)
class ReplayRunAdmin(ReadOnlyAdmin):
    """Stored `manage.py replay` runs (the console shows them at /replay/); delete old ones here."""

    list_display = ("id", "created_at", "trace", "profile", "mapping", "sample", "seed", "requests")
    exclude = ("summaries",)

    def has_delete_permission(self, request, obj=None):
        return request.user.is_superuser
