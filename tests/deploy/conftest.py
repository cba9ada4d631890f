"""The deploy recipe's processes, run here as plain processes: deploy/bin/* with the environment
that compose or systemd would give them, each in its own process group, each logging to a file.
Every process a test starts is stopped in teardown (SIGTERM, then SIGKILL to its whole group),
and the teardown fails if any of them survives.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = ROOT / "deploy" / "bin"
VENV_BIN = Path(sys.executable).parent


def tool(name: str) -> str | None:
    """A command-line tool the recipe checks need; None (the test skips) unless CI requires it."""
    path = shutil.which(name)
    if path is None and os.environ.get("TOWEROPS_REQUIRE_DEPLOY_TOOLS") == "1":
        pytest.fail(f"{name} is not installed, and TOWEROPS_REQUIRE_DEPLOY_TOOLS=1 (.ci/run installs it)")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def database_url(user: str | None = None, password: str | None = None) -> str:
    """The test database's URL, as its owner or as another role."""
    from django.db import connection

    s = connection.settings_dict
    auth = quote(user or s["USER"] or "", safe="")
    secret = password if user else s.get("PASSWORD")
    if secret:
        auth += ":" + quote(secret, safe="")
    host = quote(s["HOST"] or "", safe="")  # a unix socket directory for the embedded server
    port = f":{s['PORT']}" if s.get("PORT") else ""
    return f"postgres://{auth}@{host}{port}/{quote(s['NAME'], safe='')}"


@pytest.fixture
def test_broker_url():
    """The configured Redis broker on the test database number (TOWEROPS_TEST_REDIS_DB), flushed around the test."""
    from django.conf import settings
    from kombu import Connection

    parts = urlsplit(settings.CELERY_BROKER_URL)
    db = os.environ.get("TOWEROPS_TEST_REDIS_DB", "5")
    if parts.scheme in ("redis", "rediss"):
        url = urlunsplit(parts._replace(path=f"/{db}"))
    elif parts.scheme == "redis+socket":
        url = f"{settings.CELERY_BROKER_URL.split('?', 1)[0]}?virtual_host={db}"
    else:
        pytest.skip(f"the deployment test needs a Redis broker, not {parts.scheme}://")

    def flush():
        with Connection(url) as conn:
            conn.default_channel.client.flushdb()

    flush()
    yield url
    flush()


class Process:
    def __init__(self, name: str, cmd: list[str], env: dict, log_dir: Path):
        self.name, self.log_path = name, log_dir / f"{name}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - open for the process's life
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        self.pgid = self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def group_alive(self) -> bool:
        """Whether any process of the group still runs (zombies do not count)."""
        self.proc.poll()
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()  # state, ppid, pgrp, ...
            except (OSError, IndexError):
                continue
            if int(fields[2]) == self.pgid and fields[0] != "Z":
                return True
        return False

    def signal(self, sig: int) -> None:
        try:
            os.killpg(self.pgid, sig)
        except ProcessLookupError:
            pass


class Stack:
    """Processes started by one test, stopped together."""

    def __init__(self, env: dict, log_dir: Path):
        self.env, self.log_dir = env, log_dir
        self.processes: list[Process] = []

    def start(self, name: str, cmd: list[str], **env) -> Process:
        p = Process(name, cmd, {**self.env, **env}, self.log_dir)
        self.processes.append(p)
        return p

    def run(self, cmd: list[str], timeout: float = 180, **env) -> str:
        """A one-shot step of the recipe; its output, or a failure showing it."""
        done = subprocess.run(cmd, cwd=ROOT, env={**self.env, **env}, capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)
        assert done.returncode == 0, f"{cmd} exited with {done.returncode}:\n{done.stdout}\n{done.stderr}"
        return done.stdout

    def check_running(self) -> None:
        for p in self.processes:
            if p.proc.poll() is not None:
                raise AssertionError(f"{p.name} exited with {p.proc.returncode}:\n{p.log()[-4000:]}")

    def logs(self) -> str:
        return "\n".join(f"===== {p.name}\n{p.log()[-3000:]}" for p in self.processes)

    def stop(self, grace: float = 20.0) -> list[str]:
        """SIGTERM to each main process, as systemd (KillMode=mixed) and `docker stop` do: Celery's warm
        shutdown, gunicorn's graceful stop. Then SIGKILL to every group; returns the survivors."""
        for p in self.processes:
            if p.proc.poll() is None:
                p.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for p in self.processes:
            while p.group_alive() and time.monotonic() < deadline:
                time.sleep(0.1)
        for p in self.processes:
            p.signal(signal.SIGKILL)
        deadline = time.monotonic() + 10
        survivors = []
        for p in self.processes:
            while p.group_alive() and time.monotonic() < deadline:
                time.sleep(0.05)
            if p.group_alive():
                survivors.append(f"{p.name} (process group {p.pgid})")
            if p.proc.poll() is None:
                p.proc.wait(5)
            p._log.close()
        return survivors


@pytest.fixture
def stack(tmp_path):
    env = {
        **{k: v for k, v in os.environ.items() if k not in ("CELERY_TASK_ALWAYS_EAGER",)},
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",  # deploy/bin/* call python, gunicorn, celery
        "PYTHONUNBUFFERED": "1",
        "DJANGO_SETTINGS_MODULE": "towerops.settings",
    }
    (tmp_path / "logs").mkdir()
    s = Stack(env, tmp_path / "logs")
    try:
        yield s
    finally:
        survivors = s.stop()
        assert not survivors, f"still running after SIGKILL: {survivors}"
