"""All-time counters for /metrics: every good hourly rollup summed, plus raw rows for the rest.

A counter Prometheus scrapes must never go down, in any gunicorn worker, across restarts. So
nothing is counted in the process: `totals()` adds up the good rollups (computed, clean,
settled: they no longer change) and computes every other hour, the current one included, from
raw rows (`rollups.compute_hour`), exactly as the reports read a window.

Summing every rollup on every scrape would cost more each hour (a year is 8,760 rows of
labelled histograms), so the sum is kept, with the (id, row version) pairs it covers, in two
parts: the rows of the last two days, which a late outcome may still change (this process only;
a change sums these ≤ 48 rows again), and the older rows, which almost never change, kept by
the process and in the database (`CounterCheckpoint`), so a new process starts from that row
instead of from the first hour. Either part is extended by the rows that became good since, and
summed again in full only when a row it covers changed or left the good set.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import threading
from collections import Counter

from django.db import DatabaseError, connection, transaction
from django.db.models.expressions import RawSQL

from models_registry import models as m
from models_registry.slo import metrics
from models_registry.slo.rollups import (
    _ROW_VERSION,
    HOUR,
    compute_hour,
    data_start,
    floor_hour,
    good_rollup_q,
)
from models_registry.timeutil import utcnow

log = logging.getLogger(__name__)
RECENT = dt.timedelta(days=2)  # rollups younger than this may still be marked dirty by a late outcome
CHECKPOINT = "good-rollups"


@dataclasses.dataclass
class Totals:
    decision_counts: Counter
    load_counts: Counter
    decision_us_hist: list[int]
    decision_us_sum: int
    load_duration_hist: list[int]
    load_duration_sum: float
    hists: dict  # labelled histograms, as HourData.hists

    @classmethod
    def empty(cls) -> Totals:
        return cls(Counter(), Counter(), [0] * (len(metrics.DECISION_US_EDGES) + 1), 0,
                   [0] * (len(metrics.LOAD_DURATION_EDGES_S) + 1), 0.0, {})

    def add(self, x) -> Totals:
        """Adds a Totals, a rollups.HourData or a rollup row's values into self (and returns self)."""
        self.decision_counts.update(x.decision_counts)
        self.load_counts.update(x.load_counts)
        for i, v in enumerate(x.decision_us_hist[: len(self.decision_us_hist)]):
            self.decision_us_hist[i] += v
        for i, v in enumerate(x.load_duration_hist[: len(self.load_duration_hist)]):
            self.load_duration_hist[i] += v
        self.decision_us_sum += x.decision_us_sum
        self.load_duration_sum += x.load_duration_sum
        metrics.merge_labelled(self.hists, x.hists)
        return self

    def to_json(self) -> dict:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_json(cls, data: dict) -> Totals:
        return cls.empty().add(cls(
            Counter(data["decision_counts"]), Counter(data["load_counts"]), data["decision_us_hist"],
            data["decision_us_sum"], data["load_duration_hist"], data["load_duration_sum"], data["hists"]))


# Rows are summed in Python: PostgreSQL's set-returning JSON functions take ~30x longer to unnest
# and regroup the labelled histograms (4 s against 0.8 s for 145 hours of the bench's data).
_ROWS_SQL = """
SELECT decision_counts::text, load_counts::text, decision_us_hist, decision_us_sum,
       load_duration_hist, load_duration_sum, labelled_hists::text
FROM models_registry_slohourlyrollup WHERE id = ANY(%s)
"""


def sum_rollups(ids: list[int]) -> Totals:
    """The counters of these rollup rows, summed."""
    t = Totals.empty()
    with connection.cursor() as cur:
        for i in range(0, len(ids), 200):
            cur.execute(_ROWS_SQL, [ids[i:i + 200]])
            for dc, lc, us, us_sum, ld, ld_sum, hists in cur.fetchall():
                t.add(Totals(json.loads(dc), json.loads(lc), us or [], us_sum, ld or [], ld_sum, json.loads(hists)))
    return t


