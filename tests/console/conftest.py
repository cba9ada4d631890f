"""Console fixtures: the Tower, users (alice is staff, bob a viewer: tests/conftest.py) and decisions
(tests.helpers.make_decision: the selection's own recording code)."""
import contextlib
import datetime as dt
import uuid

import pytest
from django.utils import timezone

from tests.helpers import make_decision

HX = {"HTTP_HX_REQUEST": "true"}


@pytest.fixture
def decisions(tower):
    now = timezone.now()
    return [make_decision("code_generation", "interactive", now - dt.timedelta(minutes=2)),
            make_decision("general", "batch", now - dt.timedelta(minutes=1))]


@pytest.fixture(autouse=True)
def gateway_queue_prefix(settings):
    """The dashboard reads the gateway's queues in Redis: under a prefix of this test's own, so a
    gateway running on this machine never shows in a test (tests/console/test_dashboard.py fills it)."""
    settings.TOWEROPS_GATEWAY_REDIS_PREFIX = f"towerops:test:{uuid.uuid4().hex[:8]}:"
    return settings.TOWEROPS_GATEWAY_REDIS_PREFIX


@pytest.fixture
def viewer_client(client, bob):
    client.force_login(bob)
    return client


@pytest.fixture
def staff_client(client, alice):
    client.force_login(alice)
    return client




@contextlib.contextmanager
def gateway_queue(url: str, prefix: str):
    """A queue in the gateway's shared admission, made by its own code (RedisAdmission, as a gateway
    process makes it) and held while the body runs: llama3.2:3b on tower-nvidia has its one slot
    busy and four waiting (critical 2, interactive 1, batch 1); qwen2.5-coder:7b on tower-amd one
    of two slots busy. Its event loop runs in a thread of its own (renewing the tickets)."""
    import asyncio
    import threading

    from models_registry.gateway.admission import RedisAdmission, group_of

    llama, qwen = group_of("llama3.2:3b", "tower-nvidia"), group_of("qwen2.5-coder:7b", "tower-amd")
    filled, done, failed = threading.Event(), threading.Event(), []

    async def hold():
        admission = RedisAdmission(url, prefix)
        await admission.start()
        held, waiting = [], []
        try:
            held += [await admission.acquire(llama, "batch", 1, 5.0), await admission.acquire(qwen, "interactive", 2, 5.0)]
            for urgency in ("batch", "critical", "interactive", "critical"):
                waiting.append(asyncio.create_task(admission.acquire(llama, urgency, 1, 5.0)))
            while (await admission.snapshot("batch"))[("llama3.2:3b", "tower-nvidia")].waiting < 4:
                await asyncio.sleep(0.01)
            filled.set()
            while not done.is_set():
                await asyncio.sleep(0.02)
        finally:
            for t in waiting:
                t.cancel()
            await asyncio.gather(*waiting, return_exceptions=True)
            for lease in held:
                await admission.release(lease)
            await admission.close()

    def run():
        try:
            asyncio.run(hold())
        except BaseException as exc:  # handed to the test
            failed.append(exc)
            filled.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert filled.wait(10), "the queue was not filled in 10 s"
    if failed:
        raise failed[0]
    try:
        yield
    finally:
        done.set()
        thread.join(10)
