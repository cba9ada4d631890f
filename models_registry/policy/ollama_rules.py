"""Ollama's own scheduler rules (v0.30+, ``server/sched.go``), as pure functions.

The one model of what an Ollama server does on its own, used by the Ollama simulator
(``fakes/``), the replay's ``ollama_default`` policy and anything in TowerOps that must
predict Ollama (model names in the state sync; placement, later). Sources and the eras
they hold for: ``shared/reference/ollama.md`` §1 (sections named below).

* Model names: ``llama3`` is ``llama3:latest`` (``normalize_model_name``, ``same_model``).
* Where a new runner goes (§1.3, ``selectLlamaServerPlacement`` / ``bestSingleGPUFit``): one
  GPU where it takes at most 80 % of the available memory, the one with the most available;
  else all of the server's GPUs (split in proportion to what each has). Before loading it
  beside other models, the pre-flight needs it within 80 % of its GPUs' available memory, or
  a model is evicted first; the first model of a server may take it all (``place_runner``).
* How many runners a server keeps (``OLLAMA_MAX_LOADED_MODELS``, 0 = 3 per GPU) and how many
  requests each serves at once (``OLLAMA_NUM_PARALLEL``, default 1).
* Which runner goes to make room (§1.5, ``findRunnerToUnload``): by configured keep-alive,
  shortest first (forever last), then name; the first idle one, else the first one, waited
  for. Not LRU, not by size.

Amounts are in whatever unit the caller uses (bytes in the simulator, MiB in the replay), the
same for the model and the GPUs. GPU keys are the caller's (indexes or names).
"""
from __future__ import annotations

import functools
import math
from typing import Callable, Hashable, Iterable, Mapping, TypeVar

SINGLE_GPU_FIT = 0.80  # a model may take this share of a GPU's (or a split's) available memory
MODELS_PER_GPU = 3  # defaultModelsPerGPU: OLLAMA_MAX_LOADED_MODELS=0 means 3 per GPU
DEFAULT_NUM_PARALLEL = 1  # OLLAMA_NUM_PARALLEL: requests served at once per model (since v0.9.7)
DEFAULT_KEEP_ALIVE_S = 300.0  # OLLAMA_KEEP_ALIVE: 5m

K = TypeVar("K", bound=Hashable)
R = TypeVar("R")


# --------------------------------------------------------------------------- names


def normalize_model_name(name: str) -> str:
    """Ollama's canonical name: ``tinyllama`` -> ``tinyllama:latest``.

    The tag is what follows the last ':' when that ':' comes after the last '/' (the ':' of a
    ``host:port/`` registry prefix is not a tag).
    """
    name = name.strip()
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"


def model_key(name: str) -> str:
    """A name as Ollama matches it (normalised, case-insensitive): a dict key for lookups."""
    return normalize_model_name(name).casefold()


def same_model(a: str, b: str) -> bool:
    """Whether two names denote the same Ollama model (``mistral`` == ``Mistral:latest``)."""
    return model_key(a) == model_key(b)


# --------------------------------------------------------------------------- settings


def max_loaded_models(setting: int | None, gpu_count: int) -> int:
    """OLLAMA_MAX_LOADED_MODELS as a server applies it: 0 or unset = 3 per GPU (at least 3)."""
    return setting if setting and setting > 0 else MODELS_PER_GPU * max(gpu_count, 1)


def num_parallel(setting: int | None = None) -> int:
    """OLLAMA_NUM_PARALLEL: requests one model serves at once (unset or < 1: the default, 1)."""
    return setting if setting and setting > 0 else DEFAULT_NUM_PARALLEL


def slot_context(num_ctx: int, trained_context: int | None) -> int:
    """The context of each of a runner's slots: num_ctx, capped at the model's trained context.
    The runner's KV cache holds this x its parallel slots."""
    return min(num_ctx, trained_context) if trained_context else num_ctx


def default_num_ctx(total_vram_gib: float) -> int:
    """The context a request gets when nothing sets num_ctx (v0.15.5+): by the server's VRAM."""
    return 262144 if total_vram_gib >= 47 else 32768 if total_vram_gib >= 23 else 4096


# --------------------------------------------------------------------------- queues


def take_slot(slot_free: list[float], arrival: float, ready: float) -> tuple[int, float]:
    """Where and when a request starts on a model: Ollama serves one model's requests first come,
    first served over its ``num_parallel`` slots, once the model is ready. ``slot_free``: when
    each slot is next free. -> (the slot free soonest, the request's start)."""
    best = 0
    for i in range(1, len(slot_free)):
        if slot_free[i] < slot_free[best]:
            best = i
    start = slot_free[best]
    if arrival > start:
        start = arrival
    return best, (ready if ready > start else start)


