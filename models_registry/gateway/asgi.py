"""``uvicorn models_registry.gateway.asgi:app`` — the gateway as an ASGI application."""
import os

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "towerops.settings")
django.setup()

from models_registry.gateway.app import Gateway  # noqa: E402 - after django.setup()

app = Gateway()
