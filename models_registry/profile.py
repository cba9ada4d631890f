"""Hardware-and-catalog profiles: the YAML format, its validation, and a World built from it.

Pure: no Django. `manage.py load_profile` writes a Profile to the database; the replay
simulator and the Ollama simulator read it directly. A bad file raises ProfileError
naming the file, the path of the bad field (``models[3].vram_gb``) and why.
"""
from __future__ import annotations

import datetime as dt
import re
import zoneinfo
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from models_registry.durations import parse_keep_alive
from models_registry.policy.types import (
    MIB_PER_GB,
    EndpointView,
    GpuView,
    ModelView,
    PolicyParams,
    ResidentView,
    TaskTypeView,
    UrgencyView,
    World,
)

DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
URGENCY_NAMES = ("critical", "interactive", "background", "batch")
TAG_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,199}$")


class ProfileError(ValueError):
    def __init__(self, source: str, path: str, message: str):
        self.source, self.path, self.message = source, path, message
        where = f"{source}: {path}" if path else source
        super().__init__(f"{where}: {message}")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def gb_to_mib(gb: float) -> int:
    return int(round(gb * MIB_PER_GB))


class SimulatorSpec(_Strict):
    load_fixed_s: float = Field(1.5, ge=0)
    disk_gbps: float = Field(1.0, gt=0)
    cached_disk_gbps: float = Field(3.0, gt=0)


class GpuSpec(_Strict):
    index: int = Field(ge=0)
    vendor: Literal["nvidia", "amd"]
    name: str = Field(min_length=1, max_length=200)
    uuid: str = Field("", max_length=100)
    total_gb: float = Field(gt=0, le=1024)
    reserved_gb: float = Field(0, ge=0)

    @property
    def total_mib(self) -> int:
        return gb_to_mib(self.total_gb)

    @property
    def reserved_mib(self) -> int:
        return gb_to_mib(self.reserved_gb)


class EndpointSpec(_Strict):
    name: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9._-]+$")
    base_url: str = Field(pattern=r"^https?://[^\s/]+(/.*)?$")
    gpus: list[int] = Field(default_factory=list)  # GPU indexes on this host
    allow_split: bool = False
    num_ctx: int = Field(4096, ge=256)
    # What TowerOps loads with: Ollama keeps a model this long after its last request. A negative
    # duration ("-1m") keeps it until TowerOps evicts it for a model that needs the room (keep-warm).
    keep_alive: str = "30m"

    @field_validator("keep_alive", mode="before")
    @classmethod
    def _ollama_duration(cls, value):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str):
            raise ValueError(f"keep_alive is a duration like 30m, 1h or -1m (forever), got {value!r}")
        try:
            parse_keep_alive(value)
        except ValueError:
            raise ValueError(f"keep_alive {value!r} is not an Ollama duration (30m, 1h30m, 300, -1m for forever)")
        return value

    @property
    def keep_alive_s(self) -> float:
        """Seconds; math.inf for a negative (forever) keep_alive."""
        return parse_keep_alive(self.keep_alive)


class HostSpec(_Strict):
    name: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9._-]+$")
    queue: str | None = Field(None, max_length=200)
    simulator: SimulatorSpec = SimulatorSpec()
    gpus: list[GpuSpec] = Field(default_factory=list)
    endpoints: list[EndpointSpec] = Field(default_factory=list)

    @property
    def queue_name(self) -> str:
        return self.queue or f"host.{self.name}"


class TaskTypeSpec(_Strict):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[a-z][a-z0-9_]*$")
    description: str = ""
    quality_floor: float = Field(ge=0, le=1)
    default_output_tokens: int = Field(64, ge=0, le=1_000_000)
    # The prompt length assumed for a request that does not say (0: its prefill is not counted).
    default_input_tokens: int = Field(0, ge=0, le=10_000_000)


class UrgencySpec(_Strict):
    name: Literal["critical", "interactive", "background", "batch"]
    patience_s: float = Field(ge=0)
    wait_weight: float = Field(ge=0)
    eviction_penalty: float = Field(0, ge=0)
    use_loaded_if_acceptable: bool = False


