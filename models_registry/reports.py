"""SLO reports: the database side of models_registry/metrics.py.

One clock hour (UTC) at a time: `compute_hour` reads the raw rows of an hour (decisions
with their outcomes, load events, residencies, whether GPU snapshots exist) and reduces
them with `metrics.tally_hour` plus the labelled counts the reports and Prometheus need.
`rollup_hour` stores that as a `SloHourlyRollup` (recompute and upsert: idempotent).

Reading a window (`hour_data`): complete hours come from their rollup when it is *good*
— computed, not marked dirty by a late outcome, and computed at least SETTLE_S after the
hour ended (a load requested near the end of an hour is recorded when it finishes, up to
the load timeout later) — and from raw rows otherwise; the current partial hour always
comes from raw rows. So a report is exact whether or not the beat has caught up, and
reads rollups for everything but the last hour or two. Each process keeps the rollup rows it
has parsed and reuses one while its row is unchanged (`rollup_rows`): a page of a 30-day
window then costs about one raw hour, not 720 rows of JSON.

A window `24h` is the 24 complete hours before the current hour plus the current partial
hour (`1h`, `7d`, `30d` likewise): rollups are per clock hour.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
from collections import Counter, defaultdict

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Min

from models_registry import metrics, vram
from models_registry import models as m

UTC = dt.timezone.utc
HOUR = dt.timedelta(hours=1)
WINDOWS = {"1h": 1, "24h": 24, "7d": 7 * 24, "30d": 30 * 24}
ACTIVE_STATES = ("requested", "loading", "loaded", "unloading")


def settle_s() -> float:
    return float(getattr(settings, "TOWEROPS_LOAD_TIMEOUT_S", 600)) + 60.0


def utcnow() -> dt.datetime:
    return dt.datetime.now(UTC)


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
    load_counts: dict[str, int]  # "kind|model_id|endpoint_id|task_type_id"
    ratings: dict[str, list]  # "model_id|task_type_id" -> [n, sum]
    source: str  # rollup | raw
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
            "rollup",
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
       o.response_ms, o.rating, d.decision_us, d.residency_id, o.first_token_ms
FROM d
LEFT JOIN models_registry_decisionoutcome o
       ON o.decision_id = d.id AND o.decision_id BETWEEN (SELECT min(id) FROM d) AND (SELECT max(id) FROM d)
"""
_LOADS_SQL = """
SELECT e.kind, e.model_id, e.endpoint_id, d.task_type_id, e.duration_s
FROM models_registry_loadevent e
LEFT JOIN models_registry_selectiondecision d ON d.id = e.decision_id
WHERE e.requested_at >= %s AND e.requested_at < %s
"""
# A residency holds its VRAM from the load request until it ended (or until now while active).
_SPANS_SQL = """
SELECT r.id, r.vram_mib, extract(epoch FROM r.requested_at),
       extract(epoch FROM CASE WHEN r.state IN ('requested','loading','loaded','unloading') THEN %(now)s
                               ELSE coalesce(r.ended_at, r.requested_at) END)
FROM models_registry_residency r
WHERE r.requested_at < %(h1)s
  AND (r.state IN ('requested','loading','loaded','unloading') OR coalesce(r.ended_at, r.requested_at) > %(h0)s)
"""
_OBSERVED_SQL = """
SELECT EXISTS (SELECT 1 FROM models_registry_gpusnapshot WHERE taken_at >= %s AND taken_at < %s),
       (SELECT coalesce(sum(total_mib - reserved_mib), 0) FROM models_registry_gpu)
"""


