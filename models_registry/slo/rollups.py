"""SLO reports: the database side of models_registry/metrics.py.

One clock hour (UTC) at a time: `compute_hour` reads the raw rows of an hour (decisions
with their outcomes, load events, residencies, whether GPU snapshots exist) and reduces
them with `metrics.tally_hour` plus the labelled counts the reports and Prometheus need.
`rollup_hour` stores that as a `SloHourlyRollup` (recompute and upsert: idempotent).

Reading a window (`hour_data`): complete hours come from their rollup when it is *good*
— computed, not marked dirty by a late outcome, and *settled*: computed at least settle_s()
after the hour ended (a load requested near the end of an hour is recorded when it finishes,
up to the load timeout later), a fact recorded in `settled_at` when the rollup is made, so a
later change of TOWEROPS_LOAD_TIMEOUT_S never unsettles an hour — and from raw rows otherwise;
the current partial hour always comes from raw rows. A *sealed* rollup (`sealed_at`: the
hour's raw decisions were pruned, slo.retention) is final: rollup_hour never recomputes it and
mark_hour_dirty never marks it (docs/retention.md). So a report is exact whether or not the
beat has caught up, and reads rollups for everything but the last hour or two. Each process keeps the rollup rows it
has parsed and reuses one while its row is unchanged (`rollup_rows`): a page of a 30-day
window then costs about one raw hour, not 720 rows of JSON.

A window `24h` is the 24 complete hours before the current hour plus the current partial
hour (`1h`, `7d`, `30d` likewise): rollups are per clock hour.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
from collections import Counter

from django.db import connection, transaction
from django.db.models import Min

from models_registry import conf
from models_registry import models as m
from models_registry.slo import metrics
from models_registry.timeutil import utcnow

UTC = dt.timezone.utc
HOUR = dt.timedelta(hours=1)
WINDOWS = {"1h": 1, "24h": 24, "7d": 7 * 24, "30d": 30 * 24}
THRASH = "thrash"  # the load_counts kind that counts the thrash loads (metrics.is_thrash_load) again


def settle_s() -> float:
    """How long after an hour ends a rollup of it is settled, under the load timeout in force now.
    Read only when a rollup is made (rollup_hour records the answer as settled_at)."""
    return conf.value("TOWEROPS_LOAD_TIMEOUT_S") + 60.0



def floor_hour(ts: dt.datetime) -> dt.datetime:
    return ts.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def window_bounds(window: str, now: dt.datetime | None = None) -> tuple[dt.datetime, dt.datetime]:
    """[start, end) of a window: its complete hours before the current one, plus the current partial hour."""
    now = now or utcnow()
    return floor_hour(now) - WINDOWS[window] * HOUR, now


# --------------------------------------------------------------------------- one hour


@dataclasses.dataclass
class HourData:
    hour: dt.datetime
    tally: metrics.Tally
    decision_us_hist: list[int]
    decision_us_sum: int
    load_duration_hist: list[int]
    load_duration_sum: float
    decision_counts: dict[str, int]  # "action|task_type_id|urgency|model_id"
    load_counts: dict[str, int]  # "kind|model_id|endpoint_id|task_type_id" (kind "thrash": the thrash loads again)
    ratings: dict[str, list]  # "model_id|task_type_id" -> [n, sum]
    source: str  # rollup | raw
    # Labelled Prometheus histograms (metrics.observe): {"ttft": {"urgency|task_type_id|model_id|source": …},
    # "wait": {"urgency|task_type_id|model_id": …}, "load": {"model_id|endpoint_id": …}}
    hists: dict = dataclasses.field(default_factory=dict)
    _evaluated: dict | None = dataclasses.field(default=None, repr=False, compare=False)

    def evaluated(self) -> dict[str, metrics.MetricValue]:
        """metrics.evaluate of this hour's tally (kept: a cached rollup hour is evaluated once)."""
        if self._evaluated is None:
            self._evaluated = metrics.evaluate(self.tally)
        return self._evaluated

    @classmethod
    def from_row(cls, r: m.SloHourlyRollup, labels: bool = True) -> HourData:
        t = metrics.Tally(**{f: getattr(r, f) for f in _TALLY_FIELDS})
        if len(t.latency_hist) != metrics.LATENCY_BUCKETS:
            t.latency_hist = (list(t.latency_hist) + [0] * metrics.LATENCY_BUCKETS)[: metrics.LATENCY_BUCKETS]
        return cls(
            r.hour, t, r.decision_us_hist, r.decision_us_sum, r.load_duration_hist, r.load_duration_sum,
            r.decision_counts if labels else {}, r.load_counts if labels else {}, r.ratings if labels else {},
            "rollup", r.labelled_hists if labels else {},
        )


