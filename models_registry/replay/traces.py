"""Trace readers, the mapping from a trace's own columns to TowerOps requests, and the
time scaling / subsampling that fit a data-centre trace to one tower.

Formats (detected from the file's header / first line):

* Azure LLM inference trace 2023 (code or conversation): ``TIMESTAMP, ContextTokens,
  GeneratedTokens``; arrival = seconds since the first row. The file name decides the
  ``service`` label (``code`` when it contains "code", else ``conversation``).
* The merged Azure file: ``arrival_s, service, input_tokens, output_tokens``.
* Mooncake JSONL: ``{"timestamp": ms, "input_length", "output_length", "hash_ids"}``;
  label ``service: mooncake``.
* TowerOps CSV: ``arrival_s, task_type, urgency, input_tokens, output_tokens`` (seconds
  from the start; task type and urgency given; no mapping needed).

Every row becomes a ``TraceRow`` (arrival, labels, input and output tokens). A mapping
(YAML) turns labels and token counts into a task type and urgency::

    name: azure-2023
    rules:                     # first match wins
      - when: {service: code, input_tokens_ge: 4000}
        task_type: troubleshooting
        urgency: interactive
      - when: {service: code}
        task_type: code_generation
        urgency: interactive
    default: {task_type: chat, urgency: interactive}   # optional; else unmatched rows are an error

``when`` keys: a label name (exact value), ``input_tokens_ge``/``_lt``,
``output_tokens_ge``/``_lt``. Rows that already carry ``task_type``/``urgency`` (TowerOps
CSV) keep them unless a rule matches.
"""
from __future__ import annotations

import csv
import datetime as dt
import json
import random
from dataclasses import dataclass
from pathlib import Path

import yaml

MAPPINGS_DIR = Path(__file__).parent / "mappings"


class TraceError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class TraceRow:
    arrival_s: float
    labels: dict
    input_tokens: int
    output_tokens: int


@dataclass(frozen=True, slots=True)
class Request:
    arrival_s: float
    task_type: str
    urgency: str
    input_tokens: int
    output_tokens: int


def _azure_ts(text: str) -> float:
    # "2023-11-16 18:17:03.9799600": 7 fractional digits, more than fromisoformat takes.
    head, _, frac = text.strip().partition(".")
    t = dt.datetime.strptime(head, "%Y-%m-%d %H:%M:%S").replace(tzinfo=dt.timezone.utc).timestamp()
    return t + (float("0." + frac) if frac else 0.0)


def read_trace(path: str | Path) -> list[TraceRow]:
    """All rows of a trace file, sorted by arrival (seconds from the trace's start)."""
    path = Path(path)
    with path.open(newline="") as f:
        first = f.readline()
        f.seek(0)
        if first.lstrip().startswith("{"):
            rows = _read_mooncake(f, path)
        else:
            header = [h.strip() for h in first.strip().split(",")]
            reader = csv.reader(f)
            next(reader)
            if header[:3] == ["TIMESTAMP", "ContextTokens", "GeneratedTokens"]:
                service = "code" if "code" in path.name.lower() else "conversation"
                raw = [(_azure_ts(r[0]), int(r[1]), int(r[2])) for r in reader if r]
                t0 = min((r[0] for r in raw), default=0.0)
                rows = [TraceRow(t - t0, {"service": service}, i, o) for t, i, o in raw]
            elif header == ["arrival_s", "service", "input_tokens", "output_tokens"]:
                rows = [TraceRow(float(r[0]), {"service": r[1]}, int(r[2]), int(r[3])) for r in reader if r]
            elif header == ["arrival_s", "task_type", "urgency", "input_tokens", "output_tokens"]:
                rows = [TraceRow(float(r[0]), {"task_type": r[1], "urgency": r[2]}, int(r[3]), int(r[4]))
                        for r in reader if r]
            else:
                raise TraceError(f"{path}: unknown trace header {header}")
    rows.sort(key=lambda r: r.arrival_s)
    return rows


