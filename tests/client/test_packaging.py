"""The client is its own distribution: httpx is all it needs, and the server's package leaves it out.

(.ci/run also installs it alone into a fresh virtualenv and checks Django did not come with it.)"""
from __future__ import annotations

import ast
import sys
import tomllib

from setuptools import find_packages

from .conftest import ROOT

CLIENT = ROOT / "towerops_client"


def test_the_client_depends_on_httpx_only():
    project = tomllib.loads((CLIENT / "pyproject.toml").read_text())["project"]
    assert project["name"] == "towerops-client"
    assert [d.split(">")[0].split("=")[0].split("<")[0] for d in project["dependencies"]] == ["httpx"]


def test_the_client_imports_nothing_but_the_standard_library_and_httpx():
    for path in (CLIENT / "src" / "towerops_client").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
            for name in names:
                top = name.split(".")[0]
                assert top in sys.stdlib_module_names or top in ("httpx", "__future__"), f"{path.name}: {name}"


def test_the_servers_distribution_leaves_the_client_out():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    packages = find_packages(str(ROOT), include=config["include"])
    assert "towerops" in packages and "models_registry.slo" in packages
    assert not [p for p in packages if p.startswith("towerops_client")]
