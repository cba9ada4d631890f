"""runstack: every child's lines behind its name, a busy --bind refused in one line, and Ctrl-C
stops everything it started, the embedded PostgreSQL and Redis included (they used to outlive it)."""
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def embedded_env(var_dir: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "CELERY_BROKER_URL")}
    return {**env, "TOWEROPS_VAR_DIR": str(var_dir), "DEBUG": "1", "PYTHONUNBUFFERED": "1"}


def processes_using(*paths: str) -> list[str]:
    """Running processes whose command line names one of the paths."""
    found = []
    for p in psutil.process_iter(["cmdline", "status"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if any(path in cmd for path in paths) and p.info["status"] != psutil.STATUS_ZOMBIE:
            found.append(f"{p.pid}: {cmd[:120]}")
    return found


def started_pids(log: Path) -> list[int]:
    """The children's pids, from runstack's "started web (pid 123)" lines."""
    return [int(line.split("(pid ")[1].rstrip(")")) for line in log.read_text().splitlines()
            if line.startswith("started ")]


def test_a_busy_bind_port_is_one_line_naming_the_flag(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        run = subprocess.run([sys.executable, "manage.py", "runstack", "--bind", f"127.0.0.1:{port}"], cwd=ROOT,
                             env=env, capture_output=True, text=True, timeout=60)
    assert run.returncode == 1
    assert run.stderr.strip().splitlines() == [
        f"CommandError: port {port} on 127.0.0.1 is already in use: pass --bind HOST:PORT "
        "(scripts/run --bind 127.0.0.1:8001)"
    ]


def test_ctrl_c_stops_every_child_and_the_embedded_servers(tmp_path):
    var_dir = tmp_path / "var"
    env = {**embedded_env(var_dir), "TOWEROPS_GATEWAY_BIND": f"127.0.0.1:{free_port()}"}
    profile = yaml.safe_load((ROOT / "profiles" / "tower.yaml").read_text())
    for ep in profile["hosts"][0]["endpoints"]:
        ep["base_url"] = f"http://127.0.0.1:{free_port()}"
    (tmp_path / "tower.yaml").write_text(yaml.safe_dump(profile))
    for step in (["migrate", "--noinput", "-v", "0"], ["load_profile", str(tmp_path / "tower.yaml")]):
        subprocess.run([sys.executable, "manage.py", *step], cwd=ROOT, env=env, check=True, timeout=240,
                       capture_output=True)
    bind = f"127.0.0.1:{free_port()}"
    log = tmp_path / "runstack.log"
    with open(log, "wb") as out:
        stack = subprocess.Popen([sys.executable, "manage.py", "runstack", "--profile", str(tmp_path / "tower.yaml"),
                                  "--bind", bind, "--time-scale", "50"], cwd=ROOT, env=env, stdout=out,
                                 stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        wanted = ["worker    | ", "towerops@", " ready.", "beat      | ", "web       | ",
                  "simulator | simulated Ollama tower-amd", "started gateway"]
        while not all(w in log.read_text() for w in wanted):
            assert stack.poll() is None, log.read_text()
            assert time.monotonic() < deadline, f"the stack did not come up:\n{log.read_text()}"
            time.sleep(0.5)
        assert (var_dir / "pgdata" / "postmaster.pid").exists()
        redis_socket = re.search(r"broker -> redis\+socket://(\S+)", log.read_text()).group(1)
        assert processes_using(redis_socket), "the embedded Redis runs"
        children = started_pids(log)
        assert len(children) == 5  # web, worker, beat, simulator, gateway
        stack.send_signal(signal.SIGINT)  # what Ctrl-C sends (to runstack only: its children have their own groups)
        assert stack.wait(timeout=60) == 0, log.read_text()
    finally:  # on a failure too: nothing this test started may outlive it
        if stack.poll() is None:
            stack.send_signal(signal.SIGINT)
            try:
                stack.wait(timeout=40)
            except subprocess.TimeoutExpired:
                for pid in [stack.pid, *started_pids(log)]:
                    try:
                        os.killpg(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                stack.wait()
    text = log.read_text()
    assert text.rstrip().endswith("stopped.")
    # Every line of a child is prefixed: no raw banner or traceback line in between.
    body = [line for line in text.splitlines() if line and not line.startswith(("started ", "TowerOps is at", "The gateway", "stopped."))]
    assert all(line.split(" | ", 1)[0].strip() in ("web", "worker", "beat", "simulator", "gateway") for line in body), body[:5]
    deadline = time.monotonic() + 20
    while processes_using(str(var_dir), redis_socket) or any(psutil.pid_exists(pid) for pid in children):
        assert time.monotonic() < deadline, processes_using(str(var_dir), redis_socket)
        time.sleep(0.2)
    assert not (var_dir / "pgdata" / "postmaster.pid").exists()  # PostgreSQL stopped cleanly
