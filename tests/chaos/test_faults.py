"""Faults on a running tower (tests/chaos/conftest.py): each kills, stops or restarts a real process
and then checks `Tower.invariants()`. Run them alone with `pytest -m chaos`.

The bounds are docs/failure-behaviour.md's, with this suite's short timeouts (conftest.py).
"""
from __future__ import annotations

import signal
import threading
import time

import pytest

from .conftest import BOUND_S, REQUESTED_TIMEOUT_S, SLACK_S, SWEEP_PERIOD_S

pytestmark = [pytest.mark.chaos, pytest.mark.integration]


def residency_of(tower, decision_id: int) -> int:
    rows = tower.sql("SELECT residency_id FROM models_registry_selectiondecision WHERE id = %s", decision_id)
    assert rows and rows[0][0] is not None, rows
    return rows[0][0]


def test_worker_sigkill_mid_load(fresh):
    tower = fresh
    rid = tower.preload("qwen2.5-coder:7b", "tower-nvidia")["residency_id"]
    tower.wait(lambda: tower.state_of(rid) == "loading", 30, "the agent to start the load")
    tower.restart("agent")  # SIGKILL to the agent's whole process group, mid-load; then a new agent
    tower.wait(lambda: tower.state_of(rid) in ("loaded", "failed"), BOUND_S, "the killed load to end")
    tower.invariants()


def test_broker_stop_and_start_during_a_select_that_loads(fresh):
    tower = fresh
    tower.stop_redis()
    r = tower.select("code_generation", "batch", client="chaos")
    assert r.status_code == 200, r.text  # answered, not a 500 after the commit
    answer = r.json()
    assert answer["action"] == "load", answer
    rid = residency_of(tower, answer["decision_id"])
    state, dispatched = tower.sql("SELECT state, dispatched_at FROM models_registry_residency WHERE id = %s", rid)[0]
    assert (state, dispatched) == ("requested", None)  # held in the outbox
    time.sleep(REQUESTED_TIMEOUT_S + 2)  # an outage longer than the requested bound does not fail it
    assert tower.state_of(rid) == "requested"

    tower.start_redis()
    # beat's relay sends it once the broker is back (Celery reconnects within a few seconds)
    tower.wait(lambda: tower.state_of(rid) == "loaded", 30 + SWEEP_PERIOD_S + SLACK_S, "the held load to run")
    tower.invariants()


def test_a_sigstopped_endpoint_does_not_starve_its_neighbour_and_recovers_on_sigcont(fresh):
    tower = fresh
    tower.kill("ollama-tower-nvidia", signal.SIGSTOP)
    try:
        hung = [tower.preload(tag, "tower-nvidia")["residency_id"] for tag in ("llama3.2:3b", "tinyllama")]
        time.sleep(1.0)  # both reach the agent first: without one slot per endpoint they would hold its two processes
        t0 = time.monotonic()
        healthy = tower.preload("mistral:7b", "tower-amd")["residency_id"]
        tower.wait(lambda: tower.state_of(healthy) == "loaded", 12, "the healthy endpoint's load")
        waited = time.monotonic() - t0
        assert waited < 12, waited  # well inside the 20 s load timeout the hung endpoint holds
        assert all(tower.state_of(r) in ("requested", "loading") for r in hung)
    finally:
        tower.kill("ollama-tower-nvidia", signal.SIGCONT)
    tower.wait(lambda: all(tower.state_of(r) in ("loaded", "failed") for r in hung), BOUND_S, "the hung loads to end")
    tower.invariants()


def test_postgres_restart_mid_load(fresh):
    tower = fresh
    rid = tower.preload("deepseek-coder-v2:16b", "tower-amd")["residency_id"]
    tower.wait(lambda: tower.state_of(rid) == "loading", 30, "the agent to start the load")
    answers = []
    asker = threading.Thread(target=lambda: answers.extend(
        tower.select("chat", "interactive").status_code for _ in range(10)))
    asker.start()
    tower.restart_postgres()  # fast: every connection is cut, the agent's mid-load one too
    asker.join(60)
    assert not asker.is_alive()
    assert set(answers) <= {200, 503}, answers  # a clean JSON 503 while the database is gone, never a 500
    tower.wait(lambda: tower.state_of(rid) == "loaded", BOUND_S, "the load to be booked once the database is back")
    tower.invariants()


def test_web_restart_mid_load(fresh):
    tower = fresh
    r = tower.select("analysis", "batch", client="chaos")
    assert r.status_code == 200 and r.json()["action"] == "load", r.text
    rid = residency_of(tower, r.json()["decision_id"])
    tower.restart("web")  # the load runs on the host's agent: the web's death does not touch it
    tower.wait(tower.web_up, 60, "the web server to come back")
    tower.wait(lambda: tower.state_of(rid) == "loaded", BOUND_S, "the load")
    again = tower.select("analysis", "interactive", client="chaos")
    assert again.status_code == 200, again.text
    tower.invariants()
