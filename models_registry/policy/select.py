"""select(world, request) -> Decision: the best answer the caller can wait for.

Pure: standard library only; no clock, randomness, I/O or logging (``World.now`` is the
time). Unknown task types or urgencies raise ``PolicyInputError`` (a ValueError).

THE SCORING RULE (the one place it is written down)
===================================================
For the request's task type T and urgency class U:

* floor    = max(T.quality_floor, request.min_quality)
* patience = request.max_wait_s if given, else U.patience_s
* tokens   = request.expected_output_tokens if given, else T.default_output_tokens
* prompt   = request.input_tokens if given, else T.default_input_tokens (default 0)

Every enabled local model gets one candidate, at its best placement on an up endpoint:
  - already ``loaded`` there   -> action use_loaded,    wait = its queue: busy_s when known
    (what the requests already routed there need before a slot is free, per parallel slot),
    else in_flight * params.queue_slot_s
  - ``requested``/``loading``  -> action wait_for_load, wait = max(0, ready_at - now) + its
    queue (concurrent requests share that one load instead of starting a second, and are
    served in turn once it is ready)
  - otherwise, where it fits   -> action load,          wait = model.load_s_on(endpoint)
    (fits = VRAM need <= free VRAM after evicting idle, unpinned models, LRU first;
    a model too big for any one GPU may split across the GPUs of one endpoint with
    allow_split: tokens/s * params.split_throughput_factor; see placement.py)
  - resident, but its queue (after any load in progress) is longer than a load and than the
    caller's patience: also a copy loaded on another endpoint where it fits (action load, as above); the better
    score of the two wins, the resident on a tie. Ollama serves one request at a time per model and server,
    so a second copy is a second queue; it is loaded only when waiting for the first
    costs more than loading it.
  wait += min(prompt, endpoint num_ctx) / (prefill_tokens_per_s, × the split factor when
    split) -- the prompt is read before the first token; Ollama truncates it to num_ctx.
    So wait is the time to the first token.
  expected_response_s = wait + tokens / tokens_per_s
  (both speeds: what the gateway learned for the model on that endpoint, else the catalog's;
  and where the endpoint already runs Ollama's maximum of loaded models, a load also evicts
  the least recently used idle one there: placement.py, Tower.over_limit)

    score = quality[T]
            - U.wait_weight * expected_wait_s
            - sum over evicted models E of recency(E)
                  * (U.eviction_penalty + rate(E) * E's load seconds on its endpoint)

  where recency = 1 for a model used just now, falling linearly to 0 at
  params.recent_use_window_s ago (never used = 0), and 1 all through the window of a model
  an open preload window wants: evicting what just served costs, which keeps a small gain
  from causing thrash. The second term prices the reload the eviction is likely to cost the
  next callers of E at *their* exchange rate: rate(E) = the highest wait_weight of the
  urgency classes that used E within the window (a window's model: at least the highest
  non-critical one; unknown: U's own), so a batch request does not evict what interactive
  users just used, and a busy tower does not trade one model for another and back.
  A model loaded less than params.min_residency_s ago is not evicted at all (placement.py).

Choice:
  1. eligible = fits, quality >= floor, wait <= patience. If U.use_loaded_if_acceptable
     (critical) and some model already loaded on an up endpoint meets the floor with its
     queue within patience, only loaded models are eligible: a critical request never waits
     for a load then. -> the eligible candidate with the highest score.
  1b. critical, and no loaded model meets the floor within patience: the candidate meeting
     the floor whose first token comes soonest — a copy, a load, a queued loaded model or
     the remote (wait = remote_latency_s) alike; then the higher score. ``warned`` when even
     that is beyond patience. Critical means the fastest acceptable answer.
  2. none eligible, but some local candidate fits and meets the floor -> the one of those
     with the highest score (the same exchange rate, without the patience cut-off; so a
     waiting caller gets the fastest acceptable model and a patient one the best),
     ``warned`` = True, and the reason says nothing met both the floor and the patience.
  3. no local candidate fits and meets the floor (or every endpoint is down) -> the best
     enabled remote model (score with wait = remote_latency_s; those meeting the floor
     first), action ``fallback``; none -> Decision.model None, with the reason. When no remote
     meets the floor either, the best local model that fits (quality, then score) is chosen
     instead if it scores better than that remote, or is as good and within patience: a
     fallback must buy quality or time.
  Ties break on score desc, quality desc, wait asc, tag asc, endpoint asc.
The weights are data (UrgencyView, TaskTypeView, PolicyParams), not constants here.

The code follows it step by step: _resolve_terms (floor, patience, tokens, prompt), _candidates
(one Row per model, rows.py: where it would serve, its wait and score, and the floor),
_eligibility (patience, critical's loaded-only restriction), _choose, _explain (the texts are
reasons.py's).
"""
from __future__ import annotations

