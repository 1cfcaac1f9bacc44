"""A score head's 3-D series model: its volume, collected slice by slice, and its one run at series completion.

A manifest's score head may declare a ``series_model`` (:class:`~scanedge.manifest.SeriesModelSpec`): an ONNX
model that classifies the whole series at once. Until the series completes, the head's series score is the
slices' provisional aggregate (``provisional: true``, :class:`~scanedge.imaging.heads.SeriesScores`); at
completion the model's answer replaces it (``aggregation: "series_model"``).

- :class:`SeriesVolume` holds one series' planes as they arrive: each slice normalised by the slice model's own
  ``intensity`` rules and resized to the series model's height x width (the same
  :class:`~scanedge.imaging.preprocess.Preprocessor`, on a copy of the manifest with that fixed size), keyed by
  slice place as :class:`~scanedge.imaging.heads.SeriesScores` keys slices (a slice re-sent to a place replaces
  the earlier plane), at most ``max_slices`` of them (float32: ``max_slices x height x width x 4`` bytes per
  colour channel).
- :meth:`SeriesVolume.volume` orders the planes along the slices' normal (ascending position; else instance
  number; else arrival) and resamples them linearly to ``depth`` (half-pixel centres, edges clamped: torch's
  ``interpolate(..., align_corners=False)``); planes are taken as equally spaced.
- :class:`SeriesModel` is the loaded ONNX model on ONNX Runtime (``OnnxRuntimeEngine``),
  its graph checked against the declaration when it is opened. :meth:`SeriesModel.complete` never raises: a
  failure becomes the score's ``series_model.status: "failed"`` with a typed code and the provisional score.

Not thread-safe: a :class:`SeriesVolume` has one owner (or a lock around it); a :class:`SeriesModel` runs one
volume at a time (callers serialise on it).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Sequence
from itertools import count
from pathlib import Path

import msgspec
import numpy as np

from scanedge.engines.options import EngineConfig
from scanedge.errors import ManifestMismatchError, ModelFileError, NonFiniteOutputError, ScanedgeError
from scanedge.imaging.heads import SeriesClassScore, SeriesModelRun, SeriesScore, score_probabilities
from scanedge.imaging.lesion_load import SliceKey, slice_key
from scanedge.imaging.preprocess import Preprocessor
from scanedge.imaging.slices import Slice
from scanedge.manifest import (
    SERIES_MODEL_AGGREGATION,
    HeadSpec,
    InputSpec,
    Manifest,
    SeriesModelSpec,
    SizePolicy,
    graph_sha256,
    load_onnx_model,
)

__all__ = ["SeriesModel", "SeriesVolume", "resample_depth", "series_model_score"]

log = logging.getLogger("scanedge.series_model")

_KIND_ORDER = {"pos": 0, "idx": 1, "anon": 2}


def _plane_manifest(manifest: Manifest, spec: SeriesModelSpec) -> Manifest:
    """The slice model's manifest as the volume's planes are made: same colour and intensity, one plane (no
    context), NCHW, resized to the series model's height x width with the slice model's interpolation."""
    color = manifest.input.color
    return manifest.replace(
        input=InputSpec(name=manifest.input.name, layout="NCHW", channels=1 if color == "gray" else 3, color=color),
        size=SizePolicy("fixed", spec.height, spec.width, interpolation=manifest.size.interpolation),
    )


def resample_depth(planes: np.ndarray, depth: int) -> np.ndarray:
    """(N, C, H, W) planes in order -> (C, depth, H, W), linear along the first axis with half-pixel centres
    (plane k of the output samples input position (k + 0.5) * N / depth - 0.5, clamped to the ends)."""
    n = planes.shape[0]
    z = (np.arange(depth, dtype=np.float64) + 0.5) * (n / depth) - 0.5
    z = np.clip(z, 0.0, n - 1)
    lo = np.floor(z).astype(np.int64)
    hi = np.minimum(lo + 1, n - 1)
    w = (z - lo).astype(np.float32)[:, None, None, None]
    out = planes[lo] * (1.0 - w) + planes[hi] * w  # (depth, C, H, W)
    return np.ascontiguousarray(out.transpose(1, 0, 2, 3), dtype=np.float32)


class SeriesVolume:
    """One series' planes for a series model, as its slices arrive (see the module's docstring)."""

    def __init__(self, manifest: Manifest, head: HeadSpec) -> None:
        if head.series_model is None:
            raise ValueError(f"head {head.name!r} has no series model")
        self.head = head
        self.spec: SeriesModelSpec = head.series_model
        self._pre = Preprocessor(_plane_manifest(manifest, self.spec))
        self._planes: dict[SliceKey, np.ndarray] = {}
        self._anon = count()
        self.dropped = 0

    def add(self, slice_: Slice, instance_number: int | None = None) -> None:
        """Normalise and resize ``slice_`` into a plane and keep it at its place."""
        tensor, _ = self._pre(slice_)
        key = slice_key(slice_.geometry, instance_number)
        self.add_plane(tensor[0].copy(), key)

    def add_plane(self, plane: np.ndarray, key: SliceKey | None) -> None:
        """Keep a plane made earlier (:meth:`SeriesModel.plane`) at ``key`` (None: a place of its own)."""
        key = key or ("anon", next(self._anon))
        if key not in self._planes and len(self._planes) >= self.spec.max_slices:
            self.dropped += 1
            return
        self._planes[key] = plane

    def __len__(self) -> int:
        return len(self._planes)

    @property
    def nbytes(self) -> int:
        """Bytes held by the planes."""
        return sum(p.nbytes for p in self._planes.values())

    def volume(self) -> np.ndarray:
        """The model's input [1, C, depth, height, width] float32 from the planes held (at least one)."""
        if not self._planes:
            raise ValueError("no planes held")
        order = sorted(self._planes, key=lambda k: (_KIND_ORDER.get(k[0], 3), k[1]))
        planes = np.stack([self._planes[k] for k in order])
        return resample_depth(planes, self.spec.depth)[None]