_TALLY_FIELDS = tuple(f.name for f in dataclasses.fields(metrics.Tally))

# The outcomes are read by the id range of the hour's decisions (an index range scan of a few
# thousand rows) and hashed: a plain LEFT JOIN is planned as a hash join over every outcome in
# the table (a sequential scan of the whole table each time, 0.4 s at 1 M outcomes).
_DECISIONS_SQL = """
WITH d AS MATERIALIZED (
    SELECT id, action, task_type_id, urgency, model_id, met_floor, expected_wait_s, decision_us, residency_id
    FROM models_registry_selectiondecision WHERE created_at >= %s AND created_at < %s
)
SELECT d.action, d.task_type_id, d.urgency, d.model_id, d.met_floor, d.expected_wait_s,
       o.response_ms, o.rating, d.decision_us, d.residency_id, o.first_token_ms, o.measured_by
FROM d
LEFT JOIN models_registry_decisionoutcome o
       ON o.decision_id = d.id AND o.decision_id BETWEEN (SELECT min(id) FROM d) AND (SELECT max(id) FROM d)
"""
_LOADS_SQL = """
SELECT e.kind, e.model_id, e.endpoint_id, d.task_type_id, e.duration_s, e.thrash
FROM models_registry_loadevent e
LEFT JOIN models_registry_selectiondecision d ON d.id = e.decision_id
WHERE e.requested_at >= %s AND e.requested_at < %s
"""
# A residency holds its VRAM from the load request until it ended (or until now while active).
_SPANS_SQL = f"""
SELECT r.id, r.vram_mib, extract(epoch FROM r.requested_at),
       extract(epoch FROM CASE WHEN r.state IN {m.ACTIVE_RESIDENCY_STATES_SQL} THEN %(now)s
                               ELSE coalesce(r.ended_at, r.requested_at) END)
FROM models_registry_residency r
WHERE r.requested_at < %(h1)s
  AND (r.state IN {m.ACTIVE_RESIDENCY_STATES_SQL} OR coalesce(r.ended_at, r.requested_at) > %(h0)s)
"""
_OBSERVED_SQL = """
SELECT EXISTS (SELECT 1 FROM models_registry_gpusnapshot WHERE taken_at >= %s AND taken_at < %s),
       (SELECT coalesce(sum(total_mib - reserved_mib), 0) FROM models_registry_gpu)
"""


def gpu_vram_hour(h0: dt.datetime) -> dict:
    """One hour's snapshot statistics per GPU, for the rollup: {"gpus": {id: [n, sum, max, total]}}."""
    with connection.cursor() as cur:
        cur.execute(
            """SELECT gpu_id, count(*), sum(used_mib), max(used_mib), max(total_mib)
               FROM models_registry_gpusnapshot WHERE taken_at >= %s AND taken_at < %s GROUP BY gpu_id""",
            [h0, h0 + HOUR],
        )
        return {"gpus": {str(g): [n, int(s), mx, tot] for g, n, s, mx, tot in cur.fetchall()}}


