"""Synthetic histories for the SLO tests, on the seed's Tower with round GPU sizes.

The GPUs are resized so usable VRAM is 24576 MiB (16384 + 12288 − 4096): a 6144 MiB
model held for a whole hour is 25 % of it.
"""
from __future__ import annotations

import datetime as dt
import itertools

import pytest

pytest.register_assert_rewrite(f"{__package__}.recompute")  # its comparisons explain their failures

from models_registry import models as m
from models_registry.slo import rollups

USABLE_MIB = 24576
_seq = itertools.count()


@pytest.fixture
def rig(tower):
    m.Gpu.objects.filter(index=0).update(total_mib=16384, reserved_mib=0)
    m.Gpu.objects.filter(index=1).update(total_mib=12288, reserved_mib=4096)
    return History()


class History:
    """Writes decisions, outcomes, load events and residencies at chosen times."""

    def __init__(self):
        self.tasks = {t.name: t for t in m.TaskType.objects.all()}
        self.models = {x.tag: x for x in m.LlmModel.objects.all()}
        self.endpoints = {e.name: e for e in m.Endpoint.objects.all()}

    def decision(self, at, *, urgency="interactive", action="use_loaded", met=True, wait=1.0,
                 task="general", model="llama3.2:3b", residency=None, response_ms=None, first_token_ms=None,
                 rating=None, decision_us=100, measured_by=m.DecisionOutcome.MeasuredBy.CALLER):
        """A decision expecting `wait` s before generation and 10 s more for the whole answer
        (the interactive p95 reads the wait; the response estimate must never leak into it)."""
        d = m.SelectionDecision.objects.create(
            created_at=at, task_type=self.tasks[task], urgency=urgency, action=action, met_floor=met,
            expected_wait_s=wait, expected_response_s=None if wait is None else wait + 10.0,
            model=self.models[model] if model else None,
            endpoint=self.endpoints["tower-nvidia"] if model else None, reason="test", policy_version="test",
            decision_us=decision_us, residency=residency,
        )
        if response_ms is not None:
            m.DecisionOutcome.objects.create(decision=d, reported_at=at, response_ms=response_ms,
                                             first_token_ms=first_token_ms, success=True, rating=rating,
                                             measured_by=measured_by)
        return d

    def load(self, at, kind="load", *, model="llama3.2:3b", endpoint="tower-nvidia", duration=3.0, decision=None):
        return m.LoadEvent.objects.create(
            model=self.models[model], endpoint=self.endpoints[endpoint], kind=kind, trigger="selection",
            requested_at=at, started_at=at, finished_at=at + dt.timedelta(seconds=duration or 0),
            duration_s=duration, decision=decision,
        )

    def residency(self, start, end, vram_mib, *, model="llama3.2:3b", endpoint="tower-nvidia"):
        state = "unloaded" if end is not None else "loaded"
        return m.Residency.objects.create(
            model=self.models[model], endpoint=self.endpoints[endpoint], state=state, vram_mib=vram_mib,
            requested_at=start, loaded_at=start, ready_at=start, ended_at=end,
        )


def base_hour(hours_ago: int = 5) -> dt.datetime:
    return rollups.floor_hour(dt.datetime.now(dt.timezone.utc)) - dt.timedelta(hours=hours_ago)


@pytest.fixture
def reader(client, make_key):
    key = make_key("read")

    def get(path, **extra):
        return client.get(path, HTTP_AUTHORIZATION=f"Bearer {key}", **extra)

    return get
