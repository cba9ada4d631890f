from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from models_registry.profile import ProfileError, load_profile_file
from models_registry.services import import_profile


class Command(BaseCommand):
    help = "Import a YAML profile (hosts, GPUs, endpoints, models, task types, urgency classes, preload windows)."

    def add_arguments(self, parser):
        parser.add_argument("path")
        parser.add_argument("--user", help="username recorded in the edit history")

    def handle(self, path, user=None, **options):
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
