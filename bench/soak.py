"""Live = replay, measured: a shipped trace through the running stack for --minutes of wall time,
its live SLOs, thrash loads and quote errors printed beside the replay's prediction for exactly
the same requests on the same profile.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/tw_soak CELERY_BROKER_URL=redis://127.0.0.1:6379/9 \\
    SECRET_KEY=dev .venv/bin/python bench/soak.py [--minutes 60] \\
        [--trace data/traces/azure2023_merged_by_service.csv] [--mapping azure2023] [--sample 0.03] \\
        [--seed 1] [--stretch 1] [--profile profiles/tower.yaml] [--cold] [--time-scale 1] \\
        [--warmup 90] [--drain 20] [--json OUT] [--keep-db]

What it does, all on this machine:

1. Creates the database named in DATABASE_URL (`towerops_soak` when it names none or
   `postgres`; re-created if an earlier soak left it, refused if something else made it),
   migrates it, imports a copy of --profile (`manage.py load_profile`) whose endpoints listen on
   free loopback ports (so it runs beside another stack on the profile's own ports), and creates
   an API key (`manage.py create_api_key soak --scopes infer,read`).
2. Starts the stack for real, each process in its own session, as deploy/bin/ runs them: the web
   app (`manage.py runserver`), the gateway (`manage.py rungateway`, admission in Redis), a Celery
   worker for the `central` queue (deploy/bin/worker, 2 processes), one Celery worker per host
   queue (deploy/bin/agent, 4 processes each), Celery beat (the sync, telemetry and preload
   ticks; its schedule file in a temporary folder) and the simulated Ollama servers of the profile
   (`models_registry.fakes.ollama_server.SimulatedTower`, its GPUs written for the agents'
   collectors as `manage.py runstack` does). Not `manage.py runstack`: it runs one worker for every
   queue, and its `simulate_tower` cannot be told the answer length -- the simulator generates
   min(num_predict, default_eval_tokens) tokens and the command leaves default_eval_tokens at 32,
   so every trace answer longer than 32 tokens would be cut to 32. Here the simulator is the same
   class with default_eval_tokens = 1,000,000: each answer has exactly the trace's output tokens.
   The simulator runs at --time-scale (default 1: a 13.5 s load takes 13.5 s and a 45 tokens/s
   model streams 45 tokens a second, the seconds the profile, the policy and the replay count in).
   --time-scale k divides every simulated duration (loads, prefill, token pacing) by k and nothing
   else: the policy still quotes the profile's seconds, beat still ticks in real seconds and the
   trace is not compressed, so the live figures are no longer comparable with the replay (use it
   to check that the tool works, fast); the within-15 % targets are then printed but not checked.
3. Warm start (the default; --cold skips it): the replay's default warm-up is a week of the
   profile's preload windows before the first request (docs/replay.md's regression runs so), so
   the soak loads, before beat starts, exactly the (model, endpoint) pairs that week leaves
   resident at the trace's start on the replay's tower, through runtime.reservations.request_load
   with trigger "preload" (what beat's preload tick records), one at a time, largest first (as a
   preload tick orders them: Ollama fits a model beside others only within 80 % of the free
   memory, so the order decides whether a set fits; concurrent load tasks would race), and waits
   until each is loaded.
   Then beat starts, and the soak waits --warmup seconds (at least one preload tick) and until
   every endpoint has been synced and is up, a GPU snapshot exists and no load is in flight (at
   most 5 more minutes). Nothing before the trace's start t0 is counted.
   With --cold the tower starts empty and only beat's ticks of the warm-up preload; the replay
   then runs its preload ticks from as long before the first request as the live warm-up took.
4. Takes the trace through the replay's own code (models_registry.replay.traces: read_trace,
   the --mapping's task types and urgencies, scale_and_sample with --stretch (2 = arrivals twice
   as far apart) and --sample (a seeded fraction)) and keeps the requests arriving in the first
   --minutes: the same draws as `manage.py replay --sample S --seed N --time-scale X`, cut. Each
   request is sent at its arrival time from the trace's start t0 (open loop: late answers never
   delay later sends) through the gateway as a streamed `POST /api/chat` with model "auto",
   X-TowerOps-Task / X-TowerOps-Urgency from the mapping, a prompt of 4 x min(input tokens,
   num_ctx) characters (the gateway estimates 4 characters a token; Ollama truncates a prompt to
   num_ctx, the simulator does not, so the soak does; the simulator's chat template adds 10
   tokens, ≤ 12 ms of prefill) and options.num_predict = output tokens (at
   least 1). The trace's default, the merged Azure 2023 trace at 3 % (≈ 0.25 requests/s, seed 1),
   is the load docs/replay.md shows the Tower can serve (its regression run).
5. After the last answer, waits --drain seconds (outcomes are recorded in the background), stops
   the stack, and reads from the database, over the soak's window [t0, last answer's end):
   the five SLOs through the project's own code (models_registry.slo.rollups.compute_hour per
   hour from t0 and models_registry.slo.metrics.evaluate: interactive p95 of the gateway-measured
   time to first token, loads/h, VRAM efficiency, quality met, fallback rate); the loads, their
   thrash loads (a load of a model that was evicted from the same endpoint less than 10 minutes
   before it was requested; an eviction is a LoadEvent of kind "evict", or "unload" with trigger
   "external") and the quote errors (for every decision with a measured first token: that time
   minus the decision's expected_wait_s; p50, p95, max, min and the share within 1 s).
6. Replays the same request list on the same profile in-process (models_registry.replay.simulate,
   policy "towerops", the wall-clock time of t0 as its clock so the same preload windows are open,
   a week of preload ticks before, or with --cold the live warm-up's length) and computes the
   same figures from it (replay.report.summarize for the SLOs; thrash from its LoadRecs: load
   requested at `at - duration_s`, evictions = kind "evict"; quote errors from each Served's ttft_s
   - expected_wait_s).
7. Prints live | replay | live÷replay, and the checks below; --json OUT writes every figure and
   each live request.

Exit status: 0, or 1 when one of these fails -- (a) every request was answered 200 and its stream
ended with `done` (else the live figures describe something else); the issue's targets: (b) live
loads/h < 10, (c) live thrash loads ≤ 5 % of live loads, (d) live loads/h and (e) live interactive
p95 within 15 % of the replay's (|live - replay| ≤ 0.15 x replay; a replay of 0 loads/h asks for
0). (d) and (e) are not checked with --time-scale ≠ 1. A setup failure (a process that exits, a
command that fails, a database it did not create) stops the run with a message and status 2.

Give it a broker database of its own (CELERY_BROKER_URL=redis://…/N): Celery's queues `central` and
`host.<name>` are shared by every stack on that database, and the soak empties them.

Every child runs in its own session and is stopped (SIGTERM, then SIGKILL to its process group)
whatever happens; the database is dropped unless --keep-db, the broker's queues of the run are
emptied, and the temporary folder (logs, schedule, simulated GPUs) is removed unless --keep-db.
"""
from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import math
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # this checkout's models_registry, not an installed copy
sys.path.insert(0, str(ROOT / "bench"))  # its sibling benchdb.py
import benchdb  # noqa: E402
from benchdb import free_port  # noqa: E402
from models_registry.slo.metrics import is_thrash_load  # noqa: E402  (pure: no Django)

