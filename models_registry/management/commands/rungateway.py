"""Serve the gateway (models_registry/gateway/) with uvicorn at TOWEROPS_GATEWAY_BIND."""
from django.core.management.base import BaseCommand, CommandError

from models_registry import conf


def split_bind(bind: str) -> tuple[str, int]:
    host, _, port = bind.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)


class Command(BaseCommand):
    help = "Serve TowerOps' Ollama- and OpenAI-compatible gateway."

    def add_arguments(self, parser):
        parser.add_argument("--bind", default=conf.value("TOWEROPS_GATEWAY_BIND"), help="host:port (%(default)s)")
        parser.add_argument("--workers", type=int, default=conf.value("TOWEROPS_GATEWAY_WORKERS"),
                            help="processes (they share admission through Redis)")

    def handle(self, bind, workers, **options):
        import uvicorn

        host, port = split_bind(bind)
        if workers > 1 and not conf.value("TOWEROPS_GATEWAY_REDIS_URL"):
            raise CommandError(f"--workers {workers}: several gateway processes need TOWEROPS_GATEWAY_REDIS_URL "
                               "(or a Redis broker) to share admission; run one process without it")
        uvicorn.run("models_registry.gateway.asgi:app", host=host, port=port, workers=workers, lifespan="on",
                    log_level="warning", access_log=False, timeout_graceful_shutdown=10)
