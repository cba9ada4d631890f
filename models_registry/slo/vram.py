"""VRAM history per GPU: measured use over time (GpuSnapshot) with load and unload events.

Short windows (1 h, 24 h) read raw snapshots, averaged into buckets of 10 s / 2 min.
Long windows (7 d, 30 d) read one point per hour from the hourly rollup
(`SloHourlyRollup.gpu_vram`, written by `rollups.rollup_hour` with `gpu_vram_hour`), and
raw snapshots only for the hours not rolled up yet (the current one, or a beat that fell
behind). Events are counted per bucket (loads; unloads and evictions) on the endpoints that
may use the GPU, at the time the load finished (when VRAM moves), else when it was requested.
"""
from __future__ import annotations

import datetime as dt

from django.db import connection

from models_registry import models as m
from models_registry.slo import rollups

# window -> (length, bucket): a few hundred points per chart whatever the window.
WINDOWS = {
    "1h": (dt.timedelta(hours=1), dt.timedelta(seconds=10)),
    "24h": (dt.timedelta(hours=24), dt.timedelta(minutes=2)),
    "7d": (dt.timedelta(days=7), dt.timedelta(hours=1)),
    "30d": (dt.timedelta(days=30), dt.timedelta(hours=1)),
}
HOUR = dt.timedelta(hours=1)
UNLOAD_KINDS = (m.LoadEvent.Kind.UNLOAD, m.LoadEvent.Kind.EVICT)


def _raw_buckets(gpu_id: int, ranges: list[tuple[dt.datetime, dt.datetime]], bucket: dt.timedelta) -> dict:
    """{bucket start: (avg used, max used)} from raw snapshots in the given time ranges.

    No ORDER BY (the caller sorts): PostgreSQL then hashes the few hundred buckets instead of
    sorting every snapshot (83 k for 24 h of one GPU, spilled to disk: 3× slower); the scan is
    index-only on snapshot_gpu_time (gpu, taken_at) INCLUDE (used_mib)."""
    if not ranges:
        return {}
    where = " OR ".join("(taken_at >= %s AND taken_at < %s)" for _ in ranges)
    params = [bucket, ranges[0][0], gpu_id] + [t for r in ranges for t in r]
    with connection.cursor() as cur:
        cur.execute(
            f"""SELECT date_bin(%s, taken_at, %s) b, avg(used_mib), max(used_mib)
                FROM models_registry_gpusnapshot WHERE gpu_id = %s AND ({where})
                GROUP BY b""",
            params,
        )
        return {b: (float(avg), mx) for b, avg, mx in cur.fetchall()}


def _event_buckets(endpoint_ids: list[int], ranges: list[tuple[dt.datetime, dt.datetime]],
                   bucket: dt.timedelta, origin: dt.datetime) -> dict:
    """{bucket start: [loads, unloads]} of LoadEvents on these endpoints in the time ranges (raw rows)."""
    if not endpoint_ids or not ranges:
        return {}
    # A load finishing in a range may have been requested up to an hour before it.
    where = " OR ".join("(requested_at >= %s AND requested_at < %s)" for _ in ranges)
    with connection.cursor() as cur:
        cur.execute(
            f"""SELECT date_bin(%s, coalesce(finished_at, requested_at), %s) b, kind, count(*)
                FROM models_registry_loadevent
                WHERE endpoint_id = ANY(%s) AND kind IN ('load', 'unload', 'evict') AND ({where})
                GROUP BY b, kind""",
            [bucket, origin, endpoint_ids] + [t for a, b in ranges for t in (a - HOUR, b)],
        )
        out: dict = {}
        for b, kind, n in cur.fetchall():
            if any(a <= b < e for a, e in ranges):
                out.setdefault(b, [0, 0])[0 if kind == "load" else 1] += n
        return out


def _merge_ranges(hours: list[dt.datetime]) -> list[tuple[dt.datetime, dt.datetime]]:
    ranges: list[list[dt.datetime]] = []
    for h in sorted(hours):
        if ranges and ranges[-1][1] == h:
            ranges[-1][1] = h + HOUR
        else:
            ranges.append([h, h + HOUR])
    return [(a, b) for a, b in ranges]


def history(gpu: m.Gpu, window: str, now: dt.datetime) -> dict:
    """The chart's series for one GPU: x (bucket starts), used avg and max (MiB), usable
    capacity, and event markers (loads, unloads: the used figure where events happened)."""
    length, bucket = WINDOWS[window]
    endpoint_ids = list(gpu.endpoints.values_list("id", flat=True))
    if bucket < HOUR:
        # Buckets aligned to the clock (origin: midnight UTC) so a refresh keeps its points.
        origin = now.replace(hour=0, minute=0, second=0, microsecond=0)
        start = origin + ((now - length) - origin) // bucket * bucket
        points = _raw_buckets(gpu.id, [(start, now)], bucket)
        events = _event_buckets(endpoint_ids, [(start, now)], bucket, origin)
        sources = {"raw snapshots": len(points)}
    else:
        current = now.replace(minute=0, second=0, microsecond=0)
        start = current - length + HOUR
        # The rows as the SLO reports read them (parsed once per process: rollups.rollup_rows).
        rows = rollups.rollup_rows(start, current)
        points, events, missing = {}, {}, []
        key = str(gpu.id)
        by_hour = {h: r for h, (r, _) in rows.items() if r.computed_at is not None}
        eps = {str(e) for e in endpoint_ids}
        h = start
        while h < current:
            r = by_hour.get(h)
            if r is None or "gpus" not in r.gpu_vram:
                missing.append(h)
            else:
                stat = r.gpu_vram["gpus"].get(key)
                if stat and stat[0]:
                    points[h] = (stat[1] / stat[0], stat[2])
                counts = [0, 0]
                for label, n in r.load_counts.items():
                    kind, _, endpoint, _ = label.split("|")
                    if endpoint in eps and (kind == "load" or kind in UNLOAD_KINDS):
                        counts[0 if kind == "load" else 1] += n
                if any(counts):
                    events[h] = counts
            h += HOUR
        missing.append(current)
        ranges = _merge_ranges(missing)
        points.update(_raw_buckets(gpu.id, ranges, bucket))
        events.update(_event_buckets(endpoint_ids, [(a, min(b, now)) for a, b in ranges], bucket, start))
        sources = {"hourly rollups": len(by_hour), "raw hours": len(missing)}
    xs = sorted(set(points) | set(events))
    used = [points[x][0] if x in points else None for x in xs]
    peak = [points[x][1] if x in points else None for x in xs]
    loads = [used[i] if events.get(x, (0, 0))[0] else None for i, x in enumerate(xs)]
    unloads = [used[i] if events.get(x, (0, 0))[1] else None for i, x in enumerate(xs)]
    return {
        "x": [int(x.timestamp()) for x in xs], "used": used, "max": peak,
        "usable_mib": gpu.usable_mib, "total_mib": gpu.total_mib,
        "loads": loads, "unloads": unloads,
        "load_count": sum(c[0] for c in events.values()), "unload_count": sum(c[1] for c in events.values()),
        "sources": sources, "bucket_s": int(bucket.total_seconds()),
        "table": [(x, points[x][0], points[x][1]) for x in xs if x in points],  # for pages read without JavaScript
    }
