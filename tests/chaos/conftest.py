"""The chaos suite's tower: every process of the deployment, real, on a PostgreSQL and a Redis of its own.

A private PostgreSQL cluster (pgserver, under the test's tmp dir) and a private redis-server on a
free port, so a test may restart or stop them without touching the shared servers; the Tower's two
Ollama endpoints each simulated by its own process (so one can be SIGSTOPped alone); the host's
agent, the central worker, beat and the web server started from deploy/bin/ as production starts
them. One tower per module (starting it costs ~20 s); each test leaves it converged for the next.

`Tower.invariants()` is what every test checks after its fault: no residency stuck in a
transient state past its bound, TowerOps' books equal to what each simulated Ollama holds, every
answered selection recorded once, no model loaded twice.
"""
from __future__ import annotations

import copy
import secrets
import shutil
import signal
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

import httpx
import psycopg
import pytest
import yaml

from tests.deploy.conftest import BIN, ROOT, Stack, free_port

SCALE = 4  # the simulators' speed: qwen2.5-coder:7b's 13.5 s load takes 3.4 s
LOAD_TIMEOUT_S, REQUESTED_TIMEOUT_S = 20, 8
SWEEP_PERIOD_S = 5.0  # CELERY_BEAT_SCHEDULE["stale-loads"] and ["relay-outbox"]
SLACK_S = 5.0  # a task's own latency on a busy two-core machine
# docs/failure-behaviour.md: a transient state ends within its bound plus the sweep's period.
BOUND_S = LOAD_TIMEOUT_S + 3 + SWEEP_PERIOD_S + SLACK_S
TRANSIENT = ("requested", "loading", "unloading")
ENDPOINTS = ("tower-amd", "tower-nvidia")


