"""In-process measurements: the engine alone, and the whole slice pipeline stage by stage.

``--baseline`` runs a plain ``onnxruntime.InferenceSession.run`` on the same model and the same
input tensors, interleaved in blocks with the measured path, so that both see the same machine noise
and their difference is the cost of everything scanedge adds. The baseline session comes from the same
session loader as the engine's, with the same options, so only the wrapper differs.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np

from scanedge.bench.inputs import role_sets
from scanedge.bench.report import BenchReport
from scanedge.bench.stats import RunMonitor, summarize
from scanedge.engines import EngineConfig, OrtSessionLoader, open_engine
from scanedge.errors import ConfigError
from scanedge.imaging.dicom import encode_dicom, slices_from_dicom
from scanedge.imaging.overlay import OverlayConfig
from scanedge.imaging.series_model import SeriesModel
from scanedge.imaging.slices import Slice
from scanedge.manifest import load_manifest
from scanedge.runtime.core.pipeline import Pipeline, PipelineConfig, default_model_path

__all__ = ["DEFAULT_RUN", "RunLength", "baseline_block", "bench_engine", "bench_pipeline", "drive"]

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class RunLength:
    """How long to measure: ``count`` iterations, or until ``duration_s`` when it is given.

    Attributes:
        count: measured iterations when no duration is given.
        duration_s: measure for this many seconds instead of ``count`` iterations.
        warmup: unmeasured iterations first (sessions, caches and sockets settle).
    """

    count: int = 500
    duration_s: float | None = None
    warmup: int = 20

    def __post_init__(self) -> None:
        if self.count < 1 or self.warmup < 0 or (self.duration_s is not None and self.duration_s <= 0):
            raise ValueError("count must be >= 1, warmup >= 0 and duration > 0")

    def done(self, i: int, elapsed: float) -> bool:
        """Whether a run that has done ``i`` iterations in ``elapsed`` seconds is finished."""
        return elapsed >= self.duration_s if self.duration_s is not None else i >= self.count

    def expected(self, elapsed: float, i: int) -> int:
        """The total iterations to expect (for progress bars), extrapolated from the rate so far for timed runs."""
        if self.duration_s is None:
            return self.count
        return max(i, int(i / max(elapsed, 1e-9) * self.duration_s)) if i else 0


DEFAULT_RUN = RunLength()


def _plain_session(model: Path, options: EngineConfig) -> Any:
    """A bare ONNX Runtime session for the baseline, made exactly as the measured engine's session is."""
    return OrtSessionLoader(model, options)()


def _model_info(path: Path) -> dict[str, Any]:
    try:
        manifest, _ = load_manifest(path, verify_sha=False)
    except Exception:  # engine files without manifests are still benchmarkable
        return {"path": str(path)}
    out: dict[str, Any] = {"path": str(path), "name": manifest.name, "version": manifest.version}
    out["sha256"] = manifest.onnx_sha256
    if manifest.roles:  # a multi-input model (manifest inputs): every role is fed each iteration
        out["roles"] = list(manifest.roles)
    return out


def _finish(report: BenchReport, wall: float, monitor: RunMonitor, figure: str) -> BenchReport:
    report.wall_s = wall
    report.warnings.extend(monitor.warnings(figure, report.samples[figure]))
    return report


def baseline_block(
    baseline: list[float], measured: list[float], what: str, name: str = "session.run"
) -> dict[str, Any]:
    """The report's ``baseline`` entry: the baseline's samples and figures, and what the measured path adds."""
    b, m = summarize(baseline), summarize(measured)
    return {
        "what": what,
        "samples": {name: [round(v, 4) for v in baseline]},
        "figures": {name: b.to_dict()},
        "overhead_ms": {"p50": m.median - b.median, "p99": m.p99 - b.p99},
        "ratio": m.median / b.median if b.median > 0 else float("inf"),
    }


