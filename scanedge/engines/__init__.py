"""Inference backends behind one contract (:class:`Engine`): ONNX Runtime, and TensorRT on NVIDIA GPUs."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Literal

from scanedge.engines.base import Engine, TensorSpec
from scanedge.engines.onnxruntime import OnnxRuntimeEngine, OrtOptions

__all__ = ["Engine", "EngineKind", "OnnxRuntimeEngine", "OrtOptions", "TensorSpec", "open_engine"]

EngineKind = Literal["auto", "ort", "tensorrt"]


def open_engine(
    model: str | os.PathLike[str],
    engine: EngineKind = "auto",
    *,
    threads: int | None = None,
    providers: tuple[str, ...] | None = None,
    spinning: bool = True,
    warmup_shapes: Mapping[str, tuple[int, ...]] | None = None,
) -> Engine:
    """An inactive engine for ``model`` (call ``activate()`` or use ``with``).

    ``auto`` picks ONNX Runtime for ``.onnx`` files.
    """
    if engine not in ("auto", "ort", "tensorrt"):
        raise ValueError(f"unknown engine {engine!r}; use auto, ort or tensorrt")
    options = OrtOptions(threads=threads, spinning=spinning, **({"providers": tuple(providers)} if providers else {}))
    return OnnxRuntimeEngine(model, options, warmup_shapes=warmup_shapes)
