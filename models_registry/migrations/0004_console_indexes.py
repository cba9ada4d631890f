# The console's log filters (bench/bench_pages.py): an index per filter of the decision and
# load event logs, each ending in the time the log is ordered by. Built CONCURRENTLY (no lock
# on the tables the select API writes; ~1 min for 10 M decisions), so not in a transaction.
# The (action, created_at) index replaces the partial fallback one it covers; the
# (endpoint, requested_at) index replaces the endpoint FK's own. The VRAM history's snapshot
# buckets read (gpu, taken_at) INCLUDE (used_mib) index-only; it replaces (gpu, -taken_at).

import django.db.models.deletion
from django.contrib.postgres.operations import (
    AddIndexConcurrently,
    RemoveIndexConcurrently,
)
from django.db import migrations, models


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        ('models_registry', '0003_rollup_gpu_vram'),
    ]

    operations = [
        AddIndexConcurrently(
            model_name='selectiondecision',
            index=models.Index(fields=['action', 'created_at'], name='decision_action_time'),
        ),
        AddIndexConcurrently(
            model_name='selectiondecision',
            index=models.Index(fields=['urgency', 'created_at'], name='decision_urgency_time'),
        ),
        RemoveIndexConcurrently(
            model_name='selectiondecision',
            name='decision_fallback_time',
        ),
        AddIndexConcurrently(
            model_name='loadevent',
            index=models.Index(fields=['endpoint', 'requested_at'], name='loadevent_endpoint_time'),
        ),
        migrations.AlterField(
            model_name='loadevent',
            name='endpoint',
            field=models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.CASCADE, related_name='load_events', to='models_registry.endpoint'),
        ),
        AddIndexConcurrently(
            model_name='loadevent',
            index=models.Index(fields=['kind', 'requested_at'], name='loadevent_kind_time'),
        ),
        AddIndexConcurrently(
            model_name='loadevent',
            index=models.Index(fields=['trigger', 'requested_at'], name='loadevent_trigger_time'),
        ),
        AddIndexConcurrently(
            model_name='gpusnapshot',
            index=models.Index(fields=['gpu', 'taken_at'], include=['used_mib'], name='snapshot_gpu_time_used'),
        ),
        RemoveIndexConcurrently(
            model_name='gpusnapshot',
            name='snapshot_gpu_time',
        ),
    ]
