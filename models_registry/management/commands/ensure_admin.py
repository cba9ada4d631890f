import secrets

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand

from models_registry import conf


class Command(BaseCommand):
    help = "Create the 'admin' superuser once (password kept in var/admin_password) and print its credentials."

    def add_arguments(self, parser):
        parser.add_argument("--username", default="admin", help="the superuser's name (default: %(default)s)")

    def handle(self, username, **options):
        var_dir = conf.value("TOWEROPS_VAR_DIR")
        path = var_dir / "admin_password"
        User = get_user_model()
        user = User.objects.filter(username=username).first()
        if user is None or not path.exists():
            password = secrets.token_urlsafe(12)
            var_dir.mkdir(parents=True, exist_ok=True)
            path.write_text(password)
            path.chmod(0o600)
            if user is None:
                User.objects.create_superuser(username, "", password)
            else:
                user.set_password(password)
                user.save()
        self.stdout.write(f"Admin user: {username}  password: {path.read_text().strip()}  ({path})")
