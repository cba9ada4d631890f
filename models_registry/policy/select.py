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
  - already ``loaded`` there   -> action use_loaded,    wait = busy_s when known (the time
    the requests already routed there need), else in_flight * params.queue_slot_s
  - ``requested``/``loading``  -> action wait_for_load, wait = max(0, ready_at - now)
    (concurrent requests share that one load instead of starting a second)
  - otherwise, where it fits   -> action load,          wait = model.load_s_on(endpoint)
    (fits = VRAM need <= free VRAM after evicting idle, unpinned models, LRU first;
    a model too big for any one GPU may split across the GPUs of one endpoint with
    allow_split: tokens/s * params.split_throughput_factor; see placement.py)
  - resident, but its best wait above is longer than a load (and U is not critical): also
    a copy loaded on another endpoint where it fits (action load, as above); the better
    score of the two wins, the resident on a tie. Ollama serves one request at a time per model and server,
    so a second copy is a second queue; it is loaded only when waiting for the first
    costs more than loading it.
  wait += min(prompt, endpoint num_ctx) / (prefill_tokens_per_s, × the split factor when
    split) -- the prompt is read before the first token; Ollama truncates it to num_ctx.
    So wait is the time to the first token.
  expected_response_s = wait + tokens / tokens_per_s

    score = quality[T]
            - U.wait_weight * expected_wait_s
            - sum over evicted models E of recency(E.last_used_at)
                  * (U.eviction_penalty + U.wait_weight * E's load seconds on its endpoint)

  where recency = 1 for a model used just now, falling linearly to 0 at
  params.recent_use_window_s ago (never used = 0): evicting what just served costs,
  which keeps a small gain from causing thrash. The second term prices the reload the
  eviction is likely to cost the next caller of E at this request's own exchange rate, so
  a busy tower does not trade one model for another and back (a request does not evict
  a model that just served unless its own gain outweighs that model's reload).

Choice:
  1. eligible = fits, quality >= floor, wait <= patience. If U.use_loaded_if_acceptable
     (critical) and some model already loaded on an up endpoint meets the floor, only
     loaded models are eligible: a critical request never waits for a load then.
     -> the eligible candidate with the highest score.
  2. none eligible, but some local candidate fits and meets the floor -> the one of those
     with the highest score (the same exchange rate, without the patience cut-off; so a
     waiting caller gets the fastest acceptable model and a patient one the best),
     ``warned`` = True, and the reason says nothing met both the floor and the patience.
  3. no local candidate fits and meets the floor (or every endpoint is down) -> the best
     enabled remote model (score with wait = remote_latency_s; those meeting the floor
     first), action ``fallback``; none -> Decision.model None, with the reason.
  Ties break on score desc, quality desc, wait asc, tag asc, endpoint asc.
The weights are data (UrgencyView, TaskTypeView, PolicyParams), not constants here.
"""
from __future__ import annotations

from .placement import Tower, _model
from .types import Candidate, Decision, SelectionRequest, World

POLICY_VERSION = "2026.11-2"  # -2: prompt prefill in the wait; copies on another endpoint

INF = float("inf")

# Candidate groups, in the order candidates are listed (best first).
_CHOSEN, _ELIGIBLE, _WAITS, _LOADED_ONLY, _BELOW, _REMOTE, _NOFIT, _OFF = range(8)

# A row is a list whose head is its sort key, so rows sort and compare natively (fast):
#   [group, -score|INF, -quality, wait|INF, tag, endpoint|"", index,   <- key (index unique)
#    quality, score, wait, response, action, endpoint, gpus, evictions, reason, meets]
_G, _Q, _SCORE, _WAIT, _RESP, _ACTION, _EP, _GPUS, _EVICT, _REASON, _MEETS = (
    0, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16)

_WAIT_WORD = {"use_loaded": "queue", "wait_for_load": "remaining load", "load": "load",
              "fallback": "remote latency"}
_REMOTE_REASON = "remote: used only as the fallback when no local model meets the floor"

_new = object.__new__
_set = object.__setattr__
_FAST_CANDIDATE = "__slots__" not in Candidate.__dict__


class PolicyInputError(ValueError):
    """A request names a task type or urgency the world does not define."""

    def __init__(self, field: str, value: str, allowed: list[str]):
        self.field, self.value, self.allowed = field, value, allowed
        super().__init__(f"unknown {field} {value!r}; allowed: {', '.join(allowed)}")


def _find(items, name: str, field: str):
    for item in items:
        if item.name == name:
            return item
    raise PolicyInputError(field, name, sorted(i.name for i in items))


def _gb(mib: int) -> str:
    return f"{mib / 1024:.1f} GB"


def _down(keys: list[str]) -> str:
    if len(keys) == 1:
        return f"endpoint {keys[0]} is down"
    return f"endpoints {', '.join(keys)} are down"


def _candidate(row: list) -> Candidate:
    if _FAST_CANDIDATE:
        # Same object as Candidate(...) would build, without the frozen dataclass's
        # per-field object.__setattr__ (3x cheaper; this is most of select's cost).
        c = _new(Candidate)
        _set(c, "__dict__", {
            "model": row[4], "quality": row[7], "endpoint": row[12], "gpus": row[13],
            "action": row[11], "expected_wait_s": row[9], "expected_response_s": row[10],
            "score": row[8], "evictions": row[14], "rejected_because": row[15],
        })
        return c
    return Candidate(row[4], row[7], row[12], row[13], row[11], row[9], row[10], row[8],
                     row[14], row[15])  # pragma: no cover - only if Candidate gains slots


def select(world: World, request: SelectionRequest) -> Decision:
    """Choose the model for ``request`` in ``world``; the rule is in the module docstring."""
    task = _find(world.task_types, request.task_type, "task_type")
    urg = _find(world.urgencies, request.urgency, "urgency")
    task_name = task.name
    floor = task.quality_floor
    floor_text = "the " + task_name + " floor"
    if request.min_quality is not None and request.min_quality > floor:
        floor = request.min_quality
        floor_text = "the requested minimum"
    if request.max_wait_s is not None:
        patience = request.max_wait_s
        patience_text = f"the requested max wait {patience:g} s"
    else:
        patience = urg.patience_s
        patience_text = f"{urg.name} patience {patience:g} s"
    tokens = request.expected_output_tokens
    if tokens is None:
        tokens = task.default_output_tokens
    prompt = request.input_tokens
    if prompt is None:
        prompt = task.default_input_tokens
    w = urg.wait_weight
    penalty = urg.eviction_penalty
    params = world.params
    now = world.now
    qslot = params.queue_slot_s
    split_factor = params.split_throughput_factor
    below_tail = f" below {floor_text} {floor:.2f}"

    tower = Tower(world)
    up_eps = tower.up_endpoints
    down_text = _down([e.key for e in tower.down_endpoints]) if tower.down_endpoints else ""
    present: dict[str, list] = {}
    if world.residents:
        up_keys = {e.key for e in up_eps}
        for r in world.residents:
            if r.endpoint in up_keys and r.state != "unloading":
                lst = present.get(r.model)
                if lst is None:
                    present[r.model] = [r]
                else:
                    lst.append(r)
    # Per up endpoint, its GPUs' free MiB in ascending order: the first that holds a
    # model is its tightest fit without evicting anything.
    # A need above ``reach`` cannot be placed on the endpoint at all (not even by evicting
    # or splitting), so the placement code is only asked about the others.
    free = tower.free
    levels = []
    for ep in up_eps:
        lv = sorted((free[g], g) for g in ep.gpus if g in free)
        most_free, most_max_free, sum_max_free = tower.room(ep)
        reach = most_max_free
        if ep.allow_split and len(lv) > 1:
            reach = max(reach, sum_max_free - params.split_overhead_mib)
        levels.append((ep, lv, most_free, reach))
    ctx = {e.key: e.num_ctx for e in up_eps} if prompt else None
    # Critical requests never wait for a load while an acceptable model is loaded: no copies.
    copies = not urg.use_loaded_if_acceptable

    # need (MiB) -> (plans, best plan when the load time is the same everywhere): _plans.
    by_need: dict[int, tuple] = {}
    nofit: dict[int, str] = {}
    rows: list[list] = []
    remotes: list[list] = []
    any_loaded_ok = False
    idx = 0

    for m in world.models:
        idx += 1
        tag = m.tag
        q = m.quality.get(task_name)
        if q is None:
            qv = 0.0
            meets = False
        else:
            qv = q
            meets = q >= floor
        if m.kind != "local":
            if m.enabled:
                wait = m.remote_latency_s
                tps = m.tokens_per_s
                score = qv - w * wait
                remotes.append([_REMOTE, -score, -qv, wait, tag, "", idx, qv, score, wait,
                                wait + (tokens / tps if tps > 0 else 0.0), "fallback", None, (),
                                (), _REMOTE_REASON, meets, 0.0])
            else:
                rows.append([_OFF, INF, -qv, INF, tag, "", idx, qv, None, None, None, None,
                             None, (), (), "disabled", meets])
            continue
        if not m.enabled or not up_eps:
            why = "disabled" if not m.enabled else (down_text or "no endpoint is configured")
            rows.append([_OFF, INF, -qv, INF, tag, "", idx, qv, None, None, None, None, None,
                         (), (), why, meets])
            continue
        tps = m.tokens_per_s
        first_copy = None  # (endpoint, wait, action) of the resident when a copy elsewhere wins
        rs = present.get(tag)
        if rs is not None:
            # Already resident: use it, or wait for the load in progress (shared).
            best = None
            for r in rs:
                if r.state == "loaded":
                    action = "use_loaded"
                    wait = r.busy_s if r.busy_s is not None else r.in_flight * qslot
                else:
                    action = "wait_for_load"
                    ready = r.ready_at
                    if ready is None:
                        wait = m.load_s_on(r.endpoint)
                    else:
                        wait = ready - now
                        if wait < 0.0:
                            wait = 0.0
                if best is None or wait < best[0] or (wait == best[0] and r.endpoint < best[2].endpoint):
                    best = (wait, action, r)
            wait, action, r = best
            ep_key = r.endpoint
            gpus = r.gpus
            evs = ()
            split = len(gpus) > 1
            pre = _prefill(m, prompt, ctx[ep_key], split_factor if split else 1.0) if prompt else 0.0
            wait += pre
            score = qv - w * wait
            copy = None
            if copies and len(levels) > len(rs) and wait - pre > _fastest_load_s(m):
                # A second queue may be worth a load (module docstring): the best copy elsewhere.
                hosting = {x.endpoint for x in rs}
                plans = [p for p in _plans(m.vram_mib, by_need, levels, tower, penalty, w)[0]
                         if p[3] not in hosting]
                for p in plans:
                    cpre = _prefill(m, prompt, ctx[p[3]], split_factor if p[6] else 1.0) if prompt else 0.0
                    cwait = m.load_s_on(p[3]) + cpre
                    cscore = qv - w * cwait - p[0]
                    if cscore > score and (copy is None or (-cscore, p) < (-copy[0], copy[1])):
                        copy = (cscore, p, cwait, cpre)
            if copy is not None:
                first_copy = (ep_key, wait - pre, action)
                score, plan, wait, pre = copy
                action = "load"
                ep_key = plan[3]
                gpus = plan[4]
                evs = plan[5]
                split = plan[6]
            speed = tps * split_factor if split else tps
        else:
            need = m.vram_mib
            entry = by_need.get(need)
            if entry is None:
                entry = _plans(need, by_need, levels, tower, penalty, w)
            plans, plan = entry
            if plan is None:
                why = nofit.get(need)
                if why is None:
                    why = (f"does not fit: needs {_gb(need)}, largest free GPU "
                           f"{_gb(tower.largest_free_mib())}")
                    if down_text:
                        why += f" ({down_text})"
                    nofit[need] = why
                rows.append([_NOFIT, INF, -qv, INF, tag, "", idx, qv, None, None, None, None,
                             None, (), (), why, meets])
                continue
            lsbe = m.load_s_by_endpoint
            if lsbe and len(plans) > 1:
                # Load times differ per endpoint: the best score, then the cheaper plan.
                bkey = None
                for p in plans:
                    wait = m.load_s_on(p[3])
                    key = (w * wait + p[0], wait, p)
                    if bkey is None or key < bkey:
                        bkey = key
                wait = bkey[1]
                plan = bkey[2]
            elif lsbe:
                wait = m.load_s_on(plan[3])
            else:
                wait = m.load_s
            action = "load"
            ep_key = plan[3]
            gpus = plan[4]
            evs = plan[5]
            pre = 0.0
            if prompt:
                pre = _prefill(m, prompt, ctx[ep_key], split_factor if plan[6] else 1.0)
                wait += pre
            score = qv - w * wait - plan[0]
            speed = tps * split_factor if plan[6] else tps
        resp = wait + (tokens / speed if speed > 0 else 0.0)
        if meets:
            if wait <= patience:
                row = [_ELIGIBLE, -score, -qv, wait, tag, ep_key, idx, qv, score, wait,
                       resp, action, ep_key, gpus, evs, None, True, pre]
            else:
                word = _WAIT_WORD[action] + (" and prompt" if pre else "")
                row = [_WAITS, -score, -qv, wait, tag, ep_key, idx, qv, score, wait, resp,
                       action, ep_key, gpus, evs,
                       f"{wait:.1f} s {word} exceeds {patience_text}", True, pre]
            if first_copy is not None:
                row.append(first_copy)
            rows.append(row)
            if action == "use_loaded":
                any_loaded_ok = True
        else:
            why = ("quality %.2f" % q + below_tail) if q is not None \
                else f"no {task_name} quality score"
            rows.append([_BELOW, -score, -qv, wait, tag, ep_key, idx, qv, score, wait, resp,
                         action, ep_key, gpus, evs, why, False, pre])

    restricted = any_loaded_ok and urg.use_loaded_if_acceptable
    eligible = []
    pool = []
    for row in rows:
        g = row[0]
        if g <= _WAITS:
            if restricted and row[11] != "use_loaded":
                if g == _ELIGIBLE:
                    row[15] = f"not loaded: a {urg.name} request uses an acceptable loaded model"
                row[0] = _LOADED_ONLY
                continue
            pool.append(row)
            if g == _ELIGIBLE:
                eligible.append(row)

    warned = False
    fallback_text = ""
    if eligible:
        chosen = min(eligible)
    elif pool:
        chosen = min(pool)
        warned = True
    else:
        chosen = None
        if remotes:
            ok = [r for r in remotes if r[16]]
            chosen = min(ok or remotes)
            warned = chosen[9] > patience
        if not up_eps:
            fallback_text = "every endpoint is down" if world.endpoints else "no endpoint is configured"
        else:
            fallback_text = f"no local model meets {floor_text} {floor:.2f} and fits"

    if chosen is not None:
        chosen[0] = _CHOSEN
        chosen[15] = None
        beat = f" below {chosen[4]}'s {chosen[8]:.2f}"
        for row in (remotes if chosen[11] == "fallback" else eligible):
            if row is not chosen:
                row[15] = "scored %.2f" % row[8] + beat
    if remotes:
        rows.extend(remotes)
    rows.sort()
    if _FAST_CANDIDATE:
        candidates = []
        append = candidates.append
        for row in rows:
            c = _new(Candidate)
            _set(c, "__dict__", {
                "model": row[4], "quality": row[7], "endpoint": row[12], "gpus": row[13],
                "action": row[11], "expected_wait_s": row[9], "expected_response_s": row[10],
                "score": row[8], "evictions": row[14], "rejected_because": row[15],
            })
            append(c)
        candidates = tuple(candidates)
    else:  # pragma: no cover
        candidates = tuple(_candidate(row) for row in rows)
    reason = _reason(chosen, rows, warned, fallback_text, floor, floor_text, patience,
                     patience_text, urg.name)
    if chosen is None:
        return Decision(None, None, None, (), None, None, None, False, False, reason, (),
                        candidates, POLICY_VERSION)
    return Decision(chosen[4], chosen[11], chosen[12], chosen[13], chosen[9], chosen[10],
                    chosen[7], chosen[16], warned, reason, chosen[14], candidates,
                    POLICY_VERSION, chosen[17])


def _reload_s(tower: Tower, evicted) -> float:
    """Sum over ``evicted`` of recency x its load seconds there: the wait an eviction is
    expected to cost whoever asks for that model next."""
    total = 0.0
    for r in evicted:
        rec = tower.recency_of(r)
        if rec > 0.0:
            total += rec * _model(tower.world, r.model).load_s_on(r.endpoint)  # evictions are few
    return total


def _fastest_load_s(m) -> float:
    fastest = m.load_s
    for _, seconds in m.load_s_by_endpoint:
        if seconds < fastest:
            fastest = seconds
    return fastest


def _prefill(m, prompt: int, num_ctx: int | None, factor: float) -> float:
    """Seconds to read a ``prompt``-token prompt on ``m`` (capped at the endpoint's context)."""
    rate = m.prefill_tokens_per_s * factor
    if rate <= 0.0:
        return 0.0
    if num_ctx is not None and prompt > num_ctx:
        prompt = num_ctx
    return prompt / rate


def _plans(need: int, by_need: dict, levels: list, tower: Tower, penalty: float, w: float) -> tuple:
    """(plans, cheapest plan or None) for a model needing ``need`` MiB, cached per need; a plan is
    (eviction cost, number of evictions, MiB left over, endpoint, gpus, evictions, split), so
    plans compare natively, cheapest first (endpoint keys are unique)."""
    entry = by_need.get(need)
    if entry is None:
        plans = []
        for ep, lv, most, reach in levels:
            if need <= most:
                for f, g in lv:
                    if f >= need:
                        plans.append((0.0, 0, f - need, ep.key, (g,), (), False))
                        break
            elif need <= reach:
                plan = tower.plan_on_endpoint(ep, need)
                if plan is not None:
                    vram_by_gpu, evicted, rec, split, left = plan
                    plans.append((penalty * rec + w * _reload_s(tower, evicted), len(evicted), left, ep.key,
                                  tuple(g for g, _ in vram_by_gpu),
                                  tuple(tower.eviction(r) for r in evicted), split))
        entry = (plans, min(plans) if plans else None)
        by_need[need] = entry
    return entry


def _reason(chosen, rows, warned, fallback_text, floor, floor_text, patience, patience_text,
            urg_name) -> str:
    """The decision in one or two sentences, for a person."""
    if chosen is None:
        return f"{fallback_text}, and no remote fallback is enabled"
    tag, q, wait, resp, action, ep = chosen[4], chosen[7], chosen[9], chosen[10], chosen[11], chosen[12]
    pre = chosen[17]
    # With a prompt, waits include reading it: say so, and say when the first token comes.
    prompt_text = f" (the prompt takes {pre:.1f} s)" if pre else ""
    copy_text = ""
    if len(chosen) > 18:  # a second copy: say what waiting for the first would have cost
        copy_text = f"; its copy on {chosen[18][0]} has a {chosen[18][1]:.1f} s {_WAIT_WORD[chosen[18][2]]}"
    if action == "fallback":
        below = "" if chosen[16] else f", though below {floor_text} {floor:.2f} too"
        return f"{fallback_text}: falling back to remote {tag} ({q:.2f}{below}), responds in {resp:.1f} s"
    meets = f"meets {floor_text} {floor:.2f}"
    evicting = ""
    if chosen[14]:
        evicting = ", evicting " + ", ".join(e.model for e in chosen[14])
    if warned:
        first = f", first token in {wait:.1f} s{prompt_text}" if pre else ""
        return (f"nothing met both {floor_text} {floor:.2f} and {patience_text}: {tag} ({q:.2f}) "
                f"is the best that meets the floor, with a {wait - pre:.1f} s {_WAIT_WORD[action]} on "
                f"{ep}{evicting}{first}, responds in {resp:.1f} s (warned){copy_text}")
    first = f"first token in {wait:.1f} s{prompt_text}, " if pre else ""
    if action == "use_loaded":
        queued = f" after a {wait - pre:.1f} s queue" if wait - pre > 0 else ""
        text = f"{tag} is loaded on {ep} and {meets}: {first}responds in {resp:.1f} s{queued}"
    elif action == "wait_for_load":
        text = (f"{tag} is already loading on {ep} and {meets}: ready in {wait - pre:.1f} s, "
                f"{first}responds in {resp:.1f} s")
    else:
        text = (f"{tag} ({q:.2f}) {meets}: a {wait - pre:.1f} s load on {ep} ({', '.join(chosen[13])})"
                f"{evicting}, {first}responds in {resp:.1f} s{copy_text}")

    # Name the best better-quality model that fits and meets the floor, and why it lost.
    alt = None
    for row in rows:
        if (row[0] in (_ELIGIBLE, _WAITS, _LOADED_ONLY) and row[7] > q
                and (alt is None or row[7] > alt[7])):
            alt = row
    if alt is not None:
        word = _WAIT_WORD[alt[11]]
        if alt[9] > patience:
            text += f"; {alt[4]} ({alt[7]:.2f}) would need a {alt[9]:.1f} s {word}, beyond {patience_text}"
        elif alt[0] == _LOADED_ONLY:
            text += (f"; {alt[4]} ({alt[7]:.2f}) is not loaded, and a {urg_name} request does not "
                     f"wait for a load while an acceptable model is loaded")
        else:
            text += f"; {alt[4]} ({alt[7]:.2f}) scored {alt[8]:.2f} with a {alt[9]:.1f} s {word}"
    return text
