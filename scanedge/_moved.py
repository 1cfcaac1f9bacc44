"""Old import paths of modules and names that moved, kept working with a DeprecationWarning.

The package was reorganised by role (runtime/core, runtime/wire, ...). Code written against the earlier
paths (``import scanedge.runtime.pipeline``) must go on working for a release, and say where the thing
lives now. Module paths are served by a meta path finder that hands out the module at its new home (the
same module object, so ``isinstance`` and monkeypatching see one thing); single names are served by the
``__getattr__`` that :func:`forward_names` makes for the module they left.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import warnings
from collections.abc import Callable, Mapping, Sequence
from types import ModuleType
from typing import Any

__all__ = ["MOVED_MODULES", "forward_names", "install"]

#: earlier module path -> where that module lives now
MOVED_MODULES: dict[str, str] = {
    "scanedge.runtime.batch": "scanedge.runtime.core.batch",
    "scanedge.runtime.client": "scanedge.runtime.console.client",
    "scanedge.runtime.client_io": "scanedge.runtime.console.client_io",
    "scanedge.runtime.endpoints": "scanedge.runtime.wire.endpoints",
    "scanedge.runtime.io_loop": "scanedge.runtime.serving.io_loop",
    "scanedge.runtime.keep_warm": "scanedge.runtime.serving.keep_warm",
    "scanedge.runtime.log_budget": "scanedge.log_budget",
    "scanedge.runtime.payloads": "scanedge.runtime.wire.payloads",
    "scanedge.runtime.pipeline": "scanedge.runtime.core.pipeline",
    "scanedge.runtime.protocol": "scanedge.runtime.wire.protocol",
    "scanedge.runtime.replay": "scanedge.runtime.console.replay",
    "scanedge.runtime.scheduler": "scanedge.runtime.serving.scheduler",
    "scanedge.runtime.security": "scanedge.runtime.wire.security",
    "scanedge.runtime.series_store": "scanedge.runtime.serving.series_store",
    "scanedge.runtime.server": "scanedge.runtime.serving.server",
    "scanedge.runtime.shm": "scanedge.runtime.serving.shm",
    "scanedge.runtime.shm_client": "scanedge.runtime.console.shm_client",
    "scanedge.runtime.stats": "scanedge.runtime.serving.stats",
    "scanedge.runtime.workers": "scanedge.runtime.serving.workers",
    "scanedge.imaging.dicom_dataset": "scanedge.imaging.dicom.dataset",
    "scanedge.imaging.dicom_fast": "scanedge.imaging.dicom.fast",
    "scanedge.dicomnet.segmentation": "scanedge.dicomnet.outputs.seg",
}


def _warn(old: str, new: str) -> None:
    warnings.warn(f"{old} moved to {new}; the old path will be removed in a later release", DeprecationWarning, 3)


class _MovedLoader(importlib.abc.Loader):
    def __init__(self, new: str) -> None:
        self.new = new
        self.spec: importlib.machinery.ModuleSpec | None = None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        _warn(spec.name, self.new)
        module = importlib.import_module(self.new)
        self.spec = module.__spec__  # importlib sets the old path's spec on it next: exec_module puts it back
        return module

    def exec_module(self, module: ModuleType) -> None:
        """The module was executed at its new home already; it keeps that home's spec (``reload`` uses it)."""
        module.__spec__ = self.spec


class _MovedFinder(importlib.abc.MetaPathFinder):
    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        new = MOVED_MODULES.get(fullname)
        if new is None:
            return None
        return importlib.machinery.ModuleSpec(fullname, _MovedLoader(new))


def install() -> None:
    """Put the finder first on ``sys.meta_path`` (once): an old path must not find a stale file first."""
    if not any(isinstance(f, _MovedFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _MovedFinder())


def forward_names(module: str, moved: Mapping[str, tuple[str, str]]) -> Callable[[str], Any]:
    """A module ``__getattr__`` serving ``moved`` (old name -> (new module, new name)) with a warning."""

    def __getattr__(name: str) -> Any:
        if name not in moved:
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        new_module, new_name = moved[name]
        _warn(f"{module}.{name}", f"{new_module}.{new_name}")
        return getattr(importlib.import_module(new_module), new_name)

    return __getattr__