VENV_BIN = ROOT / ".venv" / "bin"
PYTHON = str(VENV_BIN / "python") if (VENV_BIN / "python").exists() else sys.executable
DEFAULT_DB = "towerops_soak"
DB_COMMENT = "towerops bench/soak.py"  # marks a database this tool may drop
DEFAULT_TRACE = "data/traces/azure2023_merged_by_service.csv"
WITHIN = 0.15
MAX_LOADS_PER_HOUR = 10.0
MAX_THRASH_SHARE = 0.05
WARMUP_EXTRA_S = 300.0
WEEK_S = 7 * 86400.0  # the replay's default warm-up: a week of preload windows

SIMULATOR = r"""
import logging, signal, sys, threading
from models_registry.catalog.profile import load_profile_file
from models_registry.fakes import gpu_telemetry
from models_registry.fakes.ollama_server import SimulatedTower
logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
tower = SimulatedTower(load_profile_file(sys.argv[1]), time_scale=float(sys.argv[2]),
                       default_eval_tokens=1_000_000)  # num_predict decides every answer's length
tower.start()
telemetry = gpu_telemetry.TelemetryWriter(tower, sys.argv[3]).start()
signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=tower.shutdown, daemon=True).start())
print("ready", flush=True)
tower.serve_forever()
telemetry.stop()
"""


def fail(message: str):
    """A setup failure: the message, status 2 (1 is a failed check)."""
    print(message, file=sys.stderr, flush=True)
    raise SystemExit(2)


# --------------------------------------------------------------------------- figures (pure)


@dataclass(frozen=True)
class Ev:
    """A load event, live or replayed: `at` in seconds, the request time of a load."""

    at: float
    kind: str  # load | evict | unload | fail
    model: str
    endpoint: str
    trigger: str = ""


def is_eviction(e: Ev) -> bool:
    return e.kind == "evict" or (e.kind == "unload" and e.trigger == "external")


def thrash_loads(events, start: float = -math.inf, end: float = math.inf) -> tuple[list[Ev], list[Ev]]:
    """(loads in [start, end), those of them that are thrash: metrics.is_thrash_load, a load of a model
    that was evicted from the same endpoint less than 10 minutes before the load). Evictions before `start` count;
    at equal times an eviction comes first (it happened before the load it made room for)."""
    last_evicted: dict[tuple[str, str], float] = {}
    loads, thrash = [], []
    for e in sorted(events, key=lambda e: (e.at, 0 if is_eviction(e) else 1)):
        key = (e.model, e.endpoint)
        if is_eviction(e):
            last_evicted[key] = e.at
        elif e.kind == "load" and start <= e.at < end:
            loads.append(e)
            if is_thrash_load(e.at, last_evicted.get(key)):
                thrash.append(e)
    return loads, thrash


def pct(values, p: float) -> float | None:
    """Nearest rank (the ceil(p·n)-th smallest), as models_registry.slo.metrics and replay.report."""
    s = sorted(values)
    if not s:
        return None
    return s[max(0, math.ceil(p * len(s)) - 1)]


def quote_errors(pairs) -> dict:
    """Of (actual time to first token, quoted expected_wait_s) pairs: actual - quoted, summarised."""
    errs = sorted(a - q for a, q in pairs if a is not None and q is not None)
    if not errs:
        return {"n": 0, "p50": None, "p95": None, "max": None, "min": None, "within_1s": None}
    return {"n": len(errs), "p50": pct(errs, 0.5), "p95": pct(errs, 0.95), "max": errs[-1], "min": errs[0],
            "within_1s": sum(1 for e in errs if abs(e) <= 1.0) / len(errs)}


def within(live: float | None, replay: float | None, tol: float = WITHIN) -> bool | None:
    """|live - replay| <= tol x replay (a replay of 0 asks for 0); None without both figures."""
    if live is None or replay is None:
        return None
    return abs(live - replay) <= tol * abs(replay) + 1e-9