def bench_engine(
    model: str | os.PathLike[str],
    *,
    options: EngineConfig = EngineConfig(),
    shape: Sequence[int] | None = None,
    batch: int | None = None,
    run: RunLength = DEFAULT_RUN,
    baseline: bool = False,
    baseline_model: str | os.PathLike[str] | None = None,
    progress: Progress | None = None,
) -> BenchReport:
    """Time ``engine.infer`` alone on random inputs, the engine opened with ``options``.

    ``baseline`` times a plain ``InferenceSession.run`` of the same model on the same inputs;
    ``baseline_model`` does that for another model instead (e.g. the fp32 original of an int8 engine).
    """
    path = Path(model)
    info = _model_info(path)
    eng = open_engine(path, options, name=info.get("name"))
    with eng:
        feeds: dict[str, np.ndarray] = {}
        shapes: dict[str, list[int]] = {}
        rng = np.random.default_rng(0)
        for spec in eng.input_specs:  # every graph input: a multi-input model's roles are all fed
            dims = list(shape) if shape else list(spec.shape)
            if batch is not None:
                dims[0] = batch
            if any(not isinstance(d, int) or d < 1 for d in dims):
                raise ConfigError(f"input {spec.name!r} has dynamic dims {spec.shape}; give --shape, e.g. 1x1x256x256")
            shapes[spec.name] = cast("list[int]", dims)  # all positive ints, checked just above
            feeds[spec.name] = rng.standard_normal(shapes[spec.name]).astype(spec.dtype)
        sizes = next(iter(shapes.values()))
        reference = Path(baseline_model) if baseline_model is not None else path
        session = _plain_session(reference, options) if baseline or baseline_model is not None else None
        for _ in range(run.warmup):
            eng.infer(feeds)
            if session is not None:
                session.run(None, feeds)
        samples: list[float] = []

        def measured(_: int) -> None:
            t0 = time.perf_counter()
            eng.infer(feeds)
            samples.append((time.perf_counter() - t0) * 1e3)

        monitor = RunMonitor()
        start = time.perf_counter()
        i, timeline, base = drive(run, measured, (lambda _: session.run(None, feeds)) if session else None, progress)
        wall = time.perf_counter() - start
        report = BenchReport(
            mode="engine",
            settings={
                "shape": sizes,
                **({"inputs": shapes} if len(shapes) > 1 else {}),
                **({"roles": info["roles"]} if info.get("roles") else {}),
                "threads": options.threads,
                "count": i,
                "warmup": run.warmup,
                "baseline": str(baseline_model) if baseline_model else baseline,
            },
            samples={"infer": samples},
            engine=eng.describe(),
            model=info,
            throughput_per_s=len(samples) * sizes[0] / (sum(samples) / 1e3),
            timeline=timeline,
        )
        if session is not None:
            what = "plain InferenceSession.run, same inputs"
            if baseline_model is not None:
                what = f"plain InferenceSession.run of {reference.name}, same inputs"
            report.baseline = baseline_block(base, samples, what)
    return _finish(report, wall, monitor, "infer")


def _encoded(item: Slice | dict[str, Slice]) -> bytes | dict[str, bytes]:
    """A slice (or one per role) as DICOM bytes."""
    return {role: encode_dicom(s) for role, s in item.items()} if isinstance(item, dict) else encode_dicom(item)


def _model_feeds(pipe: Pipeline, sets: Sequence[Slice | dict[str, Slice]]) -> list[dict[str, np.ndarray]]:
    """The graph feeds the pipeline builds for each input (one tensor, or every role's), copied."""
    from scanedge.imaging.preprocess import Preprocessor
    from scanedge.imaging.role_inputs import RoleAssembler

    out = []
    if pipe.manifest.inputs is not None:
        assemble = RoleAssembler(pipe.manifest)
        for item in sets:
            feeds, _ = assemble(cast("dict[str, Slice]", item))
            out.append({n: v.copy() for n, v in feeds.items()})
        return out
    pre = Preprocessor(pipe.manifest)
    return [{pipe.manifest.input.name: pre(cast("Slice", s))[0].copy()} for s in sets]


