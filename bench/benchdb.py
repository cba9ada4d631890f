"""What bench scripts make for themselves: a free loopback port, a PostgreSQL database a script
creates, marks with its comment, and alone may re-create or drop, and server processes in their own
session that stop with everything they forked.

Imported by bench/soak.py, bench/bench_concurrency.py and bench/bench_api.py (with bench/ on sys.path)."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import urllib.parse
from pathlib import Path
from typing import IO, Callable, NoReturn

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def db_urls(default_db: str, fail: Callable[[str], NoReturn] = sys.exit) -> tuple[str, str, str]:
    """(the server's maintenance database, the script's database, its name) from DATABASE_URL;
    ``default_db`` when it names none or a system database."""
    base = os.environ.get("DATABASE_URL", f"postgres://postgres@127.0.0.1:5432/{default_db}")
    parts = urllib.parse.urlsplit(base)
    name = parts.path.lstrip("/") or default_db
    if name in ("postgres", "template0", "template1"):
        name = default_db
    if not name.replace("_", "").isalnum():
        fail(f"database name {name!r}: letters, digits and _ only")
    return parts._replace(path="/postgres").geturl(), parts._replace(path=f"/{name}").geturl(), name


def psql(url: str, sql: str, params=None, *, fetch: bool = False):
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(sql, params)
        return cur.fetchall() if fetch else None


def _comment(admin_url: str, name: str):
    rows = psql(admin_url, "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s",
                [name], fetch=True)
    return rows[0][0] if rows else False


def fresh_database(admin_url: str, name: str, comment: str, fail: Callable[[str], NoReturn] = sys.exit) -> None:
    """Create ``name``; re-create it when it carries ``comment`` (this script made it), refuse any
    other database of that name."""
    found = _comment(admin_url, name)
    if found is not False:
        if found != comment:
            fail(f"database {name} exists and was not created by {comment.split()[-1]}: not touching it "
                 "(point DATABASE_URL at another name, or drop it yourself)")
        psql(admin_url, f"DROP DATABASE {name} WITH (FORCE)")
    psql(admin_url, f"CREATE DATABASE {name}")
    psql(admin_url, f"COMMENT ON DATABASE {name} IS '{comment}'")


def drop_database(admin_url: str, name: str, comment: str) -> None:
    """Drop ``name`` if it carries ``comment``."""
    if _comment(admin_url, name) == comment:
        psql(admin_url, f"DROP DATABASE {name} WITH (FORCE)")


def run(cmd: list[str], env: dict, what: str) -> str:
    """Run ``cmd`` in the project directory; its stdout, or exit naming ``what`` failed."""
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"{what} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    return p.stdout


def stop_session(proc: subprocess.Popen, out: IO | None = None) -> None:
    """End a process started with ``start_new_session=True`` and everything it forked: SIGTERM to
    its group (a gunicorn master and its workers), then SIGKILL to whatever outlived it."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=15)
        except (subprocess.TimeoutExpired, ProcessLookupError):
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # any worker that outlived its master
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass
    if out is not None:
        out.close()