def compute_hour(h0: dt.datetime, h1: dt.datetime | None = None, now: dt.datetime | None = None) -> HourData:
    """The hour [h0, h1) from raw rows (h1 defaults to h0 + 1 h; earlier for the current hour)."""
    now = now or utcnow()
    h1 = h1 or h0 + HOUR
    Dec, Load, Span = metrics.DecisionRec, metrics.LoadRec, metrics.Span
    labels: dict[tuple, int] = {}
    ratings: dict[str, list] = {}
    us_values = []
    hists: dict = {}

    def decisions(rows):
        # One pass over the cursor, the labelled counts taken on the way, one row and one record
        # alive at a time: a full hour is ~14 k rows, and holding them all (fetchall, a list of
        # records) costs more than the tally, and ages them into full garbage collections.
        for action, task, urg, model, met, wait, ms, rating, us, res, ft, by in rows:
            key = (action, task, urg, model)
            labels[key] = labels.get(key, 0) + 1
            us_values.append(us)
            if model is not None:
                label = f"{urg}|{task}|{model}"
                if wait is not None:
                    metrics.observe(hists, "wait", label, wait)
                if ft is not None:
                    metrics.observe(hists, "ttft", label + "|first_token", ft / 1000.0)
                elif ms is not None:
                    metrics.observe(hists, "ttft", label + "|response", ms / 1000.0)
            if rating is not None and model is not None:
                r = ratings.setdefault(f"{model}|{task}", [0, 0.0])
                r[0] += 1
                r[1] += rating
            yield Dec(0.0, urg, action, met, expected_wait_s=wait, response_s=None if ms is None else ms / 1000.0,
                      residency=res, first_token_s=None if ft is None else ft / 1000.0,
                      first_token_at_gateway=by == m.DecisionOutcome.MeasuredBy.GATEWAY)

    t0, t1 = h0.timestamp(), h1.timestamp()
    with connection.cursor() as cur:
        cur.execute(_LOADS_SQL, [h0, h1])
        lrows = cur.fetchall()
        cur.execute(_SPANS_SQL, {"now": max(now, h0), "h0": h0, "h1": h1})
        spans = [Span(rid, float(a), float(b), mib) for rid, mib, a, b in cur.fetchall()]
        cur.execute(_OBSERVED_SQL, [h0, h1])
        snapshots, usable_mib = cur.fetchone()
        loads = [Load(0.0, kind, thrash=thrash) for kind, _, _, _, _, thrash in lrows]
        cur.execute(_DECISIONS_SQL, [h0, h1])
        tally = metrics.tally_hour(t0, t1, decisions(cur), loads, spans, float(usable_mib), observed=bool(snapshots))
    dcounts = {f"{action or 'none'}|{task}|{urg}|{model or ''}": n for (action, task, urg, model), n in labels.items()}
    lcounts: Counter = Counter()
    durations = []
    for kind, model, endpoint, task, duration, thrash in lrows:
        lcounts[f"{kind}|{model}|{endpoint}|{task or ''}"] += 1
        if thrash:  # counted again under "thrash": the reports' and /metrics' thrash loads by label
            lcounts[f"{THRASH}|{model}|{endpoint}|{task or ''}"] += 1
        if kind == "load" and duration is not None:
            durations.append(duration)
            metrics.observe(hists, "load", f"{model}|{endpoint}", duration)
    return HourData(
        h0, tally,
        metrics.histogram(metrics.DECISION_US_EDGES, us_values), sum(us_values),
        metrics.histogram(metrics.LOAD_DURATION_EDGES_S, durations), float(sum(durations)),
        dict(dcounts), dict(lcounts), ratings, "raw", hists,
    )


def rollup_hour(hour: dt.datetime, now: dt.datetime | None = None) -> m.SloHourlyRollup | None:
    """Recompute one complete hour from raw rows and upsert its rollup (idempotent).

    The row is locked while the hour is read, so an outcome reported meanwhile either is
    seen by this computation or marks the row dirty after it (mark_hour_dirty waits for
    the lock): a late outcome is never lost. Returns None for an hour not yet over, and a
    sealed row unchanged: its raw decisions were pruned, recomputing it would drop them.
    The first computation made settle_s() after the hour ended records settled_at.
    """
    h0 = floor_hour(hour)
    now = now or utcnow()
    if h0 + HOUR > now:
        return None
    with transaction.atomic():
        m.SloHourlyRollup.objects.bulk_create([m.SloHourlyRollup(hour=h0)], ignore_conflicts=True)
        row = m.SloHourlyRollup.objects.select_for_update().get(hour=h0)
        if row.sealed_at is not None:
            return row
        data = compute_hour(h0, h0 + HOUR, now)
        for f in _TALLY_FIELDS:
            setattr(row, f, getattr(data.tally, f))
        row.decision_us_hist, row.decision_us_sum = data.decision_us_hist, data.decision_us_sum
        row.load_duration_hist, row.load_duration_sum = data.load_duration_hist, data.load_duration_sum
        row.decision_counts, row.load_counts, row.ratings = data.decision_counts, data.load_counts, data.ratings
        row.labelled_hists = data.hists
        # Snapshots older than TOWEROPS_SNAPSHOT_RAW_DAYS are thinned (retention.prune_snapshots): an
        # hour re-rolled after that (a late outcome) keeps the VRAM statistics it was rolled up with.
        thinned = h0 + HOUR <= now - dt.timedelta(days=conf.value("TOWEROPS_SNAPSHOT_RAW_DAYS"))
        if not (thinned and row.computed_at is not None and "gpus" in row.gpu_vram):
            row.gpu_vram = gpu_vram_hour(h0)
        row.computed_at, row.dirty_at = now, None
        if row.settled_at is None and now >= h0 + HOUR + dt.timedelta(seconds=settle_s()):
            row.settled_at = now
        row.save()
    return row


