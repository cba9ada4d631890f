import os

from celery import Celery
from celery.signals import setup_logging

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "towerops.settings")

app = Celery("towerops")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks(["models_registry.runtime", "models_registry.slo", "models_registry.ops", "models_registry.learning"])


@setup_logging.connect
def use_django_logging(**kwargs):
    """Workers and beat log like web (settings.LOGGING: LOG_LEVEL, LOG_FORMAT), not in Celery's own format."""
    from logging.config import dictConfig

    from django.conf import settings

    dictConfig(settings.LOGGING)