class ModelSpec(_Strict):
    tag: str = Field(min_length=1, max_length=200, pattern=TAG_RE.pattern)
    kind: Literal["local", "remote"] = "local"
    family: str = ""
    parameters_b: float | None = Field(None, gt=0)
    quantization: str = ""
    file_size_gb: float | None = Field(None, ge=0)
    vram_gb: float = Field(0, ge=0)
    context_length: int = Field(4096, ge=0)
    load_s: float = Field(0, ge=0)
    tokens_per_s: float = Field(30, gt=0)
    # Prompt processing (prefill) speed: a request that gives its prompt's length (input_tokens)
    # waits this long for its first token, in the policy and the replay alike.
    # Default: PREFILL_PER_DECODE × tokens_per_s (see below).
    prefill_tokens_per_s: float | None = Field(None, gt=0)
    remote_latency_s: float = Field(0, ge=0)
    enabled: bool = True
    pinned: bool = False
    quality: dict[str, float] = Field(default_factory=dict)

    @field_validator("quality")
    @classmethod
    def _scores_in_range(cls, value: dict[str, float]) -> dict[str, float]:
        for task, score in value.items():
            if not 0 <= score <= 1:
                raise ValueError(f"quality for {task!r} must be between 0 and 1, got {score}")
        return value

    @property
    def vram_mib(self) -> int:
        return gb_to_mib(self.vram_gb)

    @property
    def prefill_tps(self) -> float:
        return self.prefill_tokens_per_s or PREFILL_PER_DECODE * self.tokens_per_s


# Prefill (prompt processing, compute-bound) runs many times faster than generation (decode,
# memory-bound) on the same GPU. Published llama.cpp/exllama runs put the ratio at 14-39x:
# TinyLlama Q4_K_M on an RTX 3060 pp4096 3,982 vs tg128 279 t/s = 14x (geerlingguy/ai-benchmarks#40);
# a 4-bit LLaMA-7B on an RTX 3060 1,423 vs 36.6 t/s = 39x (turboderp/exllama#6); LLaMA-7B Q4_0 on an
# RX 6700 XT (ROCm) pp512 1,017 vs tg128 59 t/s = 17x (ggml-org/llama.cpp#5835); Qwen2.5-Coder-7B
# Q4_K_M on an RX 7900 XTX (ROCm) ~3,900 vs ~112 t/s = 35x (ggml-org/llama.cpp#20934). 20x sits at
# the slow end of those; a profile gives a model's measured figure as prefill_tokens_per_s.
PREFILL_PER_DECODE = 20.0


def window_open(days: list[int] | tuple[int, ...], start: dt.time, end: dt.time, timezone: str,
                at: dt.datetime) -> bool:
    """Whether a preload window (weekdays 0 = Monday, local start/end, may wrap midnight) is
    open at the aware datetime `at`. The one definition: PreloadWindow.is_active and the replay."""
    local = at.astimezone(zoneinfo.ZoneInfo(timezone))
    t, day = local.time(), local.weekday()
    if start < end:
        return day in days and start <= t < end
    # Wraps midnight: the part after midnight belongs to the previous day's window.
    if t >= start:
        return day in days
    return t < end and (day - 1) % 7 in days


class PreloadWindowSpec(_Strict):
    name: str = Field(min_length=1, max_length=100)
    days: list[Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]] = Field(min_length=1)
    start: dt.time
    end: dt.time
    timezone: str = "UTC"
    models: list[str] = Field(min_length=1)
    enabled: bool = True

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r} (use an IANA name like Europe/Berlin)")
        return value

    @property
    def day_numbers(self) -> list[int]:
        return sorted({DAY_NAMES.index(d) for d in self.days})


class Profile(_Strict):
    version: Literal[1] = 1
    hosts: list[HostSpec] = Field(default_factory=list)
    task_types: list[TaskTypeSpec] = Field(default_factory=list)
    urgency_classes: list[UrgencySpec] = Field(default_factory=list)
    models: list[ModelSpec] = Field(default_factory=list)
    preload_windows: list[PreloadWindowSpec] = Field(default_factory=list)
    policy: dict[str, float] = Field(default_factory=dict)

    def to_world(self, now: float, residents: tuple[ResidentView, ...] = ()) -> World:
        """The policy's view of this profile: every endpoint up, no fresh telemetry."""
        gpus, endpoints = [], []
        for host in self.hosts:
            for gpu in host.gpus:
                gpus.append(
                    GpuView(
                        key=gpu_key(host.name, gpu.index),
                        name=gpu.name,
                        total_mib=gpu.total_mib,
                        reserved_mib=gpu.reserved_mib,
                    )
                )
            for ep in host.endpoints:
                endpoints.append(
                    EndpointView(
                        key=ep.name,
                        gpus=tuple(gpu_key(host.name, i) for i in ep.gpus),
                        allow_split=ep.allow_split,
                        num_ctx=ep.num_ctx,
                    )
                )
        models = tuple(
            ModelView(
                tag=m.tag,
                kind=m.kind,
                vram_mib=m.vram_mib,
                load_s=m.load_s,
                tokens_per_s=m.tokens_per_s,
                prefill_tokens_per_s=m.prefill_tps if m.kind == "local" else 0.0,
                quality=dict(m.quality),
                enabled=m.enabled,
                pinned=m.pinned,
                remote_latency_s=m.remote_latency_s,
            )
            for m in self.models
        )
        return World(
            now=now,
            gpus=tuple(gpus),
            endpoints=tuple(endpoints),
            residents=tuple(residents),
            models=models,
            task_types=tuple(
                TaskTypeView(t.name, t.quality_floor, t.default_output_tokens, t.default_input_tokens)
                for t in self.task_types
            ),
            urgencies=tuple(
                UrgencyView(u.name, u.patience_s, u.wait_weight, u.eviction_penalty, u.use_loaded_if_acceptable)
                for u in self.urgency_classes
            ),
            params=PolicyParams(**self.policy),
        )


