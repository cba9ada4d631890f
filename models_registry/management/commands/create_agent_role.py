import os
import secrets

from django.core.management.base import BaseCommand, CommandError
from django.db import connection, transaction

from models_registry.ops.agent_role import (
    apply_agent_role,
    drop_agent_role,
    role_exists,
)


class Command(BaseCommand):
    help = (
        "Create or update the PostgreSQL role for GPU-host agents: only the grants their tasks need "
        "(no API keys, no users, no catalog edits). Run it after every migrate. Needs a database "
        "user that may create roles and owns the tables (the one that runs migrate)."
    )

    def add_arguments(self, parser):
        parser.add_argument("role", help="the role's name, e.g. towerops_agent (the user in the agents' DATABASE_URL)")
        parser.add_argument("--password-env", metavar="VARIABLE",
                            help="read the role's password from this environment variable (a password on the "
                                 "command line would show in `ps`); without it a new role gets a generated "
                                 "password, printed once, and an existing role keeps its own")
        parser.add_argument("--drop", action="store_true", help="revoke the role's grants and drop it instead")

    def handle(self, role, password_env, drop, **options):
        if drop:
            with transaction.atomic():
                dropped = drop_agent_role(role)
            self.stdout.write(f"dropped role {role}" if dropped else f"no role {role}: nothing to drop")
            return
        password = None
        if password_env:
            password = os.environ.get(password_env)
            if not password:
                raise CommandError(f"--password-env {password_env}: that environment variable is unset or empty")
        generated = False
        with transaction.atomic():
            if password is None and not role_exists(role):
                password, generated = secrets.token_urlsafe(24), True
            created = apply_agent_role(role, password)
        s = connection.settings_dict
        where = f"{s['HOST'] or 'localhost'}:{s['PORT'] or 5432}/{s['NAME']}"
        self.stdout.write(f"{'created' if created else 'updated'} role {role} with the agent grants on {where}")
        if generated:
            self.stdout.write("its password (shown once; put it in the agents' DATABASE_URL):")
            self.stdout.write(password)