def trace_origin(path: str | Path) -> dt.datetime | None:
    """The wall-clock time of a trace's virtual time 0 when the file carries one (the Azure
    2023 CSVs' TIMESTAMP, UTC: their first row), else None (the merged file, Mooncake and
    TowerOps CSVs count seconds from an unnamed start)."""
    path = Path(path)
    with path.open(newline="") as f:
        header = [h.strip() for h in f.readline().strip().split(",")]
        if header[:3] != ["TIMESTAMP", "ContextTokens", "GeneratedTokens"]:
            return None
        firsts = [_azure_ts(r[0]) for r in csv.reader(f) if r]
    return dt.datetime.fromtimestamp(min(firsts), dt.timezone.utc) if firsts else None


def _read_mooncake(f, path: Path) -> list[TraceRow]:
    rows = []
    for n, line in enumerate(f, 1):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
            rows.append(TraceRow(d["timestamp"] / 1000.0, {"service": "mooncake"},
                                 int(d["input_length"]), int(d["output_length"])))
        except (ValueError, KeyError) as e:
            raise TraceError(f"{path}:{n}: {e}") from None
    t0 = min((r.arrival_s for r in rows), default=0.0)
    return [TraceRow(r.arrival_s - t0, r.labels, r.input_tokens, r.output_tokens) for r in rows]


_OPS = {"_ge": lambda a, b: a >= b, "_lt": lambda a, b: a < b}


@dataclass(frozen=True)
class Mapping:
    name: str
    rules: tuple  # ((conditions, task_type, urgency), ...)
    default: tuple | None = None  # (task_type, urgency)
    description: str = ""
    source: str = ""

    def map(self, row: TraceRow) -> tuple[str, str]:
        for conds, task, urg in self.rules:
            if all(_holds(c, v, row) for c, v in conds):
                return task, urg
        if "task_type" in row.labels and "urgency" in row.labels:
            return row.labels["task_type"], row.labels["urgency"]
        if self.default is not None:
            return self.default
        raise TraceError(f"mapping {self.name or self.source}: no rule matches {row.labels} "
                         f"(input {row.input_tokens}, output {row.output_tokens})")


def _holds(key: str, value, row: TraceRow) -> bool:
    for suffix, op in _OPS.items():
        if key.endswith(suffix) and key[: -len(suffix)] in ("input_tokens", "output_tokens"):
            return op(getattr(row, key[: -len(suffix)]), value)
    return str(row.labels.get(key)) == str(value)


IDENTITY = Mapping("identity", ())


def load_mapping(path: str | Path) -> Mapping:
    """A mapping file; a bare name (``azure2023``) means ``mappings/<name>.yaml`` shipped here."""
    p = Path(path)
    if not p.exists() and not p.suffix:
        p = MAPPINGS_DIR / f"{path}.yaml"
    data = yaml.safe_load(p.read_text())
    if not isinstance(data, dict) or not isinstance(data.get("rules", []), list):
        raise TraceError(f"{p}: a mapping is a mapping with a 'rules' list")
    rules = []
    for i, r in enumerate(data.get("rules", [])):
        try:
            rules.append((tuple((r.get("when") or {}).items()), r["task_type"], r["urgency"]))
        except (KeyError, AttributeError):
            raise TraceError(f"{p}: rules[{i}] needs task_type and urgency") from None
    d = data.get("default")
    default = (d["task_type"], d["urgency"]) if d else None
    return Mapping(data.get("name", p.stem), tuple(rules), default, data.get("description", ""), str(p))


def map_rows(rows: list[TraceRow], mapping: Mapping = IDENTITY) -> list[Request]:
    return [Request(r.arrival_s, *mapping.map(r), r.input_tokens, r.output_tokens) for r in rows]


def scale_and_sample(requests: list[Request], *, time_scale: float = 1.0, sample: float = 1.0,
                     rng: random.Random | None = None) -> list[Request]:
    """Stretch time by ``time_scale`` (2.0: arrivals twice as far apart, half the rate) and
    keep each request with probability ``sample`` (drawn from ``rng``: pass a seeded one)."""
    if time_scale <= 0:
        raise ValueError("time_scale must be > 0")
    if not 0 < sample <= 1:
        raise ValueError("sample must be in (0, 1]")
    if sample < 1 and rng is None:
        raise ValueError("subsampling needs a random.Random (seeded) to be reproducible")
    out = []
    for r in requests:
        if sample < 1 and rng.random() >= sample:
            continue
        out.append(r if time_scale == 1.0 else Request(r.arrival_s * time_scale, r.task_type, r.urgency,
                                                       r.input_tokens, r.output_tokens))
    return out
