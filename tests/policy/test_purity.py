"""The decision core imports nothing outside the standard library, and no clock,
randomness, logging or I/O module even from it."""
from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

POLICY = Path(__file__).resolve().parents[2] / "models_registry" / "policy"
FORBIDDEN_STDLIB = {"time", "random", "secrets", "uuid", "logging", "os", "socket", "threading",
                    "subprocess", "asyncio", "io", "pathlib", "datetime", "zoneinfo", "sqlite3"}  # I/O the core must not touch
MODULES = sorted(POLICY.glob("*.py"))


def _imports(path: Path):
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, 0
        elif isinstance(node, ast.ImportFrom):
            yield node.lineno, node.module or "", node.level


def test_there_are_policy_modules():
    names = {p.name for p in MODULES}
    assert {"__init__.py", "select.py", "types.py", "placement.py"} <= names


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_policy_module_imports_only_the_standard_library(path):
    bad = []
    for lineno, module, level in _imports(path):
        if level > 0:  # relative: inside models_registry.policy
            continue
        top = module.split(".")[0]
        if module.startswith("models_registry.policy"):
            continue
        if top not in sys.stdlib_module_names or top in FORBIDDEN_STDLIB:
            bad.append(f"{path.name}:{lineno} imports {module}")
    assert not bad, "the decision core must stay pure: " + "; ".join(bad)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_policy_module_reads_no_clock_and_no_environment(path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    calls = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in {"now", "utcnow", "today", "time",
                                                             "perf_counter", "monotonic"}:
            # World.now is data; calling a .now()/.time() is reading a clock
            parent_calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and n.func is node]
            if parent_calls:
                calls.append(f"{path.name}:{node.lineno} calls .{node.attr}()")
        if isinstance(node, ast.Name) and node.id in {"open", "print", "input", "eval", "exec"}:
            calls.append(f"{path.name}:{node.lineno} uses {node.id}")
    assert not calls, "; ".join(calls)
