"""The deployment, run here as plain processes: exactly what deploy/compose.yaml and deploy/systemd/
start (deploy/bin/setup, web, worker, beat, and one agent per GPU host), on two GPU hosts, each
with its own agent and its own simulated Ollama (profiles/two-hosts.yaml). The agents log in with
the agents' database role. Proves select -> load -> use on both hosts, the console styled with
DEBUG=0 (WhiteNoise), and /readyz green. Run it alone with `pytest -m deployment`.
"""
from __future__ import annotations

import re
import secrets
import time
from pathlib import Path

import httpx
import pytest
import yaml
from django.core.management import call_command

from .conftest import BIN, ROOT, database_url, free_port

pytestmark = [pytest.mark.deployment, pytest.mark.integration, pytest.mark.django_db(transaction=True)]

SCALE = 20  # the simulators' speed: qwen2.5-coder:7b's 5.7 s load takes 0.3 s
PROXY = {"X-Forwarded-Proto": "https"}  # what Caddy adds (deploy/Caddyfile); Django trusts it with BEHIND_TLS_PROXY=1


def wait_for(predicate, timeout: float, what: str, stack, step: float = 0.3):
    deadline = time.monotonic() + timeout
    while True:
        stack.check_running()
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n{stack.logs()}")
        time.sleep(step)


@pytest.fixture
def two_hosts_profile(tmp_path) -> tuple[Path, dict[str, int]]:
    """profiles/two-hosts.yaml with free ports for the two simulated Ollama servers."""
    data = yaml.safe_load((ROOT / "profiles" / "two-hosts.yaml").read_text())
    ports = {}
    for host in data["hosts"]:
        for ep in host["endpoints"]:
            ports[ep["name"]] = free_port()
            ep["base_url"] = f"http://127.0.0.1:{ports[ep['name']]}"
    path = tmp_path / "two-hosts.yaml"
    path.write_text(yaml.safe_dump(data))
    return path, ports


@pytest.fixture
def agent_role():
    role, password = f"towerops_agent_deploy_{secrets.token_hex(4)}", secrets.token_urlsafe(16)
    yield role, password
    call_command("create_agent_role", role, "--drop", verbosity=0)


