"""One ONNX file in, the fastest engine this hardware can run out: check -> simplify -> precision -> build.

ORT target: an offline-optimized ONNX file with its manifest (``<stem>.<precision>.onnx``), ready for
``scanedge serve``. TensorRT target: the same precision-converted ONNX plus a plan keyed to this GPU.
Each step is timed and reported through ``say``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from scanedge._moved import forward_names
from scanedge.converters.calibration import CalibrationFeeds, CalibrationReader, CalibrationSlices
from scanedge.converters.checks import CheckReport, check_onnx
from scanedge.converters.precision import PRECISIONS, to_fp16, to_int8
from scanedge.engines import EngineConfig, OrtSessionLoader
from scanedge.errors import ConversionError, EngineError, ModelFileError
from scanedge.imaging.slices import Slice
from scanedge.manifest import Manifest, embed_manifest, graph_sha256, load_manifest

__all__ = ["ConversionResult", "ConvertConfig", "convert", "ort_optimize"]

Target = Literal["ort", "tensorrt"]


@dataclass(frozen=True)
class ConvertConfig:
    """What :func:`convert` makes; ValueError on construction for an unknown target or precision, or int8
    without calibration data.

    Attributes:
        target: ``ort`` (an optimized ONNX file for ONNX Runtime) or ``tensorrt`` (a plan for this GPU).
        precision: ``fp32``, ``fp16`` (float32 I/O kept) or ``int8`` (Q/DQ nodes, calibrated).
        calibration_limit: at most this many calibration slices are used.
        out_dir: where the outputs are written (created if missing).
        timing_cache: TensorRT timing cache file; None: one per GPU and TensorRT version in ``out_dir``.
    """

    target: Target = "ort"
    precision: str = "fp32"
    calibration: Path | None = None  # folder of slices (DICOM, .npy, images); required for int8
    calibration_limit: int = 200
    shapes: str | None = None  # TensorRT profile MIN:OPT:MAX
    out_dir: Path = Path("engines")
    timing_cache: Path | None = None

    def __post_init__(self) -> None:
        if self.target not in ("ort", "tensorrt"):
            raise ValueError(f"target must be ort or tensorrt, got {self.target!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.precision == "int8" and self.calibration is None:
            raise ValueError(
                "int8 needs --calibration DIR: slices like the ones the model will see (20-200 are enough)"
            )


@dataclass(frozen=True)
class ConversionResult:
    """What :func:`convert` wrote, and how long each step took.

    Attributes:
        manifest: the manifest embedded in the converted model (precision and description updated).
        check: what the pre-conversion checks found.
    """

    output: Path  # the ORT model, or the TensorRT plan
    onnx: Path  # the precision-converted ONNX with its manifest
    manifest: Manifest
    check: CheckReport
    steps: tuple[tuple[str, float], ...]  # (step, seconds)


def ort_optimize(model: Any, out_path: Path, level: Literal["basic", "extended"]) -> Any:
    """ONNX Runtime's offline graph optimizer (constant folding, fusions) -> the optimized ModelProto.

    ``basic`` keeps standard ONNX ops (portable, fine for TensorRT); ``extended`` adds ORT-specific fusions
    for ORT deployment. ``all`` (layout transforms for this very CPU) is deliberately not offered: such a
    file is not portable to another console.
    """
    import onnx

    if level not in ("basic", "extended"):
        raise ValueError(f"offline optimization level must be basic or extended, got {level!r}")
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "in.onnx"
        onnx.save(model, str(src))
        loader = OrtSessionLoader(src, EngineConfig(optimization=level), optimized_model_path=out_path)
        try:
            loader()  # the session is thrown away: writing the optimized graph is the point
        except EngineError as exc:
            raise ConversionError(f"ONNX Runtime could not optimize the model: {exc.message}") from exc
    optimized = onnx.load(str(out_path))
    del optimized.metadata_props[:]
    optimized.metadata_props.extend(model.metadata_props)
    return optimized


def _ort_has_gpu() -> bool:
    from scanedge.engines.ort_session import import_onnxruntime

    providers = import_onnxruntime().get_available_providers()
    return any(p in providers for p in ("CUDAExecutionProvider", "TensorrtExecutionProvider", "ROCMExecutionProvider"))


def convert(
    model_path: str | os.PathLike[str],
    options: ConvertConfig,
    *,
    manifest_path: str | os.PathLike[str] | None = None,
    say: Callable[[str], None] = lambda _: None,
    calibration_sets: Iterable[Mapping[str, Slice]] | None = None,
) -> ConversionResult:
    """Convert the ONNX model at ``model_path`` as ``options`` say: check, simplify, change precision,
    optimize for ONNX Runtime or build a TensorRT plan.

    ``manifest_path``: a manifest file to use instead of the one embedded in (or next to) the model.
    ``say`` receives one line per step as it starts and finishes. ``calibration_sets``: a multi-input model's
    int8 calibration data, one slice per role for each reference slice, partners on its grid (``scanedge
    convert`` pairs the study in ``options.calibration`` with the runtime's pairing); each becomes a feed of
    every graph input, assembled as the runtime assembles it. Raises ConversionError when a step
    fails, a ModelError (ManifestMissingError, ...) for a missing or mismatched manifest, and
    DeviceUnavailableError for the TensorRT target without a usable GPU.
    """
    import onnx

    path = Path(model_path)
    manifest, _ = load_manifest(path, manifest_path)
    out_dir = Path(options.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = path.name.split(".")[0]
    steps: list[tuple[str, float]] = []

    def step(name: str, fn: Callable[[], Any]) -> Any:
        say(f"{name} ...")
        t0 = time.perf_counter()
        value = fn()
        steps.append((name, time.perf_counter() - t0))
        say(f"{name}: done in {steps[-1][1]:.2f} s")
        return value

    model = onnx.load(str(path))
    report = step("check", lambda: check_onnx(model, manifest))
    for note in report.notes:
        say(f"note: {note}")
    with tempfile.TemporaryDirectory() as tmp:
        model = step(
            "simplify (ORT basic offline optimization)", lambda: ort_optimize(model, Path(tmp) / "basic.onnx", "basic")
        )
        if options.precision == "fp16":
            if options.target == "ort" and not _ort_has_gpu():
                say(
                    "warning: fp16 on ONNX Runtime's CPU provider is usually slower than fp32 (the CPU casts "
                    "around most operators); fp16 pays off on GPUs (--target tensorrt), int8 on CPUs"
                )
            model = step("fp16 conversion (float32 I/O kept)", lambda: to_fp16(model))
        elif options.precision == "int8":
            calibration = options.calibration
            assert calibration is not None  # ConvertConfig refuses int8 without it
            reader: CalibrationReader
            if calibration_sets is not None:
                sets = calibration_sets
                reader = step(
                    f"calibration data: paired slice sets of {', '.join(manifest.roles)} from {calibration}",
                    lambda: CalibrationFeeds(manifest, sets, options.calibration_limit),
                )
            else:
                reader = step(
                    f"calibration data from {calibration}",
                    lambda: CalibrationSlices(manifest, calibration, options.calibration_limit),
                )
            for note in reader.notes:
                say(f"warning: {note}")
            if calibration_sets is not None:
                say(
                    f"calibrating on {reader.count} paired slice set(s), every role through the runtime's own "
                    "preprocessing and assembly"
                )
            else:
                say(f"calibrating on {reader.count} slice(s) through the runtime's own preprocessing")
            model = step(
                "int8 quantization (QDQ)", lambda: to_int8(model, reader, Path(tmp) / "int8.onnx", options.target)
            )
        if options.target == "ort":
            model = step(
                "ORT extended offline optimization", lambda: ort_optimize(model, Path(tmp) / "ext.onnx", "extended")
            )
    converted = manifest.replace(
        precision=options.precision,
        description=(manifest.description + f" [converted by scanedge: {options.precision}, {options.target}]").strip(),
    )
    onnx_out = out_dir / f"{stem}.{options.precision}.onnx"
    source = path if manifest_path is None else Path(manifest_path)
    converted = _carry_series_model(converted, source, out_dir, options.precision, say)
    stamped = embed_manifest(model, converted, onnx_out)
    say(f"wrote {onnx_out} ({onnx_out.stat().st_size / 1e6:.2f} MB)")
    output = onnx_out
    if options.target == "tensorrt":
        from scanedge.converters.tensorrt_build import build_plan, parse_shapes

        shapes = parse_shapes(options.shapes) if options.shapes else None
        output = step(
            "TensorRT build",
            lambda: build_plan(
                onnx_out, stamped, options.precision, out_dir, shapes=shapes, timing_cache=options.timing_cache, say=say
            ),
        )
    return ConversionResult(output, onnx_out, stamped, report, tuple(steps))


def _carry_series_model(
    manifest: Manifest, source: Path, out_dir: Path, precision: str, say: Callable[[str], None]
) -> Manifest:
    """A score head's 3-D series model is its own ONNX file, named relative to the manifest: written beside
    the converted model so that the converted model opens with it. fp16: converted too (float32 I/O kept),
    as ``<name>.fp16.onnx``, the manifest's path and sha256 pointing at it (when the conversion fails, the
    fp32 file is kept and said); fp32 and int8: copied unchanged (int8 would need volumes to calibrate on).
    Returns the manifest naming the file written."""
    import onnx

    head = manifest.series_model_head
    if head is None or head.series_model is None:
        return manifest
    spec = head.series_model
    src = source.parent / spec.path
    if not src.is_file():
        raise ModelFileError(f"series model {spec.path!r} of head {head.name!r} not found beside {source}")
    if precision == "fp16":
        name = spec.path[: -len(".onnx")] if spec.path.endswith(".onnx") else spec.path
        try:
            half = to_fp16(onnx.load(str(src)))
        except ConversionError as exc:
            say(f"warning: the series model {spec.path} stays fp32: {exc.message}")
        else:
            dst = out_dir / f"{name}.fp16.onnx"
            dst.parent.mkdir(parents=True, exist_ok=True)
            onnx.save(half, str(dst))
            say(f"converted the series model {spec.path} to fp16 beside it: {name}.fp16.onnx (float32 I/O kept)")
            fp16 = replace(spec, path=f"{name}.fp16.onnx", onnx_sha256=graph_sha256(half))
            heads = tuple(replace(h, series_model=fp16) if h.name == head.name else h for h in manifest.heads)
            return manifest.replace(heads=heads)
    dst = out_dir / spec.path
    if src.resolve() != dst.resolve():
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
        say(f"copied the series model {spec.path} beside it (unchanged, fp32)")
    return manifest


#: earlier names of configuration classes (every frozen configuration is now called ...Config)
__getattr__ = forward_names(
    __name__,
    {
        "ConvertOptions": ("scanedge.converters.convert", "ConvertConfig"),
    },
)