class _SeriesModelTiming:
    """A score head's series model timed as the runtime runs it: each slice's plane as it is served, and at
    the end of every cycle through the bench's slices (one series) the completion: the volume built from the
    planes held and the model's run."""

    def __init__(self, model: SeriesModel, slices: Sequence[Slice]) -> None:
        self.model = model
        self.slices = list(slices)
        self.volume = model.volume()

    def slice(self, i: int, planes: list[float], runs: list[float]) -> None:
        """Serve bench slice ``i``: keep its plane (timed into ``planes``); at its series' last slice, run the
        model on the volume (timed into ``runs``)."""
        n = len(self.slices)
        t0 = time.perf_counter()
        self.volume.add_plane(self.model.plane(self.slices[i % n]), ("idx", i % n))
        planes.append((time.perf_counter() - t0) * 1e3)
        if (i + 1) % n == 0:
            t0 = time.perf_counter()
            self.model.run(self.volume.volume())
            runs.append((time.perf_counter() - t0) * 1e3)

    def describe(self) -> dict[str, Any]:
        """The report's ``settings.series_model``."""
        spec = self.model.spec
        return {
            "head": self.model.head.name,
            "path": spec.path,
            "input": [1, self.model.channels, spec.depth, spec.height, spec.width],
            "slices_per_series": len(self.slices),
            "timed": "series_plane per slice; series_model once per series, at completion (volume + run)",
        }


STAGES = ("decode", "preprocess", "infer", "postprocess", "overlay")
#: measured and baseline iterations alternate in blocks of this many: per-iteration alternation makes
#: two ONNX Runtime thread pools (each spinning after its run) fight over the cores, which a real
#: deployment never sees; blocks keep both exposed to the same machine noise without that artefact
BASELINE_BLOCK = 25


def drive(
    run: RunLength,
    measured: Callable[[int], Any],
    baseline: Callable[[int], Any] | None,
    progress: Progress | None,
    block: int = BASELINE_BLOCK,
) -> tuple[int, list[float], list[float]]:
    """Run ``measured`` until ``run`` is done, with ``baseline`` on the same indices in blocks.

    Returns (iterations, start offset in seconds of each measured iteration, baseline samples in ms).
    """
    timeline: list[float] = []
    base: list[float] = []
    start = time.perf_counter()
    i = 0
    while not run.done(i, time.perf_counter() - start):
        first = i
        while i - first < block and not run.done(i, time.perf_counter() - start):
            timeline.append(time.perf_counter() - start)
            measured(i)
            i += 1
            if progress:
                progress(i, run.expected(time.perf_counter() - start, i))
        if baseline is not None:
            for k in range(first, i):
                t0 = time.perf_counter()
                baseline(k)
                base.append((time.perf_counter() - t0) * 1e3)
    return i, timeline, base