# --------------------------------------------------------------------------- processes and database


def run(cmd: list[str], env: dict, what: str) -> str:
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if p.returncode != 0:
        fail(f"{what} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    return p.stdout


def drop_queues(broker: str, queues: list[str], prefix: str = "") -> None:
    """Empty the run's Celery queues (Redis only): nothing left for, or from, another run; and drop
    the gateway's admission keys under `prefix`."""
    if not broker.startswith(("redis://", "rediss://")):
        return
    try:
        import redis

        r = redis.Redis.from_url(broker)
        for q in queues:
            r.delete(q, f"_kombu.binding.{q}", f"_kombu.binding_permanent.{q}")
        if prefix:
            for k in r.scan_iter(match=prefix + "*"):
                r.delete(k)
    except Exception as exc:  # noqa: BLE001 - report, never mask the run's own error
        print(f"could not clear the broker queues {queues}: {exc}", file=sys.stderr)


class Proc:
    """A child in its own session, its output in a log file; stop() ends its whole process group."""

    def __init__(self, name: str, cmd: list[str], env: dict, logdir: Path):
        self.name = name
        self.log = logdir / f"{name}.log"
        self._out = open(self.log, "wb")  # noqa: SIM115 - closed in stop()
        self.p = subprocess.Popen(cmd, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=self._out,
                                  stderr=subprocess.STDOUT, start_new_session=True)

    def alive(self) -> bool:
        return self.p.poll() is None

    def tail(self, n: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def stop(self) -> None:
        try:
            if self.p.poll() is None:
                os.killpg(self.p.pid, signal.SIGTERM)
                try:
                    self.p.wait(15)
                except subprocess.TimeoutExpired:
                    pass
            os.killpg(self.p.pid, signal.SIGKILL)  # whatever of its group outlived it (a worker's pool)
        except ProcessLookupError:
            pass
        try:
            self.p.wait(5)
        except subprocess.TimeoutExpired:
            pass
        self._out.close()


def wait_http(url: str, proc: Proc, timeout: float = 90.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            fail(f"{proc.name} exited with {proc.p.returncode}:\n{proc.tail()}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    fail(f"{url} ({proc.name}) did not answer in {timeout:g} s:\n{proc.tail()}")


def soak_profile(src: Path, dest: Path) -> dict[str, str]:
    """A copy of the profile whose endpoints listen on free loopback ports: {endpoint: base_url}."""
    import yaml

    data = yaml.safe_load(src.read_text())
    urls = {}
    for host in data["hosts"]:
        for ep in host["endpoints"]:
            ep["base_url"] = urls[ep["name"]] = f"http://127.0.0.1:{free_port()}"
    dest.write_text(yaml.safe_dump(data, sort_keys=False))
    return urls


# --------------------------------------------------------------------------- the trace


def build_requests(args) -> list:
    from models_registry.replay import Request, load_mapping, map_rows, read_trace, scale_and_sample
    from models_registry.replay.traces import IDENTITY

    mapping = load_mapping(args.mapping) if args.mapping else IDENTITY
    reqs = scale_and_sample(map_rows(read_trace(ROOT / args.trace), mapping), time_scale=args.stretch,
                            sample=args.sample, rng=random.Random(args.seed))
    cut = args.minutes * 60.0
    # At least one answer token: num_predict 0 would stream no token at all (no first token to measure).
    return [Request(r.arrival_s, r.task_type, r.urgency, r.input_tokens, max(1, r.output_tokens))
            for r in reqs if r.arrival_s < cut]


_WORDS = ("alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar "
          "papa quebec romeo sierra tango uniform victor whiskey xray yankee zulu ").split()


def prompt_text(i: int, tokens: int) -> str:
    """About `tokens` tokens as the gateway counts them (4 characters each)."""
    chars = max(4, 4 * tokens)
    rng = random.Random(i)
    parts, n = [f"request {i}:"], len(f"request {i}:")
    while n < chars:
        w = rng.choice(_WORDS)
        parts.append(w)
        n += len(w) + 1
    return " ".join(parts)[:chars]


@dataclass
class Sent:
    i: int
    arrival_s: float
    task: str
    urgency: str
    input_tokens: int
    output_tokens: int
    late_s: float = 0.0  # sent this long after its arrival time
    status: int | None = None
    decision_id: int | None = None
    model: str = ""
    endpoint: str = ""
    action: str = ""
    quoted_s: float | None = None
    ttft_s: float | None = None  # the client's stopwatch: send -> first token line
    response_s: float | None = None
    tokens: int = 0
    done: bool = False
    error: str = ""
    extra: dict = field(default_factory=dict)


async def send_all(gateway: str, key: str, reqs: list, ctx: int, t0: float) -> list[Sent]:
    import httpx

    out: list[Sent] = []
    limits = httpx.Limits(max_connections=1024, max_keepalive_connections=64)
    timeout = httpx.Timeout(connect=30.0, read=1800.0, write=60.0, pool=60.0)
    async with httpx.AsyncClient(timeout=timeout, limits=limits) as client:
        async def one(s: Sent) -> None:
            body = {"model": "auto", "stream": True, "options": {"num_predict": s.output_tokens},
                    "messages": [{"role": "user", "content": prompt_text(s.i, min(s.input_tokens, ctx))}]}
            headers = {"Authorization": f"Bearer {key}", "X-TowerOps-Task": s.task,
                       "X-TowerOps-Urgency": s.urgency, "X-TowerOps-Client": "soak"}
            start = time.perf_counter()
            try:
                async with client.stream("POST", gateway + "/api/chat", json=body, headers=headers) as r:
                    s.status = r.status_code
                    h = r.headers
                    did = h.get("x-towerops-decision-id")
                    s.decision_id = int(did) if did and did.isdigit() else None
                    s.model, s.endpoint, s.action = (h.get("x-towerops-model", ""), h.get("x-towerops-endpoint", ""),
                                                     h.get("x-towerops-action", ""))
                    q = h.get("x-towerops-expected-wait-s")
                    s.quoted_s = float(q) if q else None
                    if r.status_code != 200:
                        s.error = (await r.aread()).decode(errors="replace")[:300]
                        return
                    async for line in r.aiter_lines():
                        if not line.strip():
                            continue
                        obj = json.loads(line)
                        if "error" in obj:
                            s.error = str(obj["error"])[:300]
                            return
                        if (obj.get("message") or {}).get("content"):
                            if s.ttft_s is None:
                                s.ttft_s = time.perf_counter() - start
                            s.tokens += 1
                        if obj.get("done"):
                            s.done = True
                            s.extra = {"eval_count": obj.get("eval_count"),
                                       "prompt_eval_count": obj.get("prompt_eval_count"),
                                       "load_duration_s": (obj.get("load_duration") or 0) / 1e9}
            except (httpx.HTTPError, ValueError) as exc:
                s.error = f"{type(exc).__name__}: {exc}"[:300]
            finally:
                s.response_s = time.perf_counter() - start
                s.extra["end_wall"] = time.time()

        tasks = []
        for i, r in enumerate(reqs):
            delay = t0 + r.arrival_s - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            s = Sent(i, r.arrival_s, r.task_type, r.urgency, r.input_tokens, r.output_tokens,
                     late_s=max(0.0, time.monotonic() - t0 - r.arrival_s))
            out.append(s)
            tasks.append(asyncio.create_task(one(s)))
            if (i + 1) % 50 == 0:
                print(f"  sent {i + 1}/{len(reqs)} (trace time {r.arrival_s / 60:.1f} min)", flush=True)
        await asyncio.gather(*tasks)
    return out


# --------------------------------------------------------------------------- reading the figures


def live_figures(t0_wall: float, end_wall: float, sent: list[Sent]) -> dict:
    """The soak window's figures from the database, through the project's own SLO code."""
    from django.db import connection

    from models_registry.slo import metrics
    from models_registry.slo.rollups import compute_hour

    utc = dt.timezone.utc
    start, end = dt.datetime.fromtimestamp(t0_wall, utc), dt.datetime.fromtimestamp(end_wall, utc)
    hours, h = [], start
    while h < end:  # the replay's hours: 3600 s from t0
        h1 = min(h + dt.timedelta(hours=1), end)
        hours.append(compute_hour(h, h1, now=end).tally)
        h = h1
    slo = metrics.evaluate(metrics.Tally.total(hours))
    with connection.cursor() as cur:
        cur.execute("""SELECT extract(epoch FROM e.requested_at), e.kind, e.trigger, m.tag, p.name, e.duration_s
                       FROM models_registry_loadevent e JOIN models_registry_llmmodel m ON m.id = e.model_id
                       JOIN models_registry_endpoint p ON p.id = e.endpoint_id
                       WHERE e.requested_at < %s ORDER BY e.requested_at, e.id""", [end])
        erows = cur.fetchall()
        cur.execute("""SELECT d.id, d.urgency, d.action, m.tag, d.expected_wait_s, o.first_token_ms, o.response_ms,
                              o.result
                       FROM models_registry_selectiondecision d
                       LEFT JOIN models_registry_llmmodel m ON m.id = d.model_id
                       LEFT JOIN models_registry_decisionoutcome o ON o.decision_id = d.id
                       WHERE d.created_at >= %s AND d.created_at < %s""", [start, end])
        drows = cur.fetchall()
    events = [Ev(float(at), kind, tag, ep, trig) for at, kind, trig, tag, ep, _ in erows]
    loads, thrash = thrash_loads(events, t0_wall, end_wall)
    load_s = {}
    for at, kind, _trig, tag, _ep, dur in erows:
        if kind == "load" and dur is not None and t0_wall <= float(at) < end_wall:
            load_s.setdefault(tag, []).append(round(dur, 1))
    ttft = [ft / 1000.0 for _id, urg, _a, _m, _w, ft, _r, _res in drows
            if ft is not None and urg in metrics.INTERACTIVE_URGENCIES]
    quotes = quote_errors((ft / 1000.0, w) for _id, _u, _a, _m, w, ft, _r, _res in drows if ft is not None)
    ok = [s for s in sent if s.status == 200 and s.done]
    client_ttft = [s.ttft_s for s in ok if s.ttft_s is not None and s.urgency in metrics.INTERACTIVE_URGENCIES]
    response = [s.response_s for s in ok if s.urgency in metrics.INTERACTIVE_URGENCIES]
    return {
        "window_s": end_wall - t0_wall,
        "slo": {n: {"value": v.value, "detail": v.detail} for n, v in slo.items()},
        "decisions": len(drows),
        "actions": dict(Counter(a or "none" for _i, _u, a, *_ in drows)),
        "served_by_model": dict(Counter(m or "none" for _i, _u, _a, m, *_ in drows)),
        "results": dict(Counter(res or "no outcome" for *_, res in drows)),
        "ttft_s": {"p50": pct(ttft, 0.5), "p95": pct(ttft, 0.95), "p99": pct(ttft, 0.99),
                   "max": max(ttft, default=None)},
        "client_ttft_s": {"p50": pct(client_ttft, 0.5), "p95": pct(client_ttft, 0.95), "p99": pct(client_ttft, 0.99)},
        "response_s": {"p95": pct(response, 0.95)},
        "loads": len(loads), "thrash": len(thrash),
        "loads_by_model": dict(Counter(e.model for e in loads)),
        "load_durations_s": load_s,
        "evictions": sum(1 for e in events if is_eviction(e) and t0_wall <= e.at < end_wall),
        "thrash_loads": [(round(e.at - t0_wall, 1), e.model, e.endpoint) for e in thrash],
        "quote_error_s": quotes,
        "events": [(round(float(at) - t0_wall, 2), kind, trig, tag, ep, dur) for at, kind, trig, tag, ep, dur in erows
                   if float(at) >= t0_wall - 600],
    }


def warm_state(profile_path: Path, at: dt.datetime, warmup_s: float | None = None) -> list[tuple[str, str]]:
    """(model, endpoint) resident at `at` on the replay's tower after a week of the profile's preload
    windows (the replay's default warm-up), largest first, as a preload tick loads them: Ollama fits
    a model beside others only within 80 % of the free memory (policy.ollama_rules.fits), so on a
    real server the order decides whether a set fits (qwen2.5-coder:7b, then deepseek-coder-v2:16b
    on the 16 GB card evicts the first; the other way round both stay)."""
    from models_registry.replay import simulate
    from models_registry.replay.whatif import load_base

    _, profile = load_base(profile_path)
    res = simulate(profile, [], "towerops", start=at, warmup_s=WEEK_S if warmup_s is None else warmup_s)
    vram = {mo.tag: mo.vram_gb for mo in profile.models}
    held = [res.residencies[s.key][:2] for s in res.spans if s.end is None]
    return sorted(held, key=lambda pair: (-vram[pair[0]], pair))


def replay_figures(profile_path: Path, reqs: list, start: dt.datetime, warmup_s: float) -> dict:
    from models_registry.replay import simulate
    from models_registry.replay.report import summarize
    from models_registry.replay.whatif import load_base
    from models_registry.slo import metrics

    _, profile = load_base(profile_path)
    res = simulate(profile, reqs, "towerops", start=start, warmup_s=warmup_s)
    s = summarize(res)
    events = [Ev(e.at - (e.duration_s or 0.0) if e.kind == "load" else e.at, e.kind, e.model, e.endpoint)
              for e in res.loads]
    loads, thrash = thrash_loads(events, 0.0, res.end)
    served = [x for x in res.served if x.action is not None]
    interactive = [x for x in served if x.req.urgency in metrics.INTERACTIVE_URGENCIES]
    return {
        "window_s": res.end,
        "slo": {n: {"value": v["value"], "detail": v["detail"]} for n, v in s["slo"].items()},
        "decisions": len(res.served),
        "actions": s["actions"],
        "served_by_model": s["served_by_model"],
        "ttft_s": s["ttft_s"],
        "response_s": {"p95": pct([x.response_s for x in interactive], 0.95)},
        "loads": len(loads), "thrash": len(thrash),
        "loads_by_model": dict(Counter(e.model for e in loads)),
        "evictions": sum(1 for e in events if is_eviction(e) and 0.0 <= e.at < res.end),
        "thrash_loads": [(round(e.at, 1), e.model, e.endpoint) for e in thrash],
        "quote_error_s": quote_errors((x.ttft_s, x.expected_wait_s) for x in served),
        # a load at its request time, as the live LoadEvent's requested_at
        "events": [(round(e.at - (e.duration_s or 0.0) if e.kind == "load" else e.at, 2), e.kind, e.model, e.endpoint,
                    e.duration_s) for e in res.loads if e.at >= -600],
    }


# --------------------------------------------------------------------------- the table


def _f(v, kind: str = "s") -> str:
    if v is None:
        return "-"
    if kind == "%":
        return f"{v:.1%}"
    if kind == "n":
        return f"{v:,.0f}"
    return f"{v:.2f}" if abs(v) >= 0.005 else "0.00"  # no "-0.00" for a float's rounding


def table(live: dict, rep: dict) -> list[str]:
    from models_registry.slo import metrics

    def slo(d, name):
        return d["slo"][name]["value"]

    def share(d):
        return d["thrash"] / d["loads"] if d["loads"] else 0.0

    rows = [
        ("interactive TTFT p95, SLO (s)", slo(live, metrics.P95), slo(rep, metrics.P95), "s"),
        ("interactive TTFT p50/p95/p99, exact (s)", None, None, "3"),
        ("loads / hour", slo(live, metrics.LOADS_PER_HOUR), slo(rep, metrics.LOADS_PER_HOUR), "s"),
        ("loads", live["loads"], rep["loads"], "n"),
        ("evictions", live["evictions"], rep["evictions"], "n"),
        ("thrash loads (share of loads)", live["thrash"], rep["thrash"], "t"),
        ("VRAM efficiency", slo(live, metrics.VRAM_EFFICIENCY), slo(rep, metrics.VRAM_EFFICIENCY), "%"),
        ("quality met", slo(live, metrics.QUALITY_MET), slo(rep, metrics.QUALITY_MET), "%"),
        ("fallback rate", slo(live, metrics.FALLBACK_RATE), slo(rep, metrics.FALLBACK_RATE), "%"),
        ("full response p95, interactive (s)", live["response_s"]["p95"], rep["response_s"]["p95"], "s"),
        ("quote error p50 (s)", live["quote_error_s"]["p50"], rep["quote_error_s"]["p50"], "e"),
        ("quote error p95 (s)", live["quote_error_s"]["p95"], rep["quote_error_s"]["p95"], "e"),
        ("quote error max / min (s)", None, None, "q"),
        ("quote error within 1 s", live["quote_error_s"]["within_1s"], rep["quote_error_s"]["within_1s"], "%"),
        ("decisions", live["decisions"], rep["decisions"], "n"),
        ("window (s)", live["window_s"], rep["window_s"], "s"),
    ]
    w0, w = 40, 21
    out = [f"{'figure':<{w0}}{'live':>{w}}{'replay':>{w}}{'live÷replay':>{w - 6}}"]
    for label, a, b, kind in rows:
        if kind == "3":
            cells = [" / ".join(_f(d["ttft_s"][k]) for k in ("p50", "p95", "p99")) for d in (live, rep)] + [""]
        elif kind == "q":
            cells = [f"{_f(d['quote_error_s']['max'])} / {_f(d['quote_error_s']['min'])}" for d in (live, rep)] + [""]
        elif kind == "t":
            cells = [f"{d['thrash']} ({share(d):.0%})" for d in (live, rep)] + [""]
        elif kind == "e":  # a signed error: a ratio says nothing
            cells = [_f(a), _f(b), ""]
        else:
            ratio = "-" if a is None or b is None or abs(b) < 1e-9 else f"{a / b:.2f}"
            cells = [_f(a, kind), _f(b, kind), ratio]
        out.append(f"{label:<{w0}}" + "".join(f"{c:>{w}}" for c in cells[:2]) + f"{cells[2]:>{w - 6}}")
    return out


def checks(sent: list[Sent], live: dict, rep: dict, compare: bool) -> list[tuple[str, bool | None, str]]:
    from models_registry.slo import metrics

    bad = [s for s in sent if not (s.status == 200 and s.done)]
    lph, rlph = live["slo"][metrics.LOADS_PER_HOUR]["value"], rep["slo"][metrics.LOADS_PER_HOUR]["value"]
    p95, rp95 = live["slo"][metrics.P95]["value"], rep["slo"][metrics.P95]["value"]
    share = live["thrash"] / live["loads"] if live["loads"] else 0.0
    out = [
        ("(a) every request answered 200 to its end", not bad,
         f"{len(sent) - len(bad)} of {len(sent)}"
         + (f"; first failure: {bad[0].status} {bad[0].error[:120]}" if bad else "")),
        ("(b) live loads/h < 10", lph is not None and lph < MAX_LOADS_PER_HOUR, _f(lph)),
        ("(c) live thrash loads ≤ 5 % of loads", share <= MAX_THRASH_SHARE, f"{live['thrash']} of {live['loads']}"),
        ("(d) live loads/h within 15 % of the replay's", within(lph, rlph) if compare else None,
         f"{_f(lph)} vs {_f(rlph)}"),
        ("(e) live interactive p95 within 15 % of the replay's", within(p95, rp95) if compare else None,
         f"{_f(p95)} vs {_f(rp95)} s"),
    ]
    return out


# --------------------------------------------------------------------------- main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=60.0, help="minutes of (stretched) trace to send (default 60)")
    ap.add_argument("--trace", default=DEFAULT_TRACE, help="a trace file (default %(default)s)")
    ap.add_argument("--mapping", default="azure2023", help="a mapping file or shipped name (default %(default)s)")
    ap.add_argument("--sample", type=float, default=0.03, help="keep this fraction of requests (default 0.03)")
    ap.add_argument("--seed", type=int, default=1, help="the sample's seed (default 1)")
    ap.add_argument("--stretch", type=float, default=1.0, help="arrivals this many times further apart (default 1)")
    ap.add_argument("--profile", default="profiles/tower.yaml", help="the profile (default %(default)s)")
    ap.add_argument("--time-scale", type=float, default=1.0,
                    help="simulator speed-up (default 1; ≠ 1: the comparison is not checked, see above)")
    ap.add_argument("--warmup", type=float, default=90.0, help="seconds of stack before the trace (default 90)")
    ap.add_argument("--cold", action="store_true",
                    help="start from an empty tower (default: warm, as a week of the preload windows leaves it)")
    ap.add_argument("--drain", type=float, default=20.0, help="seconds after the last answer (default 20)")
    ap.add_argument("--json", metavar="OUT", help="write every figure and each live request here")
    ap.add_argument("--keep-db", action="store_true", help="leave the database and the logs behind")
    args = ap.parse_args()
    if not 0 < args.sample <= 1 or args.stretch <= 0 or args.time_scale <= 0 or args.minutes <= 0:
        fail("--sample in (0, 1], --stretch, --time-scale and --minutes > 0")

    admin_url, soak_url, db_name = benchdb.db_urls(DEFAULT_DB, fail)
    broker = os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/9")
    tmp = Path(tempfile.mkdtemp(prefix="towerops-soak-"))
    web_port, gw_port = free_port(), free_port()
    gpu_dir = tmp / "simulated-gpus"
    env = {
        **os.environ,
        "DATABASE_URL": soak_url, "DJANGO_SETTINGS_MODULE": "towerops.settings", "CELERY_BROKER_URL": broker,
        "SECRET_KEY": os.environ.get("SECRET_KEY", "soak"), "DEBUG": "0", "SECURE_SSL_REDIRECT": "0",
        "ALLOWED_HOSTS": "127.0.0.1,localhost", "LOG_LEVEL": os.environ.get("LOG_LEVEL", "WARNING"),
        "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1", "TOWEROPS_VAR_DIR": str(tmp),
        "TOWEROPS_SIMULATED_GPU_DIR": str(gpu_dir), "TOWEROPS_GATEWAY_BIND": f"127.0.0.1:{gw_port}",
        "TOWEROPS_GATEWAY_REDIS_URL": broker if broker.startswith("redis") else "",
        "TOWEROPS_GATEWAY_REDIS_PREFIX": f"towerops:soak:{os.getpid()}:",
        # the rate-limit cache beside the broker, not in its default database 2
        "TOWEROPS_CACHE_URL": os.environ.get("TOWEROPS_CACHE_URL", broker if broker.startswith("redis") else ""),
    }
    env.pop("CELERY_TASK_ALWAYS_EAGER", None)
    os.environ.update({k: env[k] for k in ("DATABASE_URL", "DJANGO_SETTINGS_MODULE", "CELERY_BROKER_URL", "SECRET_KEY",
                                            "DEBUG", "TOWEROPS_VAR_DIR", "TOWEROPS_CACHE_URL")})
    procs: list[Proc] = []
    queues: list[str] = []
    created = False

    def on_term(signum, frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)
    try:
        reqs = build_requests(args)
        if not reqs:
            fail("no request in the first --minutes of the trace")
        span = reqs[-1].arrival_s / 60
        print(f"trace {args.trace}: {len(reqs)} requests in the first {args.minutes:g} min (last at "
              f"{span:.1f} min), mapping {args.mapping}, sample {args.sample:g}, seed {args.seed}, "
              f"stretch {args.stretch:g}; {dict(Counter((r.task_type, r.urgency) for r in reqs))}", flush=True)
        if span < args.minutes * 0.9:
            print(f"  note: the trace ends before {args.minutes:g} min: --stretch it to run longer", flush=True)

        print(f"preparing database {db_name} ...", flush=True)
        benchdb.fresh_database(admin_url, db_name, DB_COMMENT, fail)
        created = True
        profile = tmp / "profile.yaml"
        urls = soak_profile(ROOT / args.profile, profile)
        run([PYTHON, "manage.py", "migrate", "-v", "0"], env, "migrate")
        run([PYTHON, "manage.py", "load_profile", str(profile)], env, "load_profile")
        key = run([PYTHON, "manage.py", "create_api_key", "soak", "--scopes", "infer,read"], env,
                  "create_api_key").strip().splitlines()[-1]

        import django

        django.setup()
        from django.db.models import Q

        from models_registry import models as m
        from models_registry.catalog.profile import load_profile_file

        queues = ["central", *m.Host.objects.values_list("queue", flat=True)]
        drop_queues(broker, queues)
        ctx = min(e.num_ctx for h in load_profile_file(profile).hosts for e in h.endpoints)

        print(f"starting the stack (simulator at time scale {args.time_scale:g}, endpoints {urls}) ...", flush=True)
        sim = Proc("simulator", [PYTHON, "-c", SIMULATOR, str(profile), str(args.time_scale), str(gpu_dir)], env, tmp)
        procs.append(sim)
        for url in urls.values():
            wait_http(url + "/", sim)
        tag = f"soak{os.getpid()}"
        procs.append(Proc("central", [PYTHON, "-m", "celery", "-A", "towerops", "worker", "-Q", "central",
                                      "-n", f"{tag}-central@%h", "-c", "2", "--without-gossip", "--without-mingle"],
                          env, tmp))
        for q in queues[1:]:
            procs.append(Proc(f"agent-{q}", [PYTHON, "-m", "celery", "-A", "towerops", "worker", "-Q", q,
                                             "-n", f"{tag}-{q}@%h", "-c", "4", "--without-gossip", "--without-mingle"],
                              env, tmp))
        web = Proc("web", [PYTHON, "manage.py", "runserver", f"127.0.0.1:{web_port}", "--noreload"], env, tmp)
        procs.append(web)
        gw = Proc("gateway", [PYTHON, "manage.py", "rungateway"], env, tmp)
        procs.append(gw)
        wait_http(f"http://127.0.0.1:{web_port}/healthz", web)
        gateway = f"http://127.0.0.1:{gw_port}"
        wait_http(gateway + "/", gw)

        def wait_loads(what: str, timeout: float) -> None:
            deadline = time.time() + timeout
            while m.Residency.objects.filter(state__in=("requested", "loading")).exists():
                dead = [p for p in procs if not p.alive()]
                if dead:
                    fail(f"{dead[0].name} exited with {dead[0].p.returncode}:\n{dead[0].tail()}")
                if time.time() > deadline:
                    print(f"  {what}: loads still in flight after {timeout:g} s; going on", flush=True)
                    return
                time.sleep(0.5)

        if not args.cold:
            from models_registry.runtime.reservations import request_load

            at = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=args.warmup + 30)
            warm = warm_state(profile, at)
            print(f"warm start: loading what a week of the preload windows leaves at {at:%H:%M} UTC (the "
                  f"replay's state): {warm}", flush=True)
            for model_tag, ep in warm:  # one at a time: the agent's tasks would race for the endpoint
                request_load(model_tag, trigger=m.Trigger.PRELOAD, endpoint=ep)
                wait_loads("warm start", WARMUP_EXTRA_S)
        beat_started = time.time()
        procs.append(Proc("beat", [PYTHON, "-m", "celery", "-A", "towerops", "beat", "-s",
                                   str(tmp / "celerybeat-schedule")], env, tmp))

        print(f"warm-up: {args.warmup:g} s of beat, then until every endpoint is synced and up and no load is "
              "in flight ...", flush=True)
        deadline = beat_started + args.warmup + WARMUP_EXTRA_S
        while True:
            dead = [p for p in procs if not p.alive()]
            if dead:
                fail(f"{dead[0].name} exited with {dead[0].p.returncode}:\n{dead[0].tail()}")
            settled = (not m.Endpoint.objects.filter(Q(is_up=False) | Q(last_checked_at__isnull=True)).exists()
                       and not m.Residency.objects.filter(state__in=("requested", "loading")).exists()
                       and m.GpuSnapshot.objects.exists())
            if time.time() - beat_started >= args.warmup and settled:
                break
            if time.time() > deadline:
                print("  warm-up: still not settled; starting anyway", flush=True)
                break
            time.sleep(1.0)
        resident = sorted(m.Residency.objects.active().values_list("model__tag", "endpoint__name", "state"))
        print(f"  resident at the start: {resident}", flush=True)

        t0 = time.monotonic()
        t0_wall = time.time()
        warm_s = t0_wall - beat_started
        replay_warmup = WEEK_S if not args.cold else warm_s + reqs[0].arrival_s
        print(f"sending {len(reqs)} requests over {reqs[-1].arrival_s / 60:.1f} min from "
              f"{dt.datetime.fromtimestamp(t0_wall, dt.timezone.utc):%Y-%m-%d %H:%M:%S} UTC ...", flush=True)
        sent = asyncio.run(send_all(gateway, key, reqs, ctx, t0))
        end_wall = max(s.extra["end_wall"] for s in sent)
        print(f"last answer {end_wall - t0_wall:.0f} s after t0; draining {args.drain:g} s ...", flush=True)
        time.sleep(args.drain)
        dead = [p.name for p in procs if not p.alive()]
        for p in reversed(procs):
            p.stop()
        procs_tails = {p.name: p.tail(1500) for p in procs}
        procs = []

        from django.db import connection

        connection.close()
        live = live_figures(t0_wall, end_wall, sent)
        start_dt = dt.datetime.fromtimestamp(t0_wall, dt.timezone.utc)
        rep = replay_figures(profile, reqs, start_dt, replay_warmup)
        rep["resident_at_start"] = sorted(warm_state(profile, start_dt + dt.timedelta(seconds=reqs[0].arrival_s),
                                                     replay_warmup))

        compare = args.time_scale == 1.0
        res = checks(sent, live, rep, compare)
        late = max(s.late_s for s in sent)
        print(f"\nsoak on {platform.node()} ({os.cpu_count()} CPUs, Python {platform.python_version()}), "
              f"{start_dt:%Y-%m-%d %H:%M} UTC: {len(reqs)} requests, {args.minutes:g} min of "
              f"{args.trace} (mapping {args.mapping}, sample {args.sample:g}, seed {args.seed}, stretch "
              f"{args.stretch:g}), profile {args.profile}, simulator time scale {args.time_scale:g}, warm-up "
              f"{warm_s:.0f} s; sends at most {late * 1000:.0f} ms late")
        print("live: the gateway-measured first tokens and the database's load events over [t0, last answer); "
              "replay: models_registry.replay, policy towerops, the same requests, clock and profile")
        print("\n".join(table(live, rep)))
        for label, d in (("live", live), ("replay", rep)):
            print(f"{label:>6}: actions {d['actions']}; served by {d['served_by_model']}; loads {d['loads_by_model']}"
                  + (f"; thrash {d['thrash_loads']}" if d["thrash_loads"] else ""))
        print(f"  resident at t0: live {[(t, e) for t, e, _ in resident]}; replay at its first request "
              f"{rep['resident_at_start']}")
        for label, d in (("live", live), ("replay", rep)):
            shown = [e for e in d["events"] if e[0] >= 0]
            if shown:
                print(f"  {label} load events (s from t0, kind, [trigger,] model, endpoint, duration): {shown}")
        print(f"  live: load durations (s) {live['load_durations_s']}; outcomes {live['results']}; client-measured "
              f"TTFT p50/p95/p99 {' / '.join(_f(live['client_ttft_s'][k]) for k in ('p50', 'p95', 'p99'))} s")
        if dead:
            print(f"  exited during the run: {dead}")
        print()
        for label, ok, detail in res:
            mark = {True: "met", False: "FAILED", None: "not checked"}[ok]
            print(f"{label:<56} {mark:<12} {detail}")
        if args.json:
            doc = {"args": vars(args), "machine": {"node": platform.node(), "cpus": os.cpu_count()},
                   "t0": start_dt.isoformat(), "warmup_s": warm_s, "resident_at_t0": resident, "requests": len(reqs),
                   "live": live, "replay": rep,
                   "checks": [{"check": a, "met": b, "detail": c} for a, b, c in res],
                   "sent": [{k: v for k, v in vars(s).items()} for s in sent], "stopped_early": dead}
            Path(args.json).write_text(json.dumps(doc, indent=1, default=str))
            print(f"wrote {args.json}")
        if dead:
            print("\n".join(f"----- {n} (last lines)\n{procs_tails[n]}" for n in dead), file=sys.stderr)
        return 1 if any(ok is False for _, ok, _ in res) else 0
    except BaseException:
        for p in procs:  # what the processes said, before their logs go with the temporary folder
            print(f"----- {p.name} (last lines)\n{p.tail()}", file=sys.stderr)
        raise
    finally:
        for p in reversed(procs):
            p.stop()
        if queues:
            drop_queues(broker, queues, env["TOWEROPS_GATEWAY_REDIS_PREFIX"])
        if created and not args.keep_db:
            try:
                from django.db import connections

                connections.close_all()
            except Exception:  # noqa: BLE001
                pass
            try:
                benchdb.drop_database(admin_url, db_name, DB_COMMENT)
            except Exception as exc:  # noqa: BLE001 - report, never mask the run's own error
                print(f"could not drop {db_name}: {exc}", file=sys.stderr)
            shutil.rmtree(tmp, ignore_errors=True)
        elif created:
            print(f"kept database {db_name} and the logs in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
