"""PNG plots of a replay (matplotlib, Agg backend): the time-to-first-token CDF per policy,
loads per hour, VRAM held over time. Each line is a policy, or "policy @ profile" on a
what-if run. Only the trace's own time is drawn (from 0: not the preload warm-up)."""
from __future__ import annotations

from pathlib import Path

from .sim import SimResult

PLOTS = ("wait_cdf.png", "loads_per_hour.png", "vram.png")


STYLES = ("-", "--", "-.", ":")  # lines that coincide (identical runs) stay visible


def _label(label: str, r: SimResult) -> str:
    return f"{r.policy} @ {label}" if label else r.policy


def write_plots(results: list[SimResult] | list[tuple[str, SimResult]], out: Path) -> list[Path]:
    """Write PLOTS into ``out``; ``results`` are SimResults, or (profile label, SimResult) pairs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pairs = [x if isinstance(x, tuple) else ("", x) for x in results]
    out.mkdir(parents=True, exist_ok=True)
    paths = []

    fig, ax = plt.subplots(figsize=(7, 4))
    for i, (label, r) in enumerate(pairs):
        ttft = sorted(s.ttft_s for s in r.served if s.action is not None)
        if ttft:
            n = len(ttft)
            ax.step(ttft, [(k + 1) / n for k in range(n)], where="post", label=_label(label, r),
                    linestyle=STYLES[i % len(STYLES)])
    ax.axvline(5.0, color="grey", linestyle=":", label="5 s (interactive p95 target)")
    ax.set_xscale("symlog", linthresh=1.0)
    ax.set_xlim(left=0)
    ax.set(xlabel="time to first token (s): the wait before the answer starts", ylabel="share of requests",
           title="Time to first token, CDF")
    ax.legend(fontsize="small")
    paths.append(out / PLOTS[0])
    fig.savefig(paths[-1], dpi=100, bbox_inches="tight")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.8 / max(1, len(pairs))
    hours = max((int(r.end // 3600) + 1 for _, r in pairs), default=1)
    for i, (label, r) in enumerate(pairs):
        counts = [0] * hours
        for e in r.loads:
            if e.kind == "load" and 0 <= e.at < hours * 3600:
                counts[int(e.at // 3600)] += 1
        ax.bar([h - 0.4 + (i + 0.5) * width for h in range(hours)], counts, width, label=_label(label, r))
    ax.set_xticks(range(hours))
    ax.set(xlabel="hour of the replay", ylabel="loads (during the trace)", title="Loads per hour")
    ax.legend(fontsize="small")
    paths.append(out / PLOTS[1])
    fig.savefig(paths[-1], dpi=100, bbox_inches="tight")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4))
    for i, (label, r) in enumerate(pairs):
        xs, ys, last = [0.0], [0.0], 0.0
        for t, mib in r.vram_samples:
            if t <= 0:  # the state the trace starts with
                ys[0] = last = mib / 1024
                continue
            xs += [t, t]
            ys += [last, mib / 1024]
            last = mib / 1024
        xs.append(r.end)
        ys.append(last)
        ax.plot([x / 60 for x in xs], ys, label=_label(label, r), linestyle=STYLES[i % len(STYLES)])
    for usable in sorted({r.usable_mib for _, r in pairs}):
        ax.axhline(usable / 1024, color="grey", linestyle=":", label=f"usable {usable / 1024:.1f} GiB")
    ax.set(xlabel="minutes", ylabel="VRAM held (GiB, all GPUs)", title="VRAM over time")
    ax.legend(fontsize="small")
    paths.append(out / PLOTS[2])
    fig.savefig(paths[-1], dpi=100, bbox_inches="tight")
    plt.close(fig)
    return paths
