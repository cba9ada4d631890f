"""TowerOps' data model: the fleet, the catalog, and the append-only history.

Configuration (hosts, endpoints, GPUs, catalog, task types, urgency classes, preload
windows) is edited by people and keeps a history of who changed what (simple-history).
History tables (snapshots, decisions, outcomes, load events) are only ever appended to.
Residency is the one table of current state: what is where right now.
"""
from __future__ import annotations

import datetime as dt

from django.conf import settings
from django.contrib.postgres.fields import ArrayField
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import F, Q
from simple_history.models import HistoricalRecords

from models_registry.catalog.profile import (
    window_open,  # one definition: the live windows and the replay
)

MIB_PER_GB = 1024
ZERO_TO_ONE = [MinValueValidator(0.0), MaxValueValidator(1.0)]


# --------------------------------------------------------------------------- fleet


class Host(models.Model):
    """A machine. Its agent (a Celery worker) consumes `queue` and runs loads and telemetry there."""

    name = models.SlugField(max_length=100, unique=True)
    queue = models.CharField(max_length=200, unique=True, help_text="Celery queue of this host's agent")
    last_seen_at = models.DateTimeField(null=True, blank=True)
    history = HistoricalRecords()

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class Gpu(models.Model):
    class Vendor(models.TextChoices):
        NVIDIA = "nvidia", "NVIDIA"
        AMD = "amd", "AMD"

    host = models.ForeignKey(Host, on_delete=models.CASCADE, related_name="gpus")
    index = models.PositiveSmallIntegerField()
    uuid = models.CharField(max_length=100, blank=True)
    vendor = models.CharField(max_length=10, choices=Vendor.choices)
    name = models.CharField(max_length=200)
    total_mib = models.PositiveIntegerField()
    reserved_mib = models.PositiveIntegerField(default=0, help_text="held back for other processes")
    history = HistoricalRecords()

    class Meta:
        ordering = ["host__name", "index"]
        constraints = [
            models.UniqueConstraint(fields=["host", "index"], name="gpu_unique_host_index"),
            models.CheckConstraint(condition=Q(total_mib__gt=0), name="gpu_total_positive"),
            models.CheckConstraint(condition=Q(reserved_mib__lte=F("total_mib")), name="gpu_reserved_within_total"),
        ]

    def __str__(self) -> str:
        return f"{self.host.name}/{self.index} {self.name}"

    @property
    def key(self) -> str:
        """The key this GPU has in the policy's World (the same as a profile's)."""
        return f"{self.host.name}/{self.index}"

    @property
    def usable_mib(self) -> int:
        return self.total_mib - self.reserved_mib


class Endpoint(models.Model):
    """An Ollama server, and the GPUs it may use."""

    host = models.ForeignKey(Host, on_delete=models.CASCADE, related_name="endpoints")
    name = models.SlugField(max_length=100, unique=True)
    base_url = models.URLField(max_length=300, unique=True)
    gpus = models.ManyToManyField(Gpu, related_name="endpoints", blank=True)
    allow_split = models.BooleanField(default=False, help_text="may one model span several of its GPUs")
    num_ctx = models.PositiveIntegerField(default=4096, help_text="context every load and request uses")
    keep_alive = models.CharField(max_length=20, default="30m")
    num_parallel = models.PositiveSmallIntegerField(
        default=1, help_text="requests Ollama serves at once per model (OLLAMA_NUM_PARALLEL): the gateway's slots")
    max_loaded_models = models.PositiveSmallIntegerField(
        default=0, help_text="models Ollama keeps loaded at once (OLLAMA_MAX_LOADED_MODELS); 0: its default, 3 per GPU")
    is_up = models.BooleanField(default=True)
    version = models.CharField(max_length=50, blank=True)
    last_checked_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    history = HistoricalRecords(m2m_fields=[gpus])

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


# --------------------------------------------------------------------------- catalog


class LlmModel(models.Model):
    class Kind(models.TextChoices):
        LOCAL = "local", "local (Ollama)"
        REMOTE = "remote", "remote fallback API"

    tag = models.CharField(max_length=200, unique=True, help_text="Ollama tag, e.g. qwen2.5-coder:7b")
    kind = models.CharField(max_length=10, choices=Kind.choices, default=Kind.LOCAL)
    family = models.CharField(max_length=100, blank=True)
    parameters_b = models.FloatField(null=True, blank=True)
    quantization = models.CharField(max_length=50, blank=True)
    file_size_mib = models.PositiveIntegerField(null=True, blank=True)
    vram_mib = models.PositiveIntegerField(default=0, help_text="VRAM needed at context_length")
    context_length = models.PositiveIntegerField(default=4096)
    load_s = models.FloatField(default=0.0, help_text="seeded; learned from load events")
    tokens_per_s = models.FloatField(default=30.0)
    prefill_tokens_per_s = models.FloatField(
        null=True, blank=True,
        help_text="prompt tokens read per second (prefill); empty: 20 × tokens_per_s (see profile.py)")
    remote_latency_s = models.FloatField(default=0.0)
    enabled = models.BooleanField(default=True)
    pinned = models.BooleanField(default=False, help_text="never evicted")
    history = HistoricalRecords()

    class Meta:
        ordering = ["tag"]
        verbose_name = "LLM model"
        constraints = [
            models.CheckConstraint(condition=Q(load_s__gte=0), name="llmmodel_load_s_nonneg"),
            models.CheckConstraint(condition=Q(tokens_per_s__gt=0), name="llmmodel_tokens_per_s_positive"),
            models.CheckConstraint(
                condition=Q(kind="remote") | Q(vram_mib__gt=0), name="llmmodel_local_needs_vram"
            ),
        ]

    def __str__(self) -> str:
        return self.tag

    @property
    def prefill_rate(self) -> float:
        """Prompt tokens per second the policy assumes: the catalog's figure, else the profile
        default (PREFILL_PER_DECODE × tokens/s); 0 for a remote model (its latency covers it)."""
        if self.kind != self.Kind.LOCAL:
            return 0.0
        from models_registry.catalog.profile import PREFILL_PER_DECODE

        return self.prefill_tokens_per_s or PREFILL_PER_DECODE * self.tokens_per_s