class _Part:
    """A sum of rollup rows with the (id, version) pairs it covers."""

    def __init__(self, versions: dict[int, str] | None = None, totals: Totals | None = None):
        self.versions, self.totals = versions or {}, totals

    def covers(self, versions: dict[int, str]) -> bool:
        """Whether every row summed is still there, unchanged."""
        return self.totals is not None and all(versions.get(i) == v for i, v in self.versions.items())

    def extended(self, versions: dict[int, str]) -> tuple[_Part, int]:
        """This sum brought to `versions` (which it covers): (the new part, rows added)."""
        new = [i for i in versions if i not in self.versions]
        if not new:
            return self, 0
        return _Part(dict(versions), Totals.empty().add(self.totals).add(sum_rollups(new))), len(new)


class _GoodRollupSum:
    """This process's sum of the good rollups: the frozen (older) part, shared through the
    CounterCheckpoint row, and the recent part."""

    def __init__(self):
        self.lock = threading.Lock()
        self.frozen, self.recent = _Part(), _Part()
        self.full_sums: Counter = Counter()  # {"frozen"|"recent": times summed from scratch} (tests read it)

    def get(self, frozen: dict[int, str], recent: dict[int, str]) -> Totals:
        with self.lock:
            self.frozen = self._frozen(frozen)
            if self.recent.covers(recent):
                self.recent = self.recent.extended(recent)[0]
            else:
                self.recent = _Part(dict(recent), sum_rollups(list(recent)))
                self.full_sums["recent"] += 1
            # A new Totals (add copies what it takes): the parts are never handed out to be changed.
            return Totals.empty().add(self.frozen.totals).add(self.recent.totals)

    def _frozen(self, versions: dict[int, str]) -> _Part:
        if self.frozen.covers(versions):
            part, added = self.frozen.extended(versions)
            if added:
                _save(part)
            return part
        saved = _load()
        if saved.covers(versions):
            part, added = saved.extended(versions)
            if added:
                _save(part)
            return part
        self.full_sums["frozen"] += 1
        part = _Part(dict(versions), sum_rollups(list(versions)))
        _save(part)
        return part


def _load() -> _Part:
    row = m.CounterCheckpoint.objects.filter(name=CHECKPOINT).values_list("versions", "totals").first()
    if row is None:
        return _Part()
    versions, totals = row
    return _Part({int(i): v for i, v in versions.items()}, Totals.from_json(totals))


def _save(part: _Part) -> None:
    """Stores the frozen sum for the next process (a cache: a failed write only costs a later sum)."""
    try:
        with transaction.atomic():
            m.CounterCheckpoint.objects.update_or_create(name=CHECKPOINT, defaults={
                "versions": {str(i): v for i, v in part.versions.items()}, "totals": part.totals.to_json()})
    except DatabaseError as exc:
        log.warning("metrics: the counter checkpoint was not saved: %s", exc)


_good = _GoodRollupSum()


def totals(now: dt.datetime | None = None) -> Totals:
    """All-time counters: the good rollups (see _GoodRollupSum), plus raw rows for every other hour."""
    now = now or utcnow()
    current = floor_hour(now)
    rows = list(m.SloHourlyRollup.objects.filter(hour__lt=current, **good_rollup_q())
                .annotate(row_version=RawSQL(_ROW_VERSION, ())).values_list("id", "hour", "row_version"))
    boundary = current - RECENT
    t = _good.get({i: v for i, h, v in rows if h < boundary}, {i: v for i, h, v in rows if h >= boundary})
    good_hours = {h for _, h, _ in rows}
    first = data_start()
    if first is not None:
        h = first
        while h < current:
            if h not in good_hours:
                t.add(compute_hour(h, h + HOUR, now))
            h += HOUR
    if now > current:
        t.add(compute_hour(current, now, now))
    return t
