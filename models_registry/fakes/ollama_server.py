"""An Ollama-compatible HTTP server for one profile: a simulated Tower.

``SimulatedTower(profile)`` serves, at each endpoint ``base_url`` of the profile (a loopback
``host:port``), the part of Ollama's HTTP API a manager uses:

* ``GET /`` ("Ollama is running"), ``GET|HEAD /api/version``, ``GET /api/tags``,
  ``POST /api/show``, ``GET /api/ps``;
* ``POST /api/generate`` and ``POST /api/chat``: an empty prompt / empty ``messages`` loads the
  model (blocks until loaded, ``done_reason: "load"``, no metrics); ``keep_alive: 0`` with an
  empty prompt unloads it (returns at once, ``done_reason: "unload"``; the unload itself is
  asynchronous, poll ``/api/ps``); anything else generates: NDJSON tokens streamed at the model's
  ``tokens_per_s`` (or one object with ``"stream": false``) ending in Ollama's metrics
  (``total_duration``, ``load_duration``, ``prompt_eval_count``, ``prompt_eval_duration``,
  ``eval_count``, ``eval_duration``, all in ns).
* **Errors** in Ollama's shapes: ``{"error": "..."}`` with 400 / 404 / 500 / 503; unknown model ->
  404 (``model 'x' not found`` from show, ``model "x" not found, try pulling it first`` from
  generate/chat); remote-kind models are not installed; unknown routes -> 404 ``404 page not found``.

What happens behind the API (VRAM, load times, Ollama's scheduler, placement, eviction and
keep_alive, following ``shared/reference/ollama.md``) is ``ollama_scheduler``; the state it works
on is ``ollama_state``; the HTTP plumbing is ``ollama_http``.

``time_scale`` divides every simulated duration (loads, unloads, token pacing, keep-alive): at 100,
a 13.5 s load takes 0.135 s and a 5m keep-alive 3 s. Reported times (``expires_at``, durations) are
the scaled ones, so they agree with the client's own stopwatch. ``clock`` (seconds since the epoch,
default ``time.time``) drives timestamps and keep-alive expiry, so a test can inject a fake clock.

Test hooks: ``stop_endpoint(name)`` / ``start_endpoint(name)`` (the listener goes away: connection
refused; by default the endpoint's runners go with it, as when ``ollama serve`` stops),
``hang_loads(name, True)`` (loads on that endpoint stall until turned off, the client gives up,
or ``load_timeout`` passes), ``events`` (what happened: loads, unloads, evictions, with reasons).

Stdlib only: one ``ThreadingHTTPServer`` per endpoint, each in its own thread, plus a reaper thread
for keep-alive expiry. ``main(argv)`` is the command line (``manage.py simulate_tower`` wraps it).
"""
from __future__ import annotations

import argparse
import datetime as dt
import errno
import hashlib
import ipaddress
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from models_registry.catalog.durations import parse_keep_alive
from models_registry.catalog.profile import Profile, load_profile_file
from models_registry.policy.ollama_rules import model_key, normalize_model_name

from .ollama_http import _Handler, _RequestCtx, _Server
from .ollama_scheduler import Scheduler
from .ollama_state import (
    FOREVER,
    GIB,
    SimError,
    SimEvent,
    _Endpoint,
    _ModelFacts,
    _rfc3339,
    _Runner,
)
from models_registry.fakes import gpu_telemetry

__all__ = ["GIB", "SimError", "SimEvent", "SimulatedTower", "build_arg_parser", "main"]

log = logging.getLogger("towerops.simulator")

MAX_DURATION_NS = 2**63 - 1  # Go's MaxInt64 Duration: what keep_alive < 0 becomes
OLLAMA_VERSION = "0.30.0"
EPOCH_MODIFIED = dt.datetime(2025, 1, 1, tzinfo=dt.timezone.utc)

_WORDS = (
    "the tower answers from a simulated model and streams one token at a time while the "
    "scheduler keeps its runners warm until their keep alive runs out"
).split()