def mark_hour_dirty(ts: dt.datetime) -> dt.datetime | None:
    """The hour holding `ts` (a decision's created_at) changed after it may have been rolled up:
    mark it, so reports read it from raw rows and the beat recomputes it. Nothing to do for the
    current hour. A sealed hour is not marked: its hour is returned (else None), and the caller
    must not change it (selection.outcomes refuses the outcome). Call it inside the transaction
    that changes the hour: the row stays locked until that commits, so retention cannot seal
    the hour and delete its decisions meanwhile, nor rollup_hour miss the change."""
    h0 = floor_hour(ts)
    now = utcnow()
    if h0 >= floor_hour(now):
        return None
    m.SloHourlyRollup.objects.bulk_create([m.SloHourlyRollup(hour=h0)], ignore_conflicts=True)
    row = m.SloHourlyRollup.objects.select_for_update().only("sealed_at").get(hour=h0)
    if row.sealed_at is not None:
        return h0
    m.SloHourlyRollup.objects.filter(pk=row.pk).update(dirty_at=now)
    return None


def data_start() -> dt.datetime | None:
    """The hour of the oldest raw row an hour is computed from (decision, load event, residency, snapshot)."""
    firsts = [
        t for t in (
            m.SelectionDecision.objects.aggregate(t=Min("created_at"))["t"],
            m.LoadEvent.objects.aggregate(t=Min("requested_at"))["t"],
            m.Residency.objects.aggregate(t=Min("requested_at"))["t"],
            m.GpuSnapshot.objects.aggregate(t=Min("taken_at"))["t"],
        ) if t is not None
    ]
    return floor_hour(min(firsts)) if firsts else None


def good_rollup_q():
    """Filter of the rollups reports read instead of raw rows: computed, clean and settled (every
    sealed row is: the table's constraint slorollup_sealed_is_final)."""
    return dict(computed_at__isnull=False, dirty_at__isnull=True, settled_at__isnull=False)


def _is_good(r: m.SloHourlyRollup) -> bool:
    return r.computed_at is not None and r.dirty_at is None and r.settled_at is not None


def hours_to_roll(now: dt.datetime | None = None, limit: int = 200) -> list[dt.datetime]:
    """Complete hours whose rollup is missing, dirty or not yet settled (newest first), from the
    oldest raw data on; never a sealed hour."""
    now = now or utcnow()
    start = data_start()
    last = floor_hour(now) - HOUR
    if start is None or start > last:
        return []
    with connection.cursor() as cur:
        cur.execute(
            """
            SELECT h FROM generate_series(%s::timestamptz, %s::timestamptz, interval '1 hour') h
            LEFT JOIN models_registry_slohourlyrollup r ON r.hour = h
            WHERE r.id IS NULL
               OR (r.sealed_at IS NULL AND (r.computed_at IS NULL OR r.dirty_at IS NOT NULL OR r.settled_at IS NULL))
            ORDER BY h DESC LIMIT %s
            """,
            [start, last, limit],
        )
        return [row[0] for row in cur.fetchall()]


def rollup_due(now: dt.datetime | None = None, limit: int = 200) -> list[dt.datetime]:
    """What the beat runs every few minutes: the previous hour (until it settles), dirty hours,
    and missing hours back to the oldest raw row (at most `limit` a run, newest first)."""
    now = now or utcnow()
    hours = hours_to_roll(now, limit)
    for h in hours:
        rollup_hour(h, now)
    return hours


