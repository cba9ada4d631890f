"""Many selections at once onto one nearly-full GPU, through the real HTTP server: no over-commit,
one decision per answer, no 409/503.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/twbench CELERY_BROKER_URL=redis://127.0.0.1:6379/11 \\
        .venv/bin/python bench/bench_concurrency.py [--requests 1000] [--concurrency 200] \\
        [--workers 2] [--threads 8] [--keep-db]

What it does, all on this machine:

1. Creates the database named in DATABASE_URL (`twbench` when it names none or `postgres`),
   dropped and re-created if an earlier run of this bench left it (a database it did not create
   is refused, never dropped), migrates it and imports a small profile, as
   tests/api/test_concurrency.py has it: one host, one 8 GB GPU (0.5 GB reserved: 7,680 MiB
   usable), one endpoint, six 4.5 GB specialists, a pinned 1.5 GB base model and a remote one,
   plus a 5.5 GB model below every task's quality floor. The base model and that one are
   `loaded`, the latter idle for three hours (7,168 of 7,680 MiB booked): a selection that
   wants a specialist must use the base model, evict the idle one to load it (only one can
   ever fit) or wait for that load. (The remote model is only the fallback when no local model
   meets the floor; the base model meets every one, so no answer falls back. With an idle
   *specialist* instead, as in the test's eviction case, the first selection that uses it makes
   it busy and so not evictable: in two runs of 200 at once neither made a load, and no
   reservation was contended.)
2. Starts the web app as deploy/bin/web does (gunicorn --config deploy/gunicorn.conf.py,
   gthread), on a free loopback port (GUNICORN_BIND), WEB_CONCURRENCY=--workers,
   GUNICORN_THREADS=--threads, DEBUG=0, CELERY_TASK_ALWAYS_EAGER unset. No Celery worker runs:
   a load's task is published to the broker and never executed, so every load stays
   `requested` and keeps its VRAM booked for the whole run (the tightest case for the
   reservation lock). Creates an API key with `manage.py create_api_key bench --scopes select,read`.
3. Sends --requests POST /api/v1/select (every task type and urgency of the profile, a third of
   them with a client name) with --concurrency in flight at once (that many senders, each an
   httpx.AsyncClient with one keep-alive connection, in a closed loop), recording each status
   and latency (send to last byte).
4. Meanwhile a sampler thread (its own psycopg connection) reads every ~20 ms, per GPU, the VRAM
   of every active residency (requested, loading, loaded, unloading: models_registry_residencygpu
   joined to models_registry_residency) against total_mib - reserved_mib (what the policy calls
   free before measured figures, policy/placement.py free_mib_by_gpu; there are no snapshots here).
   An over-commit sample is one where that sum, less the `unloading` residencies a pending load
   on the same endpoint evicts before it starts (runtime/loads.py victims_on), exceeds the usable
   VRAM. The raw sum, victims included, is printed beside it: an eviction books the new model
   while its victim is still unloading (runtime/reservations.py reserve), by design.
5. Prints the figures and checks the invariants: over-commit samples = 0, decisions recorded
   during the run = 200 answers (and the same ids), no non-200 answer (409, 503 or any other).
   Exits 1 when one fails. Latency and throughput are printed, never checked.

gunicorn runs in its own session and is stopped (SIGTERM, then SIGKILL to its process group)
whatever happens; the database is dropped unless --keep-db, and the load tasks it queued are
removed from the broker.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))  # its sibling benchdb.py
import benchdb  # noqa: E402
from benchdb import free_port, psql, run, stop_session  # noqa: E402

VENV_BIN = ROOT / ".venv" / "bin"
PYTHON = str(VENV_BIN / "python") if (VENV_BIN / "python").exists() else sys.executable
GUNICORN = str(VENV_BIN / "gunicorn") if (VENV_BIN / "gunicorn").exists() else (shutil.which("gunicorn") or "")
DEFAULT_DB = "twbench"
DB_COMMENT = "towerops bench/bench_concurrency.py"  # marks a database this bench may drop
SAMPLE_EVERY_S = 0.020

GPU_GB = 8
TASKS = ("t0", "t1", "t2", "t3", "t4", "t5")
URGENCIES = ("critical", "interactive", "background", "batch")
IDLE = "idle:13b"  # loaded, idle, below every floor: the policy may only evict it
# tests/api/test_concurrency.py's SMALL profile, and IDLE.
PROFILE = {
    "hosts": [
        {
            "name": "box",
            "gpus": [{"index": 0, "vendor": "nvidia", "name": "Small GPU", "total_gb": GPU_GB, "reserved_gb": 0.5}],
            "endpoints": [{"name": "box-gpu", "base_url": "http://127.0.0.1:11599", "gpus": [0]}],
        }
    ],
    "task_types": [{"name": t, "quality_floor": 0.5, "default_output_tokens": 64} for t in TASKS],
    "urgency_classes": [
        {"name": "critical", "patience_s": 2, "wait_weight": 0.2, "use_loaded_if_acceptable": True},
        {"name": "interactive", "patience_s": 5, "wait_weight": 0.05, "eviction_penalty": 0.02},
        {"name": "background", "patience_s": 120, "wait_weight": 0.001, "eviction_penalty": 0.05},
        {"name": "batch", "patience_s": 3600, "wait_weight": 0.0001, "eviction_penalty": 0.05},
    ],
    "models": [
        {"tag": "base:1b", "vram_gb": 1.5, "load_s": 2, "tokens_per_s": 200, "pinned": True,
         "quality": {t: 0.55 for t in TASKS}},
        *[
            {"tag": f"{t}-expert:7b", "vram_gb": 4.5, "load_s": 10 + i, "tokens_per_s": 40,
             "quality": {u: (0.9 if u == t else 0.6) for u in TASKS}}
            for i, t in enumerate(TASKS)
        ],
        {"tag": IDLE, "vram_gb": 5.5, "load_s": 20, "tokens_per_s": 30, "quality": {t: 0.4 for t in TASKS}},
        {"tag": "remote:api", "kind": "remote", "remote_latency_s": 1.5, "tokens_per_s": 80,
         "quality": {t: 0.85 for t in TASKS}},
    ],
}

# Run with django.setup(): the profile, then base:1b (pinned) and the idle model loaded, as
# tests/api/test_concurrency.py's `small` fixture and its eviction test create theirs.
SETUP = r"""
import datetime as dt, json, os, django
django.setup()
from models_registry import models as m
from models_registry.catalog.importer import import_profile
from models_registry.catalog.profile import parse_profile
import_profile(parse_profile(json.loads(os.environ["BENCH_PROFILE"]), "bench_concurrency"))
now = dt.datetime.now(dt.timezone.utc)
ep, gpu = m.Endpoint.objects.get(), m.Gpu.objects.get()
for tag, last_used in (("base:1b", now), (os.environ["BENCH_IDLE"], now - dt.timedelta(hours=3))):
    model = m.LlmModel.objects.get(tag=tag)
    r = m.Residency.objects.create(model=model, endpoint=ep, state="loaded", trigger="admin", vram_mib=model.vram_mib,
                                   requested_at=now, loaded_at=now, ready_at=now, last_used_at=last_used)
    m.ResidencyGpu.objects.create(residency=r, gpu=gpu, vram_mib=model.vram_mib)
