"""select(world, request) -> Decision: the best answer the caller can wait for.

Pure: standard library only; no clock, randomness, I/O or logging (``World.now`` is the
time). Unknown task types or urgencies raise ``PolicyInputError`` (a ValueError).

THE SCORING RULE (the one place it is written down)
===================================================
For the request's task type T and urgency class U:

* floor    = max(T.quality_floor, request.min_quality)
* patience = request.max_wait_s if given, else U.patience_s
* tokens   = request.expected_output_tokens if given, else T.default_output_tokens

Every enabled local model gets one candidate, at its best placement on an up endpoint:
  - already ``loaded`` there   -> action use_loaded,    wait = in_flight * params.queue_slot_s
  - ``requested``/``loading``  -> action wait_for_load, wait = max(0, ready_at - now)
    (concurrent requests share that one load instead of starting a second)
  - otherwise, where it fits   -> action load,          wait = model.load_s_on(endpoint)
    (fits = VRAM need <= free VRAM after evicting idle, unpinned models, LRU first;
    a model too big for any one GPU may split across the GPUs of one endpoint with
    allow_split: tokens/s * params.split_throughput_factor; see placement.py)
  expected_response_s = wait + tokens / tokens_per_s

    score = quality[T]
            - U.wait_weight * expected_wait_s
            - U.eviction_penalty * sum over evicted models of recency(last_used_at)

  where recency = 1 for a model used just now, falling linearly to 0 at
  params.recent_use_window_s ago (never used = 0): evicting what just served costs,
  which keeps a small gain from causing thrash.

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

from .placement import Tower
from .types import Candidate, Decision, SelectionRequest, World

POLICY_VERSION = "2026.11-1"

INF = float("inf")

# candidate groups, best first
_CHOSEN, _ELIGIBLE, _WAITS, _BELOW, _REMOTE, _NOFIT, _OFF = range(7)


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


def _names(keys: list[str]) -> str:
    if len(keys) == 1:
        return f"endpoint {keys[0]} is down"
    return f"endpoints {', '.join(keys)} are down"


_WAIT_WORD = {"use_loaded": "queue", "wait_for_load": "remaining load", "load": "load",
              "fallback": "remote latency"}


class _Row:
    """One model's candidate while deciding (internal, mutable, cheap)."""

    __slots__ = ("tag", "q", "has_q", "action", "endpoint", "gpus", "wait", "resp", "score",
                 "evictions", "group", "reason", "meets")

    def __init__(self, tag, q, has_q):
        self.tag = tag
        self.q = q
        self.has_q = has_q
        self.action = None
        self.endpoint = None
        self.gpus = ()
        self.wait = None
        self.resp = None
        self.score = None
        self.evictions = ()
        self.group = _OFF
        self.reason = None
        self.meets = False

    def sort_key(self):
        s = self.score
        w = self.wait
        return (self.group, INF if s is None else -s, -self.q, INF if w is None else w,
                self.tag, self.endpoint or "")

    def pick_key(self):
        return (-self.score, -self.q, self.wait, self.tag, self.endpoint or "")

    def candidate(self) -> Candidate:
        return Candidate(
            model=self.tag, quality=self.q, endpoint=self.endpoint, gpus=self.gpus,
            action=self.action, expected_wait_s=self.wait, expected_response_s=self.resp,
            score=self.score, evictions=self.evictions, rejected_because=self.reason,
        )