class LoadTimeEstimate(models.Model):
    """Load seconds learned per model and endpoint from LoadEvents (an EWMA); the gateway adds
    the prefill and generation speeds Ollama reports for the requests it forwards (EWMAs too)."""

    model = models.ForeignKey(LlmModel, on_delete=models.CASCADE, related_name="load_estimates")
    endpoint = models.ForeignKey(Endpoint, on_delete=models.CASCADE, related_name="load_estimates")
    seconds = models.FloatField()
    samples = models.PositiveIntegerField(default=0)
    tokens_per_s = models.FloatField(null=True, blank=True, help_text="generation, from Ollama's eval durations")
    prefill_tokens_per_s = models.FloatField(null=True, blank=True, help_text="from Ollama's prompt_eval durations")
    speed_samples = models.PositiveIntegerField(default=0)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["model", "endpoint"], name="loadestimate_unique")]


class TaskType(models.Model):
    name = models.SlugField(max_length=64, unique=True)
    description = models.TextField(blank=True)
    quality_floor = models.FloatField(validators=ZERO_TO_ONE)
    default_output_tokens = models.PositiveIntegerField(default=64)
    default_input_tokens = models.PositiveIntegerField(
        default=0, help_text="the prompt length assumed when a request does not give input_tokens")
    history = HistoricalRecords()

    class Meta:
        ordering = ["name"]
        constraints = [
            models.CheckConstraint(
                condition=Q(quality_floor__gte=0) & Q(quality_floor__lte=1), name="tasktype_floor_0_1"
            ),
        ]

    def __str__(self) -> str:
        return self.name


class QualityScore(models.Model):
    model = models.ForeignKey(LlmModel, on_delete=models.CASCADE, related_name="quality_scores")
    task_type = models.ForeignKey(TaskType, on_delete=models.CASCADE, related_name="quality_scores")
    score = models.FloatField(validators=ZERO_TO_ONE)
    history = HistoricalRecords()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["model", "task_type"], name="qualityscore_unique"),
            models.CheckConstraint(condition=Q(score__gte=0) & Q(score__lte=1), name="qualityscore_0_1"),
        ]

    def __str__(self) -> str:
        return f"{self.model} × {self.task_type} = {self.score:.2f}"


class UrgencyClass(models.Model):
    class Name(models.TextChoices):
        CRITICAL = "critical"
        INTERACTIVE = "interactive"
        BACKGROUND = "background"
        BATCH = "batch"

    name = models.CharField(max_length=20, choices=Name.choices, unique=True)
    patience_s = models.FloatField(help_text="longest acceptable wait before generation starts")
    wait_weight = models.FloatField(help_text="quality points given up per second of wait")
    eviction_penalty = models.FloatField(default=0.0, help_text="cost of evicting a recently used model")
    use_loaded_if_acceptable = models.BooleanField(
        default=False, help_text="never wait for a load when an acceptable model is loaded"
    )
    history = HistoricalRecords()

    class Meta:
        verbose_name_plural = "urgency classes"
        ordering = ["patience_s"]
        constraints = [
            models.CheckConstraint(condition=Q(patience_s__gte=0), name="urgency_patience_nonneg"),
            models.CheckConstraint(condition=Q(wait_weight__gte=0), name="urgency_weight_nonneg"),
            models.CheckConstraint(condition=Q(eviction_penalty__gte=0), name="urgency_penalty_nonneg"),
        ]

    def __str__(self) -> str:
        return self.name


