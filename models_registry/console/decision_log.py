"""The decision log's scan bound: which hours a filtered page must read, from the rollups' label counts."""
from __future__ import annotations

import datetime as dt

from django.db import connection

from models_registry import models as m
from models_registry.slo.rollups import floor_hour

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
