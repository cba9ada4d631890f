"""Request and response shapes of the v1 API (django-ninja / pydantic)."""
from __future__ import annotations

import datetime as dt
import typing
from typing import Literal

from ninja import Schema
from pydantic import ConfigDict, Field, StrictBool, field_validator


def _no_nul_in_schema(schema: dict) -> None:
    # Say in the schema what _no_nul enforces, so schema-driven clients never send it.
    for prop in schema.get("properties", {}).values():
        for option in prop.get("anyOf", [prop]):
            if option.get("type") == "string" and "enum" not in option:
                option.setdefault("pattern", "^[^\\u0000]*$")


class _In(Schema):
    # No NaN or Infinity: 422 naming the field (JSON has neither; Python's parser accepts both).
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, json_schema_extra=_no_nul_in_schema)

    @field_validator("*", mode="before")
    @classmethod
    def _json_value(cls, value, info):
        if isinstance(value, bool) and _is_number(cls.model_fields[info.field_name].annotation):
            raise ValueError("must be a JSON number, not true or false")
        if isinstance(value, str):
            # PostgreSQL text cannot hold NUL: refuse it here as the caller's error, not the database's.
            if "\x00" in value:
                raise ValueError("must not contain NUL characters")
            # A number is a JSON number, as the schema says (5 and 5.0 are integers there; "5" is not).
            if _is_number(cls.model_fields[info.field_name].annotation):
                raise ValueError("must be a JSON number, not a string")
        return value


def _is_number(annotation) -> bool:
    return annotation in (int, float) or any(a in (int, float) for a in typing.get_args(annotation))


URGENCIES = ["critical", "interactive", "background", "batch"]


class SelectIn(_In):
    # Validated against the catalog by the service (UnknownChoice: 422 naming the allowed values);
    # the OpenAPI schema lists the task types defined when it is served (add_catalog_enums).
    task_type: str = Field(min_length=1, max_length=64, description="a task type of the catalog: GET /task-types")
    urgency: str = Field(min_length=1, max_length=20, json_schema_extra={"enum": URGENCIES})
    min_quality: float | None = Field(None, ge=0, le=1)
    max_wait_s: float | None = Field(None, ge=0, le=86400)
    expected_output_tokens: int | None = Field(None, ge=0, le=1_000_000)
    input_tokens: int | None = Field(None, ge=0, le=10_000_000,
                                     description="the prompt's length in tokens: its prefill counts in the wait")
    client: str = Field("", max_length=200)
    dry_run: StrictBool = False


class EvictionOut(Schema):
    model: str
    endpoint: str
    gpus: list[str]
    vram_mib: int


class AlternativeOut(Schema):
    model: str
    quality: float | None
    expected_wait_s: float | None
    score: float | None
    rejected_because: str | None


class SelectOut(Schema):
    decision_id: int | None
    model: str | None
    endpoint: str | None
    gpus: list[str]
    action: str | None
    expected_wait_s: float | None
    expected_prefill_s: float
    expected_response_s: float | None
    quality: float | None
    met_floor: bool
    warned: bool
    reason: str
    evictions: list[EvictionOut]
    alternatives: list[AlternativeOut]
    policy_version: str


class OutcomeIn(_In):
    # Milliseconds as a stopwatch gives them ((t1 - t0) * 1000): a fraction is kept to the nearest ms.
    response_ms: float = Field(ge=0, le=86_400_000, allow_inf_nan=False,
                               description="from the request until the whole answer was there (ms)")
    # Declared after response_ms, so its validator sees response_ms's validated value.
    first_token_ms: float | None = Field(None, ge=0, le=86_400_000, allow_inf_nan=False,
                                         description="from the request until the first token arrived (ms; streaming); "
                                                     "at most response_ms")
    success: StrictBool
    rating: float | None = Field(None, ge=0, le=1, description="how good the answer was, 0..1")

    @field_validator("response_ms", "first_token_ms")
    @classmethod
    def _whole_milliseconds(cls, value):
        return None if value is None else round(value)

    @field_validator("first_token_ms")
    @classmethod
    def _first_token_before_the_end(cls, value, info):
        response_ms = info.data.get("response_ms")
        if value is not None and response_ms is not None and value > response_ms:
            raise ValueError(f"the first token ({value} ms) cannot come after the whole response ({response_ms} ms)")
        return value


class TaskTypeOut(Schema):
    name: str
    quality_floor: float
    default_output_tokens: int
    default_input_tokens: int
    description: str


class CatalogChoicesOut(Schema):
    task_types: list[TaskTypeOut]
    urgencies: list[str]


def add_catalog_enums(schema: dict) -> None:
    """List the catalog's task types as SelectIn.task_type's enum (left open if the database is away)."""
    from django.db import DatabaseError

    from models_registry.models import TaskType

    try:
        names = sorted(TaskType.objects.values_list("name", flat=True))
    except DatabaseError:
        return
    props = schema.get("components", {}).get("schemas", {}).get("SelectIn", {}).get("properties", {})
    if names and "task_type" in props:
        props["task_type"]["enum"] = names


class OutcomeOut(Schema):
    decision_id: int
    response_ms: int
    first_token_ms: int | None
    success: bool
    rating: float | None
    reported_at: dt.datetime


class DecisionOut(Schema):
    id: int
    created_at: dt.datetime
    client: str
    task_type: str
    urgency: str
    min_quality: float | None
    max_wait_s: float | None
    expected_output_tokens: int | None
    input_tokens: int | None
    model: str | None
    endpoint: str | None
    gpus: list[str]
    action: str | None
    expected_wait_s: float | None
    expected_response_s: float | None
    quality: float | None
    met_floor: bool
    warned: bool
    reason: str
    evictions: list[dict]
    candidates: list[dict]
    policy_version: str
    decision_us: int
    outcome: OutcomeOut | None


