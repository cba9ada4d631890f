"""Start the whole stack in one terminal and stop it with one Ctrl-C.

web (the console and API), a Celery worker for the central queue and every host's queue,
Celery beat, and — unless --no-simulator — the simulated Ollama servers of the profile. Every
line a child prints comes out prefixed with its name. Production runs each of these under its
own supervisor instead (deploy/).

Not honcho and a Procfile: the worker's queues come from the database, and the embedded
PostgreSQL and Redis (towerops/embedded.py) belong to this process, which must stop them after
its children, something a Procfile runner cannot know about.
"""
import errno
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from models_registry import conf
from models_registry.models import Host
from models_registry.runtime import collectors
from towerops import embedded

STOP_GRACE_S = 15.0


def port_busy(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return True
            raise
    return False


class Child:
    """A child in its own process group, its output copied line by line behind its name."""

    def __init__(self, name: str, cmd: list[str], width: int, out, lock: threading.Lock):
        self.name = name
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(cmd, start_new_session=True, env=env, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        prefix = f"{name:<{width}} | "
        self._reader = threading.Thread(target=self._copy, args=(prefix, out, lock), daemon=True)
        self._reader.start()

    def _copy(self, prefix: str, out, lock: threading.Lock) -> None:
        for raw in iter(self.proc.stdout.readline, b""):
            line = raw.decode(errors="replace").rstrip("\n")
            with lock:
                out.write(prefix + line)
                out.flush()

    def signal_group(self, sig: int) -> None:
        try:
            os.killpg(self.proc.pid, sig)  # the worker's pool and any other grandchild too
        except ProcessLookupError:
            pass

    def group_alive(self) -> bool:
        """Whether any process of the child's group still runs (zombies do not count)."""
        self.proc.poll()
        if not Path("/proc/self/stat").exists():
            try:
                os.killpg(self.proc.pid, 0)
            except ProcessLookupError:
                return False
            return True
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()  # state, ppid, pgrp, ...
            except (OSError, IndexError):
                continue
            if int(fields[2]) == self.proc.pid and fields[0] != "Z":
                return True
        return False

    def finish(self) -> None:
        self._reader.join(timeout=2)
        self.proc.stdout.close()


class Command(BaseCommand):
    help = "Run web, worker, beat and (by default) the Ollama simulator together; Ctrl-C stops them all."

    def add_arguments(self, parser):
        parser.add_argument("--profile", default="profiles/tower.yaml",
                            help="profile whose endpoints the simulator serves (default: %(default)s)")
        parser.add_argument("--bind", default="127.0.0.1:8000",
                            help="HOST:PORT for the console and API (default: %(default)s)")
        parser.add_argument("--no-simulator", action="store_true", help="real Ollama servers are running")
        parser.add_argument("--time-scale", type=float, default=1.0,
                            help="simulator speed-up: 10 makes every load 10 times shorter (default 1)")

    def handle(self, profile, bind, no_simulator, time_scale, **options):
        host, _, port = bind.rpartition(":")
        if not host or not port.isdigit():
            raise CommandError(f"--bind {bind!r}: use HOST:PORT, e.g. 127.0.0.1:8000")
        if port_busy(host.strip("[]"), int(port)):
            raise CommandError(f"port {port} on {host} is already in use: pass --bind HOST:PORT "
                               "(scripts/run --bind 127.0.0.1:8001)")
        py = sys.executable
        queues = ",".join(["central", *Host.objects.values_list("queue", flat=True)])
        commands = {
            "web": [py, "manage.py", "runserver", bind, "--noreload"],
            "worker": [py, "-m", "celery", "-A", "towerops", "worker", "-Q", queues, "-c", "2",
                       "-n", "towerops@%h", "--without-gossip", "--without-mingle"],
            "beat": [py, "-m", "celery", "-A", "towerops", "beat", "-s", str(conf.value("TOWEROPS_VAR_DIR") / "celerybeat-schedule")],
        }
        commands["gateway"] = [py, "manage.py", "rungateway"]  # TOWEROPS_GATEWAY_BIND (docs/gateway.md)
        if not no_simulator:
            commands["simulator"] = [py, "manage.py", "simulate_tower", "--profile", profile,
                                     "--time-scale", str(time_scale)]
        if not no_simulator:  # the agent reads the simulated GPUs (models_registry/fakes/gpu_telemetry.py)
            gpu_dir = conf.value("TOWEROPS_VAR_DIR") / "simulated-gpus"
            os.environ.setdefault(collectors.SIMULATED_GPU_DIR, str(gpu_dir))
        stopping = threading.Event()
        signal.signal(signal.SIGINT, lambda *_: stopping.set())
        signal.signal(signal.SIGTERM, lambda *_: stopping.set())
        lock = threading.Lock()
        width = max(map(len, commands))
        children: list[Child] = []
        try:
            # Each child gets its own process group, so one Ctrl-C reaches only us; we stop them in order.
            for name, cmd in commands.items():
                children.append(Child(name, cmd, width, self.stdout, lock))
                with lock:
                    self.stdout.write(f"started {name} (pid {children[-1].proc.pid})")
            with lock:
                self.stdout.write(f"TowerOps is at http://{bind}/  — press Ctrl-C to stop everything.")
                self.stdout.write(f"The gateway (Ollama and OpenAI APIs) is at http://{conf.value('TOWEROPS_GATEWAY_BIND')}/")
            while not stopping.wait(0.5):
                gone = next((c for c in children if c.proc.poll() is not None), None)
                if gone is not None:
                    with lock:
                        self.stderr.write(f"{gone.name} exited with {gone.proc.returncode}; stopping the stack")
                    break
        finally:
            self._stop(children, lock)
        if embedded.enabled():
            # Our own exit then stops the embedded servers: we are their last user.
            embedded.release_dead_handles(conf.value("TOWEROPS_VAR_DIR"))
        self.stdout.write("stopped.")

    def _stop(self, children: list[Child], lock: threading.Lock) -> None:
        for c in children:
            if c.proc.poll() is None:
                # The main process only: Celery's warm shutdown lets its pool finish (a SIGTERM to the
                # pool itself would lose the running tasks); runserver and the simulator exit.
                c.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        for c in children:
            try:
                c.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with lock:
                    self.stderr.write(f"{c.name} did not stop in {STOP_GRACE_S:.0f} s: killing it")
        for c in children:
            while c.group_alive():  # the main process or any of its group (a worker's pool)
                if time.monotonic() > deadline:
                    c.signal_group(signal.SIGKILL)
                time.sleep(0.1)
            c.proc.wait()
            c.finish()
