"""Retention: raw decisions pruned whole hours at a time, once their hour is rolled up, clean and
settled, and the hour sealed; GPU snapshots thinned after a while. docs/retention.md says what is
kept, for how long, and what a pruned hour still answers."""
from __future__ import annotations

import datetime as dt
import logging

from django.db import connection, transaction

from models_registry import conf
from models_registry import models as m
from models_registry.slo.rollups import HOUR, floor_hour
from models_registry.timeutil import utcnow

log = logging.getLogger(__name__)

_OLD_HOURS_SQL = """
SELECT DISTINCT date_trunc('hour', created_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' AS h
FROM models_registry_selectiondecision WHERE created_at < %s ORDER BY h
"""


def prune_raw_decisions(now: dt.datetime | None = None) -> int:
    """Delete the decisions (and their outcomes) of every whole clock hour that ended
    TOWEROPS_DECISION_RAW_DAYS or more ago, and seal each such hour's rollup in the same
    transaction; the load events that pointed at them keep their rows with decision unset.
    0 days (or less) keeps raw decisions for ever.

    An hour is pruned only when its rollup is computed, clean (no late outcome waiting), settled,
    and counts exactly the decisions the hour holds — so the rollup is a full record of what
    is deleted. Whole hours only: a cut inside an hour would leave a partial hour that a late
    outcome could make be recomputed from half its decisions. An hour sealed before (an old
    database's partly pruned hour, migration 0009) loses its remaining decisions the same way.
    Hours that do not qualify yet are left for a later run (the beat runs hourly)."""
    days = conf.value("TOWEROPS_DECISION_RAW_DAYS")
    if days <= 0:
        return 0
    now = now or utcnow()
    cutoff = floor_hour(now - dt.timedelta(days=days))
    with connection.cursor() as cur:
        cur.execute(_OLD_HOURS_SQL, [cutoff])
        hours = cur.fetchall()
    total = 0
    for (h0,) in hours:
        total += _prune_hour(h0, now)
    return total


def _prune_hour(h0: dt.datetime, now: dt.datetime) -> int:
    """Seal one hour and delete its raw decisions, in one transaction, or do nothing (returns 0).

    A load event of another hour that points at one of these decisions loses that link (its
    task type, in the thrash report's labels): that hour's raw rows change too, so it is sealed
    with this one — and if it cannot be (not rolled up, clean and settled yet), this hour waits.
    Rollup rows are locked first, in hour order, as selection.outcomes locks one before storing
    an outcome."""
    h1 = h0 + HOUR
    with transaction.atomic(), connection.cursor() as cur:
        cur.execute(
            """SELECT DISTINCT date_trunc('hour', e.requested_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'
               FROM models_registry_loadevent e JOIN models_registry_selectiondecision d ON d.id = e.decision_id
               WHERE d.created_at >= %s AND d.created_at < %s AND (e.requested_at < %s OR e.requested_at >= %s)""",
            [h0, h1, h0, h1],
        )
        hours = {h0} | {row[0] for row in cur.fetchall()}
        rows = {r.hour: r for r in m.SloHourlyRollup.objects.select_for_update().filter(hour__in=hours).order_by("hour")}
        for h in sorted(hours):
            if not _can_seal(cur, rows.get(h), now):
                return 0
        to_seal = [rows[h].pk for h in hours if rows[h].sealed_at is None]
        m.SloHourlyRollup.objects.filter(pk__in=to_seal).update(sealed_at=now)
        cur.execute(
            "SELECT id FROM models_registry_selectiondecision WHERE created_at >= %s AND created_at < %s", [h0, h1]
        )
        ids = [r[0] for r in cur.fetchall()]
        cur.execute("UPDATE models_registry_loadevent SET decision_id = NULL WHERE decision_id = ANY(%s)", [ids])
        cur.execute("DELETE FROM models_registry_decisionoutcome WHERE decision_id = ANY(%s)", [ids])
        # Their quality signals go too: what they taught stays summed in QualityEvidence (learning/signals.py).
        cur.execute("DELETE FROM models_registry_qualitysignal WHERE decision_id = ANY(%s)", [ids])
        cur.execute("DELETE FROM models_registry_selectiondecision WHERE id = ANY(%s)", [ids])
        return cur.rowcount


def _can_seal(cur, row: m.SloHourlyRollup | None, now: dt.datetime) -> bool:
    """Sealed already, or a full record of its hour: computed, clean, settled, and counting at
    least the decisions the hour holds (so it accounts for every row it replaces). One counting
    fewer missed rows written after it (a clock set back): it is marked for the beat to recompute
    first. One counting more lost rows by other means than retention (as 0009 finds the hours an
    older release cut through): it is the fuller record, and is what gets sealed."""
    if row is None or row.computed_at is None:
        return False
    if row.sealed_at is not None:
        return True
    if row.dirty_at is not None or row.settled_at is None:
        return False
    cur.execute(
        "SELECT count(*) FROM models_registry_selectiondecision WHERE created_at >= %s AND created_at < %s",
        [row.hour, row.hour + HOUR],
    )
    raw = cur.fetchone()[0]
    if raw > row.decisions:
        log.warning("retention: %s not pruned yet: its rollup counts %d decisions, the hour holds %d; marked "
                    "for recompute", row.hour.isoformat(), row.decisions, raw)
        m.SloHourlyRollup.objects.filter(pk=row.pk).update(dirty_at=now)
        return False
    if raw < row.decisions:
        log.warning("retention: %s holds %d decisions, fewer than the %d its rollup counts: the rollup is kept",
                    row.hour.isoformat(), raw, row.decisions)
    return True


def prune_snapshots() -> int:
    """Thin old snapshots: keep every row for RAW_DAYS, then one per GPU per 5 minutes."""
    raw_days = conf.value("TOWEROPS_SNAPSHOT_RAW_DAYS")
    cutoff = utcnow() - dt.timedelta(days=raw_days)
    with connection.cursor() as cur:
        cur.execute(
            """
            DELETE FROM models_registry_gpusnapshot s
            USING (
                SELECT id, row_number() OVER (
                    PARTITION BY gpu_id, date_trunc('hour', taken_at),
                                 floor(extract(minute FROM taken_at) / 5)
                    ORDER BY taken_at) AS n
                FROM models_registry_gpusnapshot WHERE taken_at < %s
            ) old
            WHERE s.id = old.id AND old.n > 1
            """,
            [cutoff],
        )
        return cur.rowcount