def compute_hour(h0: dt.datetime, h1: dt.datetime | None = None, now: dt.datetime | None = None) -> HourData:
    """The hour [h0, h1) from raw rows (h1 defaults to h0 + 1 h; earlier for the current hour)."""
    now = now or utcnow()
    h1 = h1 or h0 + HOUR
    Dec, Load, Span = metrics.DecisionRec, metrics.LoadRec, metrics.Span
    labels: dict[tuple, int] = {}
    ratings: dict[str, list] = {}
    us_values = []

    def decisions(rows):
        # One pass over the cursor, the labelled counts taken on the way, one row and one record
        # alive at a time: a full hour is ~14 k rows, and holding them all (fetchall, a list of
        # records) costs more than the tally, and ages them into full garbage collections.
        for action, task, urg, model, met, wait, ms, rating, us, res, ft in rows:
            key = (action, task, urg, model)
            labels[key] = labels.get(key, 0) + 1
            us_values.append(us)
            if rating is not None and model is not None:
                r = ratings.setdefault(f"{model}|{task}", [0, 0.0])
                r[0] += 1
                r[1] += rating
            yield Dec(0.0, urg, action, met, expected_wait_s=wait, response_s=None if ms is None else ms / 1000.0,
                      residency=res, first_token_s=None if ft is None else ft / 1000.0)

    t0, t1 = h0.timestamp(), h1.timestamp()
    with connection.cursor() as cur:
        cur.execute(_LOADS_SQL, [h0, h1])
        lrows = cur.fetchall()
        cur.execute(_SPANS_SQL, {"now": max(now, h0), "h0": h0, "h1": h1})
        spans = [Span(rid, float(a), float(b), mib) for rid, mib, a, b in cur.fetchall()]
        cur.execute(_OBSERVED_SQL, [h0, h1])
        snapshots, usable_mib = cur.fetchone()
        loads = [Load(0.0, kind) for kind, *_ in lrows]
        cur.execute(_DECISIONS_SQL, [h0, h1])
        tally = metrics.tally_hour(t0, t1, decisions(cur), loads, spans, float(usable_mib), observed=bool(snapshots))
    dcounts = {f"{action or 'none'}|{task}|{urg}|{model or ''}": n for (action, task, urg, model), n in labels.items()}
    lcounts: Counter = Counter()
    durations = []
    for kind, model, endpoint, task, duration in lrows:
        lcounts[f"{kind}|{model}|{endpoint}|{task or ''}"] += 1
        if kind == "load" and duration is not None:
            durations.append(duration)
    return HourData(
        h0, tally,
        metrics.histogram(metrics.DECISION_US_EDGES, us_values), sum(us_values),
        metrics.histogram(metrics.LOAD_DURATION_EDGES_S, durations), float(sum(durations)),
        dict(dcounts), dict(lcounts), ratings, "raw",
    )


def rollup_hour(hour: dt.datetime, now: dt.datetime | None = None) -> m.SloHourlyRollup | None:
    """Recompute one complete hour from raw rows and upsert its rollup (idempotent).

    The row is locked while the hour is read, so an outcome reported meanwhile either is
    seen by this computation or marks the row dirty after it (mark_hour_dirty waits for
    the lock): a late outcome is never lost. Returns None for an hour not yet over.
    """
    h0 = floor_hour(hour)
    now = now or utcnow()
    if h0 + HOUR > now:
        return None
    with transaction.atomic():
        m.SloHourlyRollup.objects.get_or_create(hour=h0)
        row = m.SloHourlyRollup.objects.select_for_update().get(hour=h0)
        data = compute_hour(h0, h0 + HOUR, now)
        for f in _TALLY_FIELDS:
            setattr(row, f, getattr(data.tally, f))
        row.decision_us_hist, row.decision_us_sum = data.decision_us_hist, data.decision_us_sum
        row.load_duration_hist, row.load_duration_sum = data.load_duration_hist, data.load_duration_sum
        row.decision_counts, row.load_counts, row.ratings = data.decision_counts, data.load_counts, data.ratings
        row.gpu_vram = vram.gpu_vram_hour(h0)
        row.computed_at, row.dirty_at = now, None
        row.save()
    return row