class PreloadWindow(models.Model):
    """Keep `models` warm on the given days between start and end (local time; may wrap midnight)."""

    name = models.CharField(max_length=100, unique=True)
    days_of_week = ArrayField(models.PositiveSmallIntegerField(), help_text="0 = Monday … 6 = Sunday")
    start_time = models.TimeField()
    end_time = models.TimeField()
    timezone = models.CharField(max_length=64, default="UTC")
    enabled = models.BooleanField(default=True)
    # Declared last: from here on `models` in this class body is the field, not django.db.models.
    models = models.ManyToManyField(LlmModel, related_name="preload_windows")
    history = HistoricalRecords(m2m_fields=[models])

    class Meta:
        ordering = ["start_time", "name"]
        constraints = [
            models.CheckConstraint(condition=~Q(start_time=F("end_time")), name="preloadwindow_not_empty"),
            models.CheckConstraint(
                condition=Q(days_of_week__contained_by=[0, 1, 2, 3, 4, 5, 6]) & ~Q(days_of_week=[]),
                name="preloadwindow_days_valid",
            ),
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def days_label(self) -> str:
        """"Mon–Fri", "every day", "Sat, Sun"."""
        names = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
        days = sorted(set(self.days_of_week or ()))
        if len(days) == 7:
            return "every day"
        if len(days) >= 3 and days == list(range(days[0], days[-1] + 1)):
            return f"{names[days[0]]}–{names[days[-1]]}"
        return ", ".join(names[d] for d in days)

    def is_active(self, at: dt.datetime) -> bool:
        """Whether the window is open at the aware datetime `at` (wrapping past midnight)."""
        return self.enabled and window_open(self.days_of_week, self.start_time, self.end_time, self.timezone, at)


# --------------------------------------------------------------------------- state and history


# The newest snapshot of each GPU (at or after a time). A LATERAL join reads each GPU's newest row
# straight off an index, one probe per GPU however long the history is (DISTINCT ON or a GROUP BY
# would read the whole history); Django's ORM cannot write LATERAL, hence SQL. One definition: the
# selection's prepared statement (selection/world.py) uses it too. Columns: GpuSnapshot's, in order.
LATEST_SNAPSHOT_PER_GPU_SQL = """
SELECT s.id, s.gpu_id, s.taken_at, s.total_mib, s.used_mib, s.free_mib, s.util_pct, s.temperature_c, s.power_w
FROM models_registry_gpu g
CROSS JOIN LATERAL (
    SELECT * FROM models_registry_gpusnapshot
    WHERE gpu_id = g.id AND taken_at >= %s ORDER BY taken_at DESC LIMIT 1
) s
"""
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


class GpuSnapshotQuerySet(models.QuerySet):
    def latest_per_gpu(self, since: dt.datetime | None = None) -> models.query.RawQuerySet:
        """The newest snapshot of every GPU that has one (taken at or after `since`), one row per GPU.

        A RawQuerySet (see LATEST_SNAPSHOT_PER_GPU_SQL): iterate it; it does not chain."""
        return self.raw(LATEST_SNAPSHOT_PER_GPU_SQL, [since or EPOCH])


class GpuSnapshot(models.Model):
    gpu = models.ForeignKey(Gpu, on_delete=models.CASCADE, related_name="snapshots")
    taken_at = models.DateTimeField()
    total_mib = models.PositiveIntegerField()
    used_mib = models.PositiveIntegerField()
    free_mib = models.PositiveIntegerField()
    util_pct = models.FloatField(null=True, blank=True)
    temperature_c = models.FloatField(null=True, blank=True)
    power_w = models.FloatField(null=True, blank=True)

    objects = GpuSnapshotQuerySet.as_manager()

    class Meta:
        indexes = [
            # Covers the VRAM history's buckets (index-only scans); the newest per GPU reads it backwards.
            models.Index(fields=["gpu", "taken_at"], include=["used_mib"], name="snapshot_gpu_time_used"),
            models.Index(fields=["taken_at"], name="snapshot_time"),
        ]


class ResidencyState(models.TextChoices):
    """Where a residency is in its life; the allowed moves are in runtime/lifecycle.py."""

    REQUESTED = "requested"
    LOADING = "loading"
    LOADED = "loaded"
    UNLOADING = "unloading"
    UNLOADED = "unloaded"
    FAILED = "failed"


# Active: holds VRAM (booked or real). A list, as the constraints below and their migrations have it.
ACTIVE_RESIDENCY_STATES = [ResidencyState.REQUESTED, ResidencyState.LOADING, ResidencyState.LOADED,
                           ResidencyState.UNLOADING]
# The same, for the hand-written SQL that filters on it ("('requested', 'loading', ...)").
ACTIVE_RESIDENCY_STATES_SQL = "(" + ", ".join(f"'{s.value}'" for s in ACTIVE_RESIDENCY_STATES) + ")"


class Trigger(models.TextChoices):
    """Why a model was loaded or unloaded (a Residency's and a LoadEvent's `trigger`)."""

    SELECTION = "selection"
    PRELOAD = "preload"
    ADMIN = "admin"
    EXPIRY = "expiry"
    EXTERNAL = "external"
    UPGRADE = "upgrade"  # moving up: a better model loaded in the background on an idle tower


class ResidencyQuerySet(models.QuerySet):
    def active(self) -> ResidencyQuerySet:
        """Residencies that hold VRAM: requested, loading, loaded or unloading."""
        return self.filter(state__in=ACTIVE_RESIDENCY_STATES)


class Residency(models.Model):
    """A model on an endpoint's GPU(s), from the request to load until it is gone.

    Its state changes only through runtime.lifecycle.transition (the table of allowed moves)."""

    State = ResidencyState
    ACTIVE_STATES = tuple(ACTIVE_RESIDENCY_STATES)

    model = models.ForeignKey(LlmModel, on_delete=models.PROTECT, related_name="residencies")
    endpoint = models.ForeignKey(Endpoint, on_delete=models.CASCADE, related_name="residencies")
    gpus = models.ManyToManyField(Gpu, through="ResidencyGpu", related_name="residencies")
    state = models.CharField(max_length=12, choices=State.choices, default=State.REQUESTED)
    trigger = models.CharField(max_length=12, choices=Trigger.choices, default=Trigger.SELECTION)
    vram_mib = models.PositiveIntegerField()
    requested_at = models.DateTimeField()
    # The outbox: NULL until the load task reached the broker (runtime/dispatch.py); the relay
    # publishes what a broker outage left here, and the requested bound counts from this.
    dispatched_at = models.DateTimeField(null=True, blank=True)
    loaded_at = models.DateTimeField(null=True, blank=True, help_text="load started")
    ready_at = models.DateTimeField(null=True, blank=True, help_text="loaded, or expected to be")
    last_used_at = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    ended_at = models.DateTimeField(null=True, blank=True)
    # Advisory selections (POST /api/v1/select) are not proxied, so "busy" is estimated: every one
    # routed here pushes busy_until out by its expected generation time. A busy model is never evicted.
    # {urgency class: epoch seconds of its last use}: an eviction prices the reload at the rate of
    # the classes that used the model lately (policy: ResidentView.used_by).
    used_by = models.JSONField(default=dict, blank=True)
    busy_until = models.DateTimeField(null=True, blank=True)
    # The same advisory selections one by one, [[decision id, created ts, service s, expires ts], ...]:
    # one that no outcome or gateway request uses is dropped at its expiry (selection/advisory.py).
    advisory = models.JSONField(default=list, blank=True)
    error = models.TextField(blank=True)
    # Who asked for the unload (an admin, a preload window, the load that evicts it): whoever finishes
    # it (the unload task, the load task, the state sync) records the event with this trigger.
    unload_trigger = models.CharField(max_length=12, choices=Trigger.choices, blank=True)

    objects = ResidencyQuerySet.as_manager()

    class Meta:
        verbose_name_plural = "residencies"
        constraints = [
            models.UniqueConstraint(
                fields=["model", "endpoint"],
                condition=Q(state__in=ACTIVE_RESIDENCY_STATES),
                name="residency_one_active_per_endpoint",
            ),
        ]
        indexes = [
            models.Index(
                fields=["endpoint"],
                condition=Q(state__in=ACTIVE_RESIDENCY_STATES),
                name="residency_active",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.model} on {self.endpoint} ({self.state})"


class ResidencyGpu(models.Model):
    """How much of one GPU a residency holds (a split model holds several)."""

    residency = models.ForeignKey(Residency, on_delete=models.CASCADE, related_name="placements")
    gpu = models.ForeignKey(Gpu, on_delete=models.CASCADE, related_name="placements")
    vram_mib = models.PositiveIntegerField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["residency", "gpu"], name="residencygpu_unique")]