from operator import attrgetter

from . import reasons
from .loadplans import best_copy, fastest_plan
from .rows import Groups, Row, Scene, Terms, candidates, decision, unplaced
from .types import Decision, SelectionRequest, World
from .waits import fastest_load_s, prefill_s, resident_wait

POLICY_VERSION = "2026.12-4"  # 12-4: no churn; 12-3: a loading model's queue; 12-2: critical, the fastest acceptable

_RANK = attrgetter("rank")
_new = object.__new__


class PolicyInputError(ValueError):
    """A request names a task type or urgency the world does not define."""

    def __init__(self, field: str, value: str, allowed: list[str]):
        self.field, self.value, self.allowed = field, value, allowed
        super().__init__(f"unknown {field} {value!r}; allowed: {', '.join(allowed)}")


def select(world: World, request: SelectionRequest) -> Decision:
    """Choose the model for ``request`` in ``world``; the rule is in the module docstring."""
    terms = _resolve_terms(world, request)
    scene = Scene(world, terms)
    groups = _candidates(world, terms, scene)
    _eligibility(groups, terms)
    chosen, warned = _choose(groups, terms)
    return _explain(world, groups, chosen, warned, terms, scene)


def _find(items, name: str, field: str):
    for item in items:
        if item.name == name:
            return item
    raise PolicyInputError(field, name, sorted(i.name for i in items))


def _resolve_terms(world: World, request: SelectionRequest) -> Terms:
    """floor, patience, tokens and prompt for this request, with the texts that name them."""
    task = _find(world.task_types, request.task_type, "task_type")
    urg = _find(world.urgencies, request.urgency, "urgency")
    t = Terms()
    t.task = task.name
    t.urgency = urg.name
    t.floor, floor_name = task.quality_floor, f"the {task.name} floor"
    if request.min_quality is not None and request.min_quality > t.floor:
        t.floor, floor_name = request.min_quality, "the requested minimum"
    t.floor_text = f"{floor_name} {t.floor:.2f}"
    t.below_floor = reasons.below_floor(t.floor_text)
    if request.max_wait_s is not None:
        t.patience = request.max_wait_s
        t.patience_text = f"the requested max wait {t.patience:g} s"
    else:
        t.patience = urg.patience_s
        t.patience_text = f"{urg.name} patience {t.patience:g} s"
    tokens, prompt = request.expected_output_tokens, request.input_tokens
    t.tokens = task.default_output_tokens if tokens is None else tokens
    t.prompt = task.default_input_tokens if prompt is None else prompt
    t.wait_weight = urg.wait_weight
    t.eviction_penalty = urg.eviction_penalty
    t.loaded_only = urg.use_loaded_if_acceptable
    return t


