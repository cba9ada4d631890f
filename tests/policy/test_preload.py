"""policy.preload: the preload plan the beat and the replay both carry out. Plain objects."""
from __future__ import annotations

from models_registry.policy import EndpointView, GpuView, ModelView, ResidentView, World
from models_registry.policy.preload import (
    NO_ROOM,
    Cooling,
    Skip,
    WindowView,
    plan_preload,
    warm_set,
)

NOW = 1_800_000_000.0
GB = 1024


def two_10gb_gpus(*models: ModelView, residents=()) -> World:
    return World(
        now=NOW,
        gpus=(GpuView("box/0", "gpu0", 10 * GB, 0), GpuView("box/1", "gpu1", 10 * GB, 0)),
        endpoints=(EndpointView("ep-a", ("box/0",)), EndpointView("ep-b", ("box/1",))),
        residents=tuple(residents),
        models=models,
        task_types=(),
        urgencies=(),
    )


def model(tag: str, gb: float, **kw) -> ModelView:
    return ModelView(tag=tag, vram_mib=int(gb * GB), load_s=gb, **kw)


def resident(tag: str, gb: float, endpoint: str = "ep-a", **kw) -> ResidentView:
    gpu = {"ep-a": "box/0", "ep-b": "box/1"}[endpoint]
    return ResidentView(model=tag, endpoint=endpoint, vram_by_gpu=((gpu, int(gb * GB)),),
                        state=kw.pop("state", "loaded"), **kw)


def window(*tags: str, name: str = "w", is_open: bool = True) -> WindowView:
    return WindowView(name, tags, is_open)


def plan(world: World, *windows: WindowView, preloaded=(), keep_warm=(), idle_s=300.0):
    return plan_preload(world, windows, preloaded=set(preloaded), keep_warm=set(keep_warm), idle_s=idle_s)


SIZES = (model("a4", 4), model("b5", 5), model("c5", 5), model("d6", 6))


def test_a_window_is_placed_largest_first_and_as_ollama_would_load_it():
    # Largest first, each on the tightest GPU where Ollama loads it as it is: beside another runner
    # only within 80 % of what is free (ollama_rules.fits). 6 and 5 take a GPU each; 4 fits beside
    # the 5 (4 <= 0.8 x 5) but not beside the 6; the second 5 fits beside neither. Placing all
    # four (6+4, 5+5 by VRAM alone) is a plan Ollama would change behind TowerOps' back, evicting.
    p = plan(two_10gb_gpus(*SIZES), window("a4", "b5", "c5", "d6"))
    assert [(x.model, x.endpoint) for x in p.loads] == [("d6", "ep-a"), ("b5", "ep-b"), ("a4", "ep-b")]
    assert [s.model for s in p.skipped] == ["c5"] and p.wanted == ("a4", "b5", "c5", "d6")
    assert all(x.evictions == () for x in p.loads)


def test_the_warm_set_is_the_open_windows_enabled_local_models_by_window_name_then_tag():
    models = (model("x", 1), model("y", 1), model("z", 1), model("off", 1, enabled=False),
              ModelView(tag="cloud", kind="remote"))
    windows = (window("z", "y", name="b"), window("y", "x", "off", "cloud", name="a"),
               window("q", name="closed", is_open=False))
    assert warm_set(windows, models) == ("x", "y", "z")
    assert warm_set((window("x", is_open=False),), models) == ()


def test_a_model_with_any_residency_is_not_loaded_again():
    # loading elsewhere, or unloading (it is loaded again at a later tick, once gone)
    world = two_10gb_gpus(*SIZES, residents=(resident("a4", 4, "ep-b", state="loading"),
                                             resident("b5", 5, state="unloading")))
    p = plan(world, window("a4", "b5", "d6"))
    # d6 has no room as Ollama would load it (beside a4 it needs 80 % of ep-b's 6 GB free; b5
    # still holds ep-a) and waits; a4 and b5 are neither loaded again nor skipped.
    assert p.loads == () and [s.model for s in p.skipped] == ["d6"]


