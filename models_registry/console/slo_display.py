"""How the console writes the five SLO metrics for people: names, units, targets in words.

The reports speak in ids and raw units (`interactive_p95_s`, `lt 5.0`, `0.047 fraction`); the
SLO page shows "Interactive time to first token, p95", "4.7 %" and "under 5 s". Shares are shown
in percent everywhere on the page, charts included.
"""
from __future__ import annotations

from dataclasses import dataclass

from models_registry.slo import metrics


@dataclass(frozen=True)
class Display:
    title: str
    what: str  # one line: what is measured
    unit: str  # as written after a number: "s", "loads/h", "%"
    scale: float  # raw value -> shown value
    decimals: int


DISPLAY = {
    metrics.P95: Display("Interactive time to first token, p95",
                         "95 % of critical and interactive requests saw their first token within this time",
                         "s", 1.0, 2),
    metrics.LOADS_PER_HOUR: Display("Model loads per hour", "completed loads per hour the tower was observed "
                                    "(loading models back and forth is thrash)", "loads/h", 1.0, 1),
    metrics.VRAM_EFFICIENCY: Display("VRAM efficiency", "share of usable VRAM-time held by models that served "
                                     "requests in that hour", "%", 100.0, 1),
    metrics.QUALITY_MET: Display("Quality floor met", "share of decisions whose model met the task's quality floor",
                                 "%", 100.0, 1),
    metrics.FALLBACK_RATE: Display("Fallback rate", "share of decisions sent to the remote fallback API", "%",
                                   100.0, 1),
}
WORDS = {"lt": "under", "le": "at most", "gt": "over", "ge": "at least"}


def number(name: str, value: float | None) -> str:
    """A metric's value with its unit: "3.85 s", "2.2 loads/h", "4.7 %"; "no data" for None."""
    if value is None:
        return "no data"
    d = DISPLAY[name]
    return f"{value * d.scale:.{d.decimals}f} {d.unit}"


def target_text(name: str, target: dict | None) -> str:
    """"under 5 s", "over 80 %" ("" without a target; "(off)" when it is disabled)."""
    if not target:
        return ""
    d = DISPLAY[name]
    shown = f"{target['value'] * d.scale:g} {d.unit}"
    return f"{WORDS.get(target['comparator'], target['comparator'])} {shown}" + ("" if target["enabled"] else " (off)")


def metric_rows(report: dict) -> list[dict]:
    """The report's metrics with what the page shows of each."""
    rows = []
    for mt in report["metrics"]:
        d = DISPLAY[mt["name"]]
        rows.append({**mt, "title": d.title, "what": d.what, "shown": number(mt["name"], mt["value"]),
                     "target_text": target_text(mt["name"], mt["target"])})
    return rows


def chart(metric: dict) -> dict:
    """A metric's per-hour chart for console.js, in the unit the page shows."""
    d, t = DISPLAY[metric["name"]], metric["target"]
    scale = lambda v: None if v is None else round(v * d.scale, 6)  # noqa: E731
    return {
        "id": f"chart-{metric['name']}",
        "title": d.title,
        "unit": d.unit,
        "label": f"{d.title} ({d.unit})",
        "x": [int(p["hour"].timestamp()) for p in metric["series"]],
        "y": [scale(p["value"]) for p in metric["series"]],
        "target": scale(t["value"]) if t and t["enabled"] else None,
        "target_text": target_text(metric["name"], t),
    }
