"""Console fixtures: the Tower, users (alice is staff, bob a viewer: tests/conftest.py) and decisions."""
import datetime as dt

import pytest
from django.utils import timezone

from models_registry import models as m
from models_registry import services
from models_registry.policy.types import SelectionRequest

HX = {"HTTP_HX_REQUEST": "true"}


def make_decision(task_type="code_generation", urgency="interactive", at=None) -> m.SelectionDecision:
    """A decision row as the policy would take it now (decided for real, recorded directly, nothing queued)."""
    result = services.select_and_record(SelectionRequest(task_type, urgency), dry_run=True)
    d = result.decision
    return m.SelectionDecision.objects.create(
        created_at=at or timezone.now(),
        task_type=m.TaskType.objects.get(name=task_type),
        urgency=urgency,
        model=m.LlmModel.objects.filter(tag=d.model).first(),
        endpoint=m.Endpoint.objects.filter(name=d.endpoint).first(),
        gpu_keys=list(d.gpus),
        action=d.action,
        expected_wait_s=d.expected_wait_s,
        expected_response_s=d.expected_response_s,
        quality=d.quality,
        met_floor=d.met_floor,
        warned=d.warned,
        reason=d.reason,
        candidates=services.candidates_json(d),
        input_state={"seen": "test"},
        policy_version=d.policy_version,
    )


@pytest.fixture
def decisions(tower):
    now = timezone.now()
    return [make_decision("code_generation", "interactive", now - dt.timedelta(minutes=2)),
            make_decision("general", "batch", now - dt.timedelta(minutes=1))]


@pytest.fixture
def viewer_client(client, bob):
    client.force_login(bob)
    return client


@pytest.fixture
def staff_client(client, alice):
    client.force_login(alice)
    return client


