"""Imports only go downward (ARCHITECTURE.md's floors): a module never imports a package above its own."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "scanedge"

#: scanedge's packages and top modules, bottom up; a module may import its own floor and those below it
FLOORS = {
    "_moved": 0,
    "errors": 0,
    "models": 0,
    "safe_text": 0,
    "version": 0,
    "manifest": 1,
    "imaging": 2,
    "engines": 2,
    "runtime": 3,
    "converters": 3,
    "dicomnet": 4,
    "viewer": 4,
    "bench": 5,
    "demo": 5,
    "fuzz": 5,
    "cli": 6,
}


def _imports(path: Path) -> list[str]:
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
        elif isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
    return [n for n in names if n.startswith("scanedge.")]


def upward_imports(root: Path = ROOT) -> list[str]:
    """``module -> imported`` for every import of a package above the importer's floor."""
    found = []
    for path in sorted(root.rglob("*.py")):
        own = path.relative_to(root).with_suffix("").parts[0]
        if own not in FLOORS:
            continue
        for name in _imports(path):
            target = name.split(".")[1]
            if FLOORS.get(target, -1) > FLOORS[own]:
                found.append(f"{path.relative_to(root.parent)} -> {name}")
    return found


def test_no_import_climbs_back_up():
    assert upward_imports() == []


def test_the_check_sees_an_upward_import(tmp_path):
    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "x.py").write_text("from scanedge.cli.arguments import literal\n")
    (tmp_path / "cli").mkdir()
    (tmp_path / "cli" / "y.py").write_text("import scanedge.bench.stream\n")
    assert upward_imports(tmp_path) == [f"{tmp_path.name}/bench/x.py -> scanedge.cli.arguments"]
