"""The in-process slice pipeline: decode -> preprocess -> infer -> postprocess -> overlay.

This is the whole product on one slice, with no network in between; the server runs exactly this per
request, so an embedded caller and a remote console get identical masks. Every stage is timed.

A pipeline reuses its buffers across calls and is therefore not thread-safe: use one per thread (they
can share nothing but the model file).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from scanedge.engines import Engine, EngineConfig, open_engine
from scanedge.errors import InvalidSliceError, ManifestMismatchError, MissingInputError, NonFiniteOutputError
from scanedge.imaging.dicom import slices_from_dicom, warm_up_decoding
from scanedge.imaging.encode import ImageFormat, encode_image
from scanedge.imaging.head_overlay import HeadOverlay
from scanedge.imaging.heads import DecodedHeads, HeadDecoder, HeadScore, MaskHead, SaliencyMap
from scanedge.imaging.overlay import OverlayConfig, OverlayRenderer, display_image
from scanedge.imaging.postprocess import ClassFindings, Postprocessed, Postprocessor
from scanedge.imaging.preprocess import Preprocessor
from scanedge.imaging.role_inputs import RoleAssembler
from scanedge.imaging.scope import UNCHECKED, ScopeVerdict, require_scope
from scanedge.imaging.score_overlay import draw_saliency, draw_scores
from scanedge.imaging.series import context_window
from scanedge.imaging.series_model import SeriesModel
from scanedge.imaging.slices import DEFAULT_LIMITS, Slice, SliceIdentity, SliceLimits, all_finite
from scanedge.manifest import Manifest, check_head_output, check_model_io, check_model_output, load_manifest

__all__ = ["Pipeline", "PipelineConfig", "SliceResult", "StageTimings", "default_model_path"]


def default_model_path() -> Path:
    """The shipped demo model (MS-like lesions on FLAIR-like slices; not for clinical use)."""
    from scanedge.models import DEMO_MODEL_PATH

    return DEMO_MODEL_PATH


@dataclass(frozen=True)
class PipelineConfig:
    """Limits and drawing options; the model-specific parts live in the manifest.

    Attributes:
        limits: the largest slice accepted (bigger ones are ImageTooLargeError before any work).
        overlay: how overlays are drawn unless a call says otherwise.
        ignore_scope: segment slices outside the model's ``applies_to`` anyway (research use only;
            each result says ``scope: outside``); by default they are refused with OutOfScopeError.
    """

    limits: SliceLimits = DEFAULT_LIMITS
    overlay: OverlayConfig = field(default_factory=OverlayConfig)
    ignore_scope: bool = False


@dataclass(frozen=True)
class StageTimings:
    """Wall time per stage, milliseconds.

    Attributes:
        decode_ms: DICOM decoding or array validation into a slice.
        preprocess_ms: slice to the model's input tensor.
        infer_ms: the engine's inference.
        postprocess_ms: output to probabilities, mask and findings.
        overlay_ms: drawing the overlay (0 when none was drawn).
        total_ms: all of the above, end to end.
    """

    decode_ms: float = 0.0
    preprocess_ms: float = 0.0
    infer_ms: float = 0.0
    postprocess_ms: float = 0.0
    overlay_ms: float = 0.0
    total_ms: float = 0.0

    def to_dict(self) -> dict[str, float]:
        """Every stage by field name, rounded to 0.1 µs."""
        return {k: round(v, 4) for k, v in self.__dict__.items()}


@dataclass(frozen=True, eq=False)
class SliceResult:
    """Everything scanedge answers for one slice. Arrays are owned by the result.

    Attributes:
        identity: which slice this answers (UIDs and numbers, no patient identifiers).
        model: ``name@version`` of the model that ran.
        findings: per foreground class, in label order.
        timings: how long each stage took.
        scope: whether the slice was inside the model's declared scope (``outside`` only when the scope
            was overridden).
        heads: the manifest's further heads, decoded (scores, saliency maps, more masks); empty for a
            model whose only head is ``output``. A model without a mask output (a classifier) has an
            all-background ``mask``, no ``probabilities`` planes and no ``findings``.
    """

    identity: SliceIdentity
    model: str
    mask: np.ndarray  # (rows, cols) uint8 labels on the slice's grid
    probabilities: np.ndarray  # (classes, h, w) float32 on the model's grid
    findings: tuple[ClassFindings, ...]
    overlay: np.ndarray | None  # (rows, cols, 3) uint8 RGB, or None when not requested
    timings: StageTimings
    scope: ScopeVerdict = UNCHECKED
    heads: DecodedHeads = field(default_factory=DecodedHeads)

    @property
    def scores(self) -> tuple[HeadScore, ...]:
        """Per score head: each class's probability and decision on this slice."""
        return self.heads.scores

    @property
    def saliency(self) -> tuple[SaliencyMap, ...]:
        """Per saliency head: its map on the slice's grid."""
        return self.heads.saliency

    @property
    def mask_heads(self) -> tuple[MaskHead, ...]:
        """Per further mask head: its label mask and findings."""
        return self.heads.masks

    def finding(self, name: str) -> ClassFindings:
        """The findings of the class called ``name``; KeyError when the model has no such class."""
        for f in self.findings:
            if f.name == name:
                return f
        raise KeyError(f"no class named {name!r}; classes are {[f.name for f in self.findings]}")

    @property
    def found(self) -> bool:
        """True when any foreground class has at least one pixel."""
        return any(f.pixels for f in self.findings)

    def probabilities_on_slice(self, first_class: int = 0) -> np.ndarray:
        """Probabilities resized (bilinear) to the slice's grid: (classes, rows, cols), from ``first_class``
        on (1 leaves a softmax's background out). Costs a resize per class returned."""
        rows, cols = self.mask.shape
        planes = self.probabilities[first_class:]
        return np.stack([cv2.resize(p, (cols, rows), interpolation=cv2.INTER_LINEAR) for p in planes])

    def encode_overlay(self, fmt: ImageFormat = "png", *, quality: int = 90) -> bytes:
        """The overlay as PNG or JPEG bytes (``quality`` 0-100 for JPEG); ValueError when none was drawn.

        Encoding costs more than inference (PNG especially): do it only when the bytes are needed.
        """
        if self.overlay is None:
            raise ValueError("this result has no overlay; run the pipeline with overlay=True")
        return encode_image(self.overlay, fmt, quality=quality)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (no pixel arrays)."""
        ident = self.identity
        return {
            "series_uid": ident.series_uid,
            "sop_instance_uid": ident.sop_instance_uid,
            "instance_number": ident.instance_number,
            "frame_index": ident.frame_index,
            "model": self.model,
            "shape": list(self.mask.shape),
            "findings": [f.to_dict() for f in self.findings],
            "timings_ms": self.timings.to_dict(),
            "scope": self.scope.to_dict(),
            **self._heads_dict(),
        }

    def _heads_dict(self) -> dict[str, Any]:
        """``scores`` and ``mask_heads`` entries, present only when the model has such heads."""
        out: dict[str, Any] = {}
        if self.heads.scores:
            out["scores"] = [s.to_dict() for s in self.heads.scores]
        if self.heads.masks:
            out["mask_heads"] = [m.to_dict() for m in self.heads.masks]
        return out


SliceInput = Slice | np.ndarray | bytes | bytearray | memoryview


class Pipeline:
    """One model, ready to segment slices. Build with :meth:`open` or from an engine + manifest."""

    def __init__(
        self,
        engine: Engine,
        manifest: Manifest,
        config: PipelineConfig | None = None,
        *,
        owns_engine: bool = False,
        series_model: SeriesModel | None = None,
    ) -> None:
        self.manifest = manifest
        #: the 3-D model of the score head that declares one (manifest ``series_model``), run at series completion
        #: by whoever holds the series' volume (:mod:`scanedge.imaging.series_model`); None without one
        self.series_model = series_model
        self.config = config or PipelineConfig()
        self.engine = engine
        self._owns_engine = owns_engine
        was_active = engine.is_active
        try:
            engine.activate()  # static inputs are warmed up here, before anything is known of the manifest
            check_model_io(
                manifest,
                [(s.name, s.shape) for s in engine.input_specs],
                [(s.name, s.shape) for s in engine.output_specs],
            )
            read = ([manifest.output.name] if manifest.output is not None else []) + [h.name for h in manifest.heads]
            for scores in (s for s in engine.output_specs if s.name in read):
                if scores.dtype.kind != "f":
                    raise ManifestMismatchError(
                        f"output {scores.name!r} of {engine.name} is {scores.dtype}; the manifest reads it as "
                        "floating point"
                    )
            specs = [s for s in engine.input_specs if s.name in manifest.graph_inputs()]
            if not was_active and any(s.is_dynamic() for s in specs) and manifest.size.mode == "fixed":
                for spec in specs:
                    engine.warmup_shapes.setdefault(spec.name, self._fixed_input_shape())
                engine.warmup(engine.warmup_runs)
        except BaseException:
            if owns_engine:
                engine.deactivate()
            raise
        warm_up_decoding()  # the first DICOM slice must not pay for imports (once per process)
        self._pre = Preprocessor(manifest)
        self._post = Postprocessor(manifest) if manifest.output is not None else None
        self._overlay = OverlayRenderer(manifest, self.config.overlay) if manifest.output is not None else None
        self._heads = HeadDecoder(manifest)
        self._head_overlay = HeadOverlay(manifest)
        self._roles = RoleAssembler(manifest) if manifest.inputs is not None else None
        self.model_label = f"{manifest.name}@{manifest.version}"
        self._where = f"model {self.model_label} on {engine.name}"  # names the engine when its scores are wrong
        self._last: tuple[Slice, Sequence[Slice]] | None = None  # for keep_warm()

    @classmethod
    def open(
        cls,
        model: str | os.PathLike[str] | None = None,
        *,
        manifest: str | os.PathLike[str] | Manifest | None = None,
        options: EngineConfig | None = None,
        config: PipelineConfig | None = None,
    ) -> Pipeline:
        """Open ``model`` (default: the shipped demo model) with its manifest and an active engine.

        ``manifest``: a manifest (or its JSON file) instead of the one in or beside the model.
        ``options``: how the engine runs (default ``EngineConfig()``), handed to it unchanged.
        ``config``: slice limits and overlay drawing.
        """
        path = Path(model) if model is not None else default_model_path()
        if isinstance(manifest, Manifest):
            man = manifest
        else:
            man, _ = load_manifest(path, manifest)
        # a series model's path is relative to the manifest: its file, or the model's folder (embedded, sidecar)
        folder = Path(manifest).parent if isinstance(manifest, (str, os.PathLike)) else path.parent
        series = SeriesModel.open(man, folder, options)
        try:
            eng = open_engine(
                path, options if options is not None else EngineConfig(), onnx_sha256=man.onnx_sha256, name=man.name
            )
            return cls(eng, man, config, owns_engine=True, series_model=series)
        except BaseException:
            if series is not None:
                series.close()
            raise

    def _fixed_input_shape(self) -> tuple[int, ...]:
        spec, size = self.manifest.input, self.manifest.size
        h, w = int(size.height), int(size.width)  # type: ignore[arg-type]
        c = self.manifest.image_channels if len(self.manifest.graph_inputs()) == 1 else spec.channels
        return (1, c, h, w) if spec.layout == "NCHW" else (1, h, w, c)

    def close(self) -> None:
        """Release the engine if this pipeline opened it (an engine passed in stays the caller's)."""
        if self._owns_engine:
            self.engine.deactivate()
            if self.series_model is not None:
                self.series_model.close()

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- running -------------------------------------------------------------------------------------

    def to_slice(self, source: SliceInput) -> Slice:
        """A numpy array or single-frame DICOM bytes as a validated slice."""
        if isinstance(source, Slice):
            return source
        if isinstance(source, np.ndarray):
            return Slice.from_array(source, limits=self.config.limits)
        if isinstance(source, (bytes, bytearray, memoryview)):
            frames = slices_from_dicom(source, limits=self.config.limits)
            if len(frames) != 1:
                raise InvalidSliceError(
                    f"the DICOM object has {len(frames)} frames; decode it with slices_from_dicom() "
                    "and segment the frames with run_series()"
                )
            return frames[0]
        raise InvalidSliceError(f"cannot segment a {type(source).__name__}; pass a Slice, numpy array or DICOM bytes")

    def run(
        self,
        source: SliceInput,
        *,
        context: Sequence[Slice] = (),
        overlay: bool | OverlayConfig = True,
        ignore_scope: bool | None = None,
    ) -> SliceResult:
        """Segment one slice. ``context``: a 2.5D model's neighbours (see :class:`Preprocessor`).

        A slice outside the manifest's ``applies_to`` raises OutOfScopeError unless ``ignore_scope``
        (default: the config's), in which case the result's ``scope`` says ``outside``.
        """
        if self._roles is not None:
            raise MissingInputError(
                f"model {self.model_label} takes the roles {', '.join(self._roles.roles)} together; one slice alone "
                "cannot be segmented (run_inputs() takes a slice per role)"
            )
        t0 = time.perf_counter()
        slice_ = self.to_slice(source)
        ignore = self.config.ignore_scope if ignore_scope is None else ignore_scope
        scope = require_scope(self.manifest.applies_to, slice_, self.model_label, ignore=ignore)
        self._last = (slice_, context)
        t1 = time.perf_counter()
        tensor, info = self._pre(slice_, context)
        t2 = time.perf_counter()
        outputs = self.engine.infer({self.manifest.input.name: tensor})
        self._check_outputs(outputs, tensor.shape)
        t3 = time.perf_counter()
        return self._finish(slice_, outputs, info, scope, overlay, (t0, t1, t2, t3))

    def _finish(
        self,
        slice_: Slice,
        outputs: dict[str, np.ndarray],
        info: Any,
        scope: Any,
        overlay: bool | OverlayConfig,
        marks: tuple[float, float, float, float],
    ) -> SliceResult:
        """Decode, draw and time a slice's result (``marks``: the clock at start, after decoding, after
        preprocessing and after inference): the common end of :meth:`run` and :meth:`run_inputs`."""
        t0, t1, t2, t3 = marks
        post, heads = self._decode(outputs, info, slice_.geometry)
        t4 = time.perf_counter()
        image = None
        if overlay is not False:
            image = self._render(slice_, post, heads, overlay)
        t5 = time.perf_counter()
        timings = StageTimings(
            decode_ms=(t1 - t0) * 1e3,
            preprocess_ms=(t2 - t1) * 1e3,
            infer_ms=(t3 - t2) * 1e3,
            postprocess_ms=(t4 - t3) * 1e3,
            overlay_ms=(t5 - t4) * 1e3,
            total_ms=(t5 - t0) * 1e3,
        )
        return SliceResult(
            slice_.identity,
            self.model_label,
            post.mask,
            post.probabilities,
            post.findings,
            image,
            timings,
            scope,
            heads,
        )

    def _decode(self, outputs: dict[str, np.ndarray], info: Any, geometry: Any) -> tuple[Postprocessed, DecodedHeads]:
        """The mask output post-processed (an empty mask for a model without one) and every head decoded."""
        if self._post is not None:
            post = self._post(outputs[self.manifest.output.name], info, geometry)  # type: ignore[union-attr]
        else:
            post = Postprocessed(np.zeros((0, *info.valid_shape), np.float32), np.zeros(info.slice_shape, np.uint8), ())
        heads = self._heads(outputs, info, geometry) if not self._heads.empty else DecodedHeads()
        return post, heads

    def _check_outputs(self, outputs: dict[str, np.ndarray], input_shape: tuple[int, ...]) -> None:
        """Every output the manifest reads: the right shape and dtype, and finite."""
        read: list[np.ndarray] = []
        if self.manifest.output is not None:
            out = outputs[self.manifest.output.name]
            check_model_output(self.manifest, out, input_shape, self._where)
            read.append(out)
        for head in self.manifest.heads:
            out = outputs[head.name]
            check_head_output(self.manifest, head, out, input_shape, self._where)
            read.append(out)
        if not all(all_finite(o) for o in read):
            raise NonFiniteOutputError(
                f"model {self.model_label} produced NaN or infinite values for this slice; no result can be "
                "trusted (is the input far outside what the model was trained on?)"
            )

    def _render(
        self, slice_: Slice, post: Postprocessed, heads: DecodedHeads, overlay: bool | OverlayConfig
    ) -> np.ndarray:
        """The mask overlay (when the model has a mask output), then the saliency heat map, the further mask
        heads' dashed outlines and the scores."""
        opts = overlay if isinstance(overlay, OverlayConfig) else None
        if self._overlay is not None:
            image = self._overlay.render(slice_, post.mask, post.probabilities, opts)
        else:
            shown = display_image(slice_)
            image = cv2.cvtColor(shown, cv2.COLOR_GRAY2RGB) if shown.ndim == 2 else shown.copy()
        for saliency in heads.saliency:
            draw_saliency(image, saliency)
        drawing = opts or self.config.overlay
        if heads.masks and drawing.heads:
            self._head_overlay.draw(image, heads.masks, drawing.contour_thickness)
        if heads.scores:
            draw_scores(image, heads.scores, self.manifest)
        return image

    def run_inputs(
        self,
        sources: Mapping[str, SliceInput],
        *,
        contexts: Mapping[str, Sequence[Slice]] | None = None,
        overlay: bool | OverlayConfig = True,
        ignore_scope: bool | None = None,
    ) -> SliceResult:
        """Segment one reference slice of a multi-input model (manifest ``inputs``) with its partners.

        ``sources`` holds one slice per role, every one already on the reference slice's grid (the
        :class:`~scanedge.runtime.core.pairing.PairingBuffer` resamples partners onto it); each role is
        normalised with its own intensity policy, then the roles become channels of one tensor (in role
        order) or separate graph inputs, as the manifest says. The result is on the reference slice.
        MissingInputError when a role is missing; InvalidSliceError when a role's grid differs.
        """
        if self._roles is None:
            raise InvalidSliceError(f"model {self.model_label} has one input; segment its slices with run()")
        roles = self._roles.roles
        missing = [r for r in roles if r not in sources]
        if missing:
            raise MissingInputError(f"model {self.model_label} needs role(s) {', '.join(missing)} for this slice")
        unknown = sorted(set(sources) - set(roles))
        if unknown:
            raise InvalidSliceError(f"model {self.model_label} has no role(s) {unknown}; its roles are {list(roles)}")
        t0 = time.perf_counter()
        slices = {r: self.to_slice(sources[r]) for r in roles}
        reference = slices[next(iter(roles))]
        for r, s in slices.items():
            if s.shape != reference.shape:
                raise InvalidSliceError(
                    f"role {r!r} is {s.shape[0]}x{s.shape[1]}, the reference slice {reference.shape[0]}x"
                    f"{reference.shape[1]}; resample it onto the reference grid first (pairing does)"
                )
        ignore = self.config.ignore_scope if ignore_scope is None else ignore_scope
        scope = require_scope(self.manifest.applies_to, reference, self.model_label, ignore=ignore)
        t1 = time.perf_counter()
        tensors, info = self._roles(slices, contexts)
        t2 = time.perf_counter()
        outputs = self.engine.infer(tensors)
        self._check_outputs(outputs, next(iter(tensors.values())).shape)
        t3 = time.perf_counter()
        return self._finish(reference, outputs, info, scope, overlay, (t0, t1, t2, t3))

    def keep_warm(self) -> bool:
        """Run the last slice through the whole pipeline again, result discarded, so that caches, threads
        and cores are warm for the next one (see :mod:`scanedge.runtime.serving.keep_warm`). False before any slice."""
        if self._last is None:
            return False
        slice_, context = self._last
        self.run(slice_, context=context, overlay=True, ignore_scope=True)
        return True

    def own_last(self, keep: bool = True) -> None:
        """Give the slice kept for :meth:`keep_warm` pixels of its own (``keep``), or forget it. A request's
        pixels may be a view of memory the console owns (shared memory, docs/protocol.md section 12):
        keeping that view would keep the console's region mapped in the runtime after its request was
        answered."""
        if self._last is None or not keep:
            self._last = None
            return
        slice_, context = self._last
        self._last = (
            replace(slice_, pixels=slice_.pixels.copy()),
            [replace(c, pixels=c.pixels.copy()) for c in context],
        )

    def run_series(
        self, slices: Iterable[Slice], *, overlay: bool | OverlayConfig = True, ignore_scope: bool | None = None
    ) -> Iterator[SliceResult]:
        """Segment slices already in series order, giving a 2.5D model its neighbours."""
        series = list(slices)
        k = self.manifest.input.context_slices
        for i, s in enumerate(series):
            yield self.run(s, context=context_window(series, i, k), overlay=overlay, ignore_scope=ignore_scope)
