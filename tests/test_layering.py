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


def _our_imports(path: Path) -> set[str]:
    """Every module of ours a file imports, lazily or not (annotation-only imports included)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] in OURS)
        elif (isinstance(node, ast.ImportFrom) and node.module and node.level == 0
              and node.module.split(".")[0] in OURS):
            found.add(node.module)  # `from training import _folders` names a module too
            found.update(f"{node.module}.{a.name}" for a in node.names)
    return found


def test_no_import_circles() -> None:
    """A module never reaches itself through imports (lazy ones count: a circle is a circle)."""
    modules = {
        ".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): p
        for package in sorted(OURS) for p in _files(package)
    }
    graph = {name: {m for m in _our_imports(path) if m in modules and m != name}
             for name, path in modules.items()}
    # package faces (__init__ re-exporting their modules) are not circles of logic
    faces = {name for name, path in modules.items() if path.name == "__init__.py"}
    circles = []
    for start in sorted(graph):
        stack, seen = [(start, [start])], set()
        while stack:
            node, trail = stack.pop()
            for nxt in graph[node] - faces:
                if nxt == start:
                    circles.append(" -> ".join([*trail, start]))
                elif nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, [*trail, nxt]))
    assert not circles, circles


def test_the_network_and_the_store_name_exits_and_components_alike() -> None:
    """training and db import nothing of ours, so each keeps the shared vocabulary; they agree."""
    from db import records
    from training import flops, heads

    assert heads.FINAL_EXIT == records.FINAL_EXIT
    assert flops.COMPONENT_KINDS == records.COMPONENT_KINDS