def gpu_key(host: str, index: int) -> str:
    """The key a GPU has in a World built from a profile."""
    return f"{host}/{index}"


def _path(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _check_references(p: Profile) -> list[tuple[str, str]]:
    """Cross-references pydantic cannot see: dangling names, duplicates, impossible sizes."""
    errors: list[tuple[str, str]] = []
    task_names = [t.name for t in p.task_types]
    model_tags = [m.tag for m in p.models]

    def dupes(names, path_fmt, what):
        seen = set()
        for i, name in enumerate(names):
            if name in seen:
                errors.append((path_fmt.format(i), f"duplicate {what} {name!r}"))
            seen.add(name)

    dupes([h.name for h in p.hosts], "hosts[{}].name", "host")
    dupes(task_names, "task_types[{}].name", "task type")
    dupes([u.name for u in p.urgency_classes], "urgency_classes[{}].name", "urgency class")
    dupes(model_tags, "models[{}].tag", "model tag")
    dupes([w.name for w in p.preload_windows], "preload_windows[{}].name", "preload window")
    dupes([e.name for h in p.hosts for e in h.endpoints], "endpoints[{}].name", "endpoint name")
    for hi, host in enumerate(p.hosts):
        indexes = [g.index for g in host.gpus]
        dupes(indexes, f"hosts[{hi}].gpus[{{}}].index", "GPU index")
        for gi, gpu in enumerate(host.gpus):
            if gpu.reserved_gb > gpu.total_gb:
                errors.append((f"hosts[{hi}].gpus[{gi}].reserved_gb",
                               f"{gpu.reserved_gb} GB reserved is more than the {gpu.total_gb} GB total"))
        for ei, ep in enumerate(host.endpoints):
            for k, idx in enumerate(ep.gpus):
                if idx not in indexes:
                    errors.append((f"hosts[{hi}].endpoints[{ei}].gpus[{k}]",
                                   f"GPU index {idx} is not on host {host.name!r} (it has {indexes or 'none'})"))
    for mi, m in enumerate(p.models):
        for task in m.quality:
            if task not in task_names:
                errors.append((f"models[{mi}].quality.{task}",
                               f"unknown task type {task!r} (defined: {', '.join(task_names) or 'none'})"))
        if m.kind == "local" and m.vram_gb <= 0:
            errors.append((f"models[{mi}].vram_gb", "a local model needs its VRAM size (> 0)"))
    for wi, w in enumerate(p.preload_windows):
        if w.start == w.end:
            errors.append((f"preload_windows[{wi}].end", "a window cannot end where it starts"))
        for k, tag in enumerate(w.models):
            if tag not in model_tags:
                errors.append((f"preload_windows[{wi}].models[{k}]", f"unknown model {tag!r}"))
    try:
        PolicyParams(**p.policy)
    except TypeError as exc:
        errors.append(("policy", f"{exc}; allowed: {', '.join(PolicyParams.__dataclass_fields__)}"))
    return errors


def parse_profile(data: object, source: str = "<profile>") -> Profile:
    if not isinstance(data, dict):
        raise ProfileError(source, "", "a profile is a mapping with hosts, models, task_types, ...")
    try:
        profile = Profile.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = tuple(x for x in first["loc"] if not (isinstance(x, str) and x.startswith(("literal[", "function-"))))
        message = first["msg"]
        if first["type"] == "extra_forbidden":
            message = "unknown field"
        elif "input" in first and first["type"] not in ("missing",):
            message = f"{message} (got {first['input']!r})"
        raise ProfileError(source, _path(loc), message) from None
    errors = _check_references(profile)
    if errors:
        path, message = errors[0]
        raise ProfileError(source, path, message)
    return profile


def load_profile_file(path: str | Path) -> Profile:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ProfileError(str(path), "", f"cannot read: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ProfileError(str(path), where, f"not valid YAML: {getattr(exc, 'problem', exc)}") from None
    return parse_profile(data, str(path))
