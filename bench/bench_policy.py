"""Cost of one select() call: 30 models x 4 GPUs (2 endpoints, residents on each).

    .venv/bin/python bench/bench_policy.py [--calls 20000]

Prints the median and p99 microseconds per call (time.perf_counter_ns around each call),
for a rotating mix of task types and urgencies, and the same for place_many of a warm
set. Target (issue 3): median <= 50 us for select(). Figures, not assertions. Then active
learning's select_learned() (observed quality for every pair, exploring) beside select(), in
interleaved rounds on the same fresh Worlds: the ratio is its cost.

select() is measured twice:
  fresh World  a new World object for every call, as the API builds one per request
               (built outside the timed region): what production pays;
  same World   every call against one World, as a replay of many requests against one
               snapshot does: select() reuses what it derived from that World (VRAM
               bookkeeping, load plans), which only helps when the World object repeats.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from models_registry.policy import (  # noqa: E402
    EndpointView,
    GpuView,
    ModelView,
    PolicyParams,
    ResidentView,
    SelectionRequest,
    TaskTypeView,
    UrgencyView,
    World,
    place_many,
    select,
    select_learned,
)
from models_registry.policy.learning import Evidence, estimate  # noqa: E402

TASKS = ("general", "troubleshooting", "code_generation", "analysis", "chat", "summarization")
NOW = 1_800_000_000.0


def build_world() -> World:
    gpus = (
        GpuView("amd0", "AMD Radeon RX 9070 XT", 16384, 1024),
        GpuView("amd1", "AMD Radeon RX 9070 XT", 16384, 1024, measured_free_mib=9000),
        GpuView("nv0", "NVIDIA GeForce RTX 3060", 12288, 963),
        GpuView("nv1", "NVIDIA GeForce RTX 4090", 24576, 512),
    )
    endpoints = (
        EndpointView("tower-amd", ("amd0", "amd1"), allow_split=True),
        EndpointView("tower-nvidia", ("nv0", "nv1")),
    )
    models = []
    sizes = (1024, 2560, 4608, 5222, 8704, 13000, 18432, 20480, 30000, 3500)
    for i in range(29):
        size = sizes[i % len(sizes)]
        quality = {t: round(0.5 + ((i * 7 + j * 13) % 45) / 100, 2) for j, t in enumerate(TASKS)}
        models.append(ModelView(
            tag=f"model-{i:02d}:{size // 1024}g",
            vram_mib=size,
            load_s=1.5 + size / 400.0,
            load_s_by_endpoint=(("tower-nvidia", 1.0 + size / 500.0),) if i % 3 == 0 else (),
            tokens_per_s=max(8.0, 400.0 - size / 60.0),
            quality=quality,
            enabled=(i != 17),
            pinned=(i == 4),
        ))
    models.append(ModelView(tag="remote:gpt-4o-mini", kind="remote", remote_latency_s=1.5,
                            tokens_per_s=80, quality={t: 0.88 for t in TASKS}))
    by_tag = {m.tag: m for m in models}
    tags = [m.tag for m in models]

    def res(i, gpu, ep, state="loaded", **kw):
        m = by_tag[tags[i]]
        return ResidentView(m.tag, ep, ((gpu, m.vram_mib),), state, **kw)

    residents = (
        res(1, "nv0", "tower-nvidia", last_used_at=NOW - 30),
        res(2, "nv0", "tower-nvidia", last_used_at=NOW - 4000, in_flight=1),
        res(4, "nv1", "tower-nvidia", last_used_at=NOW - 10, pinned=True),
        res(12, "nv1", "tower-nvidia", last_used_at=NOW - 600),
        res(3, "amd0", "tower-amd", last_used_at=NOW - 200),
        res(14, "amd0", "tower-amd", state="loading", ready_at=NOW + 6),
        res(10, "amd1", "tower-amd", last_used_at=None),
    )
    task_types = tuple(TaskTypeView(t, 0.7 + 0.02 * j, 64 * (j + 1)) for j, t in enumerate(TASKS))
    urgencies = (
        UrgencyView("critical", 2, 0.2, 0.0, True),
        UrgencyView("interactive", 5, 0.05, 0.02),
        UrgencyView("background", 120, 0.001, 0.05),
        UrgencyView("batch", 3600, 0.0001, 0.05),
    )
    return World(NOW, gpus, endpoints, residents, tuple(models), task_types, urgencies,
                 PolicyParams())


def measure(fn, calls: int, prepare=lambda i: None) -> tuple[float, float]:
    """Median and p99 us of fn(i, prepare(i)); prepare is not timed."""
    samples = []
    clock = time.perf_counter_ns
    for i in range(calls):
        arg = prepare(i)
        t0 = clock()
        fn(i, arg)
        samples.append(clock() - t0)
    samples.sort()
    return statistics.median(samples) / 1000, samples[int(len(samples) * 0.99)] / 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=20000)
    args = ap.parse_args()
    world = build_world()
    requests = [SelectionRequest(t, u) for t in TASKS
                for u in ("critical", "interactive", "background", "batch")]
    requests.append(SelectionRequest("code_generation", "interactive", min_quality=0.9))
    n = len(requests)
    for i in range(2000):  # warm up
        select(world, requests[i % n])
    fresh_med, fresh_p99 = measure(lambda i, w: select(w, requests[i % n]), args.calls,
                                   prepare=lambda i: dataclasses.replace(world))
    med, p99 = measure(lambda i, _: select(world, requests[i % n]), args.calls)
    # Active learning: every scored pair with evidence (as after weeks of traffic), exploring with a
    # seeded draw; measured interleaved with plain select() on the same fresh Worlds: the ratio is the figure.
    import random

    estimates = {(m.tag, t): estimate(q, 20, Evidence(30 * q, 30 * (1 - q), 30))
                 for m in world.models if m.kind == "local" for t, q in m.quality.items()}
    draws = random.Random(1).betavariate
    rounds = []
    for _ in range(3):
        plain, _ = measure(lambda i, w: select(w, requests[i % n]), args.calls // 4,
                           prepare=lambda i: dataclasses.replace(world))
        active, _ = measure(lambda i, w: select_learned(w, requests[i % n], estimates, draws, 0.02), args.calls // 4,
                            prepare=lambda i: dataclasses.replace(world))
        rounds.append((plain, active))
    warm = [m.tag for m in world.models[5:9]]
    pmed, pp99 = measure(lambda i, _: place_many(world, warm), max(1000, args.calls // 10))
    print(f"python {platform.python_version()} on {platform.machine()}, "
          f"{len(world.models)} models x {len(world.gpus)} GPUs, {len(world.residents)} residents")
    for label, m, p in (("fresh World", fresh_med, fresh_p99), ("same World ", med, p99)):
        print(f"select() {label}: median {m:.1f} us   p99 {p:.1f} us   ({args.calls} calls)"
              f"   target median <= 50 us: {'met' if m <= 50 else 'NOT met'}")
    print(f"place_many(4): median {pmed:.1f} us   p99 {pp99:.1f} us")
    for k, (plain, active) in enumerate(rounds, 1):
        print(f"round {k}: select() {plain:.1f} us, select_learned() (active learning, {len(estimates)} estimates) "
              f"{active:.1f} us: {active / plain:.2f}x")


if __name__ == "__main__":
    main()
