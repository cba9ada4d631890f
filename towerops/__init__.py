__version__ = "0.2.0"  # the one place the server's version is written (pyproject.toml reads it; CHANGELOG.md)

from .celery import app as celery_app  # noqa: E402

__all__ = ("__version__", "celery_app")
