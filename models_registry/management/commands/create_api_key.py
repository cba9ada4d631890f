from django.core.management.base import BaseCommand, CommandError

from models_registry.auth import create_key


class Command(BaseCommand):
    help = "Create an API key and print it (its last line is the key; it is shown only once)."

    def add_arguments(self, parser):
        parser.add_argument("name")
        parser.add_argument("--scopes", default="select,read", help="comma-separated: select, read, admin")

    def handle(self, name, scopes, **options):
        try:
            row, plain = create_key(name, [s.strip() for s in scopes.split(",") if s.strip()])
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(f"API key {row.name!r} with scopes {','.join(row.scopes)} (shown once):")
        self.stdout.write(plain)
