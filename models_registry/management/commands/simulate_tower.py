import sys

from django.core.management.base import BaseCommand

from models_registry import simulator


class Command(BaseCommand):
    help = "Serve an Ollama-compatible simulator at every endpoint URL of a profile (loopback only)."

    def add_arguments(self, parser):
        # The simulator owns its options; see models_registry/simulator.py.
        parser.add_argument("args", nargs="*")

    def run_from_argv(self, argv):
        # argv = [manage.py, simulate_tower, ...]: hand the rest to the simulator's own parser.
        sys.exit(simulator.main(argv[2:]))
