"""Admission by urgency: at most the slots in flight per model and endpoint, the rest waiting in
the gateway in urgency order; across gateway processes too (shared in Redis)."""
from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading

import httpx
import pytest
from integration.conftest import _test_database_url

from models_registry import models as m
from models_registry.fakes.ollama_server import SimulatedTower
from models_registry.gateway.admission import LocalAdmission, RedisAdmission, group_of

from .conftest import ROOT, put_loaded, recorded, redis_test_url, wait_for

pytestmark = [pytest.mark.integration]


# --------------------------------------------------------------------------- the queue itself


async def _order_of_admission(admission) -> list[str]:
    await admission.start()
    try:
        group = group_of("m", "ep")
        holder = await admission.acquire(group, "interactive", 1, 1.0)
        order: list[str] = []

        async def ask(urgency: str):
            lease = await admission.acquire(group, urgency, 1, 1.0)
            order.append(urgency)
            await asyncio.sleep(0.01)
            await admission.release(lease)

        tasks = []
        for urgency in ("batch", "background", "critical", "interactive", "critical"):
            tasks.append(asyncio.create_task(ask(urgency)))
            await asyncio.sleep(0.02)  # arrival order: batch first
        live = await admission.snapshot("critical")
        assert live[("m", "ep")].in_flight == 1 and live[("m", "ep")].waiting == 5
        # A critical request only waits for the one in flight and the critical ones ahead of it.
        assert 2.0 < live[("m", "ep")].busy_s <= 3.0  # what is left of the 1 s in flight, then 2 x 1 s
        queues = await admission.queues()
        assert queues["ep"]["waiting"] == {"critical": 2, "interactive": 1, "background": 1, "batch": 1}
        await admission.release(holder)
        await asyncio.gather(*tasks)
        return order
    finally:
        await admission.close()


def test_local_admission_serves_critical_first_then_in_arrival_order():
    order = asyncio.run(_order_of_admission(LocalAdmission()))
    assert order == ["critical", "critical", "interactive", "background", "batch"]


def test_redis_admission_serves_critical_first_then_in_arrival_order(redis_prefix):
    order = asyncio.run(_order_of_admission(RedisAdmission(redis_test_url(), redis_prefix)))
    assert order == ["critical", "critical", "interactive", "background", "batch"]


def test_a_waiter_that_leaves_gives_up_its_place(redis_prefix):
    async def scenario(admission):
        await admission.start()
        try:
            holder = await admission.acquire("g|e", "batch", 1, 1.0)
            leaving = asyncio.create_task(admission.acquire("g|e", "critical", 1, 1.0))
            staying = asyncio.create_task(admission.acquire("g|e", "batch", 1, 1.0))
            await asyncio.sleep(0.1)
            leaving.cancel()  # the client disconnected
            await asyncio.gather(leaving, return_exceptions=True)
            await admission.release(holder)
            lease = await asyncio.wait_for(staying, 2)
            assert (await admission.snapshot("batch"))[("g", "e")].waiting == 0
            await admission.release(lease)
        finally:
            await admission.close()

    asyncio.run(scenario(LocalAdmission()))
    asyncio.run(scenario(RedisAdmission(redis_test_url(), redis_prefix)))


# --------------------------------------------------------------------------- through the gateway


@pytest.mark.django_db(transaction=True)
def test_with_the_slot_busy_a_critical_request_queued_after_a_batch_one_starts_first(sim, shared_gateway, key,
                                                                                     redis_prefix):
    put_loaded(sim, "llama3.2:3b", "tower-amd")
    outside = RedisAdmission(redis_test_url(), redis_prefix)  # another gateway process, as far as Redis knows
    finished: list[str] = []

    def ask(urgency: str):
        r = httpx.post(f"{shared_gateway.url}/api/generate", timeout=30, json={
            "model": "llama3.2:3b", "prompt": "hello", "stream": False},
            headers={"Authorization": f"Bearer {key}", "X-TowerOps-Urgency": urgency})
        assert r.status_code == 200, r.text
        finished.append(urgency)

    async def scenario():
        await outside.start()
        holder = await outside.acquire(group_of("llama3.2:3b", "tower-amd"), "interactive", 1, 1.0)
        threads = []
        for n, urgency in enumerate(("batch", "critical"), start=1):
            t = threading.Thread(target=ask, args=(urgency,))
            t.start()
            threads.append(t)
            while (await outside.snapshot("batch")).get(("llama3.2:3b", "tower-amd"), None) is None or \
                    (await outside.snapshot("batch"))[("llama3.2:3b", "tower-amd")].waiting < n:
                await asyncio.sleep(0.01)  # queued in the gateway, in this order
        await outside.release(holder)
        await outside.close()
        return threads

    for t in asyncio.run(scenario()):
        t.join(30)
    assert finished == ["critical", "batch"]
    batch, critical = sorted(recorded(2), key=lambda d: d.urgency)
    assert critical.outcome.response_ms < batch.outcome.response_ms


