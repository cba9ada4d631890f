"""Helpers shared by the test packages: plain functions (the fixtures are in tests/conftest.py).

Django is imported inside the functions that need it, so the policy's tests can import this
module with `-p no:django`.
"""
from __future__ import annotations

import socket
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TOWER_PROFILE = ROOT / "profiles" / "tower.yaml"


def wait_for(predicate, timeout: float = 5.0, what: str = "the condition", step: float = 0.01):
    """Poll `predicate` until it returns something truthy, and return that; AssertionError
    naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(step)


def redis_test_url() -> str:
    """The broker's Redis, database TOWEROPS_TEST_REDIS_DB (default 5): the tests' own; skips
    the test when the broker is not Redis."""
    import os

    import pytest
    from django.conf import settings

    base = settings.CELERY_BROKER_URL
    if not base.startswith("redis://"):
        pytest.skip("the shared admission tests need a Redis")
    db = os.environ.get("TOWEROPS_TEST_REDIS_DB", "5")
    return base.rsplit("/", 1)[0] + f"/{db}" if base.count("/") >= 3 else f"{base}/{db}"


def free_port() -> int:
    """A local TCP port nobody listens on (the OS picks it; free when this returns)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def tower_profile_on_free_ports():
    """The seed's Tower profile with every endpoint on port 0, for a SimulatedTower to pick ports."""
    import yaml

    from models_registry.catalog.profile import parse_profile

    data = yaml.safe_load(TOWER_PROFILE.read_text())
    for host in data["hosts"]:
        for ep in host["endpoints"]:
            ep["base_url"] = "http://127.0.0.1:0"
    return parse_profile(data)


def make_decision(task_type: str = "code_generation", urgency: str = "interactive", at=None, source=None):
    """A decision the policy takes on the database's world, written at `at` (default now) by the
    selection's own INSERT (records.record_decision). Unlike select_and_record, it reserves and
    queues nothing, so a test can write many without the later ones seeing the earlier loads."""
    from django.utils import timezone

    from models_registry import policy
    from models_registry.selection.records import record_decision
    from models_registry.selection.world import read_world

    now = at or timezone.now()
    req = policy.SelectionRequest(task_type, urgency)
    world, cfg, _ = read_world(now)
    decision = policy.select(world, req)
    extra = {} if source is None else {"source": source}  # record_decision's default: the select API
    return record_decision(req, "test", decision, world, cfg, now, us=0, residency_id=None, **extra)
