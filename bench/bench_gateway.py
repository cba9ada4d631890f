"""The gateway's cost, side by side in one run: the same streamed requests sent straight to the
simulated Ollama and through the gateway, at 1, 16 and 64 concurrent streams; then the memory of
1,000 concurrent open streams.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres CELERY_BROKER_URL=redis://127.0.0.1:6379/0 \\
        .venv/bin/python bench/bench_gateway.py [--requests 160] [--rounds 3] [--streams 1000] [--keep-db]

What it does, all on this machine:

1. Creates a dedicated database (towerops_bench_gateway, dropped and re-created; dropped again at
   the end unless --keep-db), migrates it, imports a copy of profiles/tower.yaml on free ports
   (each endpoint num_parallel 64, GPUs of 1 TB so 1,100 parallel KV caches fit) plus one slow model
   for the memory test, creates an API key
   (infer) and records llama3.2:3b as loaded on tower-amd.
2. Starts the simulator (its own process, real time: time_scale 1, OLLAMA_NUM_PARALLEL 1100) and
   loads llama3.2:3b there with the endpoint's num_ctx, then the gateway (`manage.py rungateway`,
   uvicorn + uvloop + httptools, one process, admission in Redis as deployed).
3. For 1, 16 and 64 concurrent streams (a closed loop of that many clients, --requests each
   round), alternates rounds straight to Ollama and through the gateway (direct, gateway, direct,
   gateway ...), all streamed /api/chat with 32 answer tokens at the model's 80 tokens/s. TTFT is
   from sending the request to receiving the first NDJSON line. Added TTFT = the gateway's
   percentile minus the direct one. Relay throughput: NDJSON lines received per second over the
   round, both ways. Every gateway request is selected, admitted, forwarded, measured and recorded
   like production traffic (urgency critical with a patience of an hour, so the queue it makes
   never loads a copy).
4. Opens --streams streamed requests at once through the gateway for a model that answers one
   token a second, waits until every one has its first line, and reads the gateway process's RSS
   (/proc/PID/status) before and during: the memory per open stream. Then closes them all.
5. Prints the classifier's speed on the shipped labelled prompts.

The simulator, the gateway and this client share the machine's cores; the direct path pays the
same client and simulator costs, so the difference is the gateway's. Targets (issue 14): added
TTFT <= 2 ms p50 and <= 10 ms p99 at 16 streams (LiteLLM's Python proxy: 251 ms p99 at 16).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # this checkout's models_registry, not an installed copy
PYTHON = str(ROOT / ".venv" / "bin" / "python") if (ROOT / ".venv" / "bin" / "python").exists() else sys.executable
BENCH_DB = "towerops_bench_gateway"

SETUP = r"""
import datetime as dt, json, django
django.setup()
from models_registry import models as m
from models_registry.api.auth import create_key
now = dt.datetime.now(dt.timezone.utc)
for tag in ("llama3.2:3b", "bench-slow:1b"):
    model = m.LlmModel.objects.get(tag=tag)
    ep = m.Endpoint.objects.get(name="tower-amd")
    r = m.Residency.objects.create(model=model, endpoint=ep, state="loaded", trigger="admin",
                                   vram_mib=model.vram_mib, requested_at=now, loaded_at=now, ready_at=now)
    m.ResidencyGpu.objects.create(residency=r, gpu=ep.gpus.get(), vram_mib=model.vram_mib)
m.Endpoint.objects.update(num_parallel=1100)  # the memory test keeps 1,000 streams in flight at once
print(json.dumps({"key": create_key("bench", ["infer"])[1]}))
"""

SIMULATOR = r"""
import sys
from models_registry.catalog.profile import load_profile_file
from models_registry.fakes.ollama_server import SimulatedTower
tower = SimulatedTower(load_profile_file(sys.argv[1]), time_scale=1.0, num_parallel=1100, default_eval_tokens=4000,
                       max_queue=4096)
tower.start()
print("ready", flush=True)
tower.serve_forever()
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def psql(url: str, sql: str) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql)