def mark_hour_dirty(ts: dt.datetime) -> None:
    """The hour holding `ts` (a decision's created_at) changed after it may have been rolled up:
    mark it, so reports read it from raw rows and the beat recomputes it. Cheap (one upsert);
    nothing to do for the current hour."""
    h0 = floor_hour(ts)
    now = utcnow()
    if h0 >= floor_hour(now):
        return
    m.SloHourlyRollup.objects.bulk_create(
        [m.SloHourlyRollup(hour=h0, dirty_at=now)], update_conflicts=True, unique_fields=["hour"],
        update_fields=["dirty_at"],
    )


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


def _good_rollup_q():
    from django.db.models import DateTimeField, ExpressionWrapper, F, Value

    return dict(
        computed_at__isnull=False,
        dirty_at__isnull=True,
        computed_at__gte=ExpressionWrapper(
            F("hour") + Value(HOUR + dt.timedelta(seconds=settle_s())), output_field=DateTimeField()
        ),
    )


def _is_good(r: m.SloHourlyRollup) -> bool:
    return (
        r.computed_at is not None and r.dirty_at is None
        and r.computed_at >= r.hour + HOUR + dt.timedelta(seconds=settle_s())
    )


def hours_to_roll(now: dt.datetime | None = None, limit: int = 200) -> list[dt.datetime]:
    """Complete hours whose rollup is missing, dirty or not yet settled (newest first), from the oldest raw data on."""
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
            WHERE r.id IS NULL OR r.computed_at IS NULL OR r.dirty_at IS NOT NULL
               OR r.computed_at < h + interval '1 hour' + %s * interval '1 second'
            ORDER BY h DESC LIMIT %s
            """,
            [start, last, settle_s(), limit],
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


def _total(data: list[HourData]) -> metrics.Tally:
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


# --------------------------------------------------------------------------- reports


def targets() -> dict[str, metrics.Target]:
    return {
        t.name: metrics.Target(t.name, t.comparator, t.target, t.enabled) for t in m.SloTarget.objects.all()
    }


def _notes(mv: metrics.MetricValue) -> str:
    d = mv.detail
    if mv.name == metrics.P95:
        if mv.value is None:
            return "no data: no interactive (critical or interactive) decision with a time to first token"
        return (f"time to first token: {d['first_token']} reported first-token times, {d['response']} reported "
                f"response times (an upper bound: no first-token time), {d['estimated']} expected waits (no "
                f"outcome reported); source {d['source']}; {d['unknown']} without any left out")
    if mv.value is None:
        return "no data"
    if mv.name == metrics.LOADS_PER_HOUR:
        return f"{d['loads']} loads over {d['observed_hours']:.2f} observed hours"
    if mv.name == metrics.VRAM_EFFICIENCY:
        return "useful VRAM-seconds (models that served a request in that hour) / usable VRAM-seconds"
    if mv.name == metrics.QUALITY_MET:
        return f"{d['met_floor']} of {d['decisions']} decisions met the task's quality floor"
    return f"{d['fallbacks']} of {d['decisions']} decisions fell back"


def slo_report(window: str, now: dt.datetime | None = None, data: list[HourData] | None = None) -> dict:
    """The five metrics over the window. `data`: the window's hour_data when the caller has it
    already (a page showing several reports of one window reads the hours once)."""
    now = now or utcnow()
    start, end = window_bounds(window, now)
    data = hour_data(start, now, labels=False) if data is None else data
    tg = targets()
    total = metrics.evaluate(_total(data))
    per_hour = [(x.hour, x.evaluated()) for x in data]
    out = []
    for name in metrics.METRICS:
        mv, t = total[name], tg.get(name)
        out.append({
            "name": name,
            "unit": mv.unit,
            "value": mv.value,
            "target": {"comparator": t.comparator, "value": t.value, "enabled": t.enabled} if t else None,
            "met": metrics.check(mv.value, t),
            "notes": _notes(mv),
            "detail": mv.detail,
            "series": [
                {"hour": h, "value": ev[name].value, "met": metrics.check(ev[name].value, t)} for h, ev in per_hour
            ],
        })
    return {
        "window": window, "start": start, "end": end,
        "hours_from_rollups": sum(1 for x in data if x.source == "rollup"),
        "hours_from_raw": sum(1 for x in data if x.source == "raw"),
        "metrics": out,
    }


def _names():
    return (
        dict(m.TaskType.objects.values_list("id", "name")),
        dict(m.LlmModel.objects.values_list("id", "tag")),
        dict(m.Endpoint.objects.values_list("id", "name")),
    )


def _name(names: dict, key: str) -> str | None:
    if key in ("", "None"):
        return None
    return names.get(int(key), f"#{key}")


def _add_counts(out: dict[str, int], counts) -> dict[str, int]:
    get = out.get
    for c in counts:
        for key, n in c.items():
            out[key] = get(key, 0) + n
    return out


# Sums of the labelled counts of the hours a window starts with that come from the rollup
# cache (a 30-day window adds up ~150 k counts), keyed by those hours' ids, which the entry
# holds on to (so no id is reused while it is a key). Integers: the same sums, in the same order.
_prefix_sums: dict[tuple, tuple[list, dict]] = {}


def _sum_counts(data: list[HourData], attr: str) -> dict[str, int]:
    """The window's labelled counts (`decision_counts` or `load_counts`) summed per label, in
    the order labels first appear (each label is then parsed once, not once an hour)."""
    n = 0
    while n < len(data) and (data[n].source == "rollup" or not getattr(data[n], attr)):
        n += 1
    prefix = [x for x in data[:n] if x.source == "rollup"]
    key = (attr, tuple(map(id, prefix)))
    hit = _prefix_sums.get(key)
    if hit is None:
        hit = (prefix, _add_counts({}, (getattr(x, attr) for x in prefix)))
        if len(_prefix_sums) >= 8:
            _prefix_sums.clear()
        _prefix_sums[key] = hit
    return _add_counts(dict(hit[1]), (getattr(x, attr) for x in data[n:]))


def _rate(n: int, d: int) -> float | None:
    return n / d if d else None


def fallbacks_report(window: str, now: dt.datetime | None = None, data: list[HourData] | None = None) -> dict:
    """Fallbacks by the model fallen back to, by task type, by urgency and by hour."""
    now = now or utcnow()
    start, end = window_bounds(window, now)
    data = hour_data(start, now) if data is None else data
    tasks, models_, _ = _names()
    by_model: Counter = Counter()
    by_task = defaultdict(lambda: [0, 0])
    by_urgency = defaultdict(lambda: [0, 0])
    for key, n in _sum_counts(data, "decision_counts").items():
        action, task, urgency, model = key.split("|")
        fb = n if action == "fallback" else 0
        t = by_task[_name(tasks, task)]
        t[0] += n
        t[1] += fb
        u = by_urgency[urgency]
        u[0] += n
        u[1] += fb
        if fb:
            by_model[_name(models_, model)] += fb
    hours = [{"hour": x.hour, "decisions": x.tally.decisions, "fallbacks": x.tally.fallbacks,
              "rate": _rate(x.tally.fallbacks, x.tally.decisions)} for x in data]
    total = _total(data)
    return {
        "window": window, "start": start, "end": end,
        "decisions": total.decisions, "fallbacks": total.fallbacks, "rate": _rate(total.fallbacks, total.decisions),
        "by_model": [{"model": k, "fallbacks": v} for k, v in sorted(by_model.items(), key=lambda kv: -kv[1])],
        "by_task_type": [{"task_type": k, "decisions": d, "fallbacks": f, "rate": _rate(f, d)}
                         for k, (d, f) in sorted(by_task.items(), key=lambda kv: str(kv[0]))],
        "by_urgency": [{"urgency": k, "decisions": d, "fallbacks": f, "rate": _rate(f, d)}
                       for k, (d, f) in sorted(by_urgency.items())],
        "by_hour": hours,
    }


def thrash_report(window: str, now: dt.datetime | None = None, data: list[HourData] | None = None) -> dict:
    """Loads, evictions, unloads and failures by model, endpoint, task type (of the decision that asked) and hour."""
    now = now or utcnow()
    start, end = window_bounds(window, now)
    data = hour_data(start, now) if data is None else data
    tasks, models_, endpoints = _names()
    kinds = ("load", "evict", "unload", "fail")
    by_model = defaultdict(Counter)
    by_endpoint = defaultdict(Counter)
    by_task = defaultdict(Counter)
    for key, n in _sum_counts(data, "load_counts").items():
        kind, model, endpoint, task = key.split("|")
        by_model[_name(models_, model)][kind] += n
        by_endpoint[_name(endpoints, endpoint)][kind] += n
        by_task[_name(tasks, task)][kind] += n
    hours = [{"hour": x.hour, "loads": x.tally.loads, "evictions": x.tally.evictions, "unloads": x.tally.unloads,
              "failures": x.tally.failures} for x in data]
    total = _total(data)
    lph = metrics.evaluate(total)[metrics.LOADS_PER_HOUR]

    def rows(d: dict, label: str) -> list[dict]:
        return [
            {label: k, "loads": c["load"], "evictions": c["evict"], "unloads": c["unload"], "failures": c["fail"]}
            for k, c in sorted(d.items(), key=lambda kv: (-kv[1]["load"], str(kv[0])))
        ]

    return {
        "window": window, "start": start, "end": end,
        "loads": total.loads, "evictions": total.evictions, "unloads": total.unloads, "failures": total.failures,
        "loads_per_hour": lph.value, "observed_hours": lph.detail["observed_hours"],
        "by_model": rows(by_model, "model"), "by_endpoint": rows(by_endpoint, "endpoint"),
        "by_task_type": rows(by_task, "task_type"), "by_hour": hours,
        "kinds": list(kinds),
    }


def quality_report(window: str, now: dt.datetime | None = None) -> dict:
    """Observed quality (mean caller rating, 0..1) per model × task type next to the admin's score."""
    now = now or utcnow()
    start, end = window_bounds(window, now)
    data = hour_data(start, now)
    tasks, models_, _ = _names()
    acc = defaultdict(lambda: [0, 0.0])
    for x in data:
        for key, (n, s) in x.ratings.items():
            a = acc[key]
            a[0] += n
            a[1] += s
    scores = {(q.model_id, q.task_type_id): q.score for q in m.QualityScore.objects.all()}
    rows = []
    for key, (n, s) in acc.items():
        model, task = (int(k) for k in key.split("|"))
        rows.append({
            "model": models_.get(model, f"#{model}"), "task_type": tasks.get(task, f"#{task}"),
            "admin_score": scores.get((model, task)), "observed_mean": s / n if n else None, "ratings": n,
        })
    rows.sort(key=lambda r: (r["model"], r["task_type"]))
    return {"window": window, "start": start, "end": end, "rows": rows}


