"""Hardware-and-catalog profiles: the YAML format, its validation, and a World built from it.

Pure: no Django. `manage.py load_profile` writes a Profile to the database; the replay
simulator and the Ollama simulator read it directly. A bad file raises ProfileError
naming the file, the path of the bad field (``models[3].vram_gb``) and why.
"""
from __future__ import annotations

import datetime as dt
import functools
import math
import re
import zoneinfo
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from models_registry.catalog.durations import parse_keep_alive
from models_registry.policy import ollama_rules
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
    # No inf or NaN anywhere: the database's JSON and the API's JSON cannot carry them.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


# Bounds: what the columns hold (PositiveIntegerField < 2**31 MiB or tokens, CharField lengths)
# and what the physics allows, so a typo is an error naming the field, never a traceback.
MAX_GB = 1024.0  # one GPU, one model, one file: 1 TiB
MAX_CTX = 2**21  # tokens: 2 M, past any model's context today
MAX_S = 7 * 86400.0  # a load, a wait or a latency longer than a week is a typo
MAX_TPS = 1e7  # tokens/s


def gb_to_mib(gb: float) -> int:
    return int(round(gb * MIB_PER_GB))


class SimulatorSpec(_Strict):
    load_fixed_s: float = Field(1.5, ge=0, le=MAX_S)
    disk_gbps: float = Field(1.0, gt=0, le=1000)
    cached_disk_gbps: float = Field(3.0, gt=0, le=1000)


class GpuSpec(_Strict):
    index: int = Field(ge=0, le=255)
    vendor: Literal["nvidia", "amd"]
    name: str = Field(min_length=1, max_length=200)
    uuid: str = Field("", max_length=100)
    total_gb: float = Field(gt=0, le=MAX_GB)
    reserved_gb: float = Field(0, ge=0, le=MAX_GB)

    @property
    def total_mib(self) -> int:
        return gb_to_mib(self.total_gb)

    @property
    def reserved_mib(self) -> int:
        return gb_to_mib(self.reserved_gb)


class EndpointSpec(_Strict):
    name: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9._-]+$")
    base_url: str = Field(max_length=300, pattern=r"^https?://[^\s/]+(/.*)?$")
    gpus: list[int] = Field(default_factory=list, max_length=64)  # GPU indexes on this host
    allow_split: bool = False
    num_ctx: int = Field(4096, ge=256, le=MAX_CTX)
    # What TowerOps loads with: Ollama keeps a model this long after its last request. A negative
    # duration ("-1m") keeps it until TowerOps evicts it for a model that needs the room (keep-warm).
    keep_alive: str = "30m"
    # Requests Ollama serves at once per model (its OLLAMA_NUM_PARALLEL): the gateway's admission slots.
    num_parallel: int = Field(1, ge=1, le=64)
    # Models Ollama keeps loaded at once (its OLLAMA_MAX_LOADED_MODELS); 0: Ollama's default, 3 per GPU.
    # At the limit Ollama evicts one on its own: placement names that eviction instead.
    max_loaded_models: int = Field(0, ge=0, le=64)

    @field_validator("keep_alive", mode="before")
    @classmethod
    def _ollama_duration(cls, value):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str):
            raise ValueError(f"keep_alive is a duration like 30m, 1h or -1m (forever), got {value!r}")
        if len(value) > 20:
            raise ValueError(f"keep_alive is at most 20 characters, got {len(value)}")
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
    description: str = Field("", max_length=2000)
    quality_floor: float = Field(ge=0, le=1)
    default_output_tokens: int = Field(64, ge=0, le=1_000_000)
    # The prompt length assumed for a request that does not say (0: its prefill is not counted).
    default_input_tokens: int = Field(0, ge=0, le=10_000_000)


