# The interactive p95's first tokens split by who measured them: the gateway (a request it
# forwarded) or the caller (POST …/outcome). Rolled-up hours get the count from their raw rows
# (BACKFILL_SQL, the same rule as slo.rollups.compute_hour); a sealed hour has none left and keeps
# 0 (its first tokens count as the callers'). The decision log's source filter gets its index,
# like the log's other filters (0004): built CONCURRENTLY, so not in a transaction.

from django.contrib.postgres.operations import AddIndexConcurrently
from django.db import migrations, models

BACKFILL_SQL = """
UPDATE models_registry_slohourlyrollup r SET interactive_first_token_gateway = (
    SELECT count(*) FROM models_registry_selectiondecision d
    JOIN models_registry_decisionoutcome o ON o.decision_id = d.id
    WHERE d.created_at >= r.hour AND d.created_at < r.hour + interval '1 hour'
      AND d.urgency IN ('critical', 'interactive') AND o.first_token_ms IS NOT NULL AND o.measured_by = 'gateway'
)
WHERE r.computed_at IS NOT NULL AND r.sealed_at IS NULL AND r.interactive_first_token > 0
"""


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        ('models_registry', '0012_merge_lifecycle'),
    ]

    operations = [
        migrations.AddField(
            model_name='slohourlyrollup',
            name='interactive_first_token_gateway',
            field=models.PositiveIntegerField(default=0, help_text='of interactive_first_token, measured by the gateway (the rest reported by callers)'),
        ),
        migrations.RunSQL(BACKFILL_SQL, migrations.RunSQL.noop),
        AddIndexConcurrently(
            model_name='selectiondecision',
            index=models.Index(fields=['source', 'created_at'], name='decision_source_time'),
        ),
    ]