# --------------------------------------------------------------------------- Prometheus


@dataclasses.dataclass
class Totals:
    decision_counts: Counter
    load_counts: Counter
    decision_us_hist: list[int]
    decision_us_sum: int
    load_duration_hist: list[int]
    load_duration_sum: float


def totals(now: dt.datetime | None = None) -> Totals:
    """All-time counters: every good rollup summed in SQL, plus raw rows for the hours that are not."""
    now = now or utcnow()
    current = floor_hour(now)
    good = m.SloHourlyRollup.objects.filter(hour__lt=current, **_good_rollup_q())
    sql, params = good.values("id").query.sql_with_params()
    dcounts: Counter = Counter()
    lcounts: Counter = Counter()
    us = [0] * (len(metrics.DECISION_US_EDGES) + 1)
    ld = [0] * (len(metrics.LOAD_DURATION_EDGES_S) + 1)
    with connection.cursor() as cur:
        cur.execute(
            f"""
            WITH g AS (SELECT * FROM models_registry_slohourlyrollup WHERE id IN ({sql}))
            SELECT 'd', k, sum(v::bigint)::float8 FROM g, jsonb_each_text(g.decision_counts) AS e(k, v) GROUP BY k
            UNION ALL
            SELECT 'l', k, sum(v::bigint)::float8 FROM g, jsonb_each_text(g.load_counts) AS e(k, v) GROUP BY k
            UNION ALL
            SELECT 'u', i::text, sum(v)::float8 FROM g, unnest(g.decision_us_hist) WITH ORDINALITY AS a(v, i) GROUP BY i
            UNION ALL
            SELECT 't', i::text, sum(v)::float8 FROM g, unnest(g.load_duration_hist) WITH ORDINALITY AS a(v, i) GROUP BY i
            UNION ALL
            SELECT 's', 'us', coalesce(sum(decision_us_sum), 0)::float8 FROM g
            UNION ALL
            SELECT 's', 'ld', coalesce(sum(load_duration_sum), 0)::float8 FROM g
            """,
            params,
        )
        us_sum, ld_sum = 0, 0.0
        for kind, k, v in cur.fetchall():
            if kind == "d":
                dcounts[k] += int(v)
            elif kind == "l":
                lcounts[k] += int(v)
            elif kind == "u" and int(k) <= len(us):
                us[int(k) - 1] += int(v)
            elif kind == "t" and int(k) <= len(ld):
                ld[int(k) - 1] += int(v)
            elif kind == "s" and k == "us":
                us_sum = int(v)
            elif kind == "s":
                ld_sum = float(v)
        good_hours = set(good.values_list("hour", flat=True))
    raw: list[HourData] = []
    first = data_start()
    if first is not None:
        h = first
        while h < current:
            if h not in good_hours:
                raw.append(compute_hour(h, h + HOUR, now))
            h += HOUR
    if now > current:
        raw.append(compute_hour(current, now, now))
    for x in raw:
        dcounts.update(x.decision_counts)
        lcounts.update(x.load_counts)
        for i, v in enumerate(x.decision_us_hist):
            us[i] += v
        for i, v in enumerate(x.load_duration_hist):
            ld[i] += v
        us_sum += x.decision_us_sum
        ld_sum += x.load_duration_sum
    return Totals(dcounts, lcounts, us, us_sum, ld, ld_sum)


