"""Every argument of every TowerOps command says what it is for (`manage.py <command> --help`)."""
import argparse

import pytest
from django.core.management import get_commands, load_command_class

from models_registry.fakes.ollama_server import build_arg_parser

OURS = sorted(name for name, app in get_commands().items() if app == "models_registry")


def undocumented(parser: argparse.ArgumentParser) -> list[str]:
    return [a.option_strings[0] if a.option_strings else a.dest for a in parser._actions
            if not isinstance(a, argparse._HelpAction) and not (a.help or "").strip()]


def test_the_commands_are_found():
    assert {"runstack", "replay", "create_api_key", "create_agent_role", "simulate_tower", "load_profile"} <= set(OURS)


@pytest.mark.parametrize("name", OURS)
def test_every_argument_has_help(name):
    command = load_command_class("models_registry", name)
    parser = command.create_parser("manage.py", name)
    assert (command.help or "").strip(), f"{name} has no description"
    assert undocumented(parser) == []


def test_every_simulator_option_has_help():
    assert undocumented(build_arg_parser()) == []