def queue_after_ready(slot_free: list[float], now: float, ready: float) -> float:
    """Seconds a request arriving ``now`` waits for a slot after the model is ready (or now,
    when it is): the queue the requests already routed to the model form, per slot."""
    t = min(slot_free) - (ready if ready > now else now)
    return t if t > 0.0 else 0.0


def queue_of(bookings: Iterable[tuple[float, float]], slots: int, now: float, ready: float | None) -> float:
    """``queue_after_ready`` for a model with ``slots`` slots and the requests routed to it as
    (arrival, service seconds), in arrival order, from when it is ready (None: it is)."""
    start = ready if ready is not None else -math.inf
    free = [start] * max(slots, 1)
    for arrival, service in bookings:
        i, begin = take_slot(free, arrival, start)
        free[i] = begin + service
    return queue_after_ready(free, now, start)


# --------------------------------------------------------------------------- placement


def runner_gpus(need: float, available: Mapping[K, float]) -> tuple[K, ...]:
    """The GPUs a new runner is given: the one with the most available memory among those
    where ``need`` is at most 80 % of it (the first listed on a tie), else all of them."""
    best = None
    for i, (gpu, room) in enumerate(available.items()):
        if need <= SINGLE_GPU_FIT * room and (best is None or room > best[0]):
            best = (room, i, gpu)
    return (best[2],) if best is not None else tuple(available)


def fits(need: float, room: float, *, first: bool) -> bool:
    """The load pre-flight: beside other models, ``need`` must be within 80 % of ``room``
    (the chosen GPUs' available memory); the first model of a server may take all of it."""
    return need <= (room if first else SINGLE_GPU_FIT * room)


def room_for(need: int, *, first: bool) -> int:
    """The least whole room ``fits`` accepts for ``need`` (the placement's form of the pre-flight)."""
    return need if first else _room_beside(need)


@functools.lru_cache(maxsize=1024)  # placement asks per model size, on every selection
def _room_beside(need: int) -> int:
    room = math.ceil(need / SINGLE_GPU_FIT)
    while room > 0 and fits(need, room - 1, first=False):
        room -= 1
    while not fits(need, room, first=False):
        room += 1
    return room


def split_shares(need: int, available: Mapping[K, int]) -> dict[K, int]:
    """``need`` spread over GPUs in proportion to their available memory (llama-server's
    split), in key order, the last taking the rounding; GPUs given nothing are left out."""
    if len(available) == 1:
        return {next(iter(available)): need}
    total = sum(available.values()) or 1
    out, left = {}, need
    items = sorted(available.items())
    for i, (gpu, room) in enumerate(items):
        part = left if i == len(items) - 1 else need * room // total
        out[gpu] = part
        left -= part
    return {k: v for k, v in out.items() if v > 0}


def place_runner(need: int, available: Mapping[K, int], *, first: bool) -> dict[K, int] | None:
    """Where a new runner needing ``need`` goes on a server whose GPUs have ``available``:
    {gpu: amount}, or None when it does not fit there now (beside other models: evict one and
    ask again; the first model: it does not fit fully at all). ``first``: nothing else is loaded."""
    if not available:
        return None
    gpus = runner_gpus(need, available)
    if not fits(need, sum(available[g] for g in gpus), first=first):
        return None
    if len(gpus) == 1:
        return {gpus[0]: need}
    return split_shares(need, {g: available[g] for g in gpus})


# --------------------------------------------------------------------------- eviction


def eviction_key(keep_alive_s: float, name: str) -> tuple[float, str]:
    """ByDurationAndName: configured keep-alive, shortest first (forever, any negative or
    infinite value, last), then the name."""
    return (math.inf if keep_alive_s < 0 else keep_alive_s, name)


def runner_to_unload(runners: Iterable[R], *, keep_alive_s: Callable[[R], float], name: Callable[[R], str],
                     idle: Callable[[R], bool]) -> R | None:
    """findRunnerToUnload: in ``eviction_key`` order, the first idle runner, else the first one
    (the caller waits for it to finish). None when there is no runner."""
    ordered = sorted(runners, key=lambda r: eviction_key(keep_alive_s(r), name(r)))
    for r in ordered:
        if idle(r):
            return r
    return ordered[0] if ordered else None
