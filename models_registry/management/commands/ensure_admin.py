import secrets

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "Create the 'admin' superuser once (password kept in var/admin_password) and print its credentials."

    def add_arguments(self, parser):
        parser.add_argument("--username", default="admin")

    def handle(self, username, **options):
        path = settings.VAR_DIR / "admin_password"
        User = get_user_model()
        user = User.objects.filter(username=username).first()
        if user is None or not path.exists():
            password = secrets.token_urlsafe(12)
            settings.VAR_DIR.mkdir(parents=True, exist_ok=True)
            path.write_text(password)
            path.chmod(0o600)
            if user is None:
                User.objects.create_superuser(username, "", password)
            else:
                user.set_password(password)
                user.save()
        self.stdout.write(f"Admin user: {username}  password: {path.read_text().strip()}  ({path})")