class ConfigSnapshot(models.Model):
    """The slowly-changing part of a World (catalog, scores, classes, GPUs), stored once per
    distinct content; each decision points at one and stores only the live part itself."""

    sha256 = models.CharField(max_length=64, unique=True)
    body = models.JSONField()
    created_at = models.DateTimeField(auto_now_add=True)


class SelectionDecision(models.Model):
    class Action(models.TextChoices):
        USE_LOADED = "use_loaded"
        WAIT_FOR_LOAD = "wait_for_load"
        LOAD = "load"
        FALLBACK = "fallback"

    class Source(models.TextChoices):
        API = "api", "select API"
        GATEWAY = "gateway", "gateway"

    created_at = models.DateTimeField(db_index=False)
    client = models.CharField(max_length=200, blank=True)
    source = models.CharField(max_length=10, choices=Source.choices, default=Source.API)
    # A gateway failover: this decision was taken again after `retry_of`'s endpoint failed.
    retry_of = models.ForeignKey(
        "self", on_delete=models.SET_NULL, null=True, blank=True, related_name="retries", db_index=False
    )
    # FK indexes are left to the composite (…, created_at) indexes below: fewer writes per decision.
    task_type = models.ForeignKey(TaskType, on_delete=models.PROTECT, related_name="decisions", db_index=False)
    urgency = models.CharField(max_length=20, choices=UrgencyClass.Name.choices)
    min_quality = models.FloatField(null=True, blank=True)
    max_wait_s = models.FloatField(null=True, blank=True)
    expected_output_tokens = models.PositiveIntegerField(null=True, blank=True)
    input_tokens = models.PositiveIntegerField(null=True, blank=True, help_text="the prompt's length, when given")
    model = models.ForeignKey(
        LlmModel, on_delete=models.PROTECT, null=True, blank=True, related_name="decisions", db_index=False
    )
    endpoint = models.ForeignKey(Endpoint, on_delete=models.SET_NULL, null=True, blank=True, related_name="decisions")
    gpu_keys = ArrayField(models.CharField(max_length=120), default=list, blank=True)
    action = models.CharField(max_length=16, choices=Action.choices, null=True, blank=True)
    expected_wait_s = models.FloatField(null=True, blank=True)
    expected_response_s = models.FloatField(null=True, blank=True)
    quality = models.FloatField(null=True, blank=True)
    met_floor = models.BooleanField(default=False)
    warned = models.BooleanField(default=False)
    reason = models.TextField()
    evictions = models.JSONField(default=list, blank=True)
    candidates = models.JSONField(default=list, blank=True)
    input_state = models.JSONField(default=dict, blank=True, help_text="the live part of the World the policy saw")
    config = models.ForeignKey(ConfigSnapshot, on_delete=models.PROTECT, null=True, blank=True)
    policy_version = models.CharField(max_length=40)
    decision_us = models.PositiveIntegerField(default=0)
    explored = models.BooleanField(default=False, db_default=False, help_text="active learning chose it by a sampled quality")
    residency = models.ForeignKey(
        Residency, on_delete=models.SET_NULL, null=True, blank=True, related_name="decisions"
    )

    class Meta:
        indexes = [
            models.Index(fields=["created_at"], name="decision_time"),
            models.Index(fields=["task_type", "created_at"], name="decision_task_time"),
            models.Index(fields=["model", "created_at"], name="decision_model_time"),
            # The console's decision log filters on each of these too; with the time index alone a value
            # without rows (an action, urgency or source never used) walks all of it. The (action, …) index
            # replaces the partial fallback one it covers.
            models.Index(fields=["action", "created_at"], name="decision_action_time"),
            models.Index(fields=["urgency", "created_at"], name="decision_urgency_time"),
            models.Index(fields=["source", "created_at"], name="decision_source_time"),
            models.Index(fields=["retry_of"], condition=Q(retry_of__isnull=False), name="decision_retry_of"),
        ]

    def __str__(self) -> str:
        return f"#{self.pk} {self.task_type_id}/{self.urgency} → {self.model_id} ({self.action})"


