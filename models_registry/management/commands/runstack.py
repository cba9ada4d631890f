"""Start the whole stack in one terminal and stop it with one Ctrl-C.

web (the console and API), a Celery worker for the central queue and every host's
queue, Celery beat, and — unless --no-simulator — the simulated Ollama servers of the
profile. Production runs each of these under its own supervisor instead.
"""
import os
import signal
import subprocess
import sys
import time

from django.core.management.base import BaseCommand

from models_registry.models import Host


class Command(BaseCommand):
    help = "Run web, worker, beat and (by default) the Ollama simulator together."

    def add_arguments(self, parser):
        parser.add_argument("--profile", default="profiles/tower.yaml")
        parser.add_argument("--bind", default="127.0.0.1:8000")
        parser.add_argument("--no-simulator", action="store_true", help="real Ollama servers are running")
        parser.add_argument("--time-scale", type=float, default=1.0, help="simulator speed-up")

    def handle(self, profile, bind, no_simulator, time_scale, **options):
        py = sys.executable
        queues = ",".join(["central", *Host.objects.values_list("queue", flat=True)])
        procs = {
            "web": [py, "manage.py", "runserver", bind, "--noreload"],
            "worker": [py, "-m", "celery", "-A", "towerops", "worker", "-Q", queues, "-c", "2",
                       "--loglevel", "INFO", "-n", "towerops@%h"],
            "beat": [py, "-m", "celery", "-A", "towerops", "beat", "--loglevel", "INFO",
                     "-s", "var/celerybeat-schedule"],
        }
        if not no_simulator:
            procs["simulator"] = [py, "manage.py", "simulate_tower", "--profile", profile,
                                  "--time-scale", str(time_scale)]
        running: dict[str, subprocess.Popen] = {}
        stopping = False

        def stop(*_):
            nonlocal stopping
            stopping = True

        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGTERM, stop)
        # Children get their own process group so one Ctrl-C reaches only us; we stop them in order.
        for name, cmd in procs.items():
            running[name] = subprocess.Popen(cmd, start_new_session=True, env=os.environ.copy())
            self.stdout.write(f"started {name} (pid {running[name].pid})")
        self.stdout.write(f"TowerOps is at http://{bind}/  — press Ctrl-C to stop everything.")
        try:
            while not stopping:
                for name, p in running.items():
                    if p.poll() is not None:
                        self.stderr.write(f"{name} exited with {p.returncode}; stopping the stack")
                        stopping = True
                        break
                time.sleep(0.5)
        finally:
            for p in running.values():
                if p.poll() is None:
                    p.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + 15
            for name, p in running.items():
                try:
                    p.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
            self.stdout.write("stopped.")
