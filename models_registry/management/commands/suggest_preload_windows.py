"""Learn preload windows from the decision history now (what the weekly beat task does)."""
from django.core.management.base import BaseCommand

from models_registry.learning.tasks import suggest_preload_windows


class Command(BaseCommand):
    help = ("Learn preload windows from the decision history and open a suggestion on the preload page "
            "(TOWEROPS_PRELOAD_SUGGEST=auto: apply it when no worse); what the weekly beat task does.")

    def handle(self, *args, **options):
        self.stdout.write(suggest_preload_windows())