class DecisionOutcome(models.Model):
    class Result(models.TextChoices):
        OK = "ok"
        ERROR = "error"
        CANCELLED = "cancelled"

    class MeasuredBy(models.TextChoices):
        CALLER = "caller", "reported by the caller"
        GATEWAY = "gateway", "measured by the gateway"

    decision = models.OneToOneField(SelectionDecision, on_delete=models.CASCADE, related_name="outcome")
    reported_at = models.DateTimeField()
    response_ms = models.PositiveIntegerField()
    # Time to first token as the caller saw it (streaming): the interactive p95's first source.
    first_token_ms = models.PositiveIntegerField(null=True, blank=True)
    success = models.BooleanField()
    rating = models.FloatField(null=True, blank=True, validators=ZERO_TO_ONE)
    measured_by = models.CharField(max_length=10, choices=MeasuredBy.choices, default=MeasuredBy.CALLER)
    result = models.CharField(max_length=10, choices=Result.choices, blank=True)
    error = models.TextField(blank=True)
    # What Ollama reported for a request the gateway forwarded (its durations are in seconds here).
    prompt_tokens = models.PositiveIntegerField(null=True, blank=True)
    output_tokens = models.PositiveIntegerField(null=True, blank=True)
    load_s = models.FloatField(null=True, blank=True, help_text="Ollama's load_duration (includes its own queue)")
    prompt_eval_s = models.FloatField(null=True, blank=True)
    eval_s = models.FloatField(null=True, blank=True)
    total_s = models.FloatField(null=True, blank=True)
    # What the gateway saw, for learning (learning/signals.py): Ollama's done_reason ("stop", "length"),
    # and a digest of the conversation before this answer, to recognise the same one asked again.
    done_reason = models.CharField(max_length=20, blank=True, default="", db_default="")
    conversation = models.CharField(max_length=32, blank=True, default="", db_default="")

    class Meta:
        indexes = [
            # "the same conversation asked again": learning/signals.py looks back a few minutes by digest.
            models.Index(fields=["conversation", "reported_at"], condition=~Q(conversation=""),
                         name="outcome_conversation"),
        ]
        constraints = [
            models.CheckConstraint(
                condition=Q(rating__isnull=True) | (Q(rating__gte=0) & Q(rating__lte=1)), name="outcome_rating_0_1"
            ),
            models.CheckConstraint(
                condition=Q(first_token_ms__isnull=True) | Q(first_token_ms__lte=F("response_ms")),
                name="outcome_first_token_le_response",
            ),
        ]