print(json.dumps({"queue": ep.host.queue}))
"""

ACTIVE_SQL = "('requested', 'loading', 'loaded', 'unloading')"
# Per GPU: usable MiB, VRAM of every active residency, and of the `unloading` ones a pending load on
# the same endpoint evicts before it loads (runtime/loads.py victims_on: unloading, ready_at set).
SAMPLE_SQL = f"""
WITH pending AS (
    SELECT DISTINCT endpoint_id FROM models_registry_residency WHERE state IN ('requested', 'loading')
), act AS (
    SELECT rg.gpu_id, rg.vram_mib,
           (r.state = 'unloading' AND r.ready_at IS NOT NULL AND p.endpoint_id IS NOT NULL) AS victim
    FROM models_registry_residencygpu rg
    JOIN models_registry_residency r ON r.id = rg.residency_id AND r.state IN {ACTIVE_SQL}
    LEFT JOIN pending p ON p.endpoint_id = r.endpoint_id
)
SELECT g.id, g.total_mib - g.reserved_mib,
       COALESCE(SUM(a.vram_mib), 0)::int,
       COALESCE(SUM(a.vram_mib) FILTER (WHERE a.victim), 0)::int
FROM models_registry_gpu g LEFT JOIN act a ON a.gpu_id = g.id
GROUP BY g.id ORDER BY g.id
"""


# --------------------------------------------------------------------------- processes and database


class Web:
    """The web process as deploy/bin/web starts it, in its own session; stop() ends all of it."""

    def __init__(self, env: dict, log: Path):
        self.port = free_port()
        env = {**env, "GUNICORN_BIND": f"127.0.0.1:{self.port}"}
        self._out = open(log, "wb")
        self.log = log
        self.proc = subprocess.Popen([GUNICORN, "--config", "deploy/gunicorn.conf.py", "towerops.wsgi"],
                                     cwd=ROOT, env=env, start_new_session=True,
                                     stdout=self._out, stderr=subprocess.STDOUT)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                sys.exit(f"gunicorn exited with {self.proc.returncode}:\n{self.log.read_text(errors='replace')}")
            try:
                with urllib.request.urlopen(self.base + "/healthz", timeout=2) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, socket.timeout):
                time.sleep(0.2)
        sys.exit(f"gunicorn did not answer within {timeout} s:\n{self.log.read_text(errors='replace')}")

    def stop(self) -> None:
        stop_session(self.proc, self._out)


# --------------------------------------------------------------------------- the VRAM sampler


class Sampler(threading.Thread):
    """Reads the booked VRAM per GPU every SAMPLE_EVERY_S on its own connection, until stopped."""

    def __init__(self, url: str):
        super().__init__(daemon=True, name="vram-sampler")
        self.url = url
        self.halt = threading.Event()
        self.samples = 0
        self.overcommits = 0  # booked, less the victims a pending load evicts first, > usable
        self.raw_over = 0  # every active residency, victims included, > usable
        self.peak = 0  # the highest figure of overcommits' kind (MiB, over all GPUs)
        self.peak_raw = 0
        self.usable: dict[int, int] = {}
        self.first_over: tuple | None = None
        self.error: BaseException | None = None

    def sample(self, conn) -> None:
        over = raw = False
        for gpu, usable, booked, victims in conn.execute(SAMPLE_SQL).fetchall():
            self.usable[gpu] = usable
            net = booked - victims
            self.peak = max(self.peak, net)
            self.peak_raw = max(self.peak_raw, booked)
            if net > usable:
                over = True
                if self.first_over is None:
                    self.first_over = (gpu, usable, booked, victims)
            raw = raw or booked > usable
        self.samples += 1
        self.overcommits += over
        self.raw_over += raw

    def run(self) -> None:
        import psycopg

        try:
            with psycopg.connect(self.url, autocommit=True) as conn:
                while True:
                    t0 = time.monotonic()
                    self.sample(conn)
                    if self.halt.is_set():  # one last sample after the last answer
                        return
                    self.halt.wait(max(0.0, SAMPLE_EVERY_S - (time.monotonic() - t0)))
        except BaseException as exc:  # noqa: BLE001 - reported by main
            self.error = exc


# --------------------------------------------------------------------------- the load


def bodies(n: int, seed: int = 7) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        body = {"task_type": rng.choice(TASKS), "urgency": URGENCIES[i % len(URGENCIES)]}
        if i % 3 == 0:
            body["client"] = f"bench-{i % 17}"
        out.append(body)
    return out


async def fire(base: str, key: str, payloads: list[dict], concurrency: int,
               server_sid: int) -> tuple[list, float, dict]:
    """POST every payload with `concurrency` in flight: [(status, latency s, json or text)], wall s, and
    the CPU seconds spent meanwhile (cpu_seconds).

    `concurrency` senders, each with its own httpx.AsyncClient of one keep-alive connection, take
    the next payload as soon as their last answer is in (a closed loop). Not one client with a pool
    of `concurrency` connections: httpcore's pool scans every connection on each request's every
    step (connection_pool.py _assign_requests_to_connections), which at 200 connections cost the
    client more CPU than the server spent answering, on the same cores. The clients are made before
    the clock starts and share one SSL context (each would otherwise load the CA bundle: 20 ms)."""
    import contextlib
    import ssl

    import httpx

    results: list = [None] * len(payloads)
    todo = iter(range(len(payloads)))
    headers = {"Authorization": f"Bearer {key}"}
    tls = ssl.create_default_context()

    async def sender(client) -> None:
        for i in todo:  # shared: each payload goes to exactly one sender
            t0 = time.perf_counter()
            try:
                r = await client.post("/api/v1/select", json=payloads[i])
                dt = time.perf_counter() - t0
                try:
                    body = r.json()
                except ValueError:
                    body = r.text[:300]
                results[i] = (r.status_code, dt, body)
            except httpx.HTTPError as exc:
                results[i] = (-1, time.perf_counter() - t0, f"{type(exc).__name__}: {exc!r}")

    async with contextlib.AsyncExitStack() as stack:
        clients = [
            await stack.enter_async_context(httpx.AsyncClient(
                base_url=base, headers=headers, timeout=120.0, verify=tls,
                limits=httpx.Limits(max_connections=1, max_keepalive_connections=1)))
            for _ in range(min(concurrency, len(payloads)))
        ]
        cpu0 = cpu_seconds(server_sid)
        began = time.perf_counter()
        await asyncio.gather(*(sender(c) for c in clients))
        wall = time.perf_counter() - began
        cpu = {k: v - cpu0[k] for k, v in cpu_seconds(server_sid).items()}
    return results, wall, cpu


def cpu_seconds(server_sid: int) -> dict[str, float]:
    """CPU seconds so far: the machine (busy, all cores), the web server's session, every postgres
    process (other work on the server included) and this process (the client and the sampler)."""
    tick = os.sysconf("SC_CLK_TCK")
    with open("/proc/stat") as f:
        cpu = [int(x) for x in f.readline().split()[1:]]
    out = {"machine": (sum(cpu) - cpu[3] - cpu[4]) / tick, "server": 0.0, "postgres": 0.0,
           "client": time.process_time()}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                raw = f.read()
        except OSError:
            continue
        comm, rest = raw[raw.index("(") + 1:raw.rindex(")")], raw[raw.rindex(")") + 2:].split()
        used = (int(rest[11]) + int(rest[12])) / tick
        if int(rest[3]) == server_sid:
            out["server"] += used
        elif comm.startswith("postgres"):
            out["postgres"] += used
    return out


def pct(xs: list[float], p: float) -> float:
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))] if xs else float("nan")


def drop_queued_tasks(broker: str, queue: str) -> int | None:
    """How many load tasks the run left in the host's queue, which are then removed (Redis only)."""
    if not broker.startswith(("redis://", "rediss://")):
        return None
    try:
        import redis

        r = redis.Redis.from_url(broker)
        n = r.llen(queue)
        r.delete(queue, f"_kombu.binding.{queue}", f"_kombu.binding_permanent.{queue}")
        return n
    except Exception as exc:  # noqa: BLE001
        print(f"could not read or clear the broker queue {queue}: {exc}", file=sys.stderr)
        return None