def test_loads_evict_only_idle_models_outside_the_warm_set_and_skip_what_has_no_room():
    world = two_10gb_gpus(*SIZES, model("busy", 7), model("old", 7), model("kept", 2, pinned=True), residents=(
        resident("busy", 7, "ep-a", in_flight=1, busy_s=30.0, last_used_at=NOW),
        resident("old", 7, "ep-b", last_used_at=NOW - 3600),
        resident("kept", 2, "ep-b"),
    ))
    p = plan(world, window("d6", "c5"))
    # d6 evicts the idle "old" (never the busy one, nor the pinned one beside it); c5 has no room left
    assert [(x.model, x.endpoint, [e.model for e in x.evictions]) for x in p.loads] == [("d6", "ep-b", ["old"])]
    assert p.skipped == (Skip("c5", NO_ROOM),)


def test_a_preloaded_model_no_window_wants_is_cooled_once_idle_kept_warm_or_left_for_later():
    models = SIZES + (model("e1", 1), model("f1", 1), model("pin", 1, pinned=True))
    world = two_10gb_gpus(*models, residents=(
        resident("a4", 4, "ep-a", last_used_at=NOW - 600),  # idle for 10 min: cooled
        resident("b5", 5, "ep-a", last_used_at=NOW - 60),  # used a minute ago: later
        resident("e1", 1, "ep-a", in_flight=1, busy_s=5.0),  # busy: later
        resident("f1", 1, "ep-a", state="loading", ready_at=NOW + 5),  # still loading: later
        resident("pin", 1, "ep-a"),  # pinned: never
        resident("c5", 5, "ep-b"),  # keep-warm endpoint: kept
        resident("d6", 4, "ep-b"),  # a selection loaded it: not the window's to cool
    ))
    preloaded = {("a4", "ep-a"), ("b5", "ep-a"), ("e1", "ep-a"), ("f1", "ep-a"), ("pin", "ep-a"), ("c5", "ep-b")}
    p = plan(world, window("a4", is_open=False), preloaded=preloaded, keep_warm={"ep-b"})
    assert p.wanted == () and p.loads == ()
    assert p.cool == (Cooling("a4", "ep-a"),)
    assert p.cool_later == (Cooling("b5", "ep-a"), Cooling("e1", "ep-a"), Cooling("f1", "ep-a"))
    assert p.kept_warm == (Cooling("c5", "ep-b"),)
    # the idle rule is the caller's: with 30 s, b5 is idle long enough
    assert Cooling("b5", "ep-a") in plan(world, preloaded=preloaded, keep_warm={"ep-b"}, idle_s=30.0).cool
    # a model a window still wants is never cooled
    assert plan(world, window("a4"), preloaded=preloaded, keep_warm={"ep-b"}).cool == ()


def test_a_preloaded_model_the_plan_evicts_is_not_also_cooled():
    world = two_10gb_gpus(*SIZES, model("old", 8), residents=(
        resident("old", 8, "ep-a", last_used_at=NOW - 3600), resident("old", 8, "ep-b", last_used_at=NOW - 3600)))
    preloaded = {("old", "ep-a"), ("old", "ep-b")}
    p = plan(world, window("d6"), preloaded=preloaded)
    evicted = {(e.model, e.endpoint) for x in p.loads for e in x.evictions}
    assert len(evicted) == 1
    assert {(c.model, c.endpoint) for c in p.cool} == preloaded - evicted


def test_the_plan_is_the_same_whatever_order_the_windows_come_in():
    world = two_10gb_gpus(*SIZES)
    one = plan(world, window("d6", "a4", name="x"), window("b5", "c5", name="y"))
    other = plan(world, window("c5", "b5", name="y"), window("a4", "d6", name="x"))
    assert one == other
