"""The public API documents itself: every module has a docstring and an ``__all__``, and every class,
function and public method those ``__all__`` lists has a docstring; dataclass fields are documented too.

Fields count as documented when the class docstring names them (an ``Attributes:`` entry ``name: ...``,
or the name in double backticks anywhere in it) or when a comment sits on or directly above the field's
line. A property needs no docstring of its own when the class docstring names it the same way.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import importlib.util
import inspect
import io
import pkgutil
import re
import sys
import textwrap
import tokenize
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import scanedge


def _module_names() -> list[str]:
    names = ["scanedge"]
    names += [m.name for m in pkgutil.walk_packages(scanedge.__path__, "scanedge.")]
    return sorted(names)


MODULES = _module_names()


def _own_doc(cls: type) -> str:
    """The class's own docstring; the signature dataclasses generate for an undocumented class is none."""
    doc = cls.__dict__.get("__doc__") or ""
    if dataclasses.is_dataclass(cls) and doc.startswith(f"{cls.__name__}("):
        return ""
    return doc.strip()


def _mentions(doc: str, name: str) -> bool:
    return f"``{name}``" in doc or re.search(rf"^\s*{re.escape(name)}\b[^:\n]*:", doc, re.MULTILINE) is not None


def _public_members(cls: type) -> list[tuple[str, Any]]:
    """Public methods and properties defined in ``cls`` itself (inherited ones are checked where defined)."""
    out = []
    for name, value in vars(cls).items():
        if name.startswith("_"):
            continue
        if isinstance(value, (classmethod, staticmethod)):
            value = value.__func__
        if inspect.isfunction(value) or isinstance(value, property):
            out.append((name, value))
    return out


def _undocumented_fields(cls: type) -> list[str]:
    """The dataclass fields ``cls`` declares itself that neither its docstring nor a comment explains."""
    own = [f.name for f in dataclasses.fields(cls) if f.name in inspect.get_annotations(cls)]
    doc = _own_doc(cls)
    lines, _ = inspect.getsourcelines(cls)
    source = textwrap.dedent("".join(lines))
    commented = {
        tok.start[0] for tok in tokenize.generate_tokens(io.StringIO(source).readline) if tok.type == tokenize.COMMENT
    }
    code_lines = source.splitlines()
    body = ast.parse(source).body[0]
    assert isinstance(body, ast.ClassDef)
    field_lines = {
        node.target.id: node.lineno
        for node in body.body
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
    }
    missing = []
    for name in own:
        line = field_lines.get(name)
        if _mentions(doc, name) or line is None:
            continue
        above = code_lines[line - 2].strip() if line >= 2 else ""
        if line in commented or (above.startswith("#") and (line - 1) in commented):
            continue
        missing.append(name)
    return missing


def _problems(module: ModuleType) -> list[str]:
    problems = []
    if not (module.__doc__ or "").strip():
        problems.append("module has no docstring")
    exported = getattr(module, "__all__", None)
    if exported is None:
        return [*problems, "module has no __all__"]
    for name in exported:
        if not hasattr(module, name):
            problems.append(f"__all__ names {name}, which the module does not define")
            continue
        obj = getattr(module, name)
        if not (inspect.isclass(obj) or inspect.isfunction(obj)) or obj.__module__ != module.__name__:
            continue  # constants and aliases; re-exports are checked in the module that defines them
        if inspect.isfunction(obj):
            if not inspect.getdoc(obj):
                problems.append(f"{name}() has no docstring")
            continue
        doc = _own_doc(obj)
        if not doc:
            problems.append(f"class {name} has no docstring")
        for member, value in _public_members(obj):
            # an override without a docstring inherits its base's (inspect.getdoc looks it up)
            if inspect.getdoc(getattr(obj, member, value)):
                continue
            if isinstance(value, property) and _mentions(doc, member):
                continue  # a plain property the class docstring already explains
            problems.append(f"{name}.{member} has no docstring")
        if dataclasses.is_dataclass(obj):
            problems += [f"{name}.{field} is undocumented" for field in _undocumented_fields(obj)]
    return problems


@pytest.mark.parametrize("name", MODULES)
def test_module_documents_its_public_api(name: str) -> None:
    module = importlib.import_module(name)
    problems = _problems(module)
    assert not problems, f"{name}:\n  " + "\n  ".join(problems)


def test_every_exported_scanedge_object_is_checked_where_it_is_defined() -> None:
    """A class or function re-exported by a package must be in its defining module's ``__all__`` too,
    so the per-module check above sees it."""
    strays = []
    for name in MODULES:
        module = importlib.import_module(name)
        for export in getattr(module, "__all__", ()):
            obj = getattr(module, export, None)
            home = getattr(obj, "__module__", None) or ""
            if not (inspect.isclass(obj) or inspect.isfunction(obj)) or not home.startswith("scanedge") or home == name:
                continue
            if export not in getattr(importlib.import_module(home), "__all__", ()):
                strays.append(f"{name}.{export} (defined in {home})")
    assert not strays, "exported but missing from the defining module's __all__: " + ", ".join(strays)


def test_the_checker_catches_what_it_is_meant_to_catch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The rules above find an undocumented function, method, property and dataclass field."""
    (tmp_path / "public_api_probe.py").write_text(
        textwrap.dedent(
            '''
            """A module."""
            import dataclasses

            __all__ = ["Config", "helper", "missing"]


            def helper(x):
                return x


            @dataclasses.dataclass
            class Config:
                """Settings.

                Attributes:
                    known: explained here.
                """

                known: int = 1
                commented: int = 2  # explained by its comment
                #: explained by the comment above
                above: int = 3
                silent: int = 4

                def method(self):
                    return 1

                @property
                def value(self):
                    return 2

                @property
                def known_twice(self):
                    """Documented."""
                    return 2 * self.known
            '''
        )
    )
    spec = importlib.util.spec_from_file_location("public_api_probe", tmp_path / "public_api_probe.py")
    assert spec is not None and spec.loader is not None
    probe = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, probe)  # inspect finds the source through sys.modules
    spec.loader.exec_module(probe)
    assert _problems(probe) == [
        "Config.method has no docstring",
        "Config.value has no docstring",
        "Config.silent is undocumented",
        "helper() has no docstring",
        "__all__ names missing, which the module does not define",
    ]