def run(cmd: list[str], env: dict, what: str) -> str:
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"{what} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    return p.stdout


def bench_profile(path: Path, ports: dict[str, int]) -> None:
    data = yaml.safe_load((ROOT / "profiles" / "tower.yaml").read_text())
    for host in data["hosts"]:
        for gpu in host["gpus"]:
            # 1,100 parallel slots hold 1,100 KV caches (500 GB for llama3.2:3b at 4096): this measures
            # the relay, not VRAM, so the bench's GPUs are big enough for them (1 TB, the profile's largest).
            gpu["total_gb"] = 1024
        for ep in host["endpoints"]:
            ep["base_url"] = f"http://127.0.0.1:{ports[ep['name']]}"
            ep["num_parallel"] = 64
    data["models"].append({"tag": "bench-slow:1b", "file_size_gb": 0.1, "vram_gb": 0.2, "load_s": 0.5,
                           "tokens_per_s": 1, "quality": {t["name"]: 0.9 for t in data["task_types"]}})
    data.pop("preload_windows", None)
    path.write_text(yaml.safe_dump(data))


class Proc:
    def __init__(self, cmd: list[str], env: dict, log: Path):
        self._log = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.p = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                  start_new_session=True)
        self.log = log

    def stop(self) -> None:
        if self.p.poll() is None:
            os.killpg(self.p.pid, signal.SIGTERM)
            try:
                self.p.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.p.pid, signal.SIGKILL)
                self.p.wait(5)
        self._log.close()


def wait_http(url: str, proc: Proc, timeout: float = 60.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.p.poll() is not None:
            sys.exit(f"{proc.log.name} exited:\n{proc.log.read_text()[-3000:]}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    sys.exit(f"{url} did not answer in {timeout:g} s")


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


# --------------------------------------------------------------------------- measuring


BODY = {"model": "llama3.2:3b", "messages": [{"role": "user", "content": "hello, say something"}],
        "options": {"num_predict": 32, "num_ctx": 4096}, "keep_alive": "-1m"}


async def one(client, url: str, headers: dict) -> tuple[float, int]:
    t0 = time.perf_counter()
    first, lines = None, 0
    async with client.stream("POST", url, json=BODY, headers=headers) as r:
        if r.status_code != 200:
            raise RuntimeError(f"{url}: HTTP {r.status_code}: {(await r.aread())[:300]!r}")
        async for line in r.aiter_lines():
            if not line:
                continue
            if first is None:
                first = time.perf_counter()
            lines += 1
            if '"error"' in line:
                raise RuntimeError(f"{url}: {line[:300]}")
    return first - t0, lines


async def round_(url: str, headers: dict, concurrency: int, total: int) -> dict:
    import httpx

    ttfts: list[float] = []
    lines = 0
    queue = list(range(total))
    limits = httpx.Limits(max_connections=concurrency + 4, max_keepalive_connections=concurrency + 4)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        async def worker():
            nonlocal lines
            while queue:
                queue.pop()
                ttft, n = await one(client, url, headers)
                ttfts.append(ttft)
                lines += n

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    return {"ttfts": ttfts, "lines": lines, "wall": wall}


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, int(round(q / 100 * len(s) + 0.5)) - 1))]  # nearest rank


