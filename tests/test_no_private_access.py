"""Tests use the public API and the seams made for them, never the engine's private state.

A test that reaches into ``client._cache`` pins today's design: the reshaping it should
survive breaks it. This test fails when a test module touches a private attribute of any
swr_token object, or imports a private name from the package.
"""

from __future__ import annotations

import ast
import pathlib

import swr_token

PACKAGE = pathlib.Path(swr_token.__file__).parent
TESTS = pathlib.Path(__file__).parent


def _is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _private_names_of_the_package() -> set[str]:
    """Every private attribute or method name an swr_token class or object defines."""
    names: set[str] = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) \
                    and node.value.id in ("self", "cls") and _is_private(node.attr):
                names.add(node.attr)
            elif isinstance(node, ast.FunctionDef) and _is_private(node.name):
                names.add(node.name)
            elif isinstance(node, ast.Assign) and any(
                    isinstance(t, ast.Name) and t.id == "__slots__" for t in node.targets):
                names.update(elt.value for elt in ast.walk(node.value)
                             if isinstance(elt, ast.Constant) and isinstance(elt.value, str)
                             and _is_private(elt.value))
    return names


def _violations(path: pathlib.Path, private: set[str]) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Attribute) and node.attr in private and not (
                isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
            found.append(f"{path.name}:{node.lineno}: .{node.attr}")
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("swr_token"):
            found += [f"{path.name}:{node.lineno}: import {alias.name}"
                      for alias in node.names if _is_private(alias.name)]
    return sorted(found)


def test_no_test_touches_private_state_of_the_package() -> None:
    private = _private_names_of_the_package()
    assert {"_cache", "_refresher", "_timer", "_tick"} <= private  # the rule sees the engine
    found = [v for path in sorted(TESTS.rglob("*.py")) if path != pathlib.Path(__file__)
             for v in _violations(path, private)]
    assert not found, "tests reaching into private state:\n" + "\n".join(found)


def test_the_rule_catches_a_reach_into_the_client(tmp_path: pathlib.Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text("client._cache.lock\nfrom swr_token._cli import _build_parser\n"
                     "self._cache\n", encoding="utf-8")
    assert _violations(probe, _private_names_of_the_package()) == sorted([
        "probe.py:1: ._cache", "probe.py:2: import _build_parser"])
