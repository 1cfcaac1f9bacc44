"""What names a model to serve, shared by the runtime process and the DICOM node, which both open models."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["ModelSpec"]


@dataclass(frozen=True)
class ModelSpec:
    """A model to serve: its ONNX file (or TensorRT plan) and, optionally, a manifest file overriding the
    embedded one. It is served under the manifest's ``name``.

    Attributes:
        path: the ONNX file or TensorRT plan.
        manifest: a manifest JSON file to use instead of the embedded one (or the sidecar); None: none.
    """

    path: Path
    manifest: Path | None = None
