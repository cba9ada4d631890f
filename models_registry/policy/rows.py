"""The records select() works with: the request's Terms, the Scene (the World as one request
sees it) and one Row per model, which becomes that model's Candidate."""
from __future__ import annotations

from dataclasses import dataclass
from operator import attrgetter

from . import reasons
from .loadplans import LoadPlanner
from .placement import Tower
from .types import Candidate, Decision, Eviction, World

INF = float("inf")
_new = object.__new__
_set = object.__setattr__


class Terms:
    """The request's terms, resolved against its task type and urgency (the rule's first lines);
    select's _resolve_terms fills one per call."""

    __slots__ = ("task", "urgency", "floor", "floor_text", "below_floor", "patience", "patience_text", "tokens",
                 "prompt", "wait_weight", "eviction_penalty", "loaded_only")
    task: str
    urgency: str
    floor: float
    floor_text: str  # "the general floor 0.80" | "the requested minimum 0.90"
    below_floor: str  # reasons.below_floor: "quality %.2f below the general floor 0.80"
    patience: float
    patience_text: str  # "interactive patience 5 s" | "the requested max wait 3 s"
    tokens: int  # expected output tokens
    prompt: int  # input tokens
    wait_weight: float
    eviction_penalty: float
    loaded_only: bool  # critical: the fastest acceptable answer (select.py's rule, step 1 and 4)


@dataclass(slots=True, eq=False)
class Row:
    """One model's candidate while select() works on it; ``candidates`` and ``decision`` turn rows
    into the Decision. Its group is the Groups list it is in. (select's hot loop builds it field
    by field: a new field must be set there too.)

    Within a group rows are listed by rank = (-score, -quality, wait, model, endpoint, index),
    with INF for no score or wait and "" for no endpoint: score desc, quality desc, wait asc,
    tag asc, endpoint asc, then the world's order (index: unique, so no two rows tie).
    """

    rank: tuple
    model: str
    quality: float  # for the task (0.0 when the model has no score for it)
    meets: bool  # quality >= floor
    score: float | None
    wait: float | None  # to the first token: queue or load, then the prompt's prefill
    response: float | None
    action: str | None
    endpoint: str | None
    gpus: tuple[str, ...]
    evictions: tuple[Eviction, ...]
    vram_by_gpu: tuple[tuple[str, int], ...]
    prefill: float  # the part of wait spent reading the prompt
    why: str | None  # rejected_because, set by the step that rejects it (None: the chosen)
    first_copy: tuple | None  # (endpoint, wait, action) of the resident a copy elsewhere beat


def unplaced(index: int, model: str, quality: float, meets: bool, why: str) -> Row:
    """The row of a model that cannot serve from here (disabled, no endpoint up, does not fit)."""
    row = _new(Row)  # Row(...) field by field, as in select's loop
    row.rank = (INF, -quality, INF, model, "", index)
    row.model = model
    row.quality = quality
    row.meets = meets
    row.score = row.wait = row.response = row.action = row.endpoint = row.first_copy = None
    row.gpus = row.evictions = row.vram_by_gpu = ()
    row.prefill = 0.0
    row.why = why
    return row


class Groups:
    """The rows by group, in the order the candidates are listed (after the chosen one).

    _candidates fills ``acceptable`` (placed, meeting the floor), ``below``, ``remote``, ``nofit``
    and ``off``; _eligibility splits ``acceptable`` into ``eligible``, ``waits`` and ``loaded_only``.
    """

    __slots__ = ("acceptable", "eligible", "waits", "loaded_only", "below", "remote", "nofit", "off",
                 "soonest", "below_best")

    def __init__(self):
        self.acceptable: list[Row] = []
        self.eligible: list[Row] = []  # meets the floor, wait within patience
        self.waits: list[Row] = []  # meets the floor, waits too long
        self.loaded_only: list[Row] = []  # not loaded, for a critical request with one loaded
        self.below: list[Row] = []  # below the floor
        self.remote: list[Row] = []  # remote: only the fallback
        self.nofit: list[Row] = []  # fits on no up endpoint
        self.off: list[Row] = []  # disabled, or no endpoint up
        self.soonest = False  # chosen as critical's soonest acceptable answer, not by score
        self.below_best = False  # nothing meets the floor: the best local one, as good as the remote

    def listed(self, chosen: Row | None) -> list[Row]:
        """Every row, best first: the chosen one (taken out of its group), then each group by rank."""
        out = []
        if chosen is not None:
            out.append(chosen)
            for group in (self.eligible, self.waits, self.remote):  # those a row is chosen from
                if chosen in group:
                    group.remove(chosen)
                    break
        for group in (self.eligible, self.waits, self.loaded_only, self.below, self.remote, self.nofit,
                      self.off):
            if len(group) > 1:
                group.sort(key=_RANK)
            out += group
        return out