def select(world: World, request: SelectionRequest) -> Decision:
    """Choose the model for ``request`` in ``world``; see the module docstring for the rule."""
    task = _find(world.task_types, request.task_type, "task_type")
    urg = _find(world.urgencies, request.urgency, "urgency")
    task_name = task.name
    floor = task.quality_floor
    floor_text = f"the {task_name} floor"
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
    w = urg.wait_weight
    penalty = urg.eviction_penalty
    params = world.params
    now = world.now
    qslot = params.queue_slot_s
    split_factor = params.split_throughput_factor

    tower = Tower(world)
    up_eps = tower.up_endpoints
    up_keys = {e.key for e in up_eps}
    down_text = _names([e.key for e in tower.down_endpoints]) if tower.down_endpoints else ""

    present: dict[str, list] = {}
    for r in world.residents:
        if r.endpoint in up_keys and r.state != "unloading":
            present.setdefault(r.model, []).append(r)

    rows: list[_Row] = []
    remotes: list[_Row] = []
    plan_cache: dict[tuple[str, int], object] = {}
    largest = None
    any_loaded_ok = False

    for m in world.models:
        q = m.quality.get(task_name)
        row = _Row(m.tag, 0.0 if q is None else q, q is not None)
        meets = q is not None and q >= floor
        row.meets = meets
        if m.kind == "remote":
            if m.enabled:
                wait = m.remote_latency_s
                row.action = "fallback"
                row.wait = wait
                row.resp = wait + (tokens / m.tokens_per_s if m.tokens_per_s > 0 else 0.0)
                row.score = row.q - w * wait
                row.group = _REMOTE
                remotes.append(row)
            else:
                row.reason = "disabled"
                rows.append(row)
            continue
        rows.append(row)
        if not m.enabled:
            row.reason = "disabled"
            continue
        if not up_eps:
            row.reason = down_text or "no endpoint is configured"
            continue
        best = None  # (score, -wait, endpoint) compared as a tuple; endpoints iterate sorted
        tps = m.tokens_per_s
        for r in present.get(m.tag, ()):
            if r.state == "loaded":
                action = "use_loaded"
                wait = r.in_flight * qslot
            else:
                action = "wait_for_load"
                ready = r.ready_at
                if ready is None:
                    wait = m.load_s_on(r.endpoint)
                else:
                    wait = ready - now
                    if wait < 0.0:
                        wait = 0.0
            score = row.q - w * wait
            if best is None or score > best[0] or (score == best[0] and wait < best[1]):
                speed = tps * split_factor if len(r.vram_by_gpu) > 1 else tps
                best = (score, wait, action, r.endpoint, r.gpus, (), speed, 0)
        if best is None:
            need = m.vram_mib
            for ep in up_eps:
                ck = (ep.key, need)
                plan = plan_cache.get(ck, False)
                if plan is False:
                    plan = tower.plan_on_endpoint(ep, need)
                    plan_cache[ck] = plan
                if plan is None:
                    continue
                vram_by_gpu, evicted, rec, split, left = plan
                wait = m.load_s_on(ep.key)
                score = row.q - w * wait - penalty * rec
                # ties: shorter wait, then fewer evictions, then the tightest fit
                if best is None or score > best[0] or (score == best[0] and (
                        wait < best[1] or (wait == best[1] and (
                            len(evicted) < len(best[5]) or (len(evicted) == len(best[5])
                                                             and left < best[7]))))):
                    if len(vram_by_gpu) == 1:
                        gpus = (vram_by_gpu[0][0],)
                    else:
                        gpus = tuple(g for g, _ in vram_by_gpu)
                    best = (score, wait, "load", ep.key, gpus, evicted,
                            tps * split_factor if split else tps, left)
        if best is None:
            if largest is None:
                largest = tower.largest_free_mib()
            row.reason = f"does not fit: needs {_gb(m.vram_mib)}, largest free GPU {_gb(largest)}"
            if down_text:
                row.reason += f" ({down_text})"
            row.group = _NOFIT
            continue
        score, wait, action, ep_key, gpus, evicted, speed, _ = best
        row.score = score
        row.wait = wait
        row.resp = wait + (tokens / speed if speed > 0 else 0.0)
        row.action = action
        row.endpoint = ep_key
        row.gpus = gpus
        if evicted:
            row.evictions = tuple(tower.eviction(r) for r in evicted)
        if meets:
            row.group = _ELIGIBLE if wait <= patience else _WAITS
            if action == "use_loaded":
                any_loaded_ok = True
        else:
            row.group = _BELOW
            if q is None:
                row.reason = f"no {task_name} quality score"
            else:
                row.reason = f"quality {q:.2f} below {floor_text} {floor:.2f}"

    restricted = any_loaded_ok and urg.use_loaded_if_acceptable
    pool = []
    eligible = []
    for row in rows:
        g = row.group
        if g == _ELIGIBLE or g == _WAITS:
            if restricted and row.action != "use_loaded":
                row.group = _WAITS
                if row.wait > patience:
                    row.reason = f"{row.wait:.1f} s {_WAIT_WORD[row.action]} exceeds {patience_text}"
                else:
                    row.reason = f"not loaded: a {urg.name} request uses an acceptable loaded model"
                continue
            pool.append(row)
            if g == _ELIGIBLE:
                eligible.append(row)
            else:
                row.reason = f"{row.wait:.1f} s {_WAIT_WORD[row.action]} exceeds {patience_text}"

    warned = False
    fallback_text = ""
    if eligible:
        chosen = min(eligible, key=_Row.pick_key)
    elif pool:
        chosen = min(pool, key=_Row.pick_key)
        warned = True
    else:
        chosen = None
        if remotes:
            ok = [r for r in remotes if r.meets]
            chosen = min(ok or remotes, key=_Row.pick_key)
            warned = chosen.wait > patience
        if not up_eps:
            fallback_text = "every endpoint is down" if world.endpoints else "no endpoint is configured"
        else:
            fallback_text = f"no local model meets {floor_text} {floor:.2f} and fits"

    if chosen is not None:
        chosen.group = _CHOSEN
        chosen.reason = None
        cs = chosen.score
        beat = f" below {chosen.tag}'s {cs:.2f}"
        for row in eligible:
            if row is not chosen:
                row.reason = f"scored {row.score:.2f}{beat}"
        if warned and chosen.action != "fallback":
            for row in pool:
                if row is not chosen and row.reason is None:
                    row.reason = f"scored {row.score:.2f}{beat}"
    for row in remotes:
        if row is not chosen:
            row.reason = "remote: used only as the fallback when no local model meets the floor"
            if chosen is not None and chosen.action == "fallback":
                row.reason = f"scored {row.score:.2f} below {chosen.tag}'s {chosen.score:.2f}"
            rows.append(row)
        else:
            rows.append(row)

    rows.sort(key=_Row.sort_key)
    candidates = tuple(row.candidate() for row in rows)
    reason = _reason(chosen, rows, warned, fallback_text, floor, floor_text, patience_text,
                     urg.name, restricted)
    if chosen is None:
        return Decision(
            model=None, action=None, endpoint=None, gpus=(), expected_wait_s=None,
            expected_response_s=None, quality=None, met_floor=False, warned=False,
            reason=reason, evictions=(), candidates=candidates, policy_version=POLICY_VERSION,
        )
    return Decision(
        model=chosen.tag, action=chosen.action, endpoint=chosen.endpoint, gpus=chosen.gpus,
        expected_wait_s=chosen.wait, expected_response_s=chosen.resp, quality=chosen.q,
        met_floor=chosen.meets, warned=warned, reason=reason, evictions=chosen.evictions,
        candidates=candidates, policy_version=POLICY_VERSION,
    )


