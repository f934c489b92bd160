"""The package structure holds: layers import only downward, no cycles, no module over 400 lines.

The rules about fakes/ are in tests/test_layers_fakes.py.

ARCHITECTURE.md states these rules; this test is what keeps them true.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.test_layers_fakes import imports

ROOT = Path(__file__).resolve().parent.parent
PRODUCT_PACKAGES = ("gateway", "ledger", "payments", "config")
MODULE_LINES_MAX = 400

# Inside gateway/, from the top down: a module may import its own layer and the layers below.
GATEWAY_LAYERS = {
    "gateway.cli": 6,  # the command line: starts the app, runs operations
    "gateway.http": 5,  # the only code that knows aiohttp's server side
    "gateway.money": 4,  # hold, charge or release, settle, sweep; opening the stores; operations
    "gateway.dialects": 3,  # one module per wire protocol
    "gateway.metering": 2,  # tokens, media, prices: no protocol
    "gateway.upstream": 1,  # the one ClientSession
    "gateway.errors": 0,  # values and utilities every layer may use
    "gateway.metrics": 0,
    "gateway.logs": 0,
}
# Third-party libraries each confined to the modules that translate their errors.
CONFINED = {
    "aiohttp": ("gateway.http.", "gateway.upstream", "gateway.cli", "gateway.logs", "fakes."),
    "asyncpg": ("ledger.postgres",),
    "redis": ("ledger.redis", "gateway.money.stores", "gateway.cli"),
}


def modules() -> dict[str, Path]:
    found = {}
    for package in (*PRODUCT_PACKAGES, "fakes"):
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def imports_of(path: Path) -> set[str]:
    """Every module a file imports (the scan of tests/test_layers_fakes.py), and each name taken
    from one: `from gateway import errors` imports gateway.errors."""
    names = set()
    for node, module in imports(ast.parse(path.read_text())):
        names.add(module)
        if isinstance(node, ast.ImportFrom):
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def layer_of(module: str) -> int | None:
    for prefix, rank in GATEWAY_LAYERS.items():
        if module == prefix or module.startswith(prefix + "."):
            return rank
    return None


def test_every_gateway_module_has_a_layer() -> None:
    missing = [m for m in modules() if m.startswith("gateway.") and layer_of(m) is None]
    assert missing == []


def test_gateway_layers_import_only_downward() -> None:
    known = modules()
    upward = []
    for module, path in known.items():
        rank = layer_of(module)
        if rank is None:
            continue
        for imported in imports_of(path):
            target = layer_of(imported)
            if target is not None and target > rank:
                upward.append(f"{module} (layer {rank}) imports {imported} (layer {target})")
    assert upward == []


@pytest.mark.parametrize(("package", "forbidden"), [
    ("ledger", ("gateway", "payments", "fakes", "config", "aiohttp")),
    ("config", ("gateway", "payments", "fakes")),
    ("payments", ("gateway", "fakes")),
])
def test_lower_packages_do_not_import_upward(package: str, forbidden: tuple[str, ...]) -> None:
    bad = [f"{module} imports {imported}" for module, path in modules().items() if module.split(".")[0] == package
           for imported in imports_of(path) if imported.split(".")[0] in forbidden]
    assert bad == []


@pytest.mark.parametrize("library", sorted(CONFINED))
def test_each_library_is_imported_where_its_errors_are_translated(library: str) -> None:
    allowed = CONFINED[library]
    bad = [f"{module} imports {imported}" for module, path in modules().items()
           if not any(module == a.rstrip(".") or module.startswith(a) for a in allowed)
           for imported in imports_of(path) if imported.split(".")[0] == library]
    assert bad == []


def test_no_import_cycles() -> None:
    known = modules()
    graph = {m: {i for i in imports_of(p) if i in known and i != m} for m, p in known.items()}
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> list[str] | None:
        if module in path:
            return path[path.index(module):] + [module]
        if module in done:
            return None
        for imported in sorted(graph[module]):
            cycle = visit(imported, [*path, module])
            if cycle:
                return cycle
        done.add(module)
        return None

    for module in sorted(graph):
        cycle = visit(module, [])
        assert cycle is None, " -> ".join(cycle)


def test_no_module_exceeds_the_line_limit() -> None:
    long = {str(path.relative_to(ROOT)): n for module, path in modules().items() if module.split(".")[0] in PRODUCT_PACKAGES
            if (n := len(path.read_text().splitlines())) > MODULE_LINES_MAX}
    assert long == {}


def test_the_scan_sees_the_layers_and_their_imports() -> None:
    """Guards the rules above against passing on nothing: the scan finds every layer and real imports."""
    known = modules()
    assert {layer_of(m) for m in known if m.startswith("gateway.")} == set(GATEWAY_LAYERS.values())
    assert "gateway.money.billing" in imports_of(known["gateway.http.proxy"])
    assert layer_of("gateway.http.proxy") > layer_of("gateway.money.billing") > layer_of("gateway.dialects.openai")  # type: ignore[operator]
