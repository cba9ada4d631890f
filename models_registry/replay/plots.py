"""PNG plots of a replay (matplotlib, Agg backend): wait CDF per policy, loads per hour,
VRAM held over time."""
from __future__ import annotations

from pathlib import Path

from .sim import SimResult


def write_plots(results: list[SimResult], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    paths = []

    fig, ax = plt.subplots(figsize=(7, 4))
    for r in results:
        waits = sorted(s.wait_s for s in r.served if s.action is not None)
        if waits:
            n = len(waits)
            ax.step(waits, [(i + 1) / n for i in range(n)], where="post", label=r.policy)
    ax.set_xscale("symlog", linthresh=1.0)
    ax.set(xlabel="wait before generation (s)", ylabel="share of requests", title="Wait CDF")
    ax.legend()
    paths.append(out / "wait_cdf.png")
    fig.savefig(paths[-1], dpi=100, bbox_inches="tight")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.8 / max(1, len(results))
    for i, r in enumerate(results):
        hours = int(r.end // 3600) + 1
        counts = [0] * hours
        for e in r.loads:
            if e.kind == "load" and e.at < hours * 3600:
                counts[int(e.at // 3600)] += 1
        ax.bar([h + i * width for h in range(hours)], counts, width, label=r.policy)
    ax.set(xlabel="hour of the replay", ylabel="loads", title="Loads per hour")
    ax.legend()
    paths.append(out / "loads_per_hour.png")
    fig.savefig(paths[-1], dpi=100, bbox_inches="tight")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4))
    for r in results:
        xs, ys, last = [0.0], [0.0], 0.0
        for t, mib in r.vram_samples:
            xs += [t, t]
            ys += [last, mib / 1024]
            last = mib / 1024
        xs.append(r.end)
        ys.append(last)
        ax.plot([x / 60 for x in xs], ys, label=r.policy)
    ax.axhline(r.usable_mib / 1024 if results else 0, color="grey", linestyle=":", label="usable")
    ax.set(xlabel="minutes", ylabel="VRAM held (GiB, all GPUs)", title="VRAM over time")
    ax.legend()
    paths.append(out / "vram.png")
    fig.savefig(paths[-1], dpi=100, bbox_inches="tight")
    plt.close(fig)
    return paths
