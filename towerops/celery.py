import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "towerops.settings")

app = Celery("towerops")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