# --------------------------------------------------------------------------- main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--concurrency", type=int, default=200, help="requests in flight at once")
    ap.add_argument("--workers", type=int, default=2, help="WEB_CONCURRENCY: gunicorn worker processes")
    ap.add_argument("--threads", type=int, default=8, help="GUNICORN_THREADS: threads per worker")
    ap.add_argument("--keep-db", action="store_true", help="leave the database behind")
    args = ap.parse_args()
    if not GUNICORN:
        sys.exit("gunicorn is missing: pip install gunicorn")

    admin_url, bench_url, db_name = benchdb.db_urls(DEFAULT_DB)
    workdir = Path(tempfile.mkdtemp(prefix="towerops-bench-conc-"))
    (workdir / "static").mkdir()
    broker = os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/11")
    env = {
        **os.environ,
        "DATABASE_URL": bench_url,
        "DJANGO_SETTINGS_MODULE": "towerops.settings",
        "SECRET_KEY": os.environ.get("SECRET_KEY", "dev"),
        "DEBUG": "0",
        "SECURE_SSL_REDIRECT": "0",
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
        "LOG_LEVEL": "WARNING",
        # The access log stays as deployed: GUNICORN_ACCESS_LOG=0 would not turn it off anyway, since
        # deploy/gunicorn.conf.py always sets logconfig_dict (gunicorn then logs access lines regardless).
        "WEB_CONCURRENCY": str(args.workers),
        "GUNICORN_THREADS": str(args.threads),
        "CELERY_BROKER_URL": broker,
        # the rate-limit cache beside the broker, not in its default database 2
        "TOWEROPS_CACHE_URL": os.environ.get("TOWEROPS_CACHE_URL", broker if broker.startswith("redis") else ""),
        "PYTHONPATH": str(ROOT),
        # deploy/bin/web collects static files first; the API needs none, so an empty folder of our own
        "STATIC_ROOT": str(workdir / "static"),
        "BENCH_PROFILE": json.dumps(PROFILE),
        "BENCH_IDLE": IDLE,
    }
    env.pop("CELERY_TASK_ALWAYS_EAGER", None)  # the load tasks go to the broker, where nothing runs them
    server = None
    queue = None
    created = False

    def on_term(signum, frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)
    try:
        print(f"preparing database {db_name} ...", flush=True)
        benchdb.fresh_database(admin_url, db_name, DB_COMMENT)
        created = True
        run([PYTHON, "manage.py", "migrate", "-v", "0"], env, "migrate")
        queue = json.loads(run([PYTHON, "-c", SETUP], env, "setup").strip().splitlines()[-1])["queue"]
        key = run([PYTHON, "manage.py", "create_api_key", "bench", "--scopes", "select,read"], env,
                  "create_api_key").strip().splitlines()[-1]
        pg_version = psql(bench_url, "SHOW server_version", fetch=True)[0][0]
        drop_queued_tasks(broker, queue)  # nothing left over from an earlier run

        print(f"starting gunicorn (deploy/gunicorn.conf.py, {args.workers} workers x {args.threads} threads) ...",
              flush=True)
        server = Web(env, workdir / "gunicorn.log")
        server.wait_ready()

        before = psql(bench_url, "SELECT COALESCE(MAX(id), 0) FROM models_registry_selectiondecision",
                      fetch=True)[0][0]
        payloads = bodies(args.requests)
        sampler = Sampler(bench_url)
        sampler.start()
        load_avg = os.getloadavg()
        print(f"sending {args.requests} selections, {args.concurrency} in flight ...", flush=True)
        results, wall, cpu = asyncio.run(fire(server.base, key, payloads, args.concurrency, server.proc.pid))
        sampler.halt.set()
        sampler.join(timeout=10)
        if sampler.error is not None:
            raise sampler.error

        ids = {row[0] for row in psql(bench_url, "SELECT id FROM models_registry_selectiondecision WHERE id > %s",
                                      [before], fetch=True)}
        booked = psql(bench_url, "SELECT count(DISTINCT (e->>0)::bigint) FROM models_registry_residency r, "
                                 "jsonb_array_elements(r.advisory) e WHERE (e->>0)::bigint > %s", [before],
                      fetch=True)[0][0]
        residencies = psql(bench_url, "SELECT m.tag, r.state, r.trigger FROM models_registry_residency r "
                                      "JOIN models_registry_llmmodel m ON m.id = r.model_id ORDER BY r.id", fetch=True)
        server.stop()
        server_log = "\n".join(line for line in (workdir / "gunicorn.log").read_text(errors="replace").splitlines()
                               if "gunicorn.access" not in line)
        queued = drop_queued_tasks(broker, queue)
        queue = None

        ok = report(args, results, wall, ids, sampler, residencies, queued, pg_version, load_avg, cpu, booked)
        if server_log.strip():
            print("\ngunicorn log (without the access lines; last 15 lines):\n"
                  + "\n".join(server_log.strip().splitlines()[-15:]))
        return 0 if ok else 1
    finally:
        if server is not None:
            server.stop()
        if queue is not None:
            drop_queued_tasks(broker, queue)
        if created and not args.keep_db:
            try:
                benchdb.drop_database(admin_url, db_name, DB_COMMENT)
            except Exception as exc:  # noqa: BLE001
                print(f"could not drop {db_name}: {exc}", file=sys.stderr)
        elif created:
            print(f"kept database {db_name}")
        shutil.rmtree(workdir, ignore_errors=True)


