"""No churn: the policy's flaws 3 and 4 of the policy-realism issue, reproduced on the pure core,
and the two guards against loading models back and forth (minimum residency; a window does not
take the room of what served people moments ago)."""
from __future__ import annotations

from dataclasses import replace

from models_registry.policy import SelectionRequest, select
from models_registry.policy.preload import WindowView, plan_preload

from .conftest import NOW


def _interactive_coders_then_batch(tower, used_by):
    """qwen2.5-coder:7b and tinyllama on the RTX 3060, used 15 s ago; llama3.2:3b busy beside them;
    the AMD endpoint down: an analysis request's better mistral:7b fits only by evicting qwen."""
    return tower.world(tower.res("qwen2.5-coder:7b", tower.nvidia, used_ago=15, used_by=used_by),
                       tower.res("tinyllama", tower.nvidia, used_ago=15, used_by=used_by),
                       tower.res("llama3.2:3b", tower.nvidia, used_ago=1, in_flight=1, busy_s=5.0),
                       down=(tower.amd,))


def test_batch_does_not_evict_what_interactive_users_just_used(tower):
    """Flaw 4: the reload was priced at the evicting request's rate (batch: 0.0001/s), so batch
    evicted the coders' model 15 s after they used it. Priced at its users' rate, it stays."""
    req = SelectionRequest("analysis", "batch")
    unknown = select(_interactive_coders_then_batch(tower, ()), req)  # who used it unknown: the old pricing
    assert (unknown.model, [e.model for e in unknown.evictions]) == ("mistral:7b", ["qwen2.5-coder:7b"])
    d = select(_interactive_coders_then_batch(tower, (("interactive", NOW - 15),)), req)
    assert (d.model, d.action, d.evictions) == ("llama3.2:3b", "use_loaded", ())
    # Used by batch requests only: batch's own rate, as before.
    batch = select(_interactive_coders_then_batch(tower, (("batch", NOW - 15),)), req)
    assert [e.model for e in batch.evictions] == ["qwen2.5-coder:7b"]
    # Used by interactive users long ago (beyond the recent-use window): evictable again.
    old = _interactive_coders_then_batch(tower, (("interactive", NOW - 15),))
    old = replace(old, residents=tuple(replace(r, last_used_at=NOW - 3600, used_by=(("interactive", NOW - 3600),))
                                       if r.model == "qwen2.5-coder:7b" else r for r in old.residents))
    assert [e.model for e in select(old, req).evictions] == ["qwen2.5-coder:7b"]


def _preloaded_deepseek(tower, wanted):
    """deepseek-coder-v2:16b preloaded on the RTX 3060 ten minutes ago and never used; the AMD
    card busy with three models."""
    busy = dict(used_ago=1, in_flight=1, busy_s=30.0)
    w = tower.world(tower.res("deepseek-coder-v2:16b", tower.nvidia, used_ago=None, ready_at=NOW - 600),
                    tower.res("llama3.2:3b", tower.amd, **busy), tower.res("qwen2.5-coder:7b", tower.amd, **busy),
                    tower.res("tinyllama", tower.amd, **busy))
    return replace(w, wanted=wanted)


def test_a_windows_model_is_not_free_to_evict_during_its_window(tower):
    """Flaw 3: a window's model never used since its load had recency 0, so the next background
    request evicted it, and the next tick loaded it back. While its window wants it, it counts as
    used just now, its reload at the people's rate."""
    for urgency in ("background", "batch"):
        req = SelectionRequest("analysis", urgency)
        outside = select(_preloaded_deepseek(tower, ()), req)
        assert [e.model for e in outside.evictions] == ["deepseek-coder-v2:16b"]
        inside = select(_preloaded_deepseek(tower, ("deepseek-coder-v2:16b",)), req)
        assert inside.evictions == () and inside.action == "use_loaded", inside


def test_a_model_loaded_moments_ago_is_not_evicted(tower):
    w = tower.world(tower.res("qwen2.5-coder:7b", tower.nvidia, used_ago=None, ready_at=NOW - 30),
                    tower.res("tinyllama", tower.nvidia, used_ago=1, in_flight=1, busy_s=50.0),
                    tower.res("llama3.2:3b", tower.nvidia, used_ago=1, in_flight=1, busy_s=50.0), down=(tower.amd,))
    req = SelectionRequest("analysis", "background")
    assert [e.model for e in select(replace(w, params=replace(w.params, min_residency_s=0.0)), req).evictions] \
        == ["qwen2.5-coder:7b"]
    d = select(w, req)  # loaded 30 s ago, within the default 120 s
    assert d.evictions == () and (d.model, d.action) == ("qwen2.5-coder:7b", "use_loaded")


def test_a_window_does_not_evict_what_served_within_the_recent_use_window(tower):
    window = WindowView("coding", ("deepseek-coder-v2:16b",), True)

    def plan(used_ago):
        w = tower.world(tower.res("qwen2.5-coder:7b", tower.nvidia, used_ago=used_ago, ready_at=NOW - 7200),
                        down=(tower.amd,))
        return plan_preload(w, [window], preloaded=set(), keep_warm=set())

    stale = plan(used_ago=3600)
    assert [(p.model, [e.model for e in p.evictions]) for p in stale.loads] == [
        ("deepseek-coder-v2:16b", ["qwen2.5-coder:7b"])]
    fresh = plan(used_ago=60)  # served a minute ago: the window waits
    assert fresh.loads == () and [s.model for s in fresh.skipped] == ["deepseek-coder-v2:16b"]