def _candidates(world: World, terms: Terms, scene: Scene) -> Groups:
    """One row per model: where it would serve, its wait, response and score, or why it cannot
    (disabled, no endpoint up, does not fit); those below the floor are grouped apart."""
    task, floor, tokens, prompt, w = terms.task, terms.floor, terms.tokens, terms.prompt, terms.wait_weight
    present, leaving, num_ctx, nofit = scene.present, scene.leaving, scene.num_ctx, scene.nofit
    split_factor = scene.split_factor
    planner = scene.planner
    by_need = planner.by_need
    n_endpoints = len(planner.rooms)
    no_endpoint = None if n_endpoints else (scene.down or reasons.NO_ENDPOINT)
    groups = Groups()
    acceptable, below = groups.acceptable.append, groups.below.append
    remote, off = groups.remote.append, groups.off.append
    index = 0
    for m in world.models:
        index += 1
        tag = m.tag
        q = m.quality.get(task)
        if q is None:
            qv, meets = 0.0, False
        else:
            qv, meets = q, q >= floor
        if not m.enabled:
            off(unplaced(index, tag, qv, meets, reasons.DISABLED))
            continue
        first_copy = None
        if m.kind != "local":
            # Remote: only ever the fallback, at its round trip's latency.
            action, endpoint, gpus, evictions, vram_by_gpu, split, pre = "fallback", None, (), (), (), False, 0.0
            wait = m.remote_latency_s
            score = qv - w * wait
        elif no_endpoint:
            off(unplaced(index, tag, qv, meets, no_endpoint))
            continue
        elif (residents := present.get(tag)) is None:
            # A fresh load: the cheapest plan, or where it scores best when its load time differs
            # per endpoint; never where the model is still unloading.
            need = m.vram_mib
            plans, plan = by_need.get(need) or planner.plans(need)
            gone = leaving.get(tag)
            if gone and plans:
                plans = [p for p in plans if p.endpoint not in gone]
                plan = min(plans) if plans else None
            if plan is None:
                groups.nofit.append(unplaced(index, tag, qv, meets, nofit.get(need) or scene.does_not_fit(need)))
                continue
            if not m.load_s_by_endpoint:
                wait = m.load_s
            elif len(plans) > 1:
                wait, plan = fastest_plan(m, plans, w)
            else:
                wait = m.load_s_on(plan.endpoint)
            action = "load"
            cost, _, _, endpoint, gpus, evictions, split, vram_by_gpu = plan
            pre = 0.0
            if prompt:
                pre = prefill_s(m, endpoint, prompt, num_ctx[endpoint], split_factor if split else 1.0)
                wait += pre
            score = qv - w * wait - cost
        else:
            # Resident: its quickest resident (use_loaded, or wait_for_load: concurrent requests
            # share one load), unless a copy loaded elsewhere scores better.
            wait, action, r, queue = resident_wait(m, residents, scene.now, scene.queue_slot_s)
            endpoint, gpus, evictions, vram_by_gpu = r.endpoint, r.gpus, (), r.vram_by_gpu
            split = len(gpus) > 1
            pre = prefill_s(m, endpoint, prompt, num_ctx[endpoint], split_factor if split else 1.0) if prompt else 0.0
            wait += pre
            score = qv - w * wait
            if scene.copies and n_endpoints > len(residents) and queue > terms.patience \
                    and queue > fastest_load_s(m):
                # A second queue may be worth a load when the queue (not a load in progress, which a
                # copy would repeat) is longer than one and than the caller will wait (a copy is the
                # remedy for a queue beyond patience, not a way to shave seconds off a patient
                # request: loads count): the best copy where it is not (nor leaving).
                hosting = {x.endpoint for x in residents}
                gone = leaving.get(tag)
                if gone:
                    hosting |= gone
                copy = best_copy(m, qv, score, planner.plans(m.vram_mib)[0], hosting, w, prompt, num_ctx,
                                 split_factor)
                if copy is not None:
                    first_copy = (endpoint, wait - pre, action)
                    score, plan, wait, pre = copy
                    action = "load"
                    _, _, _, endpoint, gpus, evictions, split, vram_by_gpu = plan
        speed = m.tokens_per_s_on(endpoint) if m.speeds_by_endpoint else m.tokens_per_s  # learned there, else the catalog's
        if split:
            speed *= split_factor
        # Row(...), field by field: this is the loop's hottest line, and a class call costs more
        # than the fifteen stores.
        row = _new(Row)
        row.rank = (-score, -qv, wait, tag, endpoint or "", index)
        row.model = tag
        row.quality = qv
        row.meets = meets
        row.score = score
        row.wait = wait
        row.response = wait + (tokens / speed if speed > 0 else 0.0)
        row.action = action
        row.endpoint = endpoint
        row.gpus = gpus
        row.evictions = evictions
        row.vram_by_gpu = vram_by_gpu
        row.prefill = pre
        row.first_copy = first_copy
        if endpoint is None:
            row.why = reasons.REMOTE
            remote(row)
        elif meets:
            row.why = None
            acceptable(row)
        else:
            row.why = terms.below_floor % q if q is not None else reasons.no_score(task)
            below(row)
    return groups


def _eligibility(groups: Groups, terms: Terms) -> None:
    """Split the rows that meet the floor: eligible (wait within patience) or waits. A critical
    request with an acceptable model loaded and free within its patience takes only loaded ones:
    the rest are loaded_only. (One whose loaded models' queues are beyond its patience is not
    held to them: it takes the fastest acceptable answer, a copy or the remote, in _choose.)"""
    patience = terms.patience
    eligible, waits = groups.eligible, groups.waits
    any_loaded = False
    for row in groups.acceptable:
        if row.wait <= patience:
            eligible.append(row)
            if row.action == "use_loaded":
                any_loaded = True
        else:
            waits.append(row)
    if waits:
        reasons.waits_too_long(waits, terms)
    if any_loaded and terms.loaded_only:
        loaded_only = groups.loaded_only
        for row in eligible:
            if row.action != "use_loaded":
                row.why = reasons.not_loaded(terms)
                loaded_only.append(row)
        loaded_only.extend(row for row in waits if row.action != "use_loaded")
        groups.eligible = [row for row in eligible if row.action == "use_loaded"]
        groups.waits = [row for row in waits if row.action == "use_loaded"]