# The role and the broker come before the stack: fixtures are torn down in reverse, so the processes
# stop before the role is dropped and the broker flushed.
def test_the_recipe_serves_select_load_use_on_two_hosts(agent_role, test_broker_url, two_hosts_profile, stack,
                                                          tmp_path):
    profile, _ = two_hosts_profile
    role, role_password = agent_role
    web_port = free_port()
    base = f"http://127.0.0.1:{web_port}"
    stack.env.update({
        # What deploy/env.example and compose.yaml give every central service.
        "DATABASE_URL": database_url(),
        "CELERY_BROKER_URL": test_broker_url,
        "SECRET_KEY": secrets.token_urlsafe(32),
        "DEBUG": "0",
        "BEHIND_TLS_PROXY": "1",
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
        "TOWEROPS_VAR_DIR": str(tmp_path / "var"),
        "TOWEROPS_STATE_DIR": str(tmp_path),
        "STATIC_ROOT": str(tmp_path / "static"),
        "GUNICORN_BIND": f"127.0.0.1:{web_port}",
        "WEB_CONCURRENCY": "2",
        "GUNICORN_THREADS": "2",
        "WORKER_CONCURRENCY": "1",
        "AGENT_CONCURRENCY": "1",
        "LOG_LEVEL": "INFO",
        # Faster beat, so the test need not wait: every second a state sync, a heartbeat every 2 s.
        "TOWEROPS_SYNC_INTERVAL_S": "1",
        "TOWEROPS_HEARTBEAT_INTERVAL_S": "2",
        "TOWEROPS_TELEMETRY_INTERVAL_S": "5",
    })

    # 1. setup: migrate, import the profile, grant the agents' role.
    stack.run([str(BIN / "setup")], TOWEROPS_PROFILE=str(profile), AGENT_DB_ROLE=role, AGENT_DB_PASSWORD=role_password)
    key = stack.run(["python", "manage.py", "create_api_key", "deploy-test", "--scopes", "select,read"]).splitlines()[-1]

    # 2. Each GPU host: its Ollama (simulated) and its agent, logged in as the agents' role.
    agent_db = database_url(role, role_password)
    for host in ("alpha", "beta"):
        stack.start(f"ollama-{host}", ["python", "manage.py", "simulate_tower", "--profile", str(profile),
                                       "--host", host, "--time-scale", str(SCALE)])
        stack.start(f"agent-{host}", [str(BIN / "agent")], TOWEROPS_AGENT_QUEUE=f"host.{host}", DATABASE_URL=agent_db)
    # 3. The central services.
    stack.start("web", [str(BIN / "web")])
    stack.start("worker", [str(BIN / "worker")])
    stack.start("beat", [str(BIN / "beat")])

    with httpx.Client(base_url=base, headers=PROXY, timeout=10) as web:
        def ready():
            try:
                return web.get("/readyz").status_code == 200
            except httpx.TransportError:
                return False

        wait_for(ready, 120, "/readyz to turn green", stack)
        api = {**PROXY, "Authorization": f"Bearer {key}"}

        def state() -> dict:
            return web.get("/api/v1/state", headers=api).raise_for_status().json()

        def select(task_type: str, urgency: str) -> dict:
            r = web.post("/api/v1/select", json={"task_type": task_type, "urgency": urgency, "client": "deploy-test"},
                         headers=api)
            assert r.status_code == 200, r.text
            return r.json()

        # select -> load (by that host's agent) -> use (the caller talks to that endpoint's Ollama).
        for task_type, model, endpoint, host in (("code_generation", "qwen2.5-coder:7b", "alpha-ollama", "alpha"),
                                                 ("chat", "llama3.2:3b", "beta-ollama", "beta")):
            first = select(task_type, "batch")
            assert (first["action"], first["model"], first["endpoint"]) == ("load", model, endpoint), first
            wait_for(lambda: any((r["model"], r["endpoint"], r["state"]) == (model, endpoint, "loaded")
                                 for r in state()["residents"]), 60, f"{model} loaded on {endpoint}", stack)
            agent_log = next(p for p in stack.processes if p.name == f"agent-{host}").log()
            assert f"loaded {model} on {endpoint}" in agent_log
            url = next(e["base_url"] for e in state()["endpoints"] if e["name"] == endpoint)
            t0 = time.monotonic()
            answer = httpx.post(f"{url}/api/generate", json={"model": model, "prompt": "Say hello.", "stream": False},
                                timeout=30).raise_for_status().json()
            response_ms = int((time.monotonic() - t0) * 1000)
            assert answer["done"] is True and answer["response"].strip() and answer["eval_count"] > 0
            outcome = web.post(f"/api/v1/decisions/{first['decision_id']}/outcome",
                               json={"response_ms": response_ms, "success": True}, headers=api)
            assert outcome.status_code == 200, outcome.text
            again = select(task_type, "interactive")
            assert (again["action"], again["model"], again["endpoint"]) == ("use_loaded", model, endpoint), again

        # Each load ran on its own host's agent only.
        logs = {p.name: p.log() for p in stack.processes}
        assert "on beta-ollama" not in logs["agent-alpha"] and "on alpha-ollama" not in logs["agent-beta"]

        # The console, styled, with DEBUG=0: WhiteNoise serves what collectstatic gathered.
        login = web.get("/login/")
        assert login.status_code == 200 and "/static/css/console.css" in login.text
        css = web.get("/static/css/console.css")
        assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
        assert css.content == (ROOT / "static" / "css" / "console.css").read_bytes()
        assert web.get("/static/vendor/htmx-2.0.min.js").status_code == 200
        assert web.get("/static/css/no-such-file.css").status_code == 404

        # Health: alive, and ready with every check green.
        assert web.get("/healthz").json() == {"status": "ok"}
        r = web.get("/readyz")
        assert r.status_code == 200, r.text
        assert {name: c["status"] for name, c in r.json()["checks"].items()} == dict.fromkeys(
            ["database", "broker", "endpoints", "loads", "beat"], "ok")
        assert r.json()["checks"]["endpoints"]["detail"].startswith("2 of 2 endpoints up")

    # The agents did all their work under the agents' role: state syncs, loads, GPU telemetry
    # (every 5 s here; this machine has no GPU, so it reads none but runs the task's queries).
    for host in ("alpha", "beta"):
        agent = next(p for p in stack.processes if p.name == f"agent-{host}")
        wait_for(lambda: "record_gpu_snapshots" in agent.log(), 20, f"telemetry on {host}", stack)
        time.sleep(1)  # its result line
        log = agent.log()
        assert "permission denied" not in log
        for task in ("sync_endpoint", "execute_load", "record_gpu_snapshots"):
            assert re.search(rf"tasks\.{task}\[[^]]+\] succeeded", log), (host, task)

    # Every line of every service carries time, level, process and logger.
    worker_line = next(line for line in logs["worker"].splitlines() if "record_heartbeat" in line)
    assert " INFO " in worker_line and "[" in worker_line and "celery." in worker_line
