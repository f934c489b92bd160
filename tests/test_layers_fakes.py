"""The fakes stay out of the product: read from the source, not from a running process.

A test double the product can import is one refactor away from serving real
traffic, and a fake that imports the product would agree with the very code it
checks. So: gateway/ imports fakes only in the two commands that run a fake
(`meterway demo`, `meterway fake-upstream`), and there inside the function, so
`meterway serve` never loads it; ledger/, payments/ and config/ never import
it; and fakes/ imports nothing from gateway/.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# The command functions that start a fake, the only importers of fakes in gateway/.
FAKE_COMMANDS = {"gateway/cli/__init__.py", "gateway/cli/demo.py"}
FAKE_FREE_PACKAGES = ("ledger", "payments", "config")
IMPORT_FUNCTIONS = {"import_module", "__import__"}
SOURCE_FILES_MIN = 10  # a glob that finds almost nothing means the layout moved, not that the rule holds


def _sources(package: str) -> list[Path]:
    return sorted((REPO / package).rglob("*.py"))


def imports(tree: ast.AST) -> Iterator[tuple[ast.stmt | ast.expr, str]]:
    """(node, module) for each absolute import, including importlib.import_module("...") with a literal."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node, alias.name
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node, node.module
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", None)
            if name in IMPORT_FUNCTIONS and isinstance(node.args[0].value, str):
                yield node, node.args[0].value


def _is_within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def _top_level_nodes(tree: ast.Module) -> set[int]:
    """ids of the nodes outside any function: what runs when the module is imported."""
    inside: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            inside.update(id(child) for child in ast.walk(node) if child is not node)
    return {id(node) for node in ast.walk(tree)} - inside


def _importers_of(package: str, roots: tuple[str, ...]) -> list[tuple[str, int, bool]]:
    """(path, line, at import time) of each import of ``package`` in the files under ``roots``."""
    found = []
    for root in roots:
        for path in _sources(root):
            tree = ast.parse(path.read_text(), str(path))
            top = _top_level_nodes(tree)
            for node, module in imports(tree):
                if _is_within(module, package):
                    found.append((path.relative_to(REPO).as_posix(), node.lineno, id(node) in top))
    return found


def test_the_scan_sees_the_packages() -> None:
    assert len(_sources("gateway")) >= SOURCE_FILES_MIN
    assert len(_sources("fakes")) >= 2
    assert (REPO / "gateway/cli/demo.py").is_file(), "the demo command moved: update FAKE_COMMANDS"


def test_the_scan_finds_the_commands_own_imports() -> None:
    """The two allowed importers are seen, so a rename of fakes cannot make this suite pass vacuously."""
    files = {path for path, _, _ in _importers_of("fakes", ("gateway",))}
    assert files == FAKE_COMMANDS, files


def test_gateway_imports_fakes_only_in_the_fake_commands_and_only_when_they_run() -> None:
    wrong = [f"{path}:{line}" for path, line, _ in _importers_of("fakes", ("gateway",)) if path not in FAKE_COMMANDS]
    assert not wrong, f"only the demo and fake-upstream commands may import fakes: {wrong}"
    eager = [f"{path}:{line}" for path, line, at_import in _importers_of("fakes", ("gateway",)) if at_import]
    assert not eager, f"import fakes inside the command's function, so that serve never loads it: {eager}"


def test_the_ledger_payments_and_config_never_import_fakes() -> None:
    found = _importers_of("fakes", FAKE_FREE_PACKAGES)
    assert not found, found


def test_fakes_import_nothing_from_gateway() -> None:
    found = _importers_of("gateway", ("fakes",))
    assert not found, f"a fake that imports the product agrees with what it should test: {found}"