class QualitySignal(models.Model):
    """One piece of evidence about one answer of a model for a task type (learning/signals.py says
    which, and their weights): a caller's rating, or what the gateway saw. ``value`` is how good the
    answer was (1 good, 0 bad), ``weight`` how many answers' worth of evidence it is. It outlives its
    decision (pruned after TOWEROPS_DECISION_RAW_DAYS): the estimate is built from these rows alone."""

    class Kind(models.TextChoices):
        RATING = "rating", "rated by the caller"
        ANSWERED = "answered", "answered, not asked again"
        ERROR = "error", "failed"
        TRUNCATED = "truncated", "cut off at the length limit"
        CANCELLED = "cancelled", "cancelled mid-answer"
        REGENERATED = "regenerated", "asked again"
        ESCALATED = "escalated", "asked again of a bigger model"

    decision_id = models.BigIntegerField(null=True, blank=True, help_text="no foreign key: signals outlive pruning")
    model = models.ForeignKey(LlmModel, on_delete=models.CASCADE, related_name="quality_signals", db_index=False)
    task_type = models.ForeignKey(TaskType, on_delete=models.CASCADE, related_name="quality_signals")
    kind = models.CharField(max_length=12, choices=Kind.choices)
    value = models.FloatField(validators=ZERO_TO_ONE)
    weight = models.FloatField()
    created_at = models.DateTimeField()

    class Meta:
        indexes = [models.Index(fields=["model", "task_type"], name="qualitysignal_model_task")]
        constraints = [
            models.UniqueConstraint(fields=["decision_id", "kind"], condition=Q(decision_id__isnull=False),
                                    name="qualitysignal_one_per_kind"),
            models.CheckConstraint(condition=Q(value__gte=0) & Q(value__lte=1), name="qualitysignal_value_0_1"),
            models.CheckConstraint(condition=Q(weight__gt=0), name="qualitysignal_weight_pos"),
        ]


class QualityEvidence(models.Model):
    """The signals of one model × task type summed (Σ weight·value, Σ weight·(1 − value), count), kept
    in step with QualitySignal by learning/signals.py in the same transaction: the estimate reads one
    row per pair instead of summing every signal ever given."""

    model = models.ForeignKey(LlmModel, on_delete=models.CASCADE, related_name="quality_evidence")
    task_type = models.ForeignKey(TaskType, on_delete=models.CASCADE, related_name="quality_evidence")
    good = models.FloatField(default=0.0)
    bad = models.FloatField(default=0.0)
    count = models.IntegerField(default=0)
    updated_at = models.DateTimeField()

    class Meta:
        verbose_name_plural = "quality evidence"
        constraints = [models.UniqueConstraint(fields=["model", "task_type"], name="qualityevidence_unique")]


class WindowSuggestion(models.Model):
    """Preload windows predicted from demand (learning/windows.py), with the replay's estimate of their
    effect beside the current windows'. Accepting one replaces the windows it names (history kept by
    PreloadWindow's own history)."""

    class Status(models.TextChoices):
        OPEN = "open"
        ACCEPTED = "accepted"
        DISMISSED = "dismissed"
        SUPERSEDED = "superseded"

    created_at = models.DateTimeField()
    learned_from = models.DateTimeField(help_text="the demand history it was learned from starts here")
    learned_until = models.DateTimeField()
    windows = models.JSONField(help_text="[{name, days, start, end, timezone, models}]")
    estimate = models.JSONField(default=dict, blank=True, help_text="the replay's figures: current and suggested")
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.OPEN)
    decided_at = models.DateTimeField(null=True, blank=True)
    decided_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True)
    automatic = models.BooleanField(default=False, help_text="made and applied by the weekly task (TOWEROPS_PRELOAD_SUGGEST=auto)")

    class Meta:
        ordering = ["-created_at"]


class LoadEvent(models.Model):
    class Kind(models.TextChoices):
        LOAD = "load"
        UNLOAD = "unload"
        EVICT = "evict"
        FAIL = "fail"

    Trigger = Trigger

    model = models.ForeignKey(LlmModel, on_delete=models.PROTECT, related_name="load_events", db_index=False)
    endpoint = models.ForeignKey(Endpoint, on_delete=models.CASCADE, related_name="load_events", db_index=False)
    gpu_keys = ArrayField(models.CharField(max_length=120), default=list, blank=True)
    kind = models.CharField(max_length=10, choices=Kind.choices)
    trigger = models.CharField(max_length=12, choices=Trigger.choices)
    requested_at = models.DateTimeField()
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    duration_s = models.FloatField(null=True, blank=True)
    vram_mib = models.PositiveIntegerField(null=True, blank=True)
    error = models.TextField(blank=True)
    thrash = models.BooleanField(
        default=False, help_text="a load of a model evicted from this endpoint less than 10 minutes before (metrics.is_thrash_load)")
    residency = models.ForeignKey(Residency, on_delete=models.SET_NULL, null=True, blank=True, related_name="events")
    decision = models.ForeignKey(
        SelectionDecision, on_delete=models.SET_NULL, null=True, blank=True, related_name="load_events"
    )

    class Meta:
        indexes = [
            models.Index(fields=["requested_at"], name="loadevent_time"),
            models.Index(fields=["model", "requested_at"], name="loadevent_model_time"),
            # The console's load event log filters on each (the endpoint one also serves the FK).
            models.Index(fields=["endpoint", "requested_at"], name="loadevent_endpoint_time"),
            models.Index(fields=["kind", "requested_at"], name="loadevent_kind_time"),
            models.Index(fields=["trigger", "requested_at"], name="loadevent_trigger_time"),
        ]
        constraints = [
            models.CheckConstraint(
                condition=Q(duration_s__isnull=True) | Q(duration_s__gte=0), name="loadevent_duration_nonneg"
            ),
        ]


