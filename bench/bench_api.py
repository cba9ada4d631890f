"""POST /api/v1/select served by gunicorn, against its two baselines on the same server.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres \\
        .venv/bin/python bench/bench_api.py [--duration 10] [--connections 8] [--workers 3] [--keep-db]

What it does, all on this machine:

1. Creates a dedicated database (towerops_bench, dropped and re-created; dropped again at the
   end unless --keep-db) on the server of DATABASE_URL, migrates it, imports
   profiles/tower.yaml, creates an API key (select, read) and a loaded llama3.2:3b on
   tower-nvidia, so that the measured selection takes the common path (use_loaded: read
   the world, decide, record the decision and touch the residency, in one transaction).
2. Starts gunicorn (sync workers, 3 by default) on a free loopback port with DEBUG=0,
   SECURE_SSL_REDIRECT=0 and TOWEROPS_BENCH_ENDPOINTS=1 (mounts bench/baseline.py).
3. Measures with wrk (closed loop, 8 connections, --duration s each, after a 2 s warm-up):
     (a) POST /bench/const    constant JSON: the framework's ceiling
     (b) POST /bench/insert   one durable INSERT (own transaction, synchronous_commit as the
                              server has it) of a row the same size as a decision row
     (c) POST /api/v1/select  every decision persisted; (c') the same with every endpoint
                              down, so each selection is a remote fallback (no residency write)
   wrk's non-2xx count is reported: a figure with errors in it is not a throughput.
4. Measures select's latency at a FIXED offered load of half of (c)'s throughput with an
   open-loop generator written here (Python asyncio, one new connection per request as
   gunicorn's sync workers close every connection): requests are sent on a fixed schedule
   whether or not earlier ones have finished, and latency is counted from each request's
   scheduled time, so a stalled server cannot hide its queue (no coordinated omission).
   wrk2 is not packaged in Debian, hence this generator; it runs on the same 2 cores as
   the server, and its own scheduling lag is printed beside the figures.
5. Prints the table: requests/s of a, b, c; c/b and c/a; p50/p90/p99 at the fixed load.
   Targets (issue 3): c >= 50 % of b; p99 <= 15 ms at half of c's max.

gunicorn runs in its own session and is stopped (SIGTERM, then SIGKILL to its process group)
whatever happens; no process is left behind.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))  # its sibling benchdb.py
from benchdb import free_port, psql, run, stop_session  # noqa: E402
VENV_BIN = ROOT / ".venv" / "bin"
PYTHON = str(VENV_BIN / "python") if (VENV_BIN / "python").exists() else sys.executable
GUNICORN = str(VENV_BIN / "gunicorn") if (VENV_BIN / "gunicorn").exists() else (shutil.which("gunicorn") or "")
BENCH_DB = "towerops_bench"

SELECT_BODY = {"task_type": "general", "urgency": "critical", "client": "bench"}

SETUP = r"""
import datetime as dt, json, django
django.setup()
from models_registry import models as m
from models_registry.api.auth import create_key
now = dt.datetime.now(dt.timezone.utc)
model = m.LlmModel.objects.get(tag="llama3.2:3b")
ep = m.Endpoint.objects.get(name="tower-nvidia")
r = m.Residency.objects.create(model=model, endpoint=ep, state="loaded", trigger="admin", vram_mib=model.vram_mib,
                               requested_at=now, loaded_at=now, ready_at=now)
m.ResidencyGpu.objects.create(residency=r, gpu=ep.gpus.get(), vram_mib=model.vram_mib)
print(json.dumps({"key": create_key("bench", ["select", "read"])[1]}))
"""


# --------------------------------------------------------------------------- processes


def db_urls() -> tuple[str, str]:
    """(the server's maintenance database, the bench database) from DATABASE_URL."""
    base = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres")
    parts = urllib.parse.urlsplit(base)
    admin = parts._replace(path="/postgres").geturl()
    bench = parts._replace(path=f"/{BENCH_DB}").geturl()
    return admin, bench


class Gunicorn:
    """gunicorn in its own session; stop() ends it and everything it forked."""

    def __init__(self, env: dict, workers: int, log: Path, config: str | None = None):
        self.port = free_port()
        cmd = [GUNICORN, "towerops.wsgi:application", "--workers", str(workers), "--worker-class", "sync",
               "--bind", f"127.0.0.1:{self.port}", "--log-level", "warning", "--error-logfile", str(log),
               "--backlog", "2048", "--timeout", "60"]
        if config:
            cmd += ["--config", config]
        self._out = open(log.with_suffix(".out"), "wb")
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, start_new_session=True,
                                     stdout=self._out, stderr=subprocess.STDOUT)
        self.log = log

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                sys.exit(f"gunicorn exited with {self.proc.returncode}:\n{self.log.read_text()}")
            try:
                req = urllib.request.Request(self.base + "/bench/const", data=b"{}", method="POST")
                with urllib.request.urlopen(req, timeout=2) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, socket.timeout):
                time.sleep(0.2)
        sys.exit(f"gunicorn did not answer within {timeout} s:\n{self.log.read_text()}")

    def stop(self) -> None:
        stop_session(self.proc, self._out)


