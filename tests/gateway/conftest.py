"""The gateway with real components: the simulated Tower (real HTTP, in this process), the test
database committed (transaction=True: the gateway's threads use their own connections), the
gateway served by uvicorn on a free port in a thread, and the real client packages against it.

* ``sim``: the seed's Tower at ``SCALE`` x speed on free ports, imported into the database.
* ``gateway``: a running gateway (``.url``, ``.app``); admission in this process.
* ``shared_gateway``: the same with admission in Redis (the test Redis database, a fresh prefix).
* ``key``: an API key with the ``infer`` scope.
* ``put_loaded(sim, tag, endpoint)``: the model loaded in the simulator with the endpoint's
  num_ctx and keep_alive, and its Residency recorded as loaded (what a finished load leaves).
"""
from __future__ import annotations

import asyncio
import datetime as dt
import socket
import threading
import time
import uuid
from pathlib import Path

import pytest
import yaml
from integration.conftest import agent_env, agents, broker_url, start_worker, wait_for  # noqa: F401 - fixtures for these tests

from models_registry import models as m
from models_registry.api.auth import create_key
from models_registry.catalog import importer
from models_registry.catalog.profile import parse_profile
from models_registry.fakes.ollama_server import SimulatedTower
from models_registry.gateway.admission import LocalAdmission, RedisAdmission
from models_registry.gateway.app import Gateway
from models_registry.runtime.ollama import OllamaClient
from tests.helpers import redis_test_url

ROOT = Path(__file__).resolve().parents[2]
SCALE = 50


def tower_profile(**endpoint_overrides):
    data = yaml.safe_load((ROOT / "profiles" / "tower.yaml").read_text())
    for host in data["hosts"]:
        for ep in host["endpoints"]:
            ep["base_url"] = "http://127.0.0.1:0"
            ep.update(endpoint_overrides)
    return parse_profile(data)


@pytest.fixture
def sim_options() -> dict:
    """Extra SimulatedTower arguments (a test module overrides this fixture)."""
    return {}


@pytest.fixture
def sim(transactional_db, sim_options):
    tower = SimulatedTower(tower_profile(), time_scale=SCALE, **sim_options).start()
    importer.import_profile(tower.profile_with_actual_urls())
    try:
        yield tower
    finally:
        tower.shutdown()


def put_loaded(tower: SimulatedTower, tag: str, endpoint: str) -> m.Residency:
    ep = m.Endpoint.objects.get(name=endpoint)
    with OllamaClient(tower.url(endpoint)) as client:
        client.load(tag, keep_alive=ep.keep_alive, num_ctx=ep.num_ctx)
    model = m.LlmModel.objects.get(tag=tag)
    now = dt.datetime.now(dt.timezone.utc)
    r = m.Residency.objects.create(model=model, endpoint=ep, state="loaded", trigger="admin", vram_mib=model.vram_mib,
                                   requested_at=now, loaded_at=now, ready_at=now)
    m.ResidencyGpu.objects.create(residency=r, gpu=ep.gpus.first(), vram_mib=model.vram_mib)
    return r


class Running:
    def __init__(self, app: Gateway, url: str):
        self.app, self.url = app, url


def _free_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


def serve(app: Gateway):
    """Run ``app`` under uvicorn in a thread; -> (Running, stop)."""
    import uvicorn

    sock = _free_socket()
    config = uvicorn.Config(app, log_level="warning", lifespan="on", loop="asyncio", http="h11",
                            timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise AssertionError("the gateway did not start")
        time.sleep(0.01)
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"

    def stop():
        server.should_exit = True
        thread.join(15)
        sock.close()

    return Running(app, url), stop


@pytest.fixture
def gateway(sim):
    running, stop = serve(Gateway(admission=LocalAdmission()))
    try:
        yield running
    finally:
        stop()


@pytest.fixture
def redis_prefix():
    return f"towerops:test:{uuid.uuid4().hex[:8]}:"


@pytest.fixture
def shared_gateway(sim, redis_prefix):
    running, stop = serve(Gateway(admission=RedisAdmission(redis_test_url(), redis_prefix)))
    try:
        yield running
    finally:
        stop()


@pytest.fixture
def key(transactional_db) -> str:
    return create_key("gateway tests", ["infer"])[1]


def run(coro):
    return asyncio.run(coro)


def recorded(n: int = 1, timeout: float = 10.0) -> list[m.SelectionDecision]:
    """The newest ``n`` gateway decisions, once each has its outcome (recorded in the background)."""
    def ready():
        rows = list(m.SelectionDecision.objects.filter(source="gateway").select_related("model", "endpoint")
                    .order_by("-id")[:n])
        if len(rows) < n or m.DecisionOutcome.objects.filter(decision__in=rows).count() < n:
            return None
        return rows

    return wait_for(ready, timeout, f"{n} gateway decision(s) with outcomes")
