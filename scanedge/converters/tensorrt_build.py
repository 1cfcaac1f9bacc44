"""Building a TensorRT plan from an ONNX graph whose precision is already decided (strongly typed).

Written against the TensorRT >= 10 Python API (TensorRT 11 has no BuilderFlag.FP16/INT8: the network is
strongly typed and takes its precision from the graph). The GPU is confirmed with cuda-python before
TensorRT is touched; the plan is written with its key file and its manifest; a persistent timing cache
makes rebuilds on the same machine fast.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable
from pathlib import Path

from scanedge.engines.cuda import gpu_info, tensorrt_module
from scanedge.engines.tensorrt import EngineKey, key_path
from scanedge.errors import ConfigError, ConversionError
from scanedge.manifest import Manifest, sidecar_path

__all__ = ["ShapeProfile", "build_plan", "parse_shapes"]

ShapeProfile = tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]


def parse_shapes(text: str) -> ShapeProfile:
    """'1x1x256x256:1x1x256x256:1x1x512x512' -> (min, opt, max); ConfigError for anything else."""
    parts = text.split(":")
    if len(parts) != 3:
        raise ConfigError(f"--shapes needs MIN:OPT:MAX, e.g. 1x1x256x256:1x1x256x256:1x1x512x512; got {text!r}")
    try:
        shapes = tuple(tuple(int(v) for v in p.lower().split("x")) for p in parts)
    except ValueError:
        raise ConfigError(f"--shapes has a non-integer dimension: {text!r}") from None
    if len({len(s) for s in shapes}) != 1 or any(
        a > b for lo, hi in itertools.pairwise(shapes) for a, b in zip(lo, hi)
    ):
        raise ConfigError(f"--shapes must have equal ranks and MIN <= OPT <= MAX in every dimension: {text!r}")
    return shapes  # type: ignore[return-value]


def default_profile(manifest: Manifest) -> ShapeProfile:
    """min = opt = max = the manifest's fixed size (batch 1)."""
    if manifest.size.mode != "fixed":
        raise ConversionError(
            f"the manifest's size policy is {manifest.size.mode!r} (varying sizes): give --shapes MIN:OPT:MAX"
        )
    c, h, w = manifest.input.channels, int(manifest.size.height), int(manifest.size.width)  # type: ignore[arg-type]
    shape = (1, c, h, w) if manifest.input.layout == "NCHW" else (1, h, w, c)
    return shape, shape, shape


def build_plan(
    onnx_path: str | os.PathLike[str],
    manifest: Manifest,
    precision: str,
    out_dir: str | os.PathLike[str],
    *,
    shapes: ShapeProfile | None = None,
    timing_cache: str | os.PathLike[str] | None = None,
    workspace_mb: int = 2048,
    say: Callable[[str], None] = lambda _: None,
) -> Path:
    """Build a TensorRT plan for this GPU from ``onnx_path`` (already at ``precision``) and return its path.

    The plan is written to ``out_dir`` under a name keyed on the GPU, TensorRT version, precision and model,
    with its key file and manifest beside it. ``shapes``: the (min, opt, max) input profile; default: the
    manifest's fixed size. ``workspace_mb`` caps TensorRT's scratch memory. ConversionError when TensorRT
    rejects the model or the build fails; DeviceUnavailableError without a GPU or TensorRT.
    """
    trt = tensorrt_module()
    gpu = gpu_info()
    assert manifest.onnx_sha256 is not None
    key = EngineKey.for_device(gpu, trt.__version__, precision, manifest.onnx_sha256)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plan = out / key.filename(Path(onnx_path).name.split(".")[0])
    cache_file = Path(timing_cache) if timing_cache else out / f"timing.{gpu.slug}.trt{trt.__version__}.cache"
    sm = "".join(map(str, gpu.compute_capability))
    say(f"building a TensorRT {trt.__version__} plan for {gpu.name} (sm {sm})")

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(Path(onnx_path).read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ConversionError(f"TensorRT's ONNX parser rejected the model: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb * 1024 * 1024)
    lo, opt, hi = shapes or default_profile(manifest)
    profile = builder.create_optimization_profile()
    profile.set_shape(manifest.input.name, lo, opt, hi)
    config.add_optimization_profile(profile)
    cache = config.create_timing_cache(cache_file.read_bytes() if cache_file.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ConversionError("TensorRT failed to build the engine (see the TensorRT log above)")
    plan.write_bytes(bytes(serialized))
    cache_file.write_bytes(bytes(cache.serialize()))
    key_path(plan).write_text(key.to_json() + "\n")
    sidecar_path(plan).write_text(manifest.to_json() + "\n")
    say(f"wrote {plan.name} ({plan.stat().st_size / 1e6:.1f} MB), its key and manifest; timing cache {cache_file.name}")
    return plan
