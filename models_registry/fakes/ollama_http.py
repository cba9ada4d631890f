"""Ollama's HTTP API over the simulated servers: one ``ThreadingHTTPServer`` per endpoint.

``_Handler`` routes a request to the tower's API bodies (``SimulatedTower`` in
``ollama_server``); ``_RequestCtx`` is one request's view (abort checks, JSON and NDJSON writers).
Errors are Ollama's ``{"error": "..."}`` with its status codes.
"""
from __future__ import annotations

import json
import logging
import select
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from .ollama_state import SimError, _Aborted, _Endpoint

if TYPE_CHECKING:
    from .ollama_server import SimulatedTower

log = logging.getLogger("towerops.simulator")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # The listen backlog: socketserver's default of 5 resets connections when many clients connect at
    # once (64 streams); Go's net/http, which Ollama uses, listens with the system's maximum.
    request_queue_size = 1024
    allow_reuse_address = True
    block_on_close = False

    def __init__(self, address, handler, tower: SimulatedTower, endpoint: _Endpoint):
        self.tower, self.endpoint = tower, endpoint
        self._conns: set[socket.socket] = set()
        self._conns_lock = threading.Lock()
        super().__init__(address, handler)

    def process_request(self, request, client_address):
        with self._conns_lock:
            self._conns.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request):
        with self._conns_lock:
            self._conns.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        with self._conns_lock:
            conns = list(self._conns)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class _RequestCtx:
    """One request's view: abort checks and the response writers."""

    def __init__(self, handler: "_Handler"):
        self.h = handler
        self.tower: SimulatedTower = handler.server.tower
        self.ep: _Endpoint = handler.server.endpoint
        self.epoch = self.ep.epoch
        self.streaming = False
        self.responded = False

    def client_gone(self) -> bool:
        sock = self.h.connection
        try:
            readable, _, _ = select.select([sock], [], [], 0)
            if not readable:
                return False
            return sock.recv(1, socket.MSG_PEEK) == b""
        except (OSError, ValueError):
            return True

    def check(self) -> None:
        if self.tower._closing or self.ep.epoch != self.epoch or self.client_gone():
            raise _Aborted()

    def sleep_until(self, deadline: float) -> None:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(left, 0.02))
            if self.tower._closing or self.ep.epoch != self.epoch:
                raise _Aborted()

    def send_json(self, status: int, obj: Any) -> None:
        self.h._send(status, "application/json; charset=utf-8", json.dumps(obj).encode())
        self.responded = True

    def start_stream(self) -> None:
        h = self.h
        h.send_response(200)
        h.send_header("Content-Type", "application/x-ndjson")
        h.send_header("Transfer-Encoding", "chunked")
        h.end_headers()
        self.streaming = self.responded = True

    def stream(self, obj: Any) -> None:
        data = json.dumps(obj).encode() + b"\n"
        self.h.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.h.wfile.flush()

    def end_stream(self) -> None:
        self.h.wfile.write(b"0\r\n\r\n")
        self.h.wfile.flush()
        self.streaming = False


def _extra_routes() -> dict:
    from models_registry.fakes.ollama_embed import ROUTES

    return ROUTES


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are separate writes: no 40 ms delayed-ACK stalls
    server_version = "ollama-sim"
    sys_version = ""
    server: _Server

    def log_message(self, fmt: str, *args) -> None:  # quiet by default
        log.debug("%s %s", self.server.endpoint.name, fmt % args)

    def do_GET(self) -> None:
        self._dispatch()

    def do_HEAD(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    def _read_body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            parts = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    break
                parts.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(parts)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _json_body(self, body: bytes) -> dict:
        if not body.strip():
            raise SimError(400, "missing request body")
        try:
            data = json.loads(body)
        except json.JSONDecodeError as exc:
            raise SimError(400, f"invalid character in request body: {exc.msg}") from None
        if not isinstance(data, dict):
            raise SimError(400, "json: cannot unmarshal request body")
        return data

    def _dispatch(self) -> None:
        tower, ep = self.server.tower, self.server.endpoint
        ctx = _RequestCtx(self)
        path = urlsplit(self.path).path.rstrip("/") or "/"
        method = self.command
        try:
            raw = self._read_body() if method in ("POST", "DELETE") else b""
            if path == "/" and method in ("GET", "HEAD"):
                self._text(200, "Ollama is running")
            elif path == "/api/version" and method in ("GET", "HEAD"):
                ctx.send_json(200, {"version": tower.version})
            elif path == "/api/tags" and method in ("GET", "HEAD"):
                ctx.send_json(200, tower._tags(ep))
            elif path == "/api/ps" and method == "GET":
                ctx.send_json(200, tower._ps(ep))
            elif path == "/api/show" and method == "POST":
                ctx.send_json(200, tower._show(ep, self._json_body(raw)))
            elif path in ("/api/generate", "/api/chat") and method == "POST":
                body = self._json_body(raw)
                facts = tower._lookup(ep, body.get("model"), for_show=False)
                tower._generate(ep, facts, body, ctx, chat=path == "/api/chat")
            elif path in _extra_routes() and method == "POST":  # /api/embed, /api/embeddings: ollama_embed.py
                _extra_routes()[path](tower, ep, self._json_body(raw), ctx)
            else:
                self._text(404, "404 page not found")
        except SimError as exc:
            if ctx.streaming:  # mid-stream errors are a last NDJSON line
                ctx.stream({"error": exc.message})
                ctx.end_stream()
            elif not ctx.responded:
                ctx.send_json(exc.status, {"error": exc.message})
        except (_Aborted, BrokenPipeError, ConnectionResetError, ConnectionAbortedError):
            self.close_connection = True
        except Exception as exc:  # a bug in the simulator: answer like Ollama would, log it
            log.exception("simulator error on %s %s", method, path)
            if not ctx.responded:
                try:
                    ctx.send_json(500, {"error": f"internal error: {exc}"})
                except OSError:
                    pass
            self.close_connection = True

    def _text(self, status: int, text: str) -> None:
        self._send(status, "text/plain; charset=utf-8", text.encode())

    def _send(self, status: int, content_type: str, data: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