class Tower:
    def __init__(self, stack: Stack, tmp: Path):
        self.stack, self.tmp = stack, tmp
        self.answers: list[dict] = []  # every 200 answer of /api/v1/select
        self.ports = {ep: free_port() for ep in ENDPOINTS}
        self.web_port, self.redis_port = free_port(), free_port()
        self.key = ""
        self.admin_key = ""

    # ------------------------------------------------------------------ the private servers

    def start_postgres(self) -> None:
        import pgserver

        # Not under pytest's tmp dir: as root, pgserver runs PostgreSQL as its own user, who must be
        # able to reach the data directory (pytest makes its root 0700).
        self.pg_dir = Path(tempfile.mkdtemp(prefix="towerops-chaos-pg-"))
        self.pg_dir.chmod(0o755)
        self.pg = pgserver.get_server(self.pg_dir / "pgdata", cleanup_mode="stop")
        info = self.pg.get_postmaster_info()
        self.db_url = f"postgres://postgres@{quote(str(info.socket_dir), safe='')}:{info.port}/postgres"
        self.pg_conninfo = {"host": str(info.socket_dir), "port": info.port, "user": "postgres", "dbname": "postgres"}

    def restart_postgres(self) -> None:
        from pgserver._commands import pg_ctl

        pg_ctl(["-w", "restart", "-m", "fast"], pgdata=self.pg.pgdata, user=self.pg.system_user, timeout=60)

    def start_redis(self) -> None:
        self.stack.start("redis", [shutil.which("redis-server"), "--port", str(self.redis_port), "--bind", "127.0.0.1",
                                   "--save", "", "--appendonly", "no"])
        deadline = time.monotonic() + 20
        while True:
            try:
                import redis

                redis.Redis(port=self.redis_port, socket_connect_timeout=1).ping()
                return
            except Exception:  # noqa: BLE001 - not up yet
                assert time.monotonic() < deadline, "the private Redis did not start"
                time.sleep(0.1)

    def stop_redis(self) -> None:
        p = self.process("redis")
        p.proc.send_signal(signal.SIGKILL)
        p.proc.wait(10)
        self.stack.processes.remove(p)

    # ------------------------------------------------------------------ the deployment's processes

    def process(self, name: str):
        return next(p for p in self.stack.processes if p.name == name)

    def start_service(self, name: str) -> None:
        commands = {
            "agent": ([str(BIN / "agent")], {"TOWEROPS_AGENT_QUEUE": "host.tower"}),
            "worker": ([str(BIN / "worker")], {}),
            "beat": ([str(BIN / "beat")], {}),
            "web": ([str(BIN / "web")], {}),
        }
        if name.startswith("ollama-"):
            ep = name.removeprefix("ollama-")
            cmd = ["python", "manage.py", "simulate_tower", "--profile", str(self.tmp / f"{ep}.yaml"),
                   "--time-scale", str(SCALE), "--keep-alive=-1m", "-v"]
            self.stack.start(name, cmd)
            return
        cmd, env = commands[name]
        self.stack.start(name, cmd, **env)

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        p = self.process(name)
        p.signal(sig)
        if sig == signal.SIGKILL:
            p.proc.wait(10)
            self.stack.processes.remove(p)

    def restart(self, name: str) -> None:
        self.kill(name)
        self.start_service(name)

    def setup(self) -> None:
        profile = yaml.safe_load((ROOT / "profiles" / "tower.yaml").read_text())
        for ep in profile["hosts"][0]["endpoints"]:
            ep["base_url"] = f"http://127.0.0.1:{self.ports[ep['name']]}"
        profile["preload_windows"] = []  # nothing loads by itself: every load is a test's
        (self.tmp / "tower.yaml").write_text(yaml.safe_dump(profile))
        for ep in ENDPOINTS:  # one simulator process per endpoint: each can be stopped alone
            one = copy.deepcopy(profile)
            host = one["hosts"][0]
            host["endpoints"] = [e for e in host["endpoints"] if e["name"] == ep]
            host["gpus"] = [g for g in host["gpus"] if g["index"] in host["endpoints"][0]["gpus"]]
            (self.tmp / f"{ep}.yaml").write_text(yaml.safe_dump(one))

        self.stack.env.update({
            "DATABASE_URL": self.db_url,
            "CELERY_BROKER_URL": f"redis://127.0.0.1:{self.redis_port}/0",
            "SECRET_KEY": secrets.token_urlsafe(32),
            "DEBUG": "1",
            "ALLOWED_HOSTS": "127.0.0.1,localhost",
            "TOWEROPS_STATE_DIR": str(self.tmp),
            "STATIC_ROOT": str(self.tmp / "static"),
            "GUNICORN_BIND": f"127.0.0.1:{self.web_port}",
            "WEB_CONCURRENCY": "2",
            "GUNICORN_THREADS": "4",
            "WORKER_CONCURRENCY": "2",
            "LOG_LEVEL": "INFO",
            "TOWEROPS_LOAD_TIMEOUT_S": str(LOAD_TIMEOUT_S),
            "TOWEROPS_REQUESTED_TIMEOUT_S": str(REQUESTED_TIMEOUT_S),
            "TOWEROPS_SYNC_INTERVAL_S": "1",
            "TOWEROPS_TELEMETRY_INTERVAL_S": "60",
        })
        self.stack.run([str(BIN / "setup")], TOWEROPS_PROFILE=str(self.tmp / "tower.yaml"))
        self.key = self.stack.run(["python", "manage.py", "create_api_key", "chaos", "--scopes",
                                   "select,read,admin"]).splitlines()[-1]
        for name in ("ollama-tower-amd", "ollama-tower-nvidia", "agent", "worker", "beat", "web"):
            self.start_service(name)
        self.wait(self.web_up, 90, "the web server")

    # ------------------------------------------------------------------ talking to it

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.web_port}"

    def web_up(self) -> bool:
        try:
            return httpx.get(self.base + "/healthz", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    def select(self, task_type: str, urgency: str, **extra) -> httpx.Response:
        r = httpx.post(self.base + "/api/v1/select", json={"task_type": task_type, "urgency": urgency, **extra},
                       headers={"Authorization": f"Bearer {self.key}"}, timeout=30)
        if r.status_code == 200:
            self.answers.append(r.json())
        else:  # every other answer is a clean JSON error, never a 500
            assert r.status_code in (409, 429, 503) and "detail" in r.json(), (r.status_code, r.text)
        return r

    def preload(self, tag: str, endpoint: str) -> dict:
        r = httpx.post(f"{self.base}/api/v1/models/{tag}/preload", json={"endpoint": endpoint},
                       headers={"Authorization": f"Bearer {self.key}"}, timeout=30)
        assert r.status_code == 200, r.text
        return r.json()

    def sql(self, query: str, *params) -> list[tuple]:
        with psycopg.connect(**self.pg_conninfo, connect_timeout=5) as conn:
            return conn.execute(query, params).fetchall()

    def state_of(self, residency_id: int) -> str:
        return self.sql("SELECT state FROM models_registry_residency WHERE id = %s", residency_id)[0][0]

    def ollama_holds(self, endpoint: str) -> set[str]:
        r = httpx.get(f"http://127.0.0.1:{self.ports[endpoint]}/api/ps", timeout=5).raise_for_status()
        return {m["name"] for m in r.json()["models"]}

    def booked(self, endpoint: str) -> set[str]:
        from models_registry.policy.ollama_rules import normalize_model_name

        rows = self.sql("SELECT m.tag FROM models_registry_residency r JOIN models_registry_llmmodel m "
                        "ON m.id = r.model_id JOIN models_registry_endpoint e ON e.id = r.endpoint_id "
                        "WHERE e.name = %s AND r.state = 'loaded'", endpoint)
        return {normalize_model_name(t) for (t,) in rows}

    def wait(self, predicate, timeout: float, what: str, step: float = 0.3):
        deadline = time.monotonic() + timeout
        while True:
            self.stack.check_running()
            try:
                value = predicate()
            except (httpx.TransportError, psycopg.OperationalError):
                value = None
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n{self.stack.logs()}")
            time.sleep(step)

    # ------------------------------------------------------------------ what every fault must leave

    def invariants(self) -> None:
        """After a fault: converged within the bound, books = Ollama, N answers = N decisions, no double load."""
        stuck_past_bound = self.sql(
            "SELECT id, state, requested_at FROM models_registry_residency WHERE state = ANY(%s) "
            "AND requested_at < now() - make_interval(secs => %s)", list(TRANSIENT), BOUND_S + SLACK_S)
        assert stuck_past_bound == [], stuck_past_bound
        self.wait(lambda: not self.sql("SELECT 1 FROM models_registry_residency WHERE state = ANY(%s)", list(TRANSIENT)),
                  BOUND_S, "every residency to reach a stable state")
        for ep in ENDPOINTS:  # the state sync (every second) makes the books follow /api/ps
            self.wait(lambda ep=ep: self.booked(ep) == self.ollama_holds(ep), 15,
                      f"{ep}'s books to equal what its Ollama holds: {self.booked(ep)} vs {self.ollama_holds(ep)}")
        ids = [a["decision_id"] for a in self.answers]
        assert len(ids) == len(set(ids))
        recorded = {i for (i,) in self.sql("SELECT id FROM models_registry_selectiondecision WHERE id = ANY(%s)", ids)}
        assert recorded == set(ids), f"answered but not recorded: {set(ids) - recorded}"
        twice = self.sql("SELECT residency_id, count(*) FROM models_registry_loadevent WHERE kind = 'load' "
                         "GROUP BY residency_id HAVING count(*) > 1")
        assert twice == [], f"residencies loaded twice: {twice}"
        doubles = self.sql("SELECT model_id, endpoint_id, count(*) FROM models_registry_residency "
                           "WHERE state = 'loaded' GROUP BY 1, 2 HAVING count(*) > 1")
        assert doubles == [], doubles

    def unload_all(self) -> None:
        """Back to an empty tower between tests (through the admin API, as an operator would)."""
        rows = self.sql("SELECT m.tag, e.name FROM models_registry_residency r JOIN models_registry_llmmodel m "
                        "ON m.id = r.model_id JOIN models_registry_endpoint e ON e.id = r.endpoint_id "
                        "WHERE r.state = 'loaded'")
        for tag, ep in rows:
            httpx.post(f"{self.base}/api/v1/models/{tag}/unload", json={"endpoint": ep},
                       headers={"Authorization": f"Bearer {self.key}"}, timeout=30).raise_for_status()
        try:
            self.wait(lambda: not any(self.ollama_holds(ep) for ep in ENDPOINTS)
                      and not self.sql("SELECT 1 FROM models_registry_residency WHERE state = ANY(%s)", list(TRANSIENT)),
                      BOUND_S, "an empty tower")
        except AssertionError as exc:
            recent = self.sql("SELECT m.tag, e.name, r.state, r.trigger, r.requested_at, r.ended_at FROM "
                              "models_registry_residency r JOIN models_registry_llmmodel m ON m.id = r.model_id "
                              "JOIN models_registry_endpoint e ON e.id = r.endpoint_id ORDER BY r.id DESC LIMIT 8")
            holds = {ep: self.ollama_holds(ep) for ep in ENDPOINTS}
            raise AssertionError(f"unloaded {rows}; Ollama holds {holds}; newest residencies {recent}\n{exc}") from None


@pytest.fixture(scope="module")
def tower(tmp_path_factory):
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (the chaos suite starts a private one)")
    tmp = tmp_path_factory.mktemp("chaos")
    (tmp / "logs").mkdir()
    import os
    import sys

    env = {
        **{k: v for k, v in os.environ.items() if k not in ("CELERY_TASK_ALWAYS_EAGER", "DATABASE_URL",
                                                                "CELERY_BROKER_URL")},
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONUNBUFFERED": "1",
        "DJANGO_SETTINGS_MODULE": "towerops.settings",
        # No moving up: its background loads (a minute after the requests that made a task type busy)
        # would land between one test's end and the next one's empty tower, at random. Its own tests
        # are in tests/runtime and tests/policy; here every load is one a test asked for.
        "TOWEROPS_POLICY": '{"upgrade_min_gain": 1}',
    }
    stack = Stack(env, tmp / "logs")
    t = Tower(stack, tmp)
    try:
        t.start_postgres()
        t.start_redis()
        t.setup()
        yield t
    finally:
        survivors = stack.stop()
        if getattr(t, "pg", None) is not None:
            t.pg.cleanup()
        if getattr(t, "pg_dir", None) is not None:
            shutil.rmtree(t.pg_dir, ignore_errors=True)
        assert not survivors, f"still running after SIGKILL: {survivors}"


@pytest.fixture
def fresh(tower):
    """Each test starts from an empty, converged tower and leaves its invariants checked."""
    tower.answers.clear()
    tower.unload_all()
    yield tower
