"""The databases and ports bench scripts make for themselves: a free loopback port, and a PostgreSQL
database a script creates, marks with its comment, and alone may re-create or drop.

Imported by bench/soak.py and bench/bench_concurrency.py (with bench/ on sys.path)."""
from __future__ import annotations

import os
import socket
import sys
import urllib.parse
from typing import Callable, NoReturn


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
