"""The package's own imports form no cycle: a stage imports only what comes before it."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "rayscore"


def _module_name(path: Path) -> str:
    """``_deploy/base.py`` -> ``_deploy.base``; a package's ``__init__.py`` is the package."""
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _exists(module: str) -> bool:
    where = PACKAGE / module.replace(".", "/")
    return where.with_suffix(".py").exists() or (where / "__init__.py").exists()


def own_imports() -> dict[str, set[str]]:
    """Module -> the rayscore modules it imports (relative imports, at the top or inside a function).

    Sub-packages are seen too. Importing ``a.b`` runs package ``a`` first, so
    both count, except the packages that hold the importing module itself
    (they run before it in any case).
    """
    graph = {}
    for path in PACKAGE.rglob("*.py"):
        name = _module_name(path)
        if not name:  # rayscore/__init__.py: the public surface imports every stage
            continue
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        holders = {".".join(package[: i + 1]) for i in range(len(package))}
        imported: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ImportFrom) or node.level == 0:
                continue
            base = package[: len(package) - (node.level - 1)]
            names = [node.module] if node.module else [a.name for a in node.names]
            for target in (".".join([*base, n]).split(".") for n in names):
                imported.update(".".join(target[: i + 1]) for i in range(len(target)))
        graph[name] = {m for m in imported if _exists(m)} - holders - {name}
    return graph


def test_the_import_graph_sees_the_sub_packages() -> None:
    graph = own_imports()
    assert {"_deploy", "_deploy.base", "_deploy.ray_on_spark", "_deploy.ray_cluster", "_deploy.raydp_spark"} <= set(
        graph
    )
    assert "_config" in graph["_deploy.base"]
    assert "_deploy.base" in graph["_watch"] and "_deploy" in graph["_watch"]


def test_the_package_has_no_import_cycle() -> None:
    graph = own_imports()
    done: set[str] = set()

    def visit(module: str, path: tuple[str, ...]) -> None:
        assert module not in path, f"import cycle: {' -> '.join((*path, module))}"
        if module in done:
            return
        for imported in graph.get(module, ()):
            visit(imported, (*path, module))
        done.add(module)

    for module in graph:
        visit(module, ())