def _where(row: _Row) -> str:
    return f"{row.endpoint} ({', '.join(row.gpus)})" if row.gpus else str(row.endpoint)


def _reason(chosen, rows, warned, fallback_text, floor, floor_text, patience_text, urg_name,
            restricted) -> str:
    if chosen is None:
        return f"{fallback_text}, and no remote fallback is enabled"
    if chosen.action == "fallback":
        below = "" if chosen.meets else f", though below {floor_text} {floor:.2f} too"
        return (f"{fallback_text}: falling back to remote {chosen.tag} ({chosen.q:.2f}{below}),"
                f" responds in {chosen.resp:.1f} s")
    meets = f"meets {floor_text} {floor:.2f}"
    evicting = ""
    if chosen.evictions:
        evicting = ", evicting " + ", ".join(e.model for e in chosen.evictions)
    if warned:
        text = (f"nothing met both {floor_text} {floor:.2f} and {patience_text}: "
                f"{chosen.tag} ({chosen.q:.2f}) is the best that meets the floor, "
                f"with a {chosen.wait:.1f} s {_WAIT_WORD[chosen.action]} on {chosen.endpoint}"
                f"{evicting} (warned)")
        return text
    if chosen.action == "use_loaded":
        queued = ""
        if chosen.wait > 0:
            queued = f" after a {chosen.wait:.1f} s queue"
        text = f"{chosen.tag} is loaded on {chosen.endpoint} and {meets}: responds in {chosen.resp:.1f} s{queued}"
    elif chosen.action == "wait_for_load":
        text = (f"{chosen.tag} is already loading on {chosen.endpoint} and {meets}: ready in "
                f"{chosen.wait:.1f} s, responds in {chosen.resp:.1f} s")
    else:
        text = (f"{chosen.tag} ({chosen.q:.2f}) {meets}: a {chosen.wait:.1f} s load on "
                f"{_where(chosen)}{evicting}, responds in {chosen.resp:.1f} s")
    # Name the best better-quality model that was not chosen, and why.
    alt = None
    for row in rows:
        if row is chosen or not row.meets or row.score is None or row.action == "fallback":
            continue
        if row.q > chosen.q and (alt is None or row.q > alt.q):
            alt = row
    if alt is not None:
        word = _WAIT_WORD[alt.action]
        if alt.group == _WAITS and alt.wait is not None and alt.reason and "exceeds" in alt.reason:
            text += (f"; {alt.tag} ({alt.q:.2f}) would need a {alt.wait:.1f} s {word}, "
                     f"beyond {patience_text}")
        elif restricted and alt.action != "use_loaded":
            text += f"; {alt.tag} ({alt.q:.2f}) is not loaded and a {urg_name} request does not wait for a load"
        else:
            text += f"; {alt.tag} ({alt.q:.2f}) scored {alt.score:.2f} with a {alt.wait:.1f} s {word}"
    return text