def _choose(groups: Groups, terms: Terms) -> tuple[Row | None, bool]:
    """(chosen, warned): the best eligible row; else the best that meets the floor and may be
    chosen (warned); else the best remote, those meeting the floor first (warned when its
    latency exceeds patience); else None. Critical (``loaded_only``) without a loaded answer
    within its patience: the acceptable answer that starts soonest, the remote included."""
    if terms.loaded_only and not any(r.action == "use_loaded" for r in groups.eligible):
        fastest = _fastest_acceptable(groups, terms)
        if fastest is not None:
            return fastest
    if groups.eligible:
        return min(groups.eligible, key=_RANK), False
    if groups.waits:
        return min(groups.waits, key=_RANK), True
    if groups.remote:
        chosen = min([r for r in groups.remote if r.meets] or groups.remote, key=_RANK)
        if not chosen.meets:
            # Nothing anywhere meets the floor: the best local model that fits rather than the remote
            # when it scores better, or is as good and within the caller's patience (a fallback must
            # buy quality or time: nothing leaves the tower for nothing).
            local = _best_below(groups)
            if local is not None and (local.score > chosen.score or (
                    local.quality >= chosen.quality and local.wait <= terms.patience)):
                groups.below_best = True
                return local, local.wait > terms.patience
        return chosen, chosen.wait > terms.patience
    return None, False


def _best_below(groups: Groups) -> Row | None:
    """The best local row that fits but is below the floor: quality first, then score."""
    rows = [r for r in groups.below if r.action is not None]
    return min(rows, key=lambda r: (-r.quality, r.rank)) if rows else None


def _fastest_acceptable(groups: Groups, terms: Terms) -> tuple[Row, bool] | None:
    """A critical request's choice when no loaded model answers within its patience: of the rows
    that meet the floor (local loads, copies, loads in progress, queued loaded models, and the
    remote), the soonest first token; then the better score. Warned when even that is beyond
    its patience."""
    rows = groups.eligible + groups.waits + [r for r in groups.remote if r.meets]
    if not rows:
        return None
    chosen = min(rows, key=lambda r: (r.wait, r.rank))
    groups.soonest = True
    return chosen, chosen.wait > terms.patience


def _explain(world: World, groups: Groups, chosen: Row | None, warned: bool, terms: Terms,
             scene: Scene) -> Decision:
    """The Decision: every candidate, best first, with why it was not chosen, and the reason."""
    if groups.below_best:  # nothing meets the floor; the best local model is as good as the remote
        remote = min(groups.remote, key=_RANK)
        reason = reasons.best_below_floor(chosen, remote, terms)
        chosen.why = None
        groups.below.remove(chosen)
        listed = candidates([chosen] + groups.listed(None))
        return decision(chosen, warned, reason, listed, POLICY_VERSION)
    fallback_text = ""
    if chosen is not None and chosen.action == "fallback" and (groups.eligible or groups.waits):
        fallback_text = reasons.remote_is_sooner(terms)  # critical: local models meet the floor, later
    elif chosen is None or chosen.action == "fallback":
        fallback_text = reasons.no_local_choice(terms, bool(scene.tower.up_endpoints), bool(world.endpoints))
    if chosen is not None:
        chosen.why = None
        if groups.soonest:  # critical's soonest answer: the others lost on time, not on score
            reasons.starts_later(groups.eligible + [r for r in groups.remote if r.meets], chosen)
        else:
            reasons.scored_below(groups.remote if chosen.action == "fallback" else groups.eligible, chosen)
    listed = candidates(groups.listed(chosen))  # (listed() also sorts each group by rank)
    alt, alt_loaded_only = None, False
    if chosen is not None and not warned and chosen.action != "fallback":
        # The best better-quality model that fits and meets the floor (the first listed of equals):
        # the reason says why it lost.
        for group in (groups.eligible, groups.waits, groups.loaded_only):
            for row in group:
                if row.quality > chosen.quality and (alt is None or row.quality > alt.quality):
                    alt, alt_loaded_only = row, group is groups.loaded_only
    reason = reasons.decision_reason(chosen, alt, alt_loaded_only, warned, fallback_text, terms)
    return decision(chosen, warned, reason, listed, POLICY_VERSION)
