"""The deploy recipe's files, checked by their own tools: `docker compose config` (or Debian's
docker-compose), `systemd-analyze verify`, `caddy validate`. A test skips only when its tool is
missing, and CI (.ci/run) installs them and sets TOWEROPS_REQUIRE_DEPLOY_TOOLS=1 so none skips.
"""
from __future__ import annotations

import configparser
import json
import os
import shutil
import subprocess

import pytest
import yaml

from .conftest import ROOT, tool

DEPLOY = ROOT / "deploy"
UNITS = sorted((DEPLOY / "systemd").glob("*.service"))
APP_SERVICES = {"setup", "web", "worker", "beat", "agent-tower"}


def compose_command() -> list[str]:
    """The Compose v2 plugin when the Docker client has it, else Debian's docker-compose (v1.29, same file format)."""
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return [docker, "compose"]
    legacy = tool("docker-compose")
    if legacy is None:
        pytest.skip("neither `docker compose` nor docker-compose is installed")
    return [legacy]


def compose_config(path, env_file, extra_env: dict | None = None) -> subprocess.CompletedProcess:
    # Compose prefers the shell's variables to the env file's: drop every one the env file could set.
    names = {line.split("=", 1)[0] for line in (DEPLOY / "env.example").read_text().splitlines() if "=" in line}
    env = {k: v for k, v in os.environ.items() if k not in names and not k.startswith(("TOWEROPS_", "AGENT_"))}
    return subprocess.run([*compose_command(), "--file", str(path), "--env-file", str(env_file), "config"],
                          capture_output=True, text=True, env={**env, **(extra_env or {})}, timeout=60)


def test_the_compose_file_is_valid_and_runs_the_recipe_scripts():
    run = compose_config(DEPLOY / "compose.yaml", DEPLOY / "env.example")
    assert run.returncode == 0, run.stderr
    services = yaml.safe_load(run.stdout)["services"]
    assert set(services) == {"postgres", "redis", "caddy", *APP_SERVICES}
    for name in APP_SERVICES:
        script = services[name]["command"]
        assert len(script) == 1 and (ROOT / script[0]).is_file() and script[0].startswith("deploy/bin/"), (name, script)
    # The healthchecks use the probes: web is healthy once /readyz is green; the workers answer a ping.
    assert "/readyz" in " ".join(services["web"]["healthcheck"]["test"])
    assert "inspect ping" in " ".join(services["worker"]["healthcheck"]["test"])
    # The agent uses the agents' role, not the owner's credentials; web gets no published port (Caddy fronts it).
    assert services["agent-tower"]["environment"]["DATABASE_URL"].startswith("postgres://towerops_agent:")
    assert "ports" not in services["web"]


def test_the_compose_file_refuses_to_start_without_its_secrets(tmp_path):
    env_file = tmp_path / ".env"
    env_file.write_text("".join(line + "\n" for line in (DEPLOY / "env.example").read_text().splitlines()
                                if not line.startswith("SECRET_KEY=")))
    run = compose_config(DEPLOY / "compose.yaml", env_file)
    assert run.returncode != 0
    assert "set SECRET_KEY in deploy/.env" in run.stderr


def test_the_gpu_host_compose_file_is_valid():
    run = compose_config(DEPLOY / "compose.agent.yaml", DEPLOY / "env.example",
                         {"TOWEROPS_AGENT_QUEUE": "host.beta", "CENTRAL_HOST": "192.0.2.10"})
    assert run.returncode == 0, run.stderr
    agent = yaml.safe_load(run.stdout)["services"]["agent"]
    assert agent["command"] == ["deploy/bin/agent"]
    assert agent["environment"]["DATABASE_URL"].startswith("postgres://towerops_agent:")


def test_the_systemd_units_verify_cleanly(tmp_path):
    analyze = tool("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    # As installed at /opt/towerops, with this checkout standing in for it (verify checks that the
    # ExecStart programs exist); the agent template as the instance of the seed's host.
    names = []
    for unit in UNITS:
        name = unit.name.replace("@.service", "@tower.service")
        (tmp_path / name).write_text(unit.read_text().replace("/opt/towerops", str(ROOT)))
        names.append(name)
    run = subprocess.run([analyze, "verify", *names], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    # verify exits 0 on unknown keys and bad values too, after printing them: no output is the pass.
    assert (run.returncode, run.stdout + run.stderr) == (0, "")


def test_systemd_and_compose_start_the_same_scripts():
    services = yaml.safe_load((DEPLOY / "compose.yaml").read_text())["services"]
    compose_scripts = {services[name]["command"][0] for name in APP_SERVICES}
    unit_scripts = set()
    for unit in UNITS:
        parser = configparser.ConfigParser(strict=False, interpolation=None)
        parser.read_string(unit.read_text())
        unit_scripts.add(parser["Service"]["ExecStart"].removeprefix("/opt/towerops/"))
    assert unit_scripts == compose_scripts == {f"deploy/bin/{s}" for s in ("setup", "web", "worker", "beat", "agent")}


def test_the_caddyfile_is_valid(tmp_path):
    caddy = tool("caddy")
    if caddy is None:
        pytest.skip("caddy is not installed")
    env = {**os.environ, "TOWEROPS_HOSTNAME": "towerops.example.org", "HOME": str(tmp_path)}
    run = subprocess.run([caddy, "validate", "--config", str(DEPLOY / "Caddyfile"), "--adapter", "caddyfile"],
                         capture_output=True, text=True, env=env, timeout=60)
    assert run.returncode == 0, run.stderr
    assert "Valid configuration" in run.stdout + run.stderr
    adapted = subprocess.run([caddy, "adapt", "--config", str(DEPLOY / "Caddyfile"), "--adapter", "caddyfile"],
                             capture_output=True, text=True, env=env, timeout=60)
    handlers = [h for route in json.loads(adapted.stdout)["apps"]["http"]["servers"]["srv0"]["routes"]
                for sub in route["handle"] for r in sub.get("routes", []) for h in r["handle"]]
    proxy = next(h for h in handlers if h["handler"] == "reverse_proxy")
    assert proxy["health_checks"]["active"]["uri"] == "/healthz"