def sample(url: str, key: str) -> str:
    """One request's status and body, to show what a non-2xx figure was made of."""
    req = urllib.request.Request(url, data=json.dumps(SELECT_BODY).encode(),
                                 headers={"Content-Type": "application/json", "Authorization": f"Bearer {key}"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return f"{r.status} {r.read()[:200]!r}"
    except urllib.error.HTTPError as exc:
        return f"{exc.code} {exc.read()[:200]!r}"


# --------------------------------------------------------------------------- wrk (closed loop)


def wrk_script(path: Path, body: dict, key: str) -> None:
    path.write_text(
        'wrk.method = "POST"\n'
        f"wrk.body = {json.dumps(json.dumps(body))}\n"
        'wrk.headers["Content-Type"] = "application/json"\n'
        f'wrk.headers["Authorization"] = "Bearer {key}"\n'
    )


def wrk(url: str, script: Path, seconds: float, connections: int, threads: int = 2) -> dict:
    cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{int(seconds)}s", "--latency", "-s", str(script), url]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60).stdout
    num = lambda pat, default=0.0: float(m.group(1)) if (m := re.search(pat, out)) else default  # noqa: E731
    lat = {}
    for pct, value, unit in re.findall(r"^\s+(50|75|90|99)%\s+([\d.]+)(us|ms|s)\s*$", out, re.M):
        lat[int(pct)] = float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]
    return {
        "rps": num(r"Requests/sec:\s+([\d.]+)"),
        "requests": int(num(r"(\d+) requests in")),
        "non2xx": int(num(r"Non-2xx or 3xx responses:\s+(\d+)")),
        "socket_errors": sum(int(x) for x in re.findall(r"(?:connect|read|write|timeout) (\d+)", out)),
        "latency_ms": lat,
        "raw": out,
    }


# --------------------------------------------------------------------------- open loop (fixed rate)


async def _one(port: int, request: bytes, scheduled: float, out: list) -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    status = 0
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(request)
        data = await reader.read()  # the sync worker closes the connection after the response
        writer.close()
        status = int(data[9:12]) if data.startswith(b"HTTP/1.") else 0
    except (OSError, ValueError):
        status = -1
    done = loop.time()
    out.append((done - scheduled, done - started, started - scheduled, status))


async def _open_loop(port: int, request: bytes, rate: float, seconds: float) -> list:
    loop = asyncio.get_running_loop()
    n = int(rate * seconds)
    out: list = []
    tasks = []
    t0 = loop.time() + 0.05
    for i in range(n):
        target = t0 + i / rate
        delay = target - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(_one(port, request, target, out)))
    await asyncio.gather(*tasks)
    return out


def fixed_rate(port: int, path: str, body: dict, key: str, rate: float, seconds: float) -> dict:
    payload = json.dumps(body).encode()
    request = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {key}\r\nContent-Length: {len(payload)}\r\nConnection: close\r\n\r\n"
    ).encode() + payload
    began = time.monotonic()
    out = asyncio.run(_open_loop(port, request, rate, seconds))
    wall = time.monotonic() - began
    lat = sorted(x[0] * 1e3 for x in out)
    service = sorted(x[1] * 1e3 for x in out)
    lag = sorted(x[2] * 1e3 for x in out)

    def pct(xs, p):
        return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))] if xs else float("nan")

    return {
        "offered_rps": rate,
        "sent": len(out),
        "achieved_rps": len(out) / wall,
        "errors": sum(1 for x in out if x[3] != 200),
        "p50": pct(lat, 50), "p90": pct(lat, 90), "p99": pct(lat, 99), "max": lat[-1] if lat else float("nan"),
        "service_p50": pct(service, 50), "service_p99": pct(service, 99),
        "lag_p50": pct(lag, 50), "lag_p99": pct(lag, 99),
    }