def rollup_range(start: dt.datetime, end: dt.datetime, now: dt.datetime | None = None) -> int:
    """Roll up every complete hour in [start, end) (the bench; a backfill)."""
    h, n = floor_hour(start), 0
    while h < end:
        if rollup_hour(h, now) is not None:
            n += 1
        h += HOUR
    return n


# Parsed rollup rows of this process. A 30-day window is 720 rows holding ~4 MB of JSON labels
# and 300 k histogram buckets: reading and parsing them costs ~0.3 s on every page or API call
# of that window. A complete hour's row seldom changes, so each row parsed is kept by id with
# its row version — PostgreSQL's (xmin, ctid), new on every UPDATE, even within one
# transaction — and reused only while the row still has that version: a read fetches the
# window's (id, version) pairs (a few ms) and parses only the rows rolled up or marked dirty
# since. Cached HourData (and their dicts and lists) are shared: read them, never change them.
_ROW_VERSION = "xmin::text || ':' || ctid::text"
_ROLLUP_CACHE_MAX = 800  # a 30-day window and some
_rollup_cache: dict[int, tuple[str, m.SloHourlyRollup, HourData]] = {}


def rollup_rows(start: dt.datetime, end: dt.datetime) -> dict[dt.datetime, tuple[m.SloHourlyRollup, HourData]]:
    """The rollup rows of the hours in [start, end), each with its HourData (labelled), by hour,
    from this process's cache where the row has not changed. Read them, never change them."""
    from django.db.models.expressions import RawSQL

    with connection.cursor() as cur:
        cur.execute(f"SELECT id, {_ROW_VERSION} FROM models_registry_slohourlyrollup WHERE hour >= %s AND hour < %s",
                    [start, end])
        versions = dict(cur.fetchall())
    stale = [i for i, v in versions.items() if _rollup_cache.get(i, ("",))[0] != v]
    if stale:
        for r in m.SloHourlyRollup.objects.filter(id__in=stale).annotate(row_version=RawSQL(_ROW_VERSION, ())):
            _rollup_cache[r.id] = (r.row_version, r, HourData.from_row(r))
    out = {}
    for i in versions:
        if i in _rollup_cache:
            _, r, data = _rollup_cache[i]
            out[r.hour] = (r, data)
    if len(_rollup_cache) > _ROLLUP_CACHE_MAX:
        for i in [i for i in _rollup_cache if i not in versions]:
            del _rollup_cache[i]
    return out


class Hours(list):
    """What hour_data returns: the window's HourData, in order, with their merged tally kept
    (a page showing several reports of one window merges 720 hours once)."""

    _total: metrics.Tally | None = None

    def total(self) -> metrics.Tally:
        if self._total is None:
            self._total = metrics.Tally.total(x.tally for x in self)
        return self._total


def tally_total(data: list[HourData]) -> metrics.Tally:
    return data.total() if isinstance(data, Hours) else metrics.Tally.total(x.tally for x in data)


def hour_data(start: dt.datetime, now: dt.datetime | None = None, labels: bool = True) -> Hours:
    """Every hour from `start` (an hour boundary) to now: good rollups, else raw rows.

    Hours from rollups come with their labelled counts whatever `labels` says (parsed once
    per process, see rollup_rows)."""
    now = now or utcnow()
    current = floor_hour(now)
    rows = rollup_rows(start, current)
    first, first_read = None, False  # data_start(), read only if some hour has no good rollup
    out = []
    h = start
    while h < current:
        r, data = rows.get(h, (None, None))
        if r is None or not _is_good(r):
            if not first_read:
                first, first_read = data_start(), True
            if first is None or h < first:
                # Nothing raw left for this hour (never was, or pruned after a rollup that is now dirty).
                data = data if r is not None and r.computed_at else _empty(h)
            else:
                data = compute_hour(h, h + HOUR, now)
        out.append(data)
        h += HOUR
    if now > current:
        out.append(compute_hour(current, now, now))
    return Hours(out)


def _empty(h: dt.datetime) -> HourData:
    return HourData(h, metrics.Tally(seconds=3600.0), [0] * (len(metrics.DECISION_US_EDGES) + 1), 0,
                    [0] * (len(metrics.LOAD_DURATION_EDGES_S) + 1), 0.0, {}, {}, {}, "empty")