def bench_pipeline(
    slices: Sequence[Slice],
    model: str | os.PathLike[str] | None = None,
    *,
    options: EngineConfig = EngineConfig(),
    overlay: OverlayConfig | bool = True,
    dicom: bool = False,
    run: RunLength = DEFAULT_RUN,
    baseline: bool = False,
    progress: Progress | None = None,
) -> BenchReport:
    """Time the in-process pipeline per stage; inputs cycle through ``slices`` (as DICOM bytes with ``dicom``).

    A multi-input model (manifest ``inputs``) is timed through ``run_inputs``: each slice is the reference and
    every other role gets a synthetic partner on its grid (:func:`~scanedge.bench.inputs.role_sets`), so
    decoding, preprocessing and the feeds cover every role; pairing itself is not in the figures.

    A model whose score head has a 3-D series model (manifest ``series_model``) is timed as the runtime runs
    it: ``series_plane`` per slice (its plane for the series' volume, outside the slice's ``total``) and
    ``series_model`` once per series, at its completion (the volume resampled from the planes of the bench's
    slices, each cycle through them one series, and the model's run); ``settings.series_model`` says the
    head, the volume and the slice count.
    """
    path = Path(model) if model is not None else default_model_path()
    # speed, not validity: a demo slice resized to 64x64 has 4 mm pixels, outside the demo model's scope; the
    # scope is still checked (its cost is measured), it just does not refuse
    pipe = Pipeline.open(path, options=options, config=PipelineConfig(ignore_scope=True))
    with pipe:
        roles = pipe.manifest.roles
        # a multi-input model gets one slice per role: each bench slice and synthetic partners on its grid
        sets: list[Any] = role_sets(slices, roles) if roles else list(slices)
        inputs: list[Any] = [_encoded(x) for x in sets] if dicom else sets
        session: Any = _plain_session(path, options) if baseline else None
        feeds: list[dict[str, np.ndarray]] = []
        if session is not None:  # the baseline sees exactly the tensors the pipeline's engine sees
            feeds = _model_feeds(pipe, sets)

        def segment(item: Any) -> Any:
            return pipe.run_inputs(item, overlay=overlay) if roles else pipe.run(item, overlay=overlay)

        series = _SeriesModelTiming(pipe.series_model, sets) if pipe.series_model is not None else None
        for i in range(run.warmup):
            segment(inputs[i % len(inputs)])
            if series is not None:
                series.slice(i, [], [])
            if session is not None:
                session.run(None, feeds[i % len(feeds)])
        samples: dict[str, list[float]] = {k: [] for k in (*STAGES, "outside_model", "total")}
        if series is not None:
            samples["series_plane"], samples["series_model"] = [], []
        if dicom:
            samples["decode_pydicom"] = []  # the same bytes through pydicom's Dataset, beside the fast reader
        else:
            del samples["decode"]

        def measured(i: int) -> None:
            t = segment(inputs[i % len(inputs)]).timings
            for stage in STAGES:
                if stage in samples:
                    samples[stage].append(getattr(t, f"{stage}_ms"))
            samples["total"].append(t.total_ms)
            samples["outside_model"].append(t.total_ms - t.infer_ms)
            if series is not None:
                series.slice(i, samples["series_plane"], samples["series_model"])
            if dicom:
                item = inputs[i % len(inputs)]
                t0 = time.perf_counter()
                for data in item.values() if roles else (item,):
                    slices_from_dicom(data, limits=pipe.config.limits, fast=False)
                samples["decode_pydicom"].append((time.perf_counter() - t0) * 1e3)

        def raw_run(i: int) -> None:
            session.run(None, feeds[i % len(feeds)])

        monitor = RunMonitor()
        start = time.perf_counter()
        i, timeline, base = drive(run, measured, raw_run if session else None, progress)
        wall = time.perf_counter() - start
        shapes = sorted({s.shape for s in slices})
        report = BenchReport(
            mode="pipeline",
            settings={
                "slice_shapes": [list(s) for s in shapes],
                "input": "dicom" if dicom else "numpy",
                "overlay": asdict(overlay) if isinstance(overlay, OverlayConfig) else bool(overlay),
                "threads": options.threads,
                "count": i,
                "warmup": run.warmup,
                "distinct_slices": len(slices),
                **({"roles": list(roles), "partners": "synthetic, on the reference grid"} if roles else {}),
                **({"series_model": series.describe()} if series is not None else {}),
                "baseline": baseline,
            },
            samples=samples,
            engine=pipe.engine.describe(),
            model=_model_info(path),
            throughput_per_s=i / wall,
            timeline=timeline,
        )
        if session is not None:
            report.baseline = baseline_block(
                base, samples["total"], "plain InferenceSession.run of the model on the same preprocessed tensors"
            )
    return _finish(report, wall, monitor, "total")
