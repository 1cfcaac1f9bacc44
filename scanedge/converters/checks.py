"""Checks an ONNX model must pass before anything is built from it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from scanedge.errors import ConversionError
from scanedge.manifest import Manifest, check_model_io

__all__ = ["MIN_OPSET", "CheckReport", "check_onnx"]

MIN_OPSET = 13  # older opsets lack the ops TensorRT's parser and ORT's quantizer handle well


@dataclass(frozen=True)
class CheckReport:
    """What :func:`check_onnx` found in a model that passed.

    Attributes:
        opset: the model's default-domain opset.
        inputs: graph inputs (initializers excluded) and their dims; a dim is an int, a symbolic name, or None.
        outputs: graph outputs and their dims, likewise.
        dynamic_inputs: names of the inputs with at least one dim that is not a fixed positive size.
        notes: things worth telling the user that do not stop the conversion.
    """

    opset: int
    inputs: dict[str, list[Any]]
    outputs: dict[str, list[Any]]
    dynamic_inputs: tuple[str, ...]
    notes: tuple[str, ...] = field(default_factory=tuple)


def _dims(value_info: Any) -> list[Any]:
    return [
        d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in value_info.type.tensor_type.shape.dim
    ]


def check_onnx(model: Any, manifest: Manifest) -> CheckReport:
    """onnx.checker, shape inference, opset, and the graph's inputs/outputs against the manifest."""
    import onnx

    try:
        onnx.checker.check_model(model, full_check=False)
    except onnx.checker.ValidationError as exc:
        raise ConversionError(f"the ONNX model does not pass onnx.checker: {exc}") from exc
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    except Exception as exc:  # onnx raises InferenceError and friends
        raise ConversionError(f"ONNX shape inference fails on this model: {exc}") from exc
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    if opset < MIN_OPSET:
        raise ConversionError(
            f"opset {opset} is older than {MIN_OPSET}; re-export the model with a newer opset "
            "(or upgrade it with onnx.version_converter)"
        )
    initializers = {i.name for i in inferred.graph.initializer}
    inputs = {v.name: _dims(v) for v in inferred.graph.input if v.name not in initializers}
    outputs = {v.name: _dims(v) for v in inferred.graph.output}
    check_model_io(manifest, list(inputs.items()), list(outputs.items()))
    dynamic = tuple(n for n, dims in inputs.items() if any(not isinstance(d, int) or d <= 0 for d in dims))
    notes = []
    if dynamic and manifest.size.mode == "fixed":
        size = f"{manifest.size.height}x{manifest.size.width}"
        notes.append(f"inputs {list(dynamic)} have dynamic dims; the manifest feeds a fixed {size}")
    return CheckReport(opset, inputs, outputs, dynamic, tuple(notes))
