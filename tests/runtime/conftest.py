"""Shared fixtures of the runtime tests: a simulated Tower imported into the test database, and
`Ops`, which drives the services and runs what they queue as the host's agent would.

Each test gets its own SimulatedTower (profiles/tower.yaml on free ports, 100x faster) whose
endpoints are imported into the test database, so the tasks talk to a live Ollama-compatible
server. No broker is involved: what a service queues on commit is captured (which task, which
arguments, which queue) and the test runs that task's body itself.
"""
from __future__ import annotations

import threading
from pathlib import Path

import pytest
from django.db import connection

from models_registry import models as m
from models_registry.catalog import importer
from models_registry.fakes.ollama_server import SimulatedTower
from models_registry.runtime import reservations, tasks
from models_registry.runtime.fleet import fleet_state
from tests.helpers import tower_profile_on_free_ports, wait_for  # noqa: F401 (wait_for: for the tests here)

ROOT = Path(__file__).resolve().parents[2]
TOWER_PROFILE = ROOT / "profiles" / "tower.yaml"
SCALE = 100  # a 6.8 s load takes 68 ms, a 30m keep-alive 18 s (the Tower's endpoints keep warm: -1m)
AMD, NVIDIA = "tower-amd", "tower-nvidia"  # on GPUs tower/0 (15 GB usable) and tower/1 (11.06 GB)
MIB = {"tinyllama": 1024, "llama3.2:3b": 2560, "qwen2.5-coder:7b": 4608, "mistral:7b": 5222,
       "deepseek-coder-v2:16b": 8704}


def in_thread(fn, *args) -> tuple[threading.Thread, dict]:
    """Run fn(*args) in a thread with its own database connection; out["result"] or out["error"]."""
    out: dict = {}

    def run():
        try:
            out["result"] = fn(*args)
        except Exception as exc:  # noqa: BLE001 - reported to the test
            out["error"] = exc
        finally:
            connection.close()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, out


@pytest.fixture
def sim():
    tower = SimulatedTower(tower_profile_on_free_ports(), time_scale=SCALE).start()
    try:
        yield tower
    finally:
        tower.shutdown()


@pytest.fixture
def fleet(db, sim):
    """The simulated Tower, its endpoints (at their real ports) imported into the test database."""
    importer.import_profile(sim.profile_with_actual_urls())
    return sim


@pytest.fixture
def tx_fleet(transactional_db, sim):
    """`fleet`, committed: for tests whose threads use their own database connections."""
    importer.import_profile(sim.profile_with_actual_urls())
    return sim


class Ops:
    """Drives the services and runs what they queue, as the host's agent would."""

    def __init__(self, sim: SimulatedTower, capture):
        self.sim, self._capture = sim, capture
        self.queued: list[tuple[str, tuple, str]] = []  # (task, args, queue)

    def take(self) -> list[tuple[str, tuple, str]]:
        calls, self.queued = self.queued, []
        return calls

    def committed(self, fn, *args, **kwargs):
        """Call fn and run its on-commit callbacks (the test's transaction never commits)."""
        with self._capture(execute=True):
            return fn(*args, **kwargs)

    def run(self, calls) -> list[str]:
        out = []
        for task, args, _queue in calls:
            out.append(tasks.execute_load(*args) if task == "load" else tasks.execute_unload(*args))
        return out

    def reserve(self, tag: str, endpoint: str | None = None, trigger: str = "admin") -> int:
        result = self.committed(reservations.request_load, tag, trigger=trigger, endpoint=endpoint)
        assert result["detail"].startswith("loading"), result
        assert self.take() == [("load", (result["residency_id"],), "host.tower")]
        return result["residency_id"]

    def load(self, tag: str, endpoint: str | None = None) -> m.Residency:
        rid = self.reserve(tag, endpoint)
        assert tasks.execute_load(rid).startswith(f"loaded {tag}")
        return m.Residency.objects.get(pk=rid)

    def unload(self, tag: str, endpoint: str) -> m.Residency:
        result = self.committed(reservations.request_unload, tag, trigger="admin", endpoint=endpoint)
        calls = self.take()
        assert calls == [("unload", (result["residency_id"], "admin"), "host.tower")]
        self.run(calls)
        return m.Residency.objects.get(pk=result["residency_id"])

    @staticmethod
    def free() -> dict[str, int]:
        """Free MiB per GPU in TowerOps' bookkeeping."""
        return {g["key"]: g["free_mib"] for g in fleet_state()["gpus"]}


def _ops(sim, monkeypatch, capture) -> Ops:
    o = Ops(sim, capture)

    def queue(name):
        def apply_async(args=None, kwargs=None, queue=None, **options):
            o.queued.append((name, tuple(args or ()), queue))

        return apply_async

    monkeypatch.setattr(tasks.execute_load, "apply_async", queue("load"))
    monkeypatch.setattr(tasks.execute_unload, "apply_async", queue("unload"))
    return o


@pytest.fixture
def ops(fleet, monkeypatch, django_capture_on_commit_callbacks):
    return _ops(fleet, monkeypatch, django_capture_on_commit_callbacks)


@pytest.fixture
def tx_ops(tx_fleet, monkeypatch, django_capture_on_commit_callbacks):
    """`ops` on the committed fleet (each service call commits as it would in production)."""
    return _ops(tx_fleet, monkeypatch, django_capture_on_commit_callbacks)