def report(args, results, wall, ids, sampler, residencies, queued, pg_version, load_avg, cpu, booked) -> bool:
    statuses = Counter(s for s, _, _ in results)
    ok200 = [b for s, _, b in results if s == 200]
    answered_ids = {b["decision_id"] for b in ok200}
    actions = Counter(b["action"] for b in ok200)
    evicting = sum(1 for b in ok200 if b.get("evictions"))
    lat = sorted(dt * 1e3 for _, dt, _ in results)
    other = {s: n for s, n in statuses.items() if s not in (200, 409, 503)}
    five = sum(n for s, n in statuses.items() if s >= 500)
    usable = ", ".join(f"{v:,}" for v in sampler.usable.values())
    cpu_model = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                      if line.startswith("model name")), platform.processor())

    print()
    print(f"machine: {os.cpu_count()} cores ({cpu_model}), Python {platform.python_version()}, "
          f"PostgreSQL {pg_version}; load average at start {load_avg[0]:.1f}")
    print(f"server: gunicorn --config deploy/gunicorn.conf.py, {args.workers} workers x {args.threads} threads "
          f"(gthread), DEBUG=0, access log on; client: {args.concurrency} httpx.AsyncClients of one connection "
          "each, in this process")
    print("no Celery worker: every load's task is queued and never run, so its residency stays `requested` "
          "and its VRAM booked")
    print()
    print(f"requests sent        {len(results):>7}")
    print(f"200                  {statuses.get(200, 0):>7}   actions: "
          + ", ".join(f"{a} {n}" for a, n in sorted(actions.items())) + f"; with an eviction: {evicting}")
    print(f"409                  {statuses.get(409, 0):>7}")
    print(f"503                  {statuses.get(503, 0):>7}")
    print(f"other statuses       {sum(other.values()):>7}   {dict(other) if other else ''}")
    print(f"decisions recorded   {len(ids):>7}   (rows created during the run; ids the same as the answers': "
          f"{'yes' if ids == answered_ids else 'NO'})")
    print(f"over-commit samples  {sampler.overcommits:>7} / {sampler.samples} samples "
          f"(peak booked {sampler.peak:,} MiB of {usable} usable)")
    print(f"  victims included   {sampler.raw_over:>7} / {sampler.samples} samples "
          f"(peak {sampler.peak_raw:,} MiB: an evicted model is `unloading` until the load's task unloads it)")
    print(f"latency              p50 {pct(lat, 50):.0f} ms, p95 {pct(lat, 95):.0f} ms, p99 {pct(lat, 99):.0f} ms, "
          f"max {lat[-1]:.0f} ms" if lat else "latency              -")
    print(f"throughput           {len(results) / wall:.0f} req/s ({len(results)} in {wall:.2f} s)")
    print(f"CPU during the run   machine {cpu['machine']:.1f} s of {wall * (os.cpu_count() or 1):.1f} core-s; "
          f"gunicorn {cpu['server']:.1f} s, postgres {cpu['postgres']:.1f} s, "
          f"client + sampler {cpu['client']:.1f} s")
    states = Counter((tag, state) for tag, state, _ in residencies)
    print("residencies after    " + ", ".join(f"{tag} {state}" + (f" x{n}" if n > 1 else "")
                                              for (tag, state), n in states.items()))
    to_book = actions.get("use_loaded", 0) + actions.get("wait_for_load", 0)
    print(f"busy bookings        {booked:>7} of {to_book} use_loaded/wait_for_load answers (not checked: "
          f"an update the residency row is busy with is skipped, SKIP LOCKED in selection/advisory.py)")
    if queued is not None:
        print(f"load tasks queued    {queued:>7}   (never run; removed from the broker)")

    checks = [
        ("over-commit samples = 0", sampler.overcommits == 0),
        ("decisions recorded = 200 answers", len(ids) == statuses.get(200, 0) and ids == answered_ids),
        ("no 409", statuses.get(409, 0) == 0),
        ("no 503", statuses.get(503, 0) == 0),
        ("no other 5xx", five - statuses.get(503, 0) == 0),
        ("no other non-200 (4xx, transport errors)", not other),
    ]
    if queued is not None:
        checks.append(("one load task queued per `load` answer", queued == actions.get("load", 0)))
    print()
    for what, good in checks:
        print(f"  {'ok  ' if good else 'FAIL'} {what}")
    if sampler.first_over is not None:
        gpu, usable_mib, mib, victims = sampler.first_over
        print(f"  first over-commit: GPU id {gpu}: {mib:,} MiB booked, {victims:,} of it evicted victims, "
              f"{usable_mib:,} usable")
    failed = [(s, b) for s, _, b in results if s != 200]
    for s, b in failed[:5]:
        print(f"  a {s}: {str(b)[:200]}")
    return all(good for _, good in checks)


if __name__ == "__main__":
    sys.exit(main())
