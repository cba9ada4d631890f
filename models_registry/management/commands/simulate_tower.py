import sys

from django.core.management.base import BaseCommand

from models_registry.fakes import ollama_server as simulator


class Command(BaseCommand):
    help = "Serve an Ollama-compatible simulator at every endpoint URL of a profile (loopback only)."

    def add_arguments(self, parser):
        # The simulator owns its options (models_registry/fakes/ollama_server.py): run_from_argv hands
        # them over, and --help shows them.
        parser.add_argument("args", nargs="*", help="the simulator's options: see `manage.py simulate_tower --help`")

    def run_from_argv(self, argv):
        # argv = [manage.py, simulate_tower, ...]: hand the rest (--help included) to the simulator's own parser.
        sys.exit(simulator.main(argv[2:]))
