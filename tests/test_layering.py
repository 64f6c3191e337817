"""Keep the one-way dependency order of docs/CONTRACTS.md true, by walking imports with ast."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
OURS = {"db", "training", "profiling", "dse"}

# package -> project packages it may import at module level
ALLOWED = {
    "db": set(),
    "training": set(),
    "profiling": {"db", "training"},
    "dse": {"db"},  # the core: no torch either
}
HEAVY = {"torch", "torchvision"}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _module_level_imports(path: Path) -> set[str]:
    """Top-level packages imported outside function bodies (lazy imports are allowed)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                continue
            if isinstance(child, ast.If) and _is_type_checking(child.test):
                continue  # imports for annotations only never run
            if isinstance(child, ast.Import):
                found.update(alias.name.split(".")[0] for alias in child.names)
            elif isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                found.add(child.module.split(".")[0])
            visit(child)

    visit(tree)
    return found


def _files(package: str) -> list[Path]:
    files = sorted((ROOT / package).rglob("*.py"))
    if package == "dse":  # the CLI sits on top and may import everything lazily
        files = [f for f in files if "cli" not in f.relative_to(ROOT / package).parts]
    if package == "db":
        files = [f for f in files if "migrations" not in f.parts]
    return files


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_one_way_dependencies(package: str) -> None:
    bad = []
    for path in _files(package):
        imported = _module_level_imports(path) & (OURS - {package})
        extra = imported - ALLOWED[package]
        if extra:
            bad.append(f"{path.relative_to(ROOT)} imports {sorted(extra)}")
    assert not bad, bad


def test_search_core_does_not_import_torch() -> None:
    bad = [
        str(p.relative_to(ROOT))
        for p in _files("dse")
        if _module_level_imports(p) & HEAVY
    ]
    assert not bad, bad


def test_cli_imports_heavy_packages_lazily() -> None:
    bad = []
    for path in sorted((ROOT / "dse" / "cli").rglob("*.py")):
        imported = _module_level_imports(path)
        if imported & (HEAVY | {"training", "profiling"}):
            bad.append(str(path.relative_to(ROOT)))
    assert not bad, bad
