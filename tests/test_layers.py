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
    "log_budget": 0,
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


#: runtime's sub-packages by role, bottom up: the core knows no sockets, the wire is shared by both sides,
#: and the runtime process and the console side never import each other
RUNTIME_ROLES = {"core": 0, "wire": 1, "serving": 2, "console": 2}


def sideways_runtime_imports(root: Path = ROOT) -> list[str]:
    """``module -> imported`` for every runtime import of a role at or above the importer's, other than its own."""
    found = []
    for path in sorted((root / "runtime").rglob("*.py")):
        parts = path.relative_to(root / "runtime").parts
        own = parts[0] if len(parts) > 1 else None
        if own not in RUNTIME_ROLES:
            continue
        for name in _imports(path):
            pieces = name.split(".")
            target = pieces[2] if len(pieces) > 2 and pieces[1] == "runtime" else None
            if target in RUNTIME_ROLES and target != own and RUNTIME_ROLES[target] >= RUNTIME_ROLES[own]:
                found.append(f"{path.relative_to(root.parent)} -> {name}")
    return found


def test_runtime_roles_import_downward_only():
    assert sideways_runtime_imports() == []


def test_nothing_in_the_repository_uses_an_old_module_path():
    """Moved modules' old paths are for other people's code (with a warning); ours uses the new ones."""
    from scanedge._moved import MOVED_MODULES

    old = []
    for folder in (ROOT, ROOT.parent / "tests"):
        for path in sorted(folder.rglob("*.py")):
            old += [f"{path.name} -> {n}" for n in _imports(path) if n in MOVED_MODULES]
    assert old == []


def test_the_role_check_sees_a_console_module_importing_the_server(tmp_path):
    (tmp_path / "runtime" / "console").mkdir(parents=True)
    (tmp_path / "runtime" / "console" / "c.py").write_text("from scanedge.runtime.serving.shm import SHM_DIR\n")
    (tmp_path / "runtime" / "wire").mkdir()
    (tmp_path / "runtime" / "wire" / "w.py").write_text("from scanedge.runtime.core.pipeline import Pipeline\n")
    assert sideways_runtime_imports(tmp_path) == [
        f"{tmp_path.name}/runtime/console/c.py -> scanedge.runtime.serving.shm"
    ]


def test_the_check_sees_an_upward_import(tmp_path):
    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "x.py").write_text("from scanedge.cli.arguments import literal\n")
    (tmp_path / "cli").mkdir()
    (tmp_path / "cli" / "y.py").write_text("import scanedge.bench.stream\n")
    assert upward_imports(tmp_path) == [f"{tmp_path.name}/bench/x.py -> scanedge.cli.arguments"]
