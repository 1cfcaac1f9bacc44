"""What an ONNX file declares, read without running it: inputs, outputs, opset, graph hash, manifest.

``scanedge inspect`` prints this; ``scanedge manifest init`` starts from it. Nothing here loads a runtime.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scanedge.errors import ManifestMissingError
from scanedge.manifest import Manifest, ManifestSource, graph_sha256, load_manifest, load_onnx_model

__all__ = ["Dim", "ModelInspection", "TensorInfo", "graph_io", "inspect_model", "opset_version"]

Dim = int | str | None


@dataclass(frozen=True)
class TensorInfo:
    """A graph input or output as declared. A dimension is an int (fixed), a str (a named dynamic
    dimension, e.g. ``"batch"``) or None (dynamic, unnamed).

    Attributes:
        name: the tensor's name in the graph.
        shape: its dimensions, as above.
    """

    name: str
    dtype: str  # numpy dtype name, e.g. "float32"
    shape: tuple[Dim, ...]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: name, dtype, and the shape as a list."""
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}


def graph_io(model: Any) -> tuple[tuple[TensorInfo, ...], tuple[TensorInfo, ...]]:
    """(inputs, outputs) of an ``onnx.ModelProto``; initializers listed as inputs (old exporters) are
    weights, not inputs, and are left out."""
    import onnx

    weights = {i.name for i in model.graph.initializer}

    def describe(v: Any) -> TensorInfo:
        t = v.type.tensor_type
        dims = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim)
        return TensorInfo(v.name, onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name, dims)

    return (
        tuple(describe(v) for v in model.graph.input if v.name not in weights),
        tuple(describe(v) for v in model.graph.output),
    )


def opset_version(model: Any) -> int | None:
    """The default-domain ONNX opset the model imports, or None when it imports none."""
    return max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=None)


@dataclass(frozen=True)
class ModelInspection:
    """An ONNX file's declared interface and its manifest, and whether that manifest was written for it.

    Attributes:
        path: the ONNX file.
        opset: its default-domain opset; None when it imports none.
        graph_sha256: :func:`~scanedge.manifest.graph_sha256` of its graph.
        inputs: graph inputs (weights excluded), in graph order.
        outputs: graph outputs, in graph order.
        manifest: the manifest found for it (not checked against the graph); None when it has none.
        manifest_source: where that manifest came from: ``explicit``, ``sidecar`` or ``embedded``; None
            without one.
        manifest_missing: without a manifest, the ManifestMissingError that says how to write one.
    """

    path: Path
    opset: int | None
    graph_sha256: str
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    manifest: Manifest | None
    manifest_source: ManifestSource | None
    manifest_missing: ManifestMissingError | None = None

    @property
    def manifest_matches_graph(self) -> bool:
        """False when the manifest names another graph's sha256 (written for a different model), or there is none."""
        return self.manifest is not None and self.manifest.onnx_sha256 in (None, self.graph_sha256)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, as ``scanedge inspect --json`` prints it."""
        return {
            "model": str(self.path),
            "graph_sha256": self.graph_sha256,
            "manifest_source": self.manifest_source,
            "manifest_matches_graph": self.manifest_matches_graph,
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
            "manifest": None if self.manifest is None else self.manifest.to_dict(),
        }


def inspect_model(
    model_path: str | os.PathLike[str], manifest_path: str | os.PathLike[str] | None = None
) -> ModelInspection:
    """Read ``model_path`` and its manifest (``manifest_path``, else sidecar, else embedded) without
    refusing a manifest written for another graph: reporting that is the point of inspecting. A model
    without a manifest is inspected too: its inputs and outputs are what a manifest is written from."""
    model = load_onnx_model(model_path)
    inputs, outputs = graph_io(model)
    try:
        manifest, source = load_manifest(model_path, manifest_path, verify_sha=False)
    except ManifestMissingError as exc:
        return ModelInspection(
            Path(model_path), opset_version(model), graph_sha256(model), inputs, outputs, None, None, exc
        )
    return ModelInspection(
        Path(model_path), opset_version(model), graph_sha256(model), inputs, outputs, manifest, source
    )