# --------------------------------------------------------------------------- two processes


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def two_gateways(sim, redis_prefix, tmp_path):
    env = {**os.environ, "DATABASE_URL": _test_database_url(), "DJANGO_SETTINGS_MODULE": "towerops.settings",
           "TOWEROPS_GATEWAY_REDIS_URL": redis_test_url(), "TOWEROPS_GATEWAY_REDIS_PREFIX": redis_prefix,
           "PYTHONUNBUFFERED": "1"}
    procs, urls, logs = [], [], []
    for n in range(2):
        port = _free_port()
        logs.append(tmp_path / f"gateway-{n}.log")
        with open(logs[-1], "wb") as log:
            procs.append(subprocess.Popen(
                [sys.executable, "manage.py", "rungateway", "--bind", f"127.0.0.1:{port}"], cwd=ROOT, env=env,
                start_new_session=True, stdout=log, stderr=subprocess.STDOUT))
        urls.append(f"http://127.0.0.1:{port}")

    def up(url):
        try:
            return httpx.get(url + "/", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        for url, p, log in zip(urls, procs, logs):
            wait_for(lambda: p.poll() is None and up(url) or (p.poll() is not None and
                     pytest.fail(log.read_text()[-2000:])), 30, "a gateway process to serve")
        yield urls
    finally:
        for log in logs:
            print(log.read_text()[-3000:])
        for p in procs:
            os.killpg(p.pid, signal.SIGTERM)
        for p in procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(5)


def _high_water(monkeypatch, tower: SimulatedTower) -> dict:
    """The most requests Ollama (the simulator) held at once per model: its runner's ref count."""
    seen = {"max": 0}
    attach = tower._attach

    def counting(r, keep_alive):
        out = attach(r, keep_alive)
        seen["max"] = max(seen["max"], r.ref_count)
        return out

    monkeypatch.setattr(tower, "_attach", counting)
    return seen


def _burst(urls: list[str], key: str | None, n: int) -> list[int]:
    async def go():
        async with httpx.AsyncClient(timeout=60) as c:
            async def one(i):
                # Critical with a patience the queue stays within: such a request takes the loaded
                # model while it answers within its patience, so the queue this burst makes cannot
                # make the policy load a second copy elsewhere (no agent runs here).
                r = await c.post(f"{urls[i % len(urls)]}/api/generate",
                                 headers={"Authorization": f"Bearer {key}", "X-TowerOps-Urgency": "critical",
                                          "X-TowerOps-Max-Wait": "600"}
                                 if key else {},
                                 json={"model": "llama3.2:3b", "prompt": f"request {i}", "stream": False,
                                       "options": {"num_ctx": 4096}})
                return r.status_code
            return await asyncio.gather(*(one(i) for i in range(n)))

    return asyncio.run(go())


@pytest.mark.django_db(transaction=True)
def test_two_gateway_processes_never_send_more_than_the_slots(sim, two_gateways, key, monkeypatch):
    put_loaded(sim, "llama3.2:3b", "tower-amd")
    # Nowhere to load a second copy (no agent runs here to load it): every request queues on tower-amd,
    # however long the queue the burst makes on a slow machine.
    m.Endpoint.objects.filter(name="tower-nvidia").update(is_up=False)
    seen = _high_water(monkeypatch, sim)
    # Straight to Ollama, a burst piles up in its own queue: the check below can fail.
    assert _burst([sim.url("tower-amd")], None, 8) == [200] * 8
    assert seen["max"] > 1
    seen["max"] = 0
    assert _burst(two_gateways, key, 16) == [200] * 16
    assert seen["max"] == 1  # tower-amd serves one request at a time per model (num_parallel 1)
    decisions = recorded(16, timeout=20)
    assert {(d.action, d.endpoint.name, d.outcome.result) for d in decisions} == {("use_loaded", "tower-amd", "ok")}
    # The later ones saw the queue the earlier ones made (the gateway's live counts, not a guess).
    assert max(d.expected_wait_s for d in decisions) > min(d.expected_wait_s for d in decisions)