def latest_snapshots() -> list[dict]:
    """The newest snapshot of every GPU, with the GPU's configuration."""
    with connection.cursor() as cur:
        cur.execute(
            """
            SELECT h.name, g.index, g.name, g.vendor, g.total_mib, g.reserved_mib,
                   s.total_mib, s.used_mib, s.free_mib, s.util_pct, s.taken_at
            FROM models_registry_gpu g
            JOIN models_registry_host h ON h.id = g.host_id
            LEFT JOIN LATERAL (
                SELECT * FROM models_registry_gpusnapshot s WHERE s.gpu_id = g.id ORDER BY s.taken_at DESC LIMIT 1
            ) s ON true
            ORDER BY h.name, g.index
            """
        )
        cols = ("host", "index", "name", "vendor", "total_mib", "reserved_mib",
                "snap_total_mib", "used_mib", "free_mib", "util_pct", "taken_at")
        return [dict(zip(cols, row)) for row in cur.fetchall()]


# --------------------------------------------------------------------------- retention


def prune_raw_decisions(now: dt.datetime | None = None, batch: int = 20_000) -> int:
    """Delete decisions (and their outcomes) older than TOWEROPS_DECISION_RAW_DAYS whose hour has
    a good rollup; the load events that pointed at them keep their rows with decision unset.
    0 days (or less) keeps raw decisions for ever."""
    days = int(getattr(settings, "TOWEROPS_DECISION_RAW_DAYS", 30))
    if days <= 0:
        return 0
    now = now or utcnow()
    cutoff = min(now - dt.timedelta(days=days), floor_hour(now))
    total = 0
    while True:
        with transaction.atomic(), connection.cursor() as cur:
            cur.execute(
                """
                SELECT d.id FROM models_registry_selectiondecision d
                JOIN models_registry_slohourlyrollup r ON r.hour = date_trunc('hour', d.created_at)
                WHERE d.created_at < %s AND r.computed_at IS NOT NULL AND r.dirty_at IS NULL
                  AND r.computed_at >= r.hour + interval '1 hour' + %s * interval '1 second'
                LIMIT %s
                """,
                [cutoff, settle_s(), batch],
            )
            ids = [row[0] for row in cur.fetchall()]
            if not ids:
                return total
            cur.execute("UPDATE models_registry_loadevent SET decision_id = NULL WHERE decision_id = ANY(%s)", [ids])
            cur.execute("DELETE FROM models_registry_decisionoutcome WHERE decision_id = ANY(%s)", [ids])
            cur.execute("DELETE FROM models_registry_selectiondecision WHERE id = ANY(%s)", [ids])
            total += cur.rowcount


