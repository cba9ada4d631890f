from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from models_registry.catalog.importer import import_profile
from models_registry.catalog.profile import ProfileError, load_profile_file
from models_registry.models import Host


class Command(BaseCommand):
    help = "Import a YAML profile (hosts, GPUs, endpoints, models, task types, urgency classes, preload windows)."

    def add_arguments(self, parser):
        parser.add_argument("path", help="the profile YAML, e.g. profiles/tower.yaml (importing it again updates)")
        parser.add_argument("--user", help="username recorded in the edit history")
        parser.add_argument("--only-if-empty", action="store_true",
                            help="import only into a database without hosts (a first install), so that a "
                                 "deployment's setup step never reverts what was edited in the console since")

    def handle(self, path, user=None, only_if_empty=False, **options):
        if only_if_empty and Host.objects.exists():
            self.stdout.write(f"{path}: not imported, the database already has a fleet (--only-if-empty)")
            return
        try:
            profile = load_profile_file(path)
        except ProfileError as exc:
            raise CommandError(str(exc)) from None
        who = None
        if user:
            who = get_user_model().objects.filter(username=user).first()
            if who is None:
                raise CommandError(f"--user: no user named {user!r}")
        summary = import_profile(profile, user=who)
        self.stdout.write(self.style.SUCCESS(f"{path}: {summary}"))
