"""The agents' database role: denied API keys, users and catalog edits; allowed every agent task.

The role is created in the test database by the management command. The denials are checked
over a real login with the role's credentials; the agent tasks run in this process under
``SET ROLE`` (the session then has exactly the role's privileges) against the simulated Tower.
"""
import os
from pathlib import Path

import psycopg
import pytest
import yaml
from django.core.management import call_command
from django.db import connection, transaction
from psycopg import errors as pg_errors

from models_registry import models as m
from models_registry.catalog import importer
from models_registry.catalog.profile import parse_profile
from models_registry.fakes.ollama_server import SimulatedTower
from models_registry.runtime import collectors, reservations, tasks
from models_registry.runtime.ollama import OllamaClient

TOWER_PROFILE = Path(__file__).resolve().parents[2] / "profiles" / "tower.yaml"
ROLE = f"towerops_agent_test_{os.getpid()}"


@pytest.fixture
def agent_role(db):
    call_command("create_agent_role", ROLE, verbosity=0)  # rolled back with the test's transaction
    return ROLE


class as_agent:
    """Run the block with the agent role's privileges on Django's connection."""

    def __enter__(self):
        with connection.cursor() as cur:
            cur.execute(f'SET ROLE "{ROLE}"')

    def __exit__(self, *exc):
        with connection.cursor() as cur:
            cur.execute("RESET ROLE")


def denied(statement: str) -> bool:
    """Whether the agent role gets 'permission denied' for the statement."""
    try:
        with as_agent(), transaction.atomic(), connection.cursor() as cur:
            cur.execute(statement)
    except Exception as exc:  # Django wraps psycopg's InsufficientPrivilege in ProgrammingError
        if isinstance(exc.__cause__, pg_errors.InsufficientPrivilege):
            return True
        raise
    return False


@pytest.mark.django_db(transaction=True)
def test_an_agent_logging_in_with_its_own_role_cannot_read_api_keys():
    s = connection.settings_dict
    call_command("create_agent_role", ROLE, "--password-env", "PATH", verbosity=0)  # any non-empty value
    try:
        with psycopg.connect(host=s["HOST"] or None, port=s["PORT"] or None, dbname=s["NAME"], user=ROLE,
                             password=os.environ["PATH"], autocommit=True) as conn:
            assert conn.execute("SELECT current_user").fetchone() == (ROLE,)
            assert conn.execute("SELECT count(*) FROM models_registry_host").fetchone() == (0,)
            with pytest.raises(pg_errors.InsufficientPrivilege, match="permission denied for table models_registry_apikey"):
                conn.execute("SELECT hashed_key FROM models_registry_apikey")
            with pytest.raises(pg_errors.InsufficientPrivilege):
                conn.execute("SELECT password FROM auth_user")
    finally:
        call_command("create_agent_role", ROLE, "--drop", verbosity=0)
    with connection.cursor() as cur:
        cur.execute("SELECT count(*) FROM pg_roles WHERE rolname = %s", [ROLE])
        assert cur.fetchone() == (0,)


def test_the_role_has_no_keys_no_users_no_sessions_and_no_catalog_edits(agent_role, tower):
    assert denied("SELECT * FROM models_registry_apikey")
    assert denied("INSERT INTO models_registry_apikey (name, prefix, hashed_key, scopes, created_at) "
                  "VALUES ('x', 'x', 'x', '{admin}', now())")
    assert denied("SELECT * FROM auth_user")
    assert denied("SELECT * FROM django_session")
    assert denied("UPDATE models_registry_llmmodel SET enabled = false")
    assert denied("UPDATE models_registry_qualityscore SET score = 1")
    assert denied("DELETE FROM models_registry_residency")
    assert denied("UPDATE models_registry_endpoint SET base_url = 'http://evil:11434'")
    assert denied("SELECT * FROM models_registry_loadevent")  # appends only; reads back nothing but ids
    # ...and what it may do.
    assert not denied("UPDATE models_registry_endpoint SET is_up = true")
    assert not denied("SELECT tag FROM models_registry_llmmodel")


def test_every_agent_task_runs_under_the_role(agent_role, monkeypatch):
    data = yaml.safe_load(TOWER_PROFILE.read_text())
    for host in data["hosts"]:
        for ep in host["endpoints"]:
            ep["base_url"] = "http://127.0.0.1:0"  # free ports
    profile = parse_profile(data)
    with SimulatedTower(profile, time_scale=50) as sim:
        importer.import_profile(sim.profile_with_actual_urls())
        amd = m.Endpoint.objects.get(name="tower-amd")

        with as_agent():
            assert tasks.sync_endpoint(amd.pk) == "tower-amd up: 0 running"

        rid = reservations.request_load("tinyllama", trigger="admin", endpoint="tower-amd")["residency_id"]
        with as_agent():
            assert tasks.execute_load(rid).startswith("loaded tinyllama on tower-amd")
        assert m.LoadEvent.objects.filter(residency_id=rid, kind="load").exists()
        assert m.LoadTimeEstimate.objects.filter(model__tag="tinyllama", endpoint=amd).exists()

        reservations.request_unload("tinyllama", trigger="admin", endpoint="tower-amd")
        with as_agent():
            assert tasks.execute_unload(rid, "admin") == "unloaded tinyllama from tower-amd"
        assert m.Residency.objects.get(pk=rid).state == "unloaded"

        # A model someone else loaded is adopted by the state sync.
        OllamaClient(sim.url("tower-amd")).load("llama3.2:3b")
        with as_agent():
            assert tasks.sync_endpoint(amd.pk) == "tower-amd up: 1 running"
        adopted = m.Residency.objects.get(model__tag="llama3.2:3b", endpoint=amd)
        assert (adopted.state, adopted.trigger, adopted.placements.count()) == ("loaded", "external", 1)

        # GPU telemetry: the readings are faked at the hardware boundary, the rows are real.
        reading = collectors.GpuReading(index=0, uuid="", vendor="amd", name="AMD Radeon RX 9070 XT", total_mib=16384,
                                        used_mib=2600, free_mib=13784, util_pct=3.0, temperature_c=40.0, power_w=20.0)
        monkeypatch.setattr(collectors, "read_all", lambda: [reading])
        with as_agent():
            assert tasks.record_gpu_snapshots(amd.host_id) == 1
        assert m.GpuSnapshot.objects.get(gpu__endpoints=amd).used_mib == 2600