# --------------------------------------------------------------------------- decision log scans

# The decision log's label fields, in the order of decision_counts' keys.
_COUNT_FIELDS = ("action", "task_type_id", "urgency", "model_id")

_MATCHES_SQL = """
SELECT r.hour, COALESCE((SELECT sum(e.value::bigint) FROM jsonb_each_text(r.decision_counts) e
                         WHERE {where}), 0)
FROM models_registry_slohourlyrollup r
WHERE r.computed_at IS NOT NULL AND r.hour >= %s AND r.hour < %s
"""


def decision_scan_floor(filters: dict, upper: dt.datetime, since: dt.datetime | None, need: int) -> dt.datetime | None:
    """The oldest time the decision log must read to show the newest ``need`` decisions matching
    ``filters`` ({field of _COUNT_FIELDS: value}) before ``upper`` (and from ``since``), or None
    when it cannot tell (read everything).

    A combination of filters has no index of its own: PostgreSQL walks one filter's index and
    checks the others, which for a rare or empty combination reads every row of that filter
    (4 s in 10 M decisions). The hourly rollups count decisions per label, so the hours holding
    the newest ``need`` matches are known; hours not rolled up yet (the current one) and the
    hour holding ``upper`` (partly read already) are always read."""
    if not filters:
        return None
    where = " AND ".join(f"split_part(e.key, '|', {_COUNT_FIELDS.index(f) + 1}) = %s" for f in filters)
    params = [str(v) for v in filters.values()]
    first = m.SelectionDecision.objects.order_by("created_at").values_list("created_at", flat=True).first()
    if first is None:
        return None
    bottom = floor_hour(max(first, since) if since is not None else first)
    top = floor_hour(upper)
    if bottom >= top:
        return None  # within one hour: nothing to skip
    with connection.cursor() as cur:
        cur.execute(_MATCHES_SQL.format(where=where), [*params, bottom, top])
        counts = dict(cur.fetchall())
    # Walk down from the hour below `upper`: stop once the rolled-up hours hold `need` matches.
    # An hour without a rollup may hold any number: it is read, and the walk goes on below it.
    found = 0
    lowest_needed = top
    hour = top - dt.timedelta(hours=1)
    while hour >= bottom:
        n = counts.get(hour)
        if n is None or n > 0:
            lowest_needed = hour
            found += n or 0
            if found >= need:
                break
        hour -= dt.timedelta(hours=1)
    return lowest_needed
