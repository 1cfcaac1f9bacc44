"""Inference backends behind one contract (:class:`Engine`): ONNX Runtime, TensorRT on NVIDIA GPUs, and a
serving engine elsewhere (Triton, KServe, MLServer) over the Open Inference Protocol.

How a model runs is one frozen :class:`EngineConfig` (backend, threads, providers, remote server, ...),
passed intact from the caller to :func:`open_engine` and on to the engine. "Engine" means the object that
runs a model; "backend" (``auto``/``ort``/``tensorrt``/``remote``) means which kind of engine.

Importing this package switches ONNX Runtime's telemetry off for the process (see
:mod:`scanedge.engines.ort_session`); it does so before anything in scanedge imports ONNX Runtime.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path

from scanedge._moved import forward_names
from scanedge.engines.base import Engine, EngineHealth, TensorSpec
from scanedge.engines.onnxruntime import OnnxRuntimeEngine
from scanedge.engines.options import BACKENDS, Backend, EngineConfig, RemoteConfig, parse_threads
from scanedge.engines.ort_session import OrtSessionLoader
from scanedge.engines.thread_probe import ThreadChoice
from scanedge.errors import ConfigError, DeviceUnavailableError

__all__ = [
    "BACKENDS",
    "PLAN_SUFFIXES",
    "Backend",
    "Engine",
    "EngineConfig",
    "EngineHealth",
    "OnnxRuntimeEngine",
    "OrtSessionLoader",
    "RemoteConfig",
    "TensorSpec",
    "ThreadChoice",
    "find_matching_plan",
    "open_engine",
    "parse_threads",
]

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
    options: EngineConfig = EngineConfig(),
    *,
    onnx_sha256: str | None = None,
    warmup_shapes: Mapping[str, tuple[int, ...]] | None = None,
    name: str | None = None,
) -> Engine:
    """An inactive engine for ``model`` (call ``activate()`` or use ``with``), chosen by ``options.backend``.

    ``remote`` sends the tensors to the serving engine in ``options.remote``, which runs the model it
    knows as ``name`` (the manifest's name; the URL may override it); the local file is not loaded.
    ``ort`` runs an ONNX file with ONNX Runtime. ``tensorrt`` runs a plan file (``.engine``/``.plan``), or
    the plan built from the ONNX graph ``onnx_sha256`` for this GPU that lies beside an ONNX file.
    ``auto``: a plan file runs on TensorRT; an ONNX file runs on such a matching plan if there is one,
    else on ONNX Runtime. Asking ONNX Runtime to run a plan is a :class:`ConfigError`; no matching plan
    for ``tensorrt`` is a :class:`DeviceUnavailableError`.
    """
    if not isinstance(options, EngineConfig):
        raise TypeError(f"options must be EngineConfig, got {type(options).__name__}")
    if options.backend == "remote":
        from scanedge.engines.remote import RemoteEngine

        assert options.remote is not None  # EngineConfig refuses backend="remote" without it
        return RemoteEngine(options.remote, model=name, warmup_runs=options.warmup_runs, warmup_shapes=warmup_shapes)
    path = Path(model)
    is_plan = path.suffix.lower() in PLAN_SUFFIXES
    if options.backend == "ort" and is_plan:
        raise ConfigError(f"{path.name} is a TensorRT plan; ONNX Runtime needs the .onnx model (or --backend tensorrt)")
    if options.backend == "tensorrt" and not is_plan:
        plan = find_matching_plan(path, onnx_sha256)
        if plan is None:
            raise DeviceUnavailableError(
                f"no TensorRT plan for {path.name} that matches this machine; build one with "
                f"`scanedge convert {path} --target tensorrt`, or use --backend ort"
            )
        path, is_plan = plan, True
    elif options.backend == "auto" and not is_plan:
        plan = find_matching_plan(path, onnx_sha256)
        if plan is not None:
            log.info("using TensorRT plan %s for %s", plan.name, path.name)
            path, is_plan = plan, True
    if is_plan:
        from scanedge.engines.tensorrt import TensorRTEngine

        return TensorRTEngine(path, options, warmup_shapes=warmup_shapes)
    return OnnxRuntimeEngine(OrtSessionLoader(path, options), warmup_shapes=warmup_shapes)


#: earlier names of configuration classes (every frozen configuration is now called ...Config)
__getattr__ = forward_names(
    __name__,
    {
        "EngineOptions": ("scanedge.engines.options", "EngineConfig"),
        "RemoteOptions": ("scanedge.engines.options", "RemoteConfig"),
    },
)