class UrgencySpec(_Strict):
    name: Literal["critical", "interactive", "background", "batch"]
    patience_s: float = Field(ge=0, le=MAX_S)
    wait_weight: float = Field(ge=0, le=1000)
    eviction_penalty: float = Field(0, ge=0, le=1000)
    use_loaded_if_acceptable: bool = False


class ModelSpec(_Strict):
    tag: str = Field(min_length=1, max_length=200, pattern=TAG_RE.pattern)
    kind: Literal["local", "remote"] = "local"
    family: str = Field("", max_length=100)
    parameters_b: float | None = Field(None, gt=0, le=100_000)
    quantization: str = Field("", max_length=50)
    file_size_gb: float | None = Field(None, ge=0, le=MAX_GB)
    vram_gb: float = Field(0, ge=0, le=MAX_GB)
    context_length: int = Field(4096, ge=0, le=MAX_CTX)
    load_s: float = Field(0, ge=0, le=MAX_S)
    tokens_per_s: float = Field(30, gt=0, le=MAX_TPS)
    # Prompt processing (prefill) speed: a request that gives its prompt's length (input_tokens)
    # waits this long for its first token, in the policy and the replay alike.
    # Default: PREFILL_PER_DECODE × tokens_per_s (see below).
    prefill_tokens_per_s: float | None = Field(None, gt=0, le=MAX_TPS)
    remote_latency_s: float = Field(0, ge=0, le=MAX_S)
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
    """Whether a preload window is open at the aware datetime `at`. The one definition:
    PreloadWindow.is_active (the beat), the replay, and the console's week and preview.

    A window is a span of local wall-clock time in `timezone`, opened on each listed weekday
    (0 = Monday) at `start` and closed at `end`. An end before the start runs past midnight, and
    that after-midnight part belongs to the day the window started: "mon 22:00-09:00" is open
    from Monday 22:00 to Tuesday 09:00 (on Tuesday morning, not on Monday morning). On the days
    the clocks change, each day's span is the stretch of real time whose clock readings fall in
    [start, end), taken whole — so a window never closes and reopens within one day's span:

    * clocks go back (a repeated hour): open from the *first* time the clock reads `start` to
      the *last* time it reads a time before `end`, continuously. Berlin 02:30-03:30 on
      2026-10-25 is open 00:30-02:30 UTC (two real hours); 02:10-02:40 is open 00:10-01:40 UTC;
      an end at the repeated hour's first reading (02:00) closes at its first pass.
    * clocks go forward (a skipped hour): a start in the skipped hour opens at the first valid
      instant after it (the transition), an end in it closes there; a window lying wholly in the
      skipped hour opens at the transition for its wall-clock length (Berlin 02:10-02:40 on
      2026-03-29: 01:00-01:30 UTC), rather than not at all.
    """
    local_day = at.astimezone(zoneinfo.ZoneInfo(timezone)).date()
    for day in (local_day - dt.timedelta(days=1), local_day):
        if day.weekday() in days:
            opens, closes = _window_span(timezone, day, start, end)
            if opens <= at < closes:
                return True
    return False


# (windows, minute) -> the warm set then: windows open and close on whole minutes.
_wanted_cache: dict = {}