class PortBusy(OSError):
    """An endpoint's port is taken (often by a real Ollama on 11434)."""

    def __init__(self, endpoint: str, host: str, port: int):
        super().__init__(errno.EADDRINUSE, f"port {port} on {host} (endpoint {endpoint}) is already in use")
        self.endpoint, self.host, self.port = endpoint, host, port


def _is_loopback(host: str) -> bool:
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class SimulatedTower(Scheduler):
    """Every endpoint of ``profile`` as a simulated Ollama server on its loopback base_url.

    ``time_scale``: simulated seconds per real second (100 -> everything 100x faster).
    ``clock``: wall-clock seconds (default ``time.time``) for timestamps and keep-alive expiry.
    ``hosts``: serve only these hosts' endpoints (default: all).
    ``bind_host``: listen here instead of the URL's host (which must otherwise be loopback).
    Ollama settings: ``default_keep_alive`` (OLLAMA_KEEP_ALIVE), ``num_parallel``
    (OLLAMA_NUM_PARALLEL), ``max_loaded_models`` (0 = 3 x #GPUs), ``max_queue``,
    ``context_length`` (OLLAMA_CONTEXT_LENGTH; None = the VRAM tier), ``load_timeout``
    (OLLAMA_LOAD_TIMEOUT). Simulation: ``cpu_ram_gb`` (host RAM for weights that do not fit in
    VRAM; 0 = none), ``unload_s`` (runner teardown), ``default_eval_tokens`` (answer length when
    ``num_predict`` is not set), ``version`` (what /api/version says).
    Port 0 in a base_url binds a free port; ``url(name)`` tells which.
    """

    def __init__(self, profile: Profile, time_scale: float = 1.0, clock: Callable[[], float] = time.time, *,
                 bind_host: str | None = None, default_eval_tokens: int = 32, version: str = OLLAMA_VERSION,
                 **settings: Any):
        super().__init__(profile, time_scale, clock, **settings)  # hosts and the Ollama settings: Scheduler's
        self.default_eval_tokens = default_eval_tokens
        self.version = version
        self._started = False
        self._stopped = threading.Event()
        self._reaper: threading.Thread | None = None
        for ep in self.endpoints.values():
            if bind_host:
                ep.bind_host = bind_host
            elif not _is_loopback(ep.bind_host):
                raise ValueError(
                    f"endpoint {ep.name}: {ep.spec.base_url} is not a loopback address; "
                    "the simulator only listens on this machine (pass bind_host to override)"
                )

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> "SimulatedTower":
        """Bind every endpoint and start serving in background threads; returns self."""
        with self._lock:
            if self._started:
                return self
            self._started = True
            self._closing = False
            self._stopped.clear()
        try:
            for name in self.endpoints:
                self.start_endpoint(name)
        except Exception:
            self.shutdown()
            raise
        self._reaper = threading.Thread(target=self._reap_loop, name="ollama-sim-reaper", daemon=True)
        self._reaper.start()
        return self

    def serve_forever(self) -> None:
        """Start (if needed) and block until ``shutdown()`` is called from another thread."""
        self.start()
        self._stopped.wait()

    def shutdown(self) -> None:
        """Stop every listener, drop every runner and in-flight request, stop the reaper."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        for name in list(self.endpoints):
            self.stop_endpoint(name)
        if self._reaper is not None and self._reaper is not threading.current_thread():
            self._reaper.join(timeout=5)
        self._reaper = None
        with self._lock:
            self._started = False
        self._stopped.set()

    def __enter__(self) -> "SimulatedTower":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.shutdown()

    def stop_endpoint(self, name: str, unload: bool = True) -> None:
        """Make an endpoint go down: close its listener and its open connections.

        With ``unload`` (the default) its runners go too, as when ``ollama serve`` stops; with
        ``unload=False`` they stay (a network outage) and reappear when it comes back.
        """
        ep = self.endpoints[name]
        with self._cond:
            ep.epoch += 1
            server, thread = ep.server, ep.thread
            ep.server = ep.thread = None
            if unload:
                for r in list(ep.runners.values()):
                    self._drop_runner(r, "stopped")
            self._cond.notify_all()
        if server is not None:
            server.shutdown()
            server.close_connections()
            server.server_close()
        if thread is not None:
            thread.join(timeout=5)

    def start_endpoint(self, name: str) -> str:
        """(Re)start an endpoint's listener on its port; returns its URL."""
        ep = self.endpoints[name]
        with self._lock:
            if ep.server is not None:
                return ep.url
        try:
            server = _Server((ep.bind_host, ep.port), _Handler, self, ep)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise PortBusy(name, ep.bind_host, ep.port) from None
            raise
        ep.port = server.server_address[1]
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                  name=f"ollama-sim-{name}", daemon=True)
        with self._lock:
            ep.server, ep.thread = server, thread
        thread.start()
        log.info("simulated Ollama %s listening on %s", name, ep.url)
        return ep.url

    def hang_loads(self, name: str, hang: bool = True) -> None:
        """Loads on this endpoint stall (no progress) while ``hang`` is set."""
        with self._cond:
            self.endpoints[name].hang = hang
            self._cond.notify_all()

    # ------------------------------------------------------------------ where it listens

    def url(self, name: str) -> str:
        return self.endpoints[name].url

    def urls(self) -> dict[str, str]:
        return {name: ep.url for name, ep in self.endpoints.items()}

    def profile_with_actual_urls(self) -> Profile:
        """The profile with every served endpoint's base_url set to where it really listens."""
        hosts = []
        for h in self.profile.hosts:
            eps = [e.model_copy(update={"base_url": self.endpoints[e.name].url}) if e.name in self.endpoints else e
                   for e in h.endpoints]
            hosts.append(h.model_copy(update={"endpoints": eps}))
        return self.profile.model_copy(update={"hosts": hosts})

    # ------------------------------------------------------------------ API bodies

    def _generate(self, ep: _Endpoint, facts: _ModelFacts, body: dict, ctx: "_RequestCtx", chat: bool) -> None:
        start = time.monotonic()
        options = body.get("options") or {}
        if not isinstance(options, dict):
            raise SimError(400, "json: cannot unmarshal options")
        keep_alive = _keep_alive_of(body)
        if chat:
            messages = body.get("messages") or []
            prompt = " ".join(str(m.get("content") or "") for m in messages if isinstance(m, dict))
            empty = not messages
        else:
            prompt = body.get("prompt") or ""
            empty = prompt == "" and not body.get("images")
        if empty and keep_alive == 0:
            self._unload_request(ep, facts)
            ctx.send_json(200, self._done_obj(body, facts, chat, "unload"))
            return
        runner = self._acquire(ep, facts, options, keep_alive, ctx)
        if empty:  # a load: idle (expires_at set) before the client hears back
            self._idle(runner)
            ctx.send_json(200, self._done_obj(body, facts, chat, "load"))
            return
        try:
            self._answer(ep, runner, body, prompt, options, ctx, chat, start, time.monotonic())
        finally:
            self._idle(runner)

    def _done_obj(self, body: dict, facts: _ModelFacts, chat: bool, reason: str) -> dict:
        out: dict[str, Any] = {"model": body.get("model"), "created_at": _rfc3339(self.clock())}
        if chat:
            out["message"] = {"role": "assistant", "content": ""}
        else:
            out["response"] = ""
        out.update(done=True, done_reason=reason)
        return out

    def _answer(self, ep: _Endpoint, runner: _Runner, body: dict, prompt: str, options: dict,
                ctx: "_RequestCtx", chat: bool, start: float, loaded_at: float) -> None:
        # One generation slot per num_parallel: wait for ours.
        with self._cond:
            while runner.active >= self.num_parallel:
                self._wait(ctx)
            runner.active += 1
        try:
            tps = runner.facts.spec.tokens_per_s
            if runner.size:
                gpu_share = runner.size_vram / runner.size
                tps = tps / (gpu_share + (1 - gpu_share) * 10)  # CPU-offloaded layers are ~10x slower
            prompt_tokens = max(1, len(prompt) // 4) + (10 if chat else 4)
            num_predict = options.get("num_predict")
            try:
                num_predict = int(num_predict) if num_predict is not None else -1
            except (TypeError, ValueError):
                num_predict = -1
            if 0 <= num_predict < self.default_eval_tokens:
                n_out, done_reason = num_predict, "length"
            else:
                n_out, done_reason = self.default_eval_tokens, "stop"
            prompt_s = self._real(prompt_tokens / (tps * 20))
            token_s = self._real(1 / tps)
            seed = int(hashlib.sha256(prompt.encode()).hexdigest()[:8], 16)
            tokens = [(" " if i else "") + _WORDS[(seed + i) % len(_WORDS)] for i in range(n_out)]
            stream = body.get("stream", True) is not False
            model = body.get("model")

            def chunk(text: str) -> dict:
                out: dict[str, Any] = {"model": model, "created_at": _rfc3339(self.clock())}
                if chat:
                    out["message"] = {"role": "assistant", "content": text}
                else:
                    out["response"] = text
                out["done"] = False
                return out

            t0 = time.monotonic()
            ctx.sleep_until(t0 + prompt_s)
            t1 = time.monotonic()
            if stream:
                ctx.start_stream()
                for i, tok in enumerate(tokens):
                    ctx.sleep_until(t1 + (i + 1) * token_s)
                    ctx.stream(chunk(tok))
            else:
                ctx.sleep_until(t1 + n_out * token_s)
            final = chunk("")
            final["done"] = True
            final["done_reason"] = done_reason
            if not chat:
                final["context"] = [(seed + i) % 32000 for i in range(min(prompt_tokens + n_out, 64))]
                if not stream:
                    final["response"] = "".join(tokens)
            elif not stream:
                final["message"]["content"] = "".join(tokens)
            load_ns = int((loaded_at - start) * 1e9)
            prompt_ns = int(prompt_s * 1e9)
            eval_ns = int(n_out * token_s * 1e9)
            total_ns = max(int((time.monotonic() - start) * 1e9), load_ns + prompt_ns + eval_ns)
            final.update(total_duration=total_ns, load_duration=load_ns, prompt_eval_count=prompt_tokens,
                         prompt_eval_duration=prompt_ns, eval_count=n_out, eval_duration=eval_ns)
            if stream:
                ctx.stream(final)
                ctx.end_stream()
            else:
                ctx.send_json(200, final)
        finally:
            with self._cond:
                runner.active -= 1
                self._cond.notify_all()

    def _lookup(self, ep: _Endpoint, name: Any, for_show: bool) -> _ModelFacts:
        if not isinstance(name, str) or not name.strip():
            raise SimError(400, "model is required")
        facts = ep.models.get(normalize_model_name(name))
        if facts is None:
            key = model_key(name)
            facts = next((f for n, f in ep.models.items() if model_key(n) == key), None)
        if facts is None:
            if for_show:
                raise SimError(404, f"model '{name}' not found")
            raise SimError(404, f'model "{name}" not found, try pulling it first')
        return facts

    def _tags(self, ep: _Endpoint) -> dict:
        out = []
        for f in ep.models.values():
            out.append({
                "name": f.name, "model": f.name,
                "modified_at": EPOCH_MODIFIED.isoformat().replace("+00:00", "Z"),
                "size": f.file_bytes, "digest": f.digest, "details": f.details(),
            })
        return {"models": out}

    def _show(self, ep: _Endpoint, body: dict) -> dict:
        facts = self._lookup(ep, body.get("model") or body.get("name"), for_show=True)
        return {
            "license": "",
            "modelfile": f"# Modelfile generated by the TowerOps simulator\nFROM {facts.name}\n",
            "parameters": f"num_ctx {facts.spec.context_length}" if facts.spec.context_length else "",
            "template": "{{ .Prompt }}",
            "details": facts.details(),
            "model_info": facts.model_info(),
            "capabilities": ["completion"],
            "modified_at": EPOCH_MODIFIED.isoformat().replace("+00:00", "Z"),
        }

    def _ps(self, ep: _Endpoint) -> dict:
        with self._lock:
            now = self.clock()
            rows = []
            for r in ep.runners.values():
                if r.state not in ("loaded", "unloading"):
                    continue
                if r.keep_alive == FOREVER and r.state == "loaded":
                    expires = now + MAX_DURATION_NS / 1e9
                else:
                    expires = r.expires_at if r.expires_at is not None else now
                rows.append((expires, {
                    "name": r.facts.name, "model": r.facts.name, "size": r.size, "size_vram": r.size_vram,
                    "digest": r.facts.digest, "details": r.facts.details(),
                    "expires_at": _rfc3339(expires), "context_length": r.ctx,
                }))
        rows.sort(key=lambda x: x[0], reverse=True)
        return {"models": [row for _, row in rows]}


def _keep_alive_of(body: dict) -> float | None:
    try:
        return parse_keep_alive(body.get("keep_alive"))
    except ValueError as exc:
        raise SimError(400, str(exc)) from None


# --------------------------------------------------------------------------- command line


def build_arg_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="simulate_tower", description=(
        "Serve an Ollama-compatible API at every endpoint of a TowerOps profile, with virtual GPUs."))
    p.add_argument("--profile", default="profiles/tower.yaml", help="profile YAML (default: %(default)s)")
    p.add_argument("--time-scale", type=float, default=1.0,
                   help="simulated seconds per real second (100 = 100x faster; default 1)")
    p.add_argument("--host", action="append", dest="hosts", metavar="NAME",
                   help="serve only this host's endpoints (repeatable; default all)")
    p.add_argument("--bind", dest="bind_host", default=None,
                   help="listen on this address instead of each base_url's (loopback) host")
    p.add_argument("--keep-alive", default="5m", help="default keep_alive, like OLLAMA_KEEP_ALIVE (default 5m)")
    p.add_argument("--num-parallel", type=int, default=1, help="like OLLAMA_NUM_PARALLEL (default 1)")
    p.add_argument("--max-loaded-models", type=int, default=0,
                   help="like OLLAMA_MAX_LOADED_MODELS (default 0 = 3 per GPU)")
    p.add_argument("--cpu-ram-gb", type=float, default=0.0,
                   help="host RAM for layers that do not fit in VRAM (default 0: no CPU offload)")
    p.add_argument("--gpu-telemetry-dir", default=gpu_telemetry.default_dir(), metavar="DIR",
                   help="write the simulated GPUs here as sysfs and NVML for the agents' collectors "
                        "(default: $TOWEROPS_SIMULATED_GPU_DIR; none when unset)")
    p.add_argument("-v", "--verbose", action="store_true", help="log every load, unload and request")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_arg_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(processName)s[%(process)d] %(name)s: %(message)s")
    profile = load_profile_file(args.profile)
    tower = SimulatedTower(
        profile, time_scale=args.time_scale, hosts=args.hosts, bind_host=args.bind_host,
        default_keep_alive=args.keep_alive, num_parallel=args.num_parallel,
        max_loaded_models=args.max_loaded_models, cpu_ram_gb=args.cpu_ram_gb,
    )
    try:
        tower.start()
    except PortBusy as exc:
        print(f"simulate_tower: port {exc.port} on {exc.host} is already in use (endpoint {exc.endpoint}); "
              f"change that endpoint's base_url in {args.profile} or pass another --profile "
              "(scripts/run: TOWEROPS_PROFILE)", file=sys.stderr)
        return 2
    for name, url in tower.urls().items():
        print(f"simulated Ollama {name}: {url}", flush=True)
    telemetry = gpu_telemetry.TelemetryWriter(tower, args.gpu_telemetry_dir).start() if args.gpu_telemetry_dir else None

    def _stop(signum, frame):
        threading.Thread(target=tower.shutdown, daemon=True).start()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _stop)
    try:
        tower.serve_forever()
    except KeyboardInterrupt:
        tower.shutdown()
    if telemetry is not None:
        telemetry.stop()
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