class ApiKey(models.Model):
    """An API key: only its SHA-256 is stored; the key itself is shown once."""

    SCOPES = ("select", "read", "admin", "infer")  # infer: the gateway (models_registry/gateway/)

    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=12, help_text="first characters, to recognise a key")
    hashed_key = models.CharField(max_length=64, unique=True)
    scopes = ArrayField(models.CharField(max_length=10))
    created_at = models.DateTimeField(auto_now_add=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    # What the gateway assumes for this key's requests when neither the model nor a header says.
    default_task = models.SlugField(max_length=64, blank=True)
    default_urgency = models.CharField(max_length=20, choices=UrgencyClass.Name.choices, blank=True)

    class Meta:
        verbose_name = "API key"
        constraints = [
            models.CheckConstraint(
                condition=Q(scopes__contained_by=["select", "read", "admin", "infer"]) & ~Q(scopes=[]),
                name="apikey_scopes_valid",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"


# --------------------------------------------------------------------------- SLOs


class SloTarget(models.Model):
    """A target for one of the five SLO metrics (defined in models_registry/metrics.py).

    Seeded with the seed's values by a data migration; editable in the admin (with history).
    Shares are fractions (0.80 = 80 %), the p95 is in seconds, loads per hour a rate.
    """

    class Name(models.TextChoices):
        INTERACTIVE_P95_S = "interactive_p95_s", "interactive time-to-first-token p95 (s)"
        LOADS_PER_HOUR = "loads_per_hour", "model loads per hour"
        VRAM_EFFICIENCY = "vram_efficiency", "VRAM efficiency (fraction)"
        QUALITY_MET = "quality_met", "quality threshold met (fraction)"
        FALLBACK_RATE = "fallback_rate", "fallback rate (fraction)"

    class Comparator(models.TextChoices):
        LT = "lt", "<"
        LE = "le", "≤"
        GT = "gt", ">"
        GE = "ge", "≥"

    name = models.CharField(max_length=40, choices=Name.choices, unique=True)
    comparator = models.CharField(max_length=2, choices=Comparator.choices)
    target = models.FloatField()
    enabled = models.BooleanField(default=True)
    description = models.TextField(blank=True)
    history = HistoricalRecords()

    class Meta:
        ordering = ["name"]
        verbose_name = "SLO target"

    def __str__(self) -> str:
        return f"{self.name} {self.get_comparator_display()} {self.target:g}"


class SloHourlyRollup(models.Model):
    """One clock hour (UTC) of the SLO metrics' additive statistics (metrics.Tally) plus the
    labelled counts the reports and Prometheus need, so windows of weeks read these rows.

    Computed by slo.tasks.rollup_hour (recompute and upsert: idempotent). `dirty_at` is set by
    slo.rollups.mark_hour_dirty when a late outcome changes the hour; `computed_at` is null for a
    row that only carries that mark. Label keys use ids ("action|task_type_id|urgency|model_id").

    `settled_at` records when a computation first ran late enough that nothing more could be
    recorded in the hour (TOWEROPS_LOAD_TIMEOUT_S + 60 s after it, the timeout in force then): a
    fact, not re-derived from today's setting. `sealed_at` records that the hour's raw decisions
    were pruned (docs/retention.md): the row is then the hour's only record and final — never
    recomputed, never marked dirty (the constraint below refuses a dirty or unsettled sealed row).
    """

    hour = models.DateTimeField(unique=True)
    seconds = models.FloatField(default=0.0)
    observed_s = models.FloatField(default=0.0)
    decisions = models.PositiveIntegerField(default=0)
    fallbacks = models.PositiveIntegerField(default=0)
    met_floor = models.PositiveIntegerField(default=0)
    interactive_first_token = models.PositiveIntegerField(default=0)
    interactive_first_token_gateway = models.PositiveIntegerField(
        default=0, help_text="of interactive_first_token, measured by the gateway (the rest reported by callers)"
    )
    interactive_observed = models.PositiveIntegerField(default=0)
    interactive_estimated = models.PositiveIntegerField(default=0)
    interactive_unknown = models.PositiveIntegerField(default=0)
    latency_hist = ArrayField(models.IntegerField(), default=list, help_text="metrics.LATENCY_EDGES_S buckets")
    loads = models.PositiveIntegerField(default=0)
    thrash_loads = models.PositiveIntegerField(default=0)
    unloads = models.PositiveIntegerField(default=0)
    evictions = models.PositiveIntegerField(default=0)
    failures = models.PositiveIntegerField(default=0)
    vram_used_mib_s = models.FloatField(default=0.0)
    vram_usable_mib_s = models.FloatField(default=0.0)
    decision_us_hist = ArrayField(models.IntegerField(), default=list, help_text="metrics.DECISION_US_EDGES")
    decision_us_sum = models.BigIntegerField(default=0)
    load_duration_hist = ArrayField(models.IntegerField(), default=list, help_text="metrics.LOAD_DURATION_EDGES_S")
    load_duration_sum = models.FloatField(default=0.0)
    decision_counts = models.JSONField(default=dict, help_text='{"action|task_type_id|urgency|model_id": n}')
    load_counts = models.JSONField(default=dict, help_text='{"kind|model_id|endpoint_id|task_type_id": n}')
    ratings = models.JSONField(default=dict, help_text='{"model_id|task_type_id": [n, sum]}')
    gpu_vram = models.JSONField(
        default=dict, help_text='{"gpus": {"gpu_id": [samples, used_mib_sum, used_mib_max, total_mib]}} (vram.py)'
    )
    labelled_hists = models.JSONField(
        default=dict, help_text='Prometheus histograms: {"ttft"|"wait"|"load": {"label|ids": {"h": [buckets], "s": sum}}} '
                                '(metrics.observe; empty in hours rolled up before 0009)'
    )
    computed_at = models.DateTimeField(null=True, blank=True)
    dirty_at = models.DateTimeField(null=True, blank=True, help_text="a late outcome changed this hour")
    settled_at = models.DateTimeField(
        null=True, blank=True, help_text="computed at least the load timeout in force + 60 s after the hour ended"
    )
    sealed_at = models.DateTimeField(
        null=True, blank=True, help_text="raw decisions of this hour were pruned: this row is final"
    )

    class Meta:
        ordering = ["hour"]
        verbose_name = "SLO hourly rollup"
        indexes = [models.Index(fields=["hour"], condition=Q(dirty_at__isnull=False), name="slorollup_dirty")]
        constraints = [
            models.CheckConstraint(
                condition=Q(sealed_at__isnull=True)
                | Q(computed_at__isnull=False, settled_at__isnull=False, dirty_at__isnull=True),
                name="slorollup_sealed_is_final",
                violation_error_message="a sealed hour (its raw decisions pruned) cannot be marked for recompute",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.hour:%Y-%m-%d %H}:00 ({self.decisions} decisions)"


class CounterCheckpoint(models.Model):
    """The all-time sums of the good hourly rollups older than two days, with the version of each
    rollup row they cover, kept so a new process's first /metrics scrape reads one row instead of
    summing every hour ever rolled up (slo/counters.py). A cache: a row that changed since makes it
    be summed again; deleting it costs one full sum."""

    name = models.CharField(max_length=40, unique=True)
    versions = models.JSONField(default=dict, help_text='{"rollup id": "row version"}')
    totals = models.JSONField(default=dict, help_text="counters.Totals as JSON")
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"{self.name}: {len(self.versions)} rollup hours"


# --------------------------------------------------------------------------- trace replay


class ReplayRun(models.Model):
    """One `manage.py replay` run (models_registry/replay/): what was replayed on which profiles,
    each (profile, policy)'s summary, the printed table; its plots are ReplayPlot rows (PNG bytes
    served by the console: no CDN, no MEDIA storage to set up)."""

    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    trace = models.CharField(max_length=500)
    profile = models.CharField(max_length=500)
    mapping = models.CharField(max_length=200, blank=True)
    time_scale = models.FloatField(default=1.0)
    sample = models.FloatField(default=1.0)
    seed = models.IntegerField(default=1)
    start = models.DateTimeField(null=True, blank=True, help_text="wall-clock time of the trace's start (preloads)")
    policies = ArrayField(models.CharField(max_length=40), default=list)
    what_if = models.JSONField(default=list, blank=True, help_text='[{"file", "kind", "name", "changes"?}]')
    requests = models.PositiveIntegerField(default=0)
    summaries = models.JSONField(default=list, help_text='[{"profile": label, "policy": name, "slo": ..., ...}]')
    table = models.TextField(blank=True)
    wall_s = models.FloatField(default=0.0)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"replay #{self.pk}: {self.trace} ({self.requests} requests)"


class ReplayPlot(models.Model):
    run = models.ForeignKey(ReplayRun, on_delete=models.CASCADE, related_name="plots")
    name = models.CharField(max_length=100)  # e.g. wait_cdf.png
    png = models.BinaryField()

    class Meta:
        ordering = ["name"]
        constraints = [models.UniqueConstraint(fields=["run", "name"], name="replayplot_run_name")]

    def __str__(self) -> str:
        return f"{self.name} of replay #{self.run_id}"


# --------------------------------------------------------------------------- operations


class ServiceHeartbeat(models.Model):
    """The last time a background service proved it runs (`beat`: its heartbeat task ran), for /readyz."""

    service = models.CharField(max_length=40, unique=True)
    beat_at = models.DateTimeField()

    def __str__(self) -> str:
        return f"{self.service} at {self.beat_at:%Y-%m-%d %H:%M:%S}"
