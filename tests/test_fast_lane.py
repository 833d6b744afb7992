"""The fast lane's boundary (tests/conftest.py) names modules and tests that exist."""

from __future__ import annotations

import ast

from tests import conftest
from tests.architecture import REPO


def _test_functions(module: str) -> set[str]:
    tree = ast.parse((REPO / module).read_text())
    return {node.name for node in tree.body if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)}


def test_every_integration_module_and_test_exists() -> None:
    missing = [module for module in conftest.INTEGRATION_MODULES if not (REPO / module).is_file()]
    for name in conftest.INTEGRATION_TESTS:
        module, function = name.split("::")
        if not (REPO / module).is_file() or function not in _test_functions(module):
            missing.append(name)
    assert not missing, f"tests/conftest.py names tests that are gone (renamed?): {missing}"


def test_a_fixture_named_for_integration_is_one_the_tests_define() -> None:
    defined = {
        node.name
        for path in (REPO / "tests").rglob("*.py")
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.FunctionDef)
    }
    assert set(conftest.INTEGRATION_FIXTURES) <= defined