async def open_streams(url: str, headers: dict, n: int, pid: int) -> dict:
    import httpx

    body = {"model": "bench-slow:1b", "messages": [{"role": "user", "content": "go"}], "stream": True}
    limits = httpx.Limits(max_connections=n + 10, max_keepalive_connections=0)
    before = rss_kib(pid)
    firsts = 0
    started = asyncio.Event()
    hold = asyncio.Event()
    async with httpx.AsyncClient(timeout=300, limits=limits) as client:
        async def stream():
            nonlocal firsts
            async with client.stream("POST", url, json=body, headers=headers) as r:
                async for line in r.aiter_lines():
                    if line:
                        firsts += 1
                        if firsts == n:
                            started.set()
                        break
                await hold.wait()  # keep the stream open until measured

        tasks = [asyncio.create_task(stream()) for _ in range(n)]
        t0 = time.perf_counter()
        try:
            await asyncio.wait_for(started.wait(), 180)
        except asyncio.TimeoutError:
            pass
        opened_s = time.perf_counter() - t0
        await asyncio.sleep(1.0)
        during = rss_kib(pid)
        hold.set()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return {"open": firsts, "before_kib": before, "during_kib": during, "opened_s": opened_s}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=160, help="requests per round and concurrency")
    ap.add_argument("--rounds", type=int, default=3, help="rounds per path (interleaved)")
    ap.add_argument("--streams", type=int, default=1000, help="open streams for the memory figure")
    ap.add_argument("--keep-db", action="store_true")
    args = ap.parse_args()

    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # 1,000 streams hold 3,000 sockets

    base = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres")
    parts = urllib.parse.urlsplit(base)
    admin_url, bench_url = parts._replace(path="/postgres").geturl(), parts._replace(path=f"/{BENCH_DB}").geturl()
    broker = os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/0")
    tmp = Path(tempfile.mkdtemp(prefix="bench-gateway-"))
    ports = {"tower-amd": free_port(), "tower-nvidia": free_port()}
    gw_port = free_port()
    env = {**os.environ, "DATABASE_URL": bench_url, "DJANGO_SETTINGS_MODULE": "towerops.settings", "DEBUG": "0",
           "SECURE_SSL_REDIRECT": "0", "CELERY_BROKER_URL": broker, "SECRET_KEY": os.environ.get("SECRET_KEY", "bench"),
           "TOWEROPS_GATEWAY_REDIS_URL": broker, "TOWEROPS_GATEWAY_REDIS_PREFIX": f"towerops:bench:{os.getpid()}:",
           "LOG_LEVEL": "WARNING", "PYTHONUNBUFFERED": "1"}
    procs: list[Proc] = []
    try:
        psql(admin_url, f"DROP DATABASE IF EXISTS {BENCH_DB} WITH (FORCE)")
        psql(admin_url, f"CREATE DATABASE {BENCH_DB}")
        profile = tmp / "profile.yaml"
        bench_profile(profile, ports)
        run([PYTHON, "manage.py", "migrate", "-v", "0"], env, "migrate")
        run([PYTHON, "manage.py", "load_profile", str(profile)], env, "load_profile")
        key = json.loads(run([PYTHON, "-c", SETUP], env, "setup").strip().splitlines()[-1])["key"]

        sim = Proc([PYTHON, "-c", SIMULATOR, str(profile)], env, tmp / "simulator.log")
        procs.append(sim)
        amd = f"http://127.0.0.1:{ports['tower-amd']}"
        wait_http(amd + "/", sim)
        import httpx

        for tag in ("llama3.2:3b", "bench-slow:1b"):  # loaded as TowerOps loads: the endpoint's num_ctx
            httpx.post(amd + "/api/generate", json={"model": tag, "keep_alive": "-1m", "options": {"num_ctx": 4096}},
                       timeout=120).raise_for_status()
        gw = Proc([PYTHON, "manage.py", "rungateway", "--bind", f"127.0.0.1:{gw_port}"], env, tmp / "gateway.log")
        procs.append(gw)
        gateway = f"http://127.0.0.1:{gw_port}"
        wait_http(gateway + "/", gw)
        # Critical with a patience the queue stays within: it keeps to the loaded model, never loads a copy.
        auth = {"Authorization": f"Bearer {key}", "X-TowerOps-Urgency": "critical", "X-TowerOps-Max-Wait": "3600"}
        paths = {"direct": (amd + "/api/chat", {}), "gateway": (gateway + "/api/chat", auth)}
        print("warm-up", file=sys.stderr)
        asyncio.run(round_(paths["gateway"][0], auth, 4, 20))  # warm-up: connections, caches, JIT of the plans
        asyncio.run(round_(paths["direct"][0], {}, 4, 20))

        results: dict[tuple[str, int], list[dict]] = {}
        for concurrency in (1, 16, 64):
            total = max(args.requests, concurrency * 3) if concurrency > 1 else max(40, args.requests // 4)
            for _ in range(args.rounds):
                for name in ("direct", "gateway"):
                    url, headers = paths[name]
                    print(f"round: {name}, {concurrency} streams, {total} requests", file=sys.stderr)
                    results.setdefault((name, concurrency), []).append(
                        asyncio.run(round_(url, headers, concurrency, total)))
        mem = asyncio.run(open_streams(paths["gateway"][0], auth, args.streams, gw.p.pid))

        from models_registry.gateway.classifier import classify

        rows = [json.loads(x) for x in (ROOT / "tests/gateway/data/classifier_labelled.jsonl").read_text().splitlines()]
        tasks = ["general", "troubleshooting", "code_generation", "analysis", "chat", "summarization"]
        t0 = time.perf_counter()
        for _ in range(20):
            for r in rows:
                classify(r["prompt"], tasks)
        classify_us = (time.perf_counter() - t0) / (20 * len(rows)) * 1e6
    except BaseException:
        for p in procs:  # what the servers said, before their logs go with the temporary folder
            print(f"----- {p.log.name} (last lines)\n{p.log.read_text(errors='replace')[-3000:]}", file=sys.stderr)
        raise
    finally:
        for p in reversed(procs):
            p.stop()
        if not args.keep_db:
            try:
                psql(admin_url, f"DROP DATABASE IF EXISTS {BENCH_DB} WITH (FORCE)")
            except Exception as exc:  # noqa: BLE001 - report, never mask the run's own error
                print(f"could not drop {BENCH_DB}: {exc}")

    print(f"\nbench_gateway on {platform.node()} ({os.cpu_count()} CPUs, Python {platform.python_version()}), "
          f"{time.strftime('%Y-%m-%d %H:%M')}; the simulator, the gateway (1 uvicorn process, Redis admission) "
          f"and this client on the same cores; {args.rounds} interleaved rounds per path")
    print(f"{'streams':>7} | {'direct TTFT p50 / p99 ms':>24} | {'gateway TTFT p50 / p99 ms':>25} | "
          f"{'added p50 / p99 ms':>18} | {'lines/s direct':>14} | {'lines/s gateway':>15} | ratio")
    for concurrency in (1, 16, 64):
        d = [t for r in results[("direct", concurrency)] for t in r["ttfts"]]
        g = [t for r in results[("gateway", concurrency)] for t in r["ttfts"]]
        dl = sum(r["lines"] for r in results[("direct", concurrency)]) / sum(r["wall"] for r in results[("direct", concurrency)])
        gl = sum(r["lines"] for r in results[("gateway", concurrency)]) / sum(r["wall"] for r in results[("gateway", concurrency)])
        dp50, dp99, gp50, gp99 = pct(d, 50) * 1e3, pct(d, 99) * 1e3, pct(g, 50) * 1e3, pct(g, 99) * 1e3
        print(f"{concurrency:>7} | {dp50:>10.2f} / {dp99:>10.2f} | {gp50:>11.2f} / {gp99:>10.2f} | "
              f"{gp50 - dp50:>7.2f} / {gp99 - dp99:>8.2f} | {dl:>14.0f} | {gl:>15.0f} | {gl / dl:.2f}"
              f"   (n={len(d)}/{len(g)}, direct mean {statistics.mean(d) * 1e3:.2f} ms)")
    per = (mem["during_kib"] - mem["before_kib"]) / max(mem["open"], 1)
    print(f"\n{mem['open']} of {args.streams} streams open at once through the gateway (opened in "
          f"{mem['opened_s']:.1f} s): gateway RSS {mem['before_kib'] / 1024:.1f} MiB idle -> "
          f"{mem['during_kib'] / 1024:.1f} MiB, {per:.1f} KiB per open stream")
    print(f"classifier: {classify_us:.0f} us per prompt (mean over the {len(rows)} labelled prompts)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
