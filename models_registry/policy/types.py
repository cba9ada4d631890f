"""The decision core's vocabulary: immutable snapshots of the world in, a Decision out.

Plain dataclasses and the standard library only. Times are seconds since the epoch
(floats) passed in by the caller; nothing here reads a clock.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Mapping

Action = Literal["use_loaded", "wait_for_load", "load", "fallback"]
ResidentState = Literal["requested", "loading", "loaded", "unloading"]
ModelKind = Literal["local", "remote"]

MIB_PER_GB = 1024


@dataclass(frozen=True)
class GpuView:
    key: str  # stable id, e.g. the Gpu primary key as a string
    name: str
    total_mib: int
    reserved_mib: int  # held back for other processes (desktop, other apps)
    # Free MiB measured by telemetry, or None when there is no fresh snapshot.
    # The policy uses the lower of this and its own bookkeeping.
    measured_free_mib: int | None = None


@dataclass(frozen=True)
class EndpointView:
    key: str  # the Endpoint name
    gpus: tuple[str, ...]  # GpuView keys this Ollama server may use
    allow_split: bool = False  # may one model span several of its GPUs
    up: bool = True
    # The context TowerOps loads models with here: Ollama truncates a longer prompt to it, so
    # it caps the prefill estimate. None: not capped.
    num_ctx: int | None = None
    # Models Ollama keeps loaded here at once (OLLAMA_MAX_LOADED_MODELS as the server applies it:
    # ollama_rules.max_loaded_models); at the limit a load must evict one. 0: no limit known.
    max_loaded: int = 0


@dataclass(frozen=True)
class ResidentView:
    """A model that is on (or on its way to / from) a GPU right now."""

    model: str  # LlmModel tag
    endpoint: str
    vram_by_gpu: tuple[tuple[str, int], ...]  # ((gpu key, MiB), ...)
    state: ResidentState
    ready_at: float | None = None  # when a requested/loading model will be ready
    last_used_at: float | None = None  # idle since; None = never used
    in_flight: int = 0  # requests being served now: such a model is never evicted
    pinned: bool = False
    # Its queue: seconds a new request would wait for a slot after the model is ready (or now,
    # when it is) behind the requests already routed here, per parallel slot
    # (ollama_rules.queue_of: the live path from its bookings and the gateway's counts, the
    # replay exactly). None: unknown, in_flight × queue_slot_s instead.
    busy_s: float | None = None
    # Who used it lately: ((urgency class, when last), ...). An eviction's reload is priced at
    # the rate of the classes that used it within the recent-use window (placement.py).
    used_by: tuple[tuple[str, float], ...] = ()

    @property
    def vram_mib(self) -> int:
        split = self.vram_by_gpu
        if len(split) == 1:  # the common case, read on every selection: no generator
            return split[0][1]
        return sum([m for _, m in split])

    @property
    def gpus(self) -> tuple[str, ...]:
        split = self.vram_by_gpu
        if len(split) == 1:
            return (split[0][0],)
        return tuple([g for g, _ in split])


@dataclass(frozen=True)
class ModelView:
    tag: str
    kind: ModelKind = "local"
    vram_mib: int = 0  # VRAM needed at the context length TowerOps loads it with
    load_s: float = 0.0  # seeded from the catalog, later learned from LoadEvents
    # Learned load seconds per endpoint, overriding load_s there: ((endpoint, s), ...)
    load_s_by_endpoint: tuple[tuple[str, float], ...] = ()
    tokens_per_s: float = 30.0
    # Prompt tokens read per second before the first output token (prefill). 0: unknown, and
    # a request's prompt then adds nothing to its expected wait.
    prefill_tokens_per_s: float = 0.0
    quality: Mapping[str, float] = field(default_factory=dict)  # task type -> 0..1
    enabled: bool = True
    pinned: bool = False
    remote_latency_s: float = 0.0  # remote models: round trip before the first token
    # Learned per endpoint from the gateway's measured durations, overriding the two speeds there:
    # ((endpoint, generation tokens/s, prefill tokens/s), ...); a 0 leaves that speed as above.
    speeds_by_endpoint: tuple[tuple[str, float, float], ...] = ()

    def load_s_on(self, endpoint: str) -> float:
        for key, seconds in self.load_s_by_endpoint:
            if key == endpoint:
                return seconds
        return self.load_s

    def tokens_per_s_on(self, endpoint: str | None) -> float:
        for key, tps, _ in self.speeds_by_endpoint:
            if key == endpoint and tps > 0.0:
                return tps
        return self.tokens_per_s

    def prefill_tokens_per_s_on(self, endpoint: str | None) -> float:
        for key, _, pps in self.speeds_by_endpoint:
            if key == endpoint and pps > 0.0:
                return pps
        return self.prefill_tokens_per_s


@dataclass(frozen=True)
class TaskTypeView:
    name: str
    quality_floor: float  # a model below this is not acceptable for the task
    default_output_tokens: int = 64  # used when a request does not say
    default_input_tokens: int = 0  # the prompt assumed when a request does not say (0: no prefill)


@dataclass(frozen=True)
class UrgencyView:
    name: str  # critical | interactive | background | batch
    patience_s: float  # the longest acceptable wait before generation starts
    wait_weight: float  # quality points given up per second of expected wait
    eviction_penalty: float = 0.0  # score cost of evicting a model that served recently
    # Critical: never wait for a load when an acceptable model is already loaded.
    use_loaded_if_acceptable: bool = False


@dataclass(frozen=True)
class PolicyParams:
    """Knobs that are not per task or urgency. Data, passed in by the shell."""

    recent_use_window_s: float = 900.0  # an eviction within this of last use counts as thrash
    split_throughput_factor: float = 0.7  # tokens/s kept when a model spans GPUs
    split_overhead_mib: int = 512  # extra VRAM per additional GPU in a split
    queue_slot_s: float = 1.0  # expected wait added per request already in flight
    # A model loaded less than this ago is not evicted (a guard against loading models back and
    # forth, as KServe ModelMesh's minimum residency; 0: none).
    min_residency_s: float = 120.0
    # Moving up (upgrade.py): an idle tower loads a model for a busy task type in the background when
    # it beats every loaded one's quality by this much (1: never).
    upgrade_min_gain: float = 0.02


@dataclass(frozen=True)
class World:
    now: float
    gpus: tuple[GpuView, ...]
    endpoints: tuple[EndpointView, ...]
    residents: tuple[ResidentView, ...]
    models: tuple[ModelView, ...]
    task_types: tuple[TaskTypeView, ...]
    urgencies: tuple[UrgencyView, ...]
    params: PolicyParams = PolicyParams()
    # The models the open preload windows want warm now (preload.warm_set): while its window is
    # open such a model is priced as used just now, whether or not anyone used it yet.
    wanted: tuple[str, ...] = ()


@dataclass(frozen=True)
class SelectionRequest:
    task_type: str
    urgency: str
    min_quality: float | None = None
    max_wait_s: float | None = None
    expected_output_tokens: int | None = None
    # The prompt's length in tokens: its prefill counts in the wait for the first token.
    input_tokens: int | None = None


@dataclass(frozen=True)
class Eviction:
    model: str
    endpoint: str
    gpus: tuple[str, ...]
    vram_mib: int


@dataclass(frozen=True)
class Candidate:
    model: str
    quality: float
    endpoint: str | None = None
    gpus: tuple[str, ...] = ()
    action: Action | None = None  # None when it cannot be placed at all
    expected_wait_s: float | None = None  # until the first output token: queue or load, then prefill
    expected_response_s: float | None = None  # wait + generation of the expected output
    score: float | None = None
    evictions: tuple[Eviction, ...] = ()
    rejected_because: str | None = None  # None for the chosen candidate


@dataclass(frozen=True)
class Decision:
    model: str | None  # None only when nothing at all can serve (no fallback either)
    action: Action | None
    endpoint: str | None
    gpus: tuple[str, ...]
    expected_wait_s: float | None
    expected_response_s: float | None
    quality: float | None
    met_floor: bool
    warned: bool  # the wait exceeds the caller's patience
    reason: str
    evictions: tuple[Eviction, ...]
    candidates: tuple[Candidate, ...]  # every model considered, best first
    policy_version: str
    expected_prefill_s: float = 0.0  # the part of expected_wait_s spent reading the prompt
    # The VRAM the residency it uses takes, per GPU: ((gpu key, MiB), ...). For a load, what the
    # new residency books (a split's shares as placement computes them); for use_loaded and
    # wait_for_load, the resident's own. Empty for a fallback or no model. The live path books
    # and the replay loads exactly this: the split rule is applied once, here.
    vram_by_gpu: tuple[tuple[str, int], ...] = ()


@dataclass(frozen=True)
class Placement:
    """Where a model would be loaded: one up endpoint, its GPU(s), and what goes first.

    Returned by ``place`` / ``place_many`` (models_registry.policy.placement). ``evictions``
    are idle (loaded, nothing in flight), unpinned residents, least recently used first.
    """

    model: str
    endpoint: str
    vram_by_gpu: tuple[tuple[str, int], ...]  # ((gpu key, MiB), ...) the new residency
    evictions: tuple[Eviction, ...] = ()
    load_s: float = 0.0
    split: bool = False  # spans several GPUs of one endpoint that allows it

    @property
    def gpus(self) -> tuple[str, ...]:
        return tuple(g for g, _ in self.vram_by_gpu)

    @property
    def vram_mib(self) -> int:
        return sum(m for _, m in self.vram_by_gpu)