_RANK = attrgetter("rank")


class Scene:
    """The World as one request sees it: the tower's bookkeeping, who is resident where, and the
    load plans priced at the request's urgency."""

    __slots__ = ("tower", "planner", "present", "leaving", "num_ctx", "down", "now", "queue_slot_s",
                 "split_factor", "copies", "nofit")

    def __init__(self, world: World, terms: Terms):
        params = world.params
        self.now = world.now
        self.queue_slot_s = params.queue_slot_s
        self.split_factor = params.split_throughput_factor
        # A second copy is a candidate whenever waiting for the first costs more than loading it,
        # critical requests included (a loaded model whose queue is beyond their patience is no answer).
        self.copies = True
        self.tower = tower = Tower(world)
        up = tower.up_endpoints
        down = tower.down_endpoints
        self.down = reasons.endpoints_down([e.key for e in down]) if down else ""
        # Residents on up endpoints by model, in world order. Where a model is still unloading, a
        # load of it cannot go (Ollama runs one runner per model and server, and TowerOps books one
        # residency per model and endpoint) until it is gone.
        present: dict[str, list] = {}
        leaving: dict[str, set] = {}
        if world.residents:
            up_keys = {e.key for e in up}
            for r in world.residents:
                if r.state == "unloading":
                    leaving.setdefault(r.model, set()).add(r.endpoint)
                elif r.endpoint in up_keys:
                    same = present.get(r.model)
                    if same is None:
                        present[r.model] = [r]
                    else:
                        same.append(r)
        self.present = present
        self.leaving = leaving
        self.planner = LoadPlanner(tower, terms.eviction_penalty, terms.wait_weight)
        self.num_ctx = {e.key: e.num_ctx for e in up} if terms.prompt else None
        self.nofit: dict[int, str] = {}  # need -> does_not_fit(need)

    def does_not_fit(self, need: int) -> str:
        """Why a model that needs ``need`` MiB has no plan (cached in ``nofit``: look there first)."""
        why = self.nofit[need] = reasons.does_not_fit(need, self.tower.largest_free_mib(), self.down)
        return why




def candidates(rows: list[Row]) -> tuple[Candidate, ...]:
    """The Candidates of ``rows``, in their order."""
    out = []
    append = out.append
    for r in rows:
        # The object Candidate(...) would build, its fields stored straight into its __dict__:
        # the frozen dataclass's __init__ costs an object.__setattr__ per field, and this is
        # a large part of select's cost.
        c = _new(Candidate)
        d = c.__dict__
        d["model"] = r.model
        d["quality"] = r.quality
        d["endpoint"] = r.endpoint
        d["gpus"] = r.gpus
        d["action"] = r.action
        d["expected_wait_s"] = r.wait
        d["expected_response_s"] = r.response
        d["score"] = r.score
        d["evictions"] = r.evictions
        d["rejected_because"] = r.why
        append(c)
    return tuple(out)


def decision(chosen: Row | None, warned: bool, reason: str, listed: tuple[Candidate, ...],
             policy_version: str) -> Decision:
    """The Decision for ``chosen`` (None: nothing can serve), its fields stored straight into its
    __dict__: the same object as Decision(...), without the frozen dataclass's object.__setattr__
    per field."""
    if chosen is None:
        fields = {"model": None, "action": None, "endpoint": None, "gpus": (), "expected_wait_s": None,
                  "expected_response_s": None, "quality": None, "met_floor": False, "warned": False}
        evictions, prefill, vram_by_gpu = (), 0.0, ()
    else:
        fields = {"model": chosen.model, "action": chosen.action, "endpoint": chosen.endpoint,
                  "gpus": chosen.gpus, "expected_wait_s": chosen.wait, "expected_response_s": chosen.response,
                  "quality": chosen.quality, "met_floor": chosen.meets, "warned": warned}
        evictions, prefill, vram_by_gpu = chosen.evictions, chosen.prefill, chosen.vram_by_gpu
    fields["reason"] = reason
    fields["evictions"] = evictions
    fields["candidates"] = listed
    fields["policy_version"] = policy_version
    fields["expected_prefill_s"] = prefill
    fields["vram_by_gpu"] = vram_by_gpu
    d = _new(Decision)
    _set(d, "__dict__", fields)
    return d
