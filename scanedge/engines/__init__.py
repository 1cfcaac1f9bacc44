"""Inference backends behind one contract (:class:`Engine`): ONNX Runtime, and TensorRT on NVIDIA GPUs."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from scanedge.engines.base import Engine, TensorSpec
from scanedge.engines.onnxruntime import OnnxRuntimeEngine, OrtOptions
from scanedge.errors import DeviceUnavailableError

__all__ = [
    "PLAN_SUFFIXES",
    "Engine",
    "EngineKind",
    "OnnxRuntimeEngine",
    "OrtOptions",
    "TensorSpec",
    "find_matching_plan",
    "open_engine",
]

EngineKind = Literal["auto", "ort", "tensorrt"]
PLAN_SUFFIXES = (".engine", ".plan")
log = logging.getLogger("scanedge.engines")


def find_matching_plan(onnx_path: str | os.PathLike[str], onnx_sha256: str | None) -> Path | None:
    """A TensorRT plan built from this ONNX graph for this GPU and TensorRT, next to the model or in an
    ``engines/`` folder beside it; None when there is none, or no GPU / TensorRT to run one."""
    if onnx_sha256 is None:
        return None
    model = Path(onnx_path)
    candidates = [
        p
        for d in (model.parent, model.parent / "engines")
        if d.is_dir()
        for s in PLAN_SUFFIXES
        for p in d.glob(f"*{s}")
    ]
    if not candidates:
        return None
    from scanedge.engines.cuda import gpu_info, tensorrt_module
    from scanedge.engines.tensorrt import read_engine_key

    try:
        trt, gpu = tensorrt_module(), gpu_info()
    except DeviceUnavailableError as exc:
        log.info("not using TensorRT plans: %s", exc.message)
        return None
    for plan in sorted(candidates):
        try:
            key = read_engine_key(plan)
        except DeviceUnavailableError:
            continue
        if key.onnx_sha256 == onnx_sha256 and not key.mismatches(gpu, trt.__version__):
            return plan
    return None


def open_engine(
    model: str | os.PathLike[str],
    engine: EngineKind = "auto",
    *,
    threads: int | None = None,
    providers: tuple[str, ...] | None = None,
    spinning: bool = True,
    onnx_sha256: str | None = None,
    warmup_shapes: Mapping[str, tuple[int, ...]] | None = None,
) -> Engine:
    """An inactive engine for ``model`` (call ``activate()`` or use ``with``).

    ``ort`` runs an ONNX file with ONNX Runtime. ``tensorrt`` runs a plan file (``.engine``/``.plan``).
    ``auto``: a plan file runs on TensorRT; an ONNX file runs on a TensorRT plan built from the same
    graph (``onnx_sha256``) for this GPU if one lies beside it, else on ONNX Runtime.
    """
    if engine not in ("auto", "ort", "tensorrt"):
        raise ValueError(f"unknown engine {engine!r}; use auto, ort or tensorrt")
    path = Path(model)
    is_plan = path.suffix.lower() in PLAN_SUFFIXES
    if engine == "ort" and is_plan:
        raise ValueError(f"{path.name} is a TensorRT plan; ONNX Runtime needs the .onnx model")
    if engine == "tensorrt" and not is_plan:
        plan = find_matching_plan(path, onnx_sha256)
        if plan is None:
            raise DeviceUnavailableError(
                f"no TensorRT plan for {path.name} that matches this machine; build one with "
                f"`scanedge convert {path} --target tensorrt`, or use --engine ort"
            )
        path, is_plan = plan, True
    elif engine == "auto" and not is_plan:
        plan = find_matching_plan(path, onnx_sha256)
        if plan is not None:
            log.info("using TensorRT plan %s for %s", plan.name, path.name)
            path, is_plan = plan, True
    if is_plan:
        from scanedge.engines.tensorrt import TensorRTEngine

        return TensorRTEngine(path, warmup_shapes=warmup_shapes)
    options = OrtOptions(threads=threads, spinning=spinning, **({"providers": tuple(providers)} if providers else {}))
    return OnnxRuntimeEngine(path, options, warmup_shapes=warmup_shapes)
