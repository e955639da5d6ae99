"""The plan's modules keep to their layer (DESIGN.md §7): the plan is pure, so it imports no
kopf or kubernetes, and nothing above it (the controller, executors, engine, CLI, local runner),
which would also make its import graph circular."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import kompaktor.plan

PLAN = Path(kompaktor.plan.__file__).parent
ABOVE = (
    "kopf",
    "kubernetes",
    "kompaktor.controller",
    "kompaktor.executors",
    "kompaktor.engine",
    "kompaktor.cli",
    "kompaktor.local",
)


def imported(source: str) -> set[str]:
    """Every module a source file imports, at any depth of its code."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module is not None:
            names.add(node.module)
    return names


def above(names: set[str]) -> list[str]:
    return sorted(n for n in names if any(n == a or n.startswith(f"{a}.") for a in ABOVE))


def test_the_check_sees_an_import_from_above_even_inside_a_function() -> None:
    source = "import json\ndef f():\n    from kompaktor.controller.handlers import x\n"
    assert above(imported(source)) == ["kompaktor.controller.handlers"]


@pytest.mark.parametrize("module", sorted(p.name for p in PLAN.glob("*.py")))
def test_a_plan_module_imports_nothing_from_above_the_plan(module: str) -> None:
    assert above(imported((PLAN / module).read_text())) == []
