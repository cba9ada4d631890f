"""Operations tasks: the beat heartbeat that /readyz reads."""
from __future__ import annotations

from celery import shared_task

from models_registry.models import ServiceHeartbeat
from models_registry.timeutil import utcnow


@shared_task
def record_heartbeat(service: str) -> str:
    """Stamp `service` as alive now. Beat queues it on `central`: it proves beat, the broker and the central worker."""
    now = utcnow()
    ServiceHeartbeat.objects.update_or_create(service=service, defaults={"beat_at": now})
    return f"{service} at {now.isoformat()}"