# --------------------------------------------------------------------------- main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=10.0, help="seconds per wrk measurement")
    ap.add_argument("--fixed-duration", type=float, default=10.0, help="seconds of the fixed-rate run")
    ap.add_argument("--rounds", type=int, default=1,
                    help="measure a, b, c, c' this many times, interleaved, and report each one's median "
                         "(steadier on a shared machine)")
    ap.add_argument("--connections", type=int, default=8)
    ap.add_argument("--workers", type=int, default=3)
    ap.add_argument("--keep-db", action="store_true", help=f"leave the {BENCH_DB} database behind")
    ap.add_argument("--gunicorn-config", help="an extra gunicorn config file (e.g. to try a patch)")
    args = ap.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk is missing: apt-get install -y wrk")
    if not GUNICORN:
        sys.exit("gunicorn is missing: pip install gunicorn")

    admin_url, bench_url = db_urls()
    env = {
        **os.environ,
        "DATABASE_URL": bench_url,
        "DJANGO_SETTINGS_MODULE": "towerops.settings",
        "DEBUG": "0",
        "SECURE_SSL_REDIRECT": "0",
        "TOWEROPS_BENCH_ENDPOINTS": "1",
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
        "LOG_LEVEL": "WARNING",
        "CELERY_BROKER_URL": os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/0"),
        "PYTHONPATH": str(ROOT),
    }
    server = None
    workdir = Path(tempfile.mkdtemp(prefix="towerops-bench-"))

    def on_term(signum, frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)
    try:
        print(f"preparing database {BENCH_DB} ...", flush=True)
        psql(admin_url, f"DROP DATABASE IF EXISTS {BENCH_DB} WITH (FORCE)")
        psql(admin_url, f"CREATE DATABASE {BENCH_DB}")
        run([PYTHON, "manage.py", "migrate", "-v", "0"], env, "migrate")
        run([PYTHON, "manage.py", "load_profile", "profiles/tower.yaml"], env, "load_profile")
        key = json.loads(run([PYTHON, "-c", SETUP], env, "setup").strip().splitlines()[-1])["key"]
        settings = dict(psql(bench_url, "SELECT name, setting FROM pg_settings WHERE name IN "
                                        "('synchronous_commit', 'fsync', 'wal_sync_method', 'server_version')",
                             fetch=True))

        server = Gunicorn(env, args.workers, workdir / "gunicorn.log", args.gunicorn_config)
        server.wait_ready()

        # One real decision, copied as the template of the INSERT baseline's row.
        req = urllib.request.Request(server.base + "/api/v1/select", data=json.dumps(SELECT_BODY).encode(),
                                     headers={"Content-Type": "application/json", "Authorization": f"Bearer {key}"})
        with urllib.request.urlopen(req, timeout=10) as r:
            first = json.loads(r.read())
        print(f"select: {first['model']} {first['action']} ({first['reason'][:80]}...)", flush=True)
        psql(bench_url, "CREATE TABLE bench_template AS SELECT * FROM models_registry_selectiondecision "
                        "ORDER BY id DESC LIMIT 1")
        psql(bench_url, "CREATE TABLE bench_insert (LIKE models_registry_selectiondecision "
                        "INCLUDING DEFAULTS INCLUDING IDENTITY)")
        psql(bench_url, "ALTER TABLE bench_insert ADD PRIMARY KEY (id)")
        row_bytes = psql(bench_url, "SELECT pg_column_size(t.*) FROM bench_template t", fetch=True)[0][0]
        n_indexes = psql(bench_url, "SELECT count(*) FROM pg_indexes WHERE tablename = "
                                    "'models_registry_selectiondecision'", fetch=True)[0][0]

        script = workdir / "post.lua"
        wrk_script(script, SELECT_BODY, key)
        plan = [
            ("a", "/bench/const", "constant JSON (framework ceiling)"),
            ("b", "/bench/insert", "one durable INSERT of a decision-sized row"),
            ("c", "/api/v1/select", "select, use_loaded, every decision persisted"),
            ("c'", "/api/v1/select", "select, fallback (endpoints down), every decision persisted"),
        ]
        runs: dict[str, list[dict]] = {name: [] for name, _, _ in plan}
        for rnd in range(args.rounds):
            for name, path, what in plan:
                if name == "c'":  # the fallback path: every endpoint down, no residency to touch
                    psql(bench_url, "UPDATE models_registry_endpoint SET is_up = false")
                wrk(server.base + path, script, 2, args.connections)  # warm-up
                count = "SELECT count(*) FROM models_registry_selectiondecision"
                before = psql(bench_url, count, fetch=True)[0][0]
                res = wrk(server.base + path, script, args.duration, args.connections)
                res["decisions"] = psql(bench_url, count, fetch=True)[0][0] - before
                res["what"] = what
                if res["non2xx"]:
                    res["sample_error"] = sample(server.base + path, key)
                if name == "c'":
                    psql(bench_url, "UPDATE models_registry_endpoint SET is_up = true")
                runs[name].append(res)
                print(f"  round {rnd + 1}: ({name}) {what}: {res['rps']:.0f} req/s, non-2xx {res['non2xx']}",
                      flush=True)
        # each endpoint's median round
        results = {name: sorted(rs, key=lambda r: r["rps"])[len(rs) // 2] for name, rs in runs.items()}
        for name, rs in runs.items():
            results[name]["all_rps"] = [r["rps"] for r in rs]
        inserted_bytes = psql(bench_url, "SELECT avg(pg_column_size(t.*))::int FROM bench_insert t", fetch=True)[0][0]

        # Latency at a fixed offered load: half of select's maximum.
        c_max = results["c"]["rps"] if results["c"]["non2xx"] == 0 else results["c'"]["rps"]
        rate = max(1.0, c_max / 2)
        fixed = fixed_rate(server.port, "/api/v1/select", SELECT_BODY, key, rate, args.fixed_duration)
        server.stop()
        server_log = (workdir / "gunicorn.log").read_text() + (workdir / "gunicorn.out").read_text(errors="replace")

        report(results, fixed, settings, row_bytes, inserted_bytes, n_indexes, args)
        if server_log.strip():
            print("\ngunicorn log (warnings and errors):\n" + "\n".join(server_log.strip().splitlines()[-15:]))
        return 0
    finally:
        if server is not None:
            server.stop()
        if not args.keep_db:
            try:
                psql(admin_url, f"DROP DATABASE IF EXISTS {BENCH_DB} WITH (FORCE)")
            except Exception as exc:  # noqa: BLE001
                print(f"could not drop {BENCH_DB}: {exc}", file=sys.stderr)
        shutil.rmtree(workdir, ignore_errors=True)


def report(results, fixed, settings, row_bytes, inserted_bytes, n_indexes, args) -> None:
    a, b, c, cf = results["a"]["rps"], results["b"]["rps"], results["c"]["rps"], results["c'"]["rps"]
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor())
    print()
    print(f"machine: {os.cpu_count()} cores ({cpu}), Python {platform.python_version()}, "
          f"PostgreSQL {settings.get('server_version')} (synchronous_commit={settings.get('synchronous_commit')}, "
          f"fsync={settings.get('fsync')}, wal_sync_method={settings.get('wal_sync_method')})")
    print(f"server: gunicorn, {args.workers} sync workers, DEBUG=0; load: wrk -t2 -c{args.connections}, "
          f"{args.duration:.0f} s per figure after a 2 s warm-up, median of {args.rounds} interleaved round(s)")
    print(f"decision row: {row_bytes} B (pg_column_size; {n_indexes} indexes on its table); "
          f"baseline row: {inserted_bytes} B (primary key only)")
    print()
    print(f"| {'endpoint':<62} | {'req/s':>7} | {'p50 ms':>6} | {'p99 ms':>6} | {'non-2xx':>7} |")
    print(f"|{'-' * 64}|{'-' * 9}:|{'-' * 8}:|{'-' * 8}:|{'-' * 9}:|")
    for name in ("a", "b", "c", "c'"):
        r = results[name]
        label = f"({name}) {r['what']}"[:62]
        print(f"| {label:<62} | {r['rps']:>7.0f} | {r['latency_ms'].get(50, float('nan')):>6.2f} | "
              f"{r['latency_ms'].get(99, float('nan')):>6.2f} | {r['non2xx']:>7} |")
    print()
    if args.rounds > 1:
        print("rounds (req/s): " + "; ".join(
            f"{n}: {', '.join(f'{x:.0f}' for x in results[n]['all_rps'])}" for n in ("a", "b", "c", "c'")))
    print(f"c / b = {c / b:.0%}   (target >= 50 %)        c / a = {c / a:.0%}")
    print(f"c'/ b = {cf / b:.0%}   (fallback path)          c'/ a = {cf / a:.0%}")
    if results["c"].get("decisions") is not None:
        print(f"decisions persisted during (c): {results['c']['decisions']} for {results['c']['requests']} "
              f"requests completed by wrk")
    bad = [n for n in ("a", "b", "c", "c'") if results[n]["non2xx"] or results[n]["socket_errors"]]
    if bad:
        print(f"WARNING: errors during {', '.join(bad)}: those figures are not valid throughputs")
        for n in bad:
            if results[n].get("sample_error"):
                print(f"  ({n}) a request now gets: {results[n]['sample_error']}")
    print()
    print(f"fixed offered load {fixed['offered_rps']:.0f} req/s (half of select's max), open loop, "
          f"{fixed['sent']} requests at {fixed['achieved_rps']:.0f} req/s sent, {fixed['errors']} errors:")
    print(f"  latency from scheduled send: p50 {fixed['p50']:.2f} ms, p90 {fixed['p90']:.2f} ms, "
          f"p99 {fixed['p99']:.2f} ms, max {fixed['max']:.2f} ms   (target p99 <= 15 ms)")
    print(f"  from actual send: p50 {fixed['service_p50']:.2f} ms, p99 {fixed['service_p99']:.2f} ms; "
          f"generator lag p50 {fixed['lag_p50']:.2f} ms, p99 {fixed['lag_p99']:.2f} ms")


if __name__ == "__main__":
    sys.exit(main())