class GpuStateOut(Schema):
    key: str
    name: str
    vendor: str
    total_mib: int
    reserved_mib: int
    allocated_mib: int
    free_mib: int
    measured_free_mib: int | None
    measured_at: dt.datetime | None


class ResidentOut(Schema):
    residency_id: int
    model: str
    endpoint: str
    gpus: list[str]
    state: str
    vram_mib: int
    ready_at: dt.datetime | None
    last_used_at: dt.datetime | None
    expires_at: dt.datetime | None
    trigger: str


class EndpointStateOut(Schema):
    name: str
    base_url: str
    up: bool
    version: str
    gpus: list[str]
    last_checked_at: dt.datetime | None


class StateOut(Schema):
    gpus: list[GpuStateOut]
    endpoints: list[EndpointStateOut]
    residents: list[ResidentOut]


class ModelOut(Schema):
    tag: str
    kind: str
    family: str
    parameters_b: float | None
    quantization: str
    vram_mib: int
    context_length: int
    load_s: float
    tokens_per_s: float
    enabled: bool
    pinned: bool
    quality: dict[str, float]
    loaded_on: list[str]


class PreloadIn(_In):
    endpoint: str | None = Field(None, max_length=100)


class ResidencyOut(Schema):
    residency_id: int | None
    model: str
    endpoint: str | None
    state: Literal["requested", "loading", "loaded", "unloading", "unloaded", "failed"] | None
    detail: str


class ErrorOut(Schema):
    detail: str | list


# --------------------------------------------------------------------------- SLOs and reports

Window = Literal["1h", "24h", "7d", "30d"]


class SloTargetOut(Schema):
    comparator: Literal["lt", "le", "gt", "ge"]
    value: float
    enabled: bool


class SloPointOut(Schema):
    hour: dt.datetime
    value: float | None
    met: bool | None


class SloMetricOut(Schema):
    name: str
    unit: str
    value: float | None = Field(description="null: no data in the window")
    target: SloTargetOut | None
    met: bool | None = Field(description="null: no data, or no enabled target")
    notes: str
    detail: dict
    series: list[SloPointOut]


class SloOut(Schema):
    window: Window
    start: dt.datetime
    end: dt.datetime
    hours_from_rollups: int
    hours_from_raw: int
    metrics: list[SloMetricOut]


class FallbackByModelOut(Schema):
    model: str | None
    fallbacks: int


class FallbackByTaskOut(Schema):
    task_type: str | None
    decisions: int
    fallbacks: int
    rate: float | None


class FallbackByUrgencyOut(Schema):
    urgency: str
    decisions: int
    fallbacks: int
    rate: float | None


class FallbackByHourOut(Schema):
    hour: dt.datetime
    decisions: int
    fallbacks: int
    rate: float | None


class FallbacksOut(Schema):
    window: Window
    start: dt.datetime
    end: dt.datetime
    decisions: int
    fallbacks: int
    rate: float | None
    by_model: list[FallbackByModelOut]
    by_task_type: list[FallbackByTaskOut]
    by_urgency: list[FallbackByUrgencyOut]
    by_hour: list[FallbackByHourOut]


class _LoadCounts(Schema):
    loads: int
    thrash_loads: int = Field(description="of loads, those of a model evicted from the same endpoint less than "
                                          "10 minutes before")
    evictions: int
    unloads: int
    failures: int


class ThrashByModelOut(_LoadCounts):
    model: str | None


class ThrashByEndpointOut(_LoadCounts):
    endpoint: str | None


class ThrashByTaskOut(_LoadCounts):
    task_type: str | None = Field(description="of the decision that asked for the load; null for preloads, admin")


class ThrashByHourOut(_LoadCounts):
    hour: dt.datetime


class ThrashOut(_LoadCounts):
    window: Window
    start: dt.datetime
    end: dt.datetime
    loads_per_hour: float | None
    thrash_share: float | None = Field(description="thrash_loads / loads (null: no loads)")
    observed_hours: float
    by_model: list[ThrashByModelOut]
    by_endpoint: list[ThrashByEndpointOut]
    by_task_type: list[ThrashByTaskOut]
    by_hour: list[ThrashByHourOut]


class QualityRowOut(Schema):
    model: str
    task_type: str
    admin_score: float | None
    observed_mean: float | None = Field(description="mean of the callers' ratings (0..1)")
    ratings: int


class FeedbackIn(_In):
    rating: float = Field(ge=0, le=1, allow_inf_nan=False, description="how good the answer was, 0 (useless) .. 1 (right)")


class FeedbackOut(Schema):
    decision_id: int
    model: str
    task_type: str
    rating: float


class ObservedQualityOut(Schema):
    model: str
    task_type: str
    admin_score: float = Field(description="the catalog's score: the estimate's prior")
    mean: float = Field(description="the posterior mean (docs/learning.md)")
    low: float = Field(description="90 % credible interval, lower end")
    high: float = Field(description="90 % credible interval, upper end")
    evidence: float = Field(description="the signals' weights summed (answers' worth)")
    signals: int
    proposal: float | None = Field(description="the score proposed to the admin, when the evidence contradicts it")


class LearningOut(Schema):
    mode: str = Field(description="shadow: shown and proposed; active: used by the policy (TOWEROPS_LEARNING_MODE)")
    prior_strength: float
    explore_regret: float
    rows: list[ObservedQualityOut]


class QualityOut(Schema):
    window: Window
    start: dt.datetime
    end: dt.datetime
    rows: list[QualityRowOut]