def series_model_score(
    head: HeadSpec, values: np.ndarray, slices: int, dropped: int, run: SeriesModelRun
) -> SeriesScore:
    """The head's series score from its series model's raw output for the series (C,): probabilities by the
    series model's ``kind`` and ``activation``, decisions by the head's thresholds."""
    spec = head.series_model
    assert spec is not None
    probs = score_probabilities(values, dataclasses.replace(head, kind=spec.kind, activation=spec.activation))
    classes = tuple(
        SeriesClassScore(c.name, float(p), c.threshold, bool(p >= c.threshold), 0) for c, p in zip(head.classes, probs)
    )
    return SeriesScore(head.name, SERIES_MODEL_AGGREGATION, slices, classes, dropped, series_model=run)


class SeriesModel:
    """A score head's series model, opened on ONNX Runtime and checked against its declaration.

    Attributes:
        head: the score head it answers for.
        spec: its declaration.
        path: the ONNX file.
        channels: colour channels of its input (1 grey, 3 colour: the slice model's ``input.color``).
    """

    def __init__(self, manifest: Manifest, path: Path, options: EngineConfig | None = None) -> None:
        from scanedge.engines.onnxruntime import OnnxRuntimeEngine

        head = manifest.series_model_head
        if head is None or head.series_model is None:
            raise ValueError(f"model {manifest.name} declares no series model")
        self.head, self.spec, self.path = head, head.series_model, path
        self.channels = manifest.input.channels_per_plane
        self._manifest = manifest
        self._lock = threading.Lock()
        self._pre = Preprocessor(_plane_manifest(manifest, self.spec))
        where = f"series model {path.name} of head {head.name!r}"
        if not path.is_file():
            raise ModelFileError(f"{where}: file not found (the manifest's series_model.path is {self.spec.path!r})")
        if self.spec.onnx_sha256 is not None:
            actual = graph_sha256(load_onnx_model(path))
            if actual != self.spec.onnx_sha256:
                raise ManifestMismatchError(
                    f"{where} is another graph than the manifest names (series_model.onnx_sha256 "
                    f"{self.spec.onnx_sha256[:12]}..., file {actual[:12]}...)"
                )
        base = options if options is not None and options.backend in ("ort", "auto") else EngineConfig()
        self.engine = OnnxRuntimeEngine(path, dataclasses.replace(base, backend="ort", warmup_runs=0))
        self.engine.activate()
        try:
            self._check_graph(where)
        except BaseException:
            self.engine.deactivate()
            raise

    @classmethod
    def open(cls, manifest: Manifest, folder: Path, options: EngineConfig | None = None) -> SeriesModel | None:
        """The manifest's series model, its path taken relative to ``folder`` (the manifest's); None when the
        manifest declares none."""
        head = manifest.series_model_head
        if head is None or head.series_model is None:
            return None
        return cls(manifest, folder / head.series_model.path, options)

    def _check_graph(self, where: str) -> None:
        spec = self.spec
        want_in = (1, self.channels, spec.depth, spec.height, spec.width)
        want_out = (1, len(self.head.classes))
        inputs = {s.name: s for s in self.engine.input_specs}
        outputs = {s.name: s for s in self.engine.output_specs}
        if spec.input not in inputs:
            raise ManifestMismatchError(f"{where} has no input {spec.input!r}; its inputs are {sorted(inputs)}")
        if spec.output not in outputs:
            raise ManifestMismatchError(f"{where} has no output {spec.output!r}; its outputs are {sorted(outputs)}")
        for what, tensor, want in (("input", inputs[spec.input], want_in), ("output", outputs[spec.output], want_out)):
            shape = tuple(tensor.shape)
            fits = len(shape) == len(want) and all(
                not isinstance(d, int) or d <= 0 or d == w for d, w in zip(shape, want)
            )
            if not fits:
                raise ManifestMismatchError(
                    f"{where}: {what} {tensor.name!r} is {list(shape)}; the manifest needs {list(want)} "
                    "([1, channels, depth, height, width] in, [1, classes] out)"
                )
            if tensor.dtype.kind != "f":
                raise ManifestMismatchError(f"{where}: {what} {tensor.name!r} is {tensor.dtype}, not floating point")

    def plane(self, slice_: Slice) -> np.ndarray:
        """The plane ``slice_`` gives the volume ((C, height, width) float32, a copy), for holders that keep the
        planes themselves (:meth:`SeriesVolume.add_plane`). One thread at a time (the pipeline's owner)."""
        tensor, _ = self._pre(slice_)
        return tensor[0].copy()

    def volume(self) -> SeriesVolume:
        """An empty volume for one series of this model."""
        return SeriesVolume(self._manifest, self.head)

    def close(self) -> None:
        """Release the engine."""
        self.engine.deactivate()

    def run(self, volume: np.ndarray) -> np.ndarray:
        """The model's raw answer (classes,) float64 for one volume; typed errors for a bad answer."""
        with self._lock:
            out = self.engine.infer({self.spec.input: volume})[self.spec.output]
            values = np.array(out, dtype=np.float64, copy=True)  # the engine reuses its output buffers
        if values.shape != (1, len(self.head.classes)):
            raise ManifestMismatchError(
                f"series model {self.path.name} answered {list(values.shape)}; [1, {len(self.head.classes)}] needed"
            )
        if not np.isfinite(values).all():
            raise NonFiniteOutputError(f"series model {self.path.name} answered NaN or infinity")
        return values[0]

    def complete(self, volume: SeriesVolume, provisional: Sequence[SeriesScore]) -> tuple[SeriesScore, ...]:
        """``provisional`` (a series' scores, every head) with the head's entry replaced by the model's answer
        on ``volume``, or, when it cannot run, by the provisional entry with ``series_model.status: "failed"``.
        Never raises for a failure of the model (it is logged)."""
        spec = self.spec
        size = (spec.depth, spec.height, spec.width)
        started = time.perf_counter()
        held = len(volume)
        try:
            if not held:
                raise ManifestMismatchError("no slice of the series was held for the series model")
            values = self.run(volume.volume())
            run = SeriesModelRun("done", slices=held, input=size, ms=(time.perf_counter() - started) * 1e3)
            done = series_model_score(self.head, values, held, volume.dropped, run)
        except Exception as exc:
            code = exc.code if isinstance(exc, ScanedgeError) else "ENGINE_FAILED"
            message = (
                exc.message if isinstance(exc, ScanedgeError) else f"the series model failed ({type(exc).__name__})"
            )
            log.warning("series model of head %s failed: %s %s", self.head.name, code, message)
            run = SeriesModelRun("failed", code, message[:512], held, size, (time.perf_counter() - started) * 1e3)
            return tuple(
                msgspec.structs.replace(s, series_model=run, provisional=True) if s.head == self.head.name else s
                for s in provisional
            )
        return tuple(done if s.head == self.head.name else s for s in provisional)
