"""The database role of the GPU hosts' agents: only what their tasks need.

An agent (a Celery worker on its host's queue) runs execute_load, execute_unload, sync_endpoint
and record_gpu_snapshots (models_registry/runtime/tasks.py). Those read the fleet and the catalog,
book residencies, and append load events and GPU snapshots. They never read API keys, users or
sessions, and never edit the catalog: an agent host that is taken over can lie about its own
residencies, not mint a key or change what is served. Tables not listed here (a new migration's
included) are closed to agents until a grant is added: tests/ops/test_agent_role.py runs every
agent task under this role, so a missing grant fails there, not in production.

A privilege with columns is granted on those columns only (``UPDATE (is_up, ...)``). Inserts need
``SELECT (id)`` because Django reads the new id back (``INSERT ... RETURNING id``).
"""
from __future__ import annotations

from django.db import connection
from psycopg import sql

from models_registry import models as m

# model -> privileges; a privilege is "SELECT" / "INSERT" / "UPDATE", or (privilege, [field names]).
AGENT_GRANTS: dict[type, list] = {
    m.Host: ["SELECT", ("UPDATE", ["last_seen_at"])],  # sync and telemetry stamp last_seen_at
    m.Gpu: ["SELECT"],
    m.Endpoint: ["SELECT", ("UPDATE", ["is_up", "version", "last_checked_at", "last_error"])],
    m.Endpoint.gpus.through: ["SELECT"],
    m.LlmModel: ["SELECT"],
    m.SelectionDecision: ["SELECT"],  # a load event points at the decision that asked for it
    m.Residency: ["SELECT", "INSERT", "UPDATE"],  # load/unload state, models loaded by someone else
    m.ResidencyGpu: ["SELECT", "INSERT"],
    m.LoadTimeEstimate: ["SELECT", "INSERT", "UPDATE"],  # the learned load time
    # a load reads the same model's last eviction there (thrash loads: lifecycle.last_eviction)
    m.LoadEvent: ["INSERT", ("SELECT", ["id", "model", "endpoint", "kind", "trigger", "requested_at", "finished_at"])],
    m.GpuSnapshot: ["INSERT", ("SELECT", ["id"])],
}


def grant_statements(role: str) -> list[sql.Composed]:
    stmts = []
    for model, privileges in AGENT_GRANTS.items():
        table = sql.Identifier(model._meta.db_table)
        for privilege in privileges:
            if isinstance(privilege, tuple):
                name, fields = privilege
                columns = sql.SQL(", ").join(sql.Identifier(model._meta.get_field(f).column) for f in fields)
                stmts.append(sql.SQL("GRANT {} ({}) ON {} TO {}").format(
                    sql.SQL(name), columns, table, sql.Identifier(role)))
            else:
                stmts.append(sql.SQL("GRANT {} ON {} TO {}").format(sql.SQL(privilege), table, sql.Identifier(role)))
    return stmts


def role_exists(role: str) -> bool:
    with connection.cursor() as cur:
        cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [role])
        return cur.fetchone() is not None


def apply_agent_role(role: str, password: str | None) -> bool:
    """Create (or bring up to date) a LOGIN role with exactly AGENT_GRANTS; True when it was created.

    Run it again after every migrate: it revokes whatever the role held on this database's
    tables and grants the list again. ``password`` None keeps the current one (or none).
    """
    ident = sql.Identifier(role)
    created = not role_exists(role)
    with connection.cursor() as cur:
        if created:
            cur.execute(sql.SQL("CREATE ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT").format(ident))
        if password is not None:
            cur.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(ident, sql.Literal(password)))
        cur.execute(sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(
            sql.Identifier(connection.settings_dict["NAME"]), ident))
        cur.execute(sql.SQL("GRANT USAGE ON SCHEMA public TO {}").format(ident))
        cur.execute(sql.SQL("REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {}").format(ident))
        cur.execute(sql.SQL("REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM {}").format(ident))
        for stmt in grant_statements(role):
            cur.execute(stmt)
    return created


def drop_agent_role(role: str) -> bool:
    """Revoke everything the role holds on this database and drop it; False when there was none."""
    if not role_exists(role):
        return False
    ident = sql.Identifier(role)
    with connection.cursor() as cur:
        cur.execute(sql.SQL("DROP OWNED BY {}").format(ident))  # its grants on this database
        cur.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM {}").format(
            sql.Identifier(connection.settings_dict["NAME"]), ident))
        cur.execute(sql.SQL("DROP ROLE {}").format(ident))
    return True