def wanted_at(windows: tuple, local_models: frozenset[str], at: dt.datetime) -> tuple[str, ...]:
    """The models the windows open at ``at`` want warm (policy.preload.warm_set's order: windows by
    name, models by tag, once each), of ``local_models`` (the enabled local ones). ``windows``:
    ((name, days, start, end, timezone, tags), ...) of the enabled windows. One definition for the
    selections' World.wanted, live (selection.world) and in the replay; cached per minute."""
    if not windows:
        return ()
    minute = int(at.timestamp() // 60)
    key = (windows, local_models, minute)
    hit = _wanted_cache.get(key)
    if hit is not None:
        return hit
    out: dict[str, None] = {}
    for _name, days, start, end, timezone, tags in sorted(windows, key=lambda w: w[0]):
        if window_open(days, start, end, timezone, at):
            for tag in sorted(tags):
                if tag in local_models:
                    out[tag] = None
    if len(_wanted_cache) > 256:
        _wanted_cache.clear()
    _wanted_cache[key] = result = tuple(out)
    return result


@functools.lru_cache(maxsize=4096)
def _window_span(timezone: str, day: dt.date, start: dt.time, end: dt.time) -> tuple[dt.datetime, dt.datetime]:
    """[opens, closes) in UTC of the window started on local `day` (window_open's rules)."""
    tz = zoneinfo.ZoneInfo(timezone)
    first = dt.datetime.combine(day, start)
    last = dt.datetime.combine(day if start < end else day + dt.timedelta(days=1), end)
    early, late = _readings(tz, first)
    opens = early if early <= late else _transition(tz, late, early)  # else: skipped
    early, late = _readings(tz, last)
    if early == late:
        closes = early
    elif early > late:  # skipped: the clock jumps over the end
        closes = _transition(tz, late, early)
    else:  # repeated: its second pass reads times before the end unless the end is its first reading
        before = (late - dt.timedelta(microseconds=1)).astimezone(tz).replace(tzinfo=None)
        closes = late if before < last else early
    if closes <= opens:  # the whole window lies in a skipped hour
        closes = opens + (last - first)
    return opens, closes


def _readings(tz: zoneinfo.ZoneInfo, wall: dt.datetime) -> tuple[dt.datetime, dt.datetime]:
    """The UTC instants of a wall-clock time at fold 0 and 1: equal for an ordinary time, the
    first and second pass of a repeated one, and reversed (fold 0 later) for a skipped one."""
    return (wall.replace(tzinfo=tz, fold=0).astimezone(dt.timezone.utc),
            wall.replace(tzinfo=tz, fold=1).astimezone(dt.timezone.utc))


def _transition(tz: zoneinfo.ZoneInfo, lo: dt.datetime, hi: dt.datetime) -> dt.datetime:
    """The instant in (lo, hi] at which the zone's offset changes (clocks go forward), to the second."""
    a, b = int(lo.timestamp()), math.ceil(hi.timestamp())
    after = hi.astimezone(tz).utcoffset()
    while b - a > 1:
        mid = (a + b) // 2
        if dt.datetime.fromtimestamp(mid, dt.timezone.utc).astimezone(tz).utcoffset() == after:
            b = mid
        else:
            a = mid
    return dt.datetime.fromtimestamp(b, dt.timezone.utc)


class PreloadWindowSpec(_Strict):
    name: str = Field(min_length=1, max_length=100)
    days: list[Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]] = Field(min_length=1)
    start: dt.time
    end: dt.time
    timezone: str = Field("UTC", max_length=64)
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

    @field_validator("policy")
    @classmethod
    def _policy_in_range(cls, value: dict[str, float]) -> dict[str, float]:
        for key, number in value.items():
            if not 0 <= number <= 1e6:
                raise ValueError(f"policy.{key} must be between 0 and 1000000, got {number}")
        return value

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
                        max_loaded=ollama_rules.max_loaded_models(ep.max_loaded_models, len(ep.gpus)),
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
    dupes([h.queue_name for h in p.hosts], "hosts[{}].queue", "agent queue (each host needs its own)")
    # Port 0 asks the simulator for any free port: those are told apart once they are bound.
    urls = [e.base_url.rstrip("/") for h in p.hosts for e in h.endpoints]
    dupes([u if not u.endswith(":0") else f"{u}#{i}" for i, u in enumerate(urls)], "endpoints[{}].base_url",
          "endpoint base_url (one Ollama server is one endpoint)")
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
    except UnicodeDecodeError as exc:
        raise ProfileError(str(path), f"byte {exc.start}", "not UTF-8 text (save the profile as UTF-8)") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ProfileError(str(path), where, f"not valid YAML: {getattr(exc, 'problem', exc)}") from None
    return parse_profile(data, str(path))
