"""bench/predictive_preload.py on a small slice: the pipeline runs and reports every column and check."""
import importlib.util
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "predictive_preload.py"


def _bench():
    spec = importlib.util.spec_from_file_location("predictive_preload", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_learned_on_the_first_week_and_evaluated_on_the_rest():
    bench = _bench()
    r = bench.evaluate(days=8, sample=0.05, seed=3)
    assert r["learned_requests"] > 0 and r["evaluated_requests"] > 0
    assert set(r["columns"]) == {"hand-made", "learned", "none"}
    for col in r["columns"].values():
        assert col["requests"] == r["evaluated_requests"]
        assert set(col) >= {"vram", "p95", "loads_h", "thrash", "quality"}
    assert r["windows"] and all(w["name"].startswith("predicted ") for w in r["windows"])
    assert all(isinstance(f, str) for f in r["failures"])
    cols = r["columns"]
    assert bench.checks({**cols, "learned": {**cols["learned"], "vram": 0.5}})[0].startswith("learned VRAM efficiency")
