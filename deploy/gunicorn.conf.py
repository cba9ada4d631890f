"""gunicorn settings for TowerOps' web process (deploy/bin/web). Every value can be set from the environment.

TowerOps is a WSGI app with short requests: a selection takes milliseconds and never waits for a
load (the agents load in the background), and the console polls small fragments. So: threads per
worker for the many small polls, a tight timeout, and no ASGI server (nothing here is async; an
ASGI server would only run the same sync views in a thread pool).
"""
import errno
import multiprocessing
import os
import socket
import sys

from towerops.logconfig import logging_config

bind = os.environ.get("GUNICORN_BIND", "127.0.0.1:8000")  # behind the reverse proxy (deploy/Caddyfile)
# Processes x threads: each thread may hold one database connection (DB_CONN_MAX_AGE keeps it).
workers = int(os.environ.get("WEB_CONCURRENCY", min(2 * multiprocessing.cpu_count() + 1, 8)))
worker_class = "gthread"
threads = int(os.environ.get("GUNICORN_THREADS", "4"))
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "30"))  # a stuck request is killed, the worker replaced
graceful_timeout = int(os.environ.get("GUNICORN_GRACEFUL_TIMEOUT", "30"))
keepalive = 5  # the proxy reuses its connections
# No runtime control socket (gunicornc): one fixed path per user would be shared by every gunicorn
# of that user; systemd or compose restart the service instead.
control_socket_disable = True
max_requests = 2000  # recycle workers now and then (memory), staggered
max_requests_jitter = 200
# The proxy's X-Forwarded-* are trusted from these addresses only (with BEHIND_TLS_PROXY=1 in Django).
forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1,::1")

# One log format with the rest of TowerOps (LOG_LEVEL, LOG_FORMAT); the access log goes to stdout too.
_access = os.environ.get("GUNICORN_ACCESS_LOG", "1") == "1"
accesslog = "-" if _access else None
# With logconfig_dict gunicorn logs access lines whatever `accesslog` says: GUNICORN_ACCESS_LOG=0 raises
# the access logger above the level of its lines instead.
logconfig_dict = logging_config(extra_loggers={
    "gunicorn.error": {"level": os.environ.get("LOG_LEVEL", "INFO").upper(), "propagate": True},
    "gunicorn.access": {"level": "INFO" if _access else "WARNING", "propagate": True},
})


def on_starting(server):
    """A busy port is one line naming it and the variable to change, not gunicorn's five retries."""
    for address in bind.split(","):
        if address.startswith("unix:"):
            continue
        host, _, port = address.strip().rpartition(":")
        host = host.strip("[]") or "0.0.0.0"
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, int(port)))
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE:
                    raise
                print(f"towerops web: port {port} on {host} is already in use; set GUNICORN_BIND to another "
                      "host:port", file=sys.stderr, flush=True)
                os._exit(2)  # before gunicorn has started anything
