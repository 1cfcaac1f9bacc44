"""A model's further heads, decoded: image-level scores, saliency maps and more masks.

The manifest's ``heads`` (:class:`~scanedge.manifest.HeadSpec`) name graph outputs beyond the mask
``output``. :class:`HeadDecoder` turns one inference's outputs into:

- per score head, each class's probability and decision (probability >= the class's threshold), as
  :class:`HeadScore` — a msgspec Struct because RESULT carries it unchanged (protocol.md section 4);
- per saliency head, its map on the slice's grid (:class:`SaliencyMap`), for the overlay's heat map;
- per further mask head, a label mask and findings (:class:`MaskHead`), read exactly as ``output`` is.

:class:`SeriesScores` combines a series' slice scores as the slices arrive (``max``, ``mean`` or
``noisy_or`` per class, the head's ``aggregation``), keyed by slice place as the lesion load is: a slice
re-sent to the same place replaces the earlier one.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import count
from typing import Any

import cv2
import msgspec
import numpy as np

from scanedge.imaging.lesion_load import DEFAULT_MAX_SLICES, LesionLoad, SliceKey, slice_key
from scanedge.imaging.postprocess import ClassFindings, Postprocessor
from scanedge.imaging.preprocess import PreprocessInfo
from scanedge.imaging.slices import SliceGeometry
from scanedge.manifest import HeadSpec, Manifest

__all__ = [
    "MAX_HEAD_LABEL",
    "WIRE_SCORE_CLASSES",
    "ClassScore",
    "DecodedHeads",
    "HeadDecoder",
    "HeadScore",
    "MaskHead",
    "MaskHeadLoad",
    "SaliencyMap",
    "SeriesClassScore",
    "SeriesModelRun",
    "SeriesScore",
    "SeriesScores",
    "aggregate",
    "for_wire",
    "head_labels",
    "score_probabilities",
]

#: longest head name shown as it is outside scanedge (a RESULT frame's name, a file name, a DICOM SEG segment
#: label of 64 characters with the class name after it); a longer one is named by its place instead
MAX_HEAD_LABEL = 32
_FILE_SAFE = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")

#: most classes one RESULT carries over all its score heads, for the slice and again for the series (a RESULT
#: header is at most 64 KiB); a head with more carries its most probable classes and counts the rest
WIRE_SCORE_CLASSES = 96


class ClassScore(msgspec.Struct, frozen=True):
    """One class of a score head on one slice.

    Attributes:
        name: the class's name in the head.
        probability: its probability (0-1).
        threshold: the probability it needs to be decided present.
        decision: whether it is (``probability >= threshold``).
    """

    name: str
    probability: float
    threshold: float
    decision: bool


class HeadScore(msgspec.Struct, frozen=True):
    """A score head's answer for one slice; RESULT's ``scores`` entries on the wire.

    Attributes:
        head: the head's name (its graph output).
        classes: one :class:`ClassScore` per class, in the head's order.
        top: the most probable class's name.
        operating_point: the name of the operating point the thresholds belong to; "" when not stated.
        omitted: on the wire, how many of the head's classes were left out (the least probable ones).
    """

    head: str
    classes: tuple[ClassScore, ...]
    top: str
    operating_point: str = ""
    omitted: int = 0  # classes left out of a RESULT (the least probable; see WIRE_SCORE_CLASSES)

    def score(self, name: str) -> ClassScore:
        """The class called ``name``; KeyError when the head has none."""
        for c in self.classes:
            if c.name == name:
                return c
        raise KeyError(f"head {self.head!r} has no class {name!r}; classes are {[c.name for c in self.classes]}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, probabilities rounded to 1e-6."""
        return {
            "head": self.head,
            "top": self.top,
            "operating_point": self.operating_point,
            "classes": [
                {
                    "name": c.name,
                    "probability": round(c.probability, 6),
                    "threshold": c.threshold,
                    "decision": c.decision,
                }
                for c in self.classes
            ],
        }


class SeriesClassScore(msgspec.Struct, frozen=True):
    """One class of a score head over the series so far.

    Attributes:
        name: the class's name.
        score: the slices' probabilities combined by the head's aggregation.
        threshold: the class's threshold (the same as on each slice).
        decision: ``score >= threshold``.
        slices_positive: slices on which the class was decided present.
    """

    name: str
    score: float
    threshold: float
    decision: bool
    slices_positive: int


class SeriesModelRun(msgspec.Struct, frozen=True):
    """Where a score head's 3-D series model stands for one series (:mod:`scanedge.imaging.series_model`).

    Attributes:
        status: ``pending`` (the series is not complete: the score is the slices' provisional aggregate),
            ``done`` (the score is the model's) or ``failed`` (it could not run: ``code`` and ``message``
            say why; the score stays the provisional aggregate).
        code: the error code of a failure (``ENGINE_FAILED``, ``NON_FINITE_OUTPUT``, ...); "" otherwise.
        message: what failed, in words (no patient data); "" otherwise.
        slices: planes the volume was built from (held so far while ``pending``).
        input: the model's input size (depth, height, width).
        ms: milliseconds the run took (building the volume and inference); 0 until it ran.
    """

    status: str
    code: str = ""
    message: str = ""
    slices: int = 0
    input: tuple[int, int, int] = (0, 0, 0)
    ms: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready; ``code`` and ``message`` only for a failure."""
        out: dict[str, Any] = {"status": self.status, "slices": self.slices, "input": list(self.input)}
        out["ms"] = round(self.ms, 3)
        if self.code or self.message:
            out["code"], out["message"] = self.code, self.message
        return out


class SeriesScore(msgspec.Struct, frozen=True):
    """A score head over a series' slices so far; RESULT's ``series_scores`` entries on the wire.

    Attributes:
        head: the head's name.
        aggregation: ``max``, ``mean`` or ``noisy_or``; ``series_model`` when the head's 3-D model gave it.
        slices: slices held (a slice re-sent to the same place counts once).
        classes: one :class:`SeriesClassScore` per class, in the head's order.
        dropped_slices: slices at new places refused once ``max_slices`` were held.
        omitted: on the wire, how many of the head's classes were left out (the lowest scores).
        provisional: the head has a series model that has not given this score (not yet, or it failed):
            the classes are the slices' aggregate standing in for it.
        series_model: for a head with a series model, where it stands; None for any other head.
    """

    head: str
    aggregation: str
    slices: int
    classes: tuple[SeriesClassScore, ...]
    dropped_slices: int = 0
    omitted: int = 0
    provisional: bool = False
    series_model: SeriesModelRun | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, scores rounded to 1e-6 (``provisional`` and ``series_model`` only for a head with a
        series model, so other heads read as before)."""
        out: dict[str, Any] = {
            "head": self.head,
            "aggregation": self.aggregation,
            "slices": self.slices,
            "dropped_slices": self.dropped_slices,
        }
        if self.series_model is not None:
            out["provisional"] = self.provisional
            out["series_model"] = self.series_model.to_dict()
        out["classes"] = [
            {
                "name": c.name,
                "score": round(c.score, 6),
                "threshold": c.threshold,
                "decision": c.decision,
                "slices_positive": c.slices_positive,
            }
            for c in self.classes
        ]
        return out


@dataclass(frozen=True, eq=False)
class SaliencyMap:
    """Where a score head looked on one slice, from the model's own saliency output.

    Attributes:
        head: the saliency head's name.
        of: the score head it explains.
        values: (rows, cols) float32 on the slice's grid: the map of the score head's top class (or the
            single map), resized bilinearly from the model's grid; raw values, as the model gave them.
    """

    head: str
    of: str
    values: np.ndarray

    def normalized(self) -> np.ndarray:
        """The map scaled to 0-1 over this slice (all zeros when the map is flat), for display."""
        lo, hi, _, _ = cv2.minMaxLoc(self.values)
        if not hi > lo:
            return np.zeros_like(self.values)
        scaled = self.values - np.float32(lo)  # float32, the one copy: scaled in place
        scaled /= np.float32(hi - lo)
        return scaled


@dataclass(frozen=True, eq=False)
class MaskHead:
    """A further mask head's answer for one slice, read as the manifest's ``output`` is.

    Attributes:
        head: the head's name (its graph output, as the manifest gives it).
        mask: (rows, cols) uint8 labels on the slice's grid (0 background, k the head's class k).
        probabilities: (channels, h, w) float32 on the model's grid.
        findings: per foreground class of the head, in label order.
        label: the head's name as readers outside see it (:func:`head_labels`): in RESULT frame names
            (``mask:LABEL``), PONG, DICOM SEG segment labels and reports; "" when built by hand.
    """

    head: str
    mask: np.ndarray
    probabilities: np.ndarray
    findings: tuple[ClassFindings, ...]
    label: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the head's name, its label (when it differs from the name) and its findings."""
        out: dict[str, Any] = {"head": self.head}
        if self.label and self.label != self.head:
            out["label"] = self.label
        out["findings"] = [f.to_dict() for f in self.findings]
        return out


@dataclass(frozen=True)
class MaskHeadLoad:
    """A further mask head over a series: its 3-D load per foreground class, as the main mask's lesion load.

    Attributes:
        head: the head's name (its graph output).
        label: the head's label (:func:`head_labels`), as reports show it.
        lesion_load: its classes' connected 3-D regions and volumes over the series' slices.
    """

    head: str
    label: str
    lesion_load: LesionLoad

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ``head``, ``label`` when it differs, ``lesion_load``."""
        out: dict[str, Any] = {"head": self.head}
        if self.label != self.head:
            out["label"] = self.label
        out["lesion_load"] = self.lesion_load.to_dict()
        return out


@dataclass(frozen=True, eq=False)
class DecodedHeads:
    """Everything :class:`HeadDecoder` made of one inference's further outputs.

    Attributes:
        scores: per score head, in manifest order.
        saliency: per saliency head, in manifest order.
        masks: per further mask head, in manifest order.
    """

    scores: tuple[HeadScore, ...] = ()
    saliency: tuple[SaliencyMap, ...] = ()
    masks: tuple[MaskHead, ...] = ()


def score_probabilities(values: np.ndarray, head: HeadSpec) -> np.ndarray:
    """A score head's raw values for one image (C,) as probabilities (float64): the head's activation
    applied to logits, probabilities as they are (clipped to 0-1)."""
    v = np.asarray(values, np.float64)
    if head.kind == "probabilities":
        return np.clip(v, 0.0, 1.0)
    if head.activation == "softmax":
        e = np.exp(v - v.max())
        return e / e.sum()
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-v))


def _head_score(head: HeadSpec, values: np.ndarray) -> HeadScore:
    probs = score_probabilities(values, head)
    classes = tuple(
        ClassScore(c.name, float(p), c.threshold, bool(p >= c.threshold)) for c, p in zip(head.classes, probs)
    )
    point = head.operating_point.name if head.operating_point is not None else ""
    return HeadScore(head.name, classes, head.classes[int(np.argmax(probs))].name, point)


class HeadDecoder:
    """Decodes the heads of one manifest (one instance per thread, like :class:`Postprocessor`)."""

    def __init__(self, manifest: Manifest) -> None:
        self.manifest = manifest
        self._scores = manifest.score_heads
        self._saliency = tuple(h for h in manifest.heads if h.role == "saliency")
        self._masks = tuple((h, Postprocessor(manifest.mask_manifest(h))) for h in manifest.mask_heads)
        self._labels = head_labels([h.name for h in manifest.mask_heads])

    @property
    def empty(self) -> bool:
        """True when the manifest declares no further heads (today's single-output models)."""
        return not self.manifest.heads

    def __call__(
        self, outputs: Mapping[str, np.ndarray], info: PreprocessInfo, geometry: SliceGeometry
    ) -> DecodedHeads:
        """Decode the first image of the batch in ``outputs`` (checked against the manifest beforehand)."""
        scores = tuple(_head_score(h, outputs[h.name][0]) for h in self._scores)
        by_name = {s.head: s for s in scores}
        saliency = tuple(
            SaliencyMap(h.name, h.of, self._saliency_map(outputs[h.name][0], by_name[h.of], info))
            for h in self._saliency
        )
        masks = []
        for (head, post), label in zip(self._masks, self._labels):
            done = post(outputs[head.name], info, geometry)
            masks.append(MaskHead(head.name, done.mask, done.probabilities, done.findings, label))
        return DecodedHeads(scores, saliency, tuple(masks))

    def _saliency_map(self, values: np.ndarray, score: HeadScore, info: PreprocessInfo) -> np.ndarray:
        names = [c.name for c in score.classes]
        plane = values[0] if values.shape[0] == 1 else values[names.index(score.top)]
        # the map covers the model's input; only its valid part (padding excluded) lies on the slice
        mh, mw = info.model_shape
        vh, vw = info.valid_shape
        sh, sw = plane.shape
        crop = plane[: max(1, round(sh * vh / mh)), : max(1, round(sw * vw / mw))].astype(np.float32)
        rows, cols = info.slice_shape
        return cv2.resize(crop, (cols, rows), interpolation=cv2.INTER_LINEAR)


def head_labels(names: Sequence[str], *, file_safe: bool = False) -> tuple[str, ...]:
    """The further mask heads' names (``names``, in manifest order) as readers outside scanedge see them.

    A name is kept when it is 1-:data:`MAX_HEAD_LABEL` printable characters without a backslash (a DICOM
    value separator); with ``file_safe``, when it is 1-:data:`MAX_HEAD_LABEL` of ``A-Z a-z 0-9 . _ -`` not
    starting with a dot. Any other name (graph outputs are arbitrary strings) becomes ``head<k>``, k its place
    among the mask heads, 1 first. Labels are unique: should a kept name equal a replaced one, every head is
    named by its place."""

    def kept(name: str) -> bool:
        if not 0 < len(name) <= MAX_HEAD_LABEL:
            return False
        if file_safe:
            return _FILE_SAFE.fullmatch(name) is not None
        return name.isprintable() and "\\" not in name

    labels = tuple(name if kept(name) else f"head{k}" for k, name in enumerate(names, start=1))
    if len(set(labels)) != len(labels):
        labels = tuple(f"head{k}" for k in range(1, len(names) + 1))
    return labels


def for_wire(
    scores: Sequence[HeadScore], series: Sequence[SeriesScore], limit: int = WIRE_SCORE_CLASSES
) -> tuple[tuple[HeadScore, ...], tuple[SeriesScore, ...]]:
    """What a RESULT carries of ``scores`` and ``series``: every class while the heads have at most ``limit``
    classes together; otherwise each head keeps an equal share of ``limit``, its most probable classes (the
    highest series scores for ``series``) in the head's order, and counts the rest in ``omitted``."""
    if sum(len(s.classes) for s in scores) <= limit and sum(len(s.classes) for s in series) <= limit:
        return tuple(scores), tuple(series)
    share = max(1, limit // max(1, len(scores), len(series)))

    def keep(values: Sequence[float]) -> list[int]:
        return sorted(sorted(range(len(values)), key=lambda i: -values[i])[:share])

    slim = []
    for s in scores:
        kept = keep([c.probability for c in s.classes])
        slim.append(
            HeadScore(s.head, tuple(s.classes[i] for i in kept), s.top, s.operating_point, len(s.classes) - len(kept))
        )
    slim_series = []
    for t in series:
        kept = keep([c.score for c in t.classes])
        slim_series.append(
            SeriesScore(
                t.head,
                t.aggregation,
                t.slices,
                tuple(t.classes[i] for i in kept),
                t.dropped_slices,
                len(t.classes) - len(kept),
                t.provisional,
                t.series_model,
            )
        )
    return tuple(slim), tuple(slim_series)


def aggregate(values: Sequence[float], how: str) -> float:
    """Combine slice probabilities into a series score: ``max``, ``mean`` or ``noisy_or``
    (1 - prod(1 - p)); 0 for no slices."""
    if not values:
        return 0.0
    if how == "max":
        return float(max(values))
    if how == "mean":
        return float(math.fsum(values) / len(values))
    if how == "noisy_or":
        return float(1.0 - math.prod(1.0 - v for v in values))
    raise ValueError(f"unknown aggregation {how!r}; use max, mean or noisy_or")


class SeriesScores:
    """A series' score heads as its slices arrive (not thread-safe: one owner, or a lock around it).

    Each slice is placed as the lesion load places it (position along the normal, else instance number);
    a slice at a place already held replaces the earlier one; a slice with neither is counted on its own.
    At most ``max_slices`` places are held (memory: heads x classes x 8 bytes per slice).
    """

    def __init__(self, heads: Iterable[HeadSpec], *, max_slices: int = DEFAULT_MAX_SLICES) -> None:
        self.heads = tuple(h for h in heads if h.role == "score")
        self.max_slices = max_slices
        self.dropped = 0
        self._slices: dict[SliceKey, dict[str, tuple[float, ...]]] = {}
        self._anon = count()

    def add(
        self, scores: Sequence[HeadScore], geometry: SliceGeometry | None = None, instance_number: int | None = None
    ) -> tuple[SeriesScore, ...]:
        """Add one slice's scores and return the series' scores with it."""
        key = slice_key(geometry, instance_number) or ("anon", next(self._anon))
        if key not in self._slices and len(self._slices) >= self.max_slices:
            self.dropped += 1
        else:
            self._slices[key] = {s.head: tuple(c.probability for c in s.classes) for s in scores}
        return self.scores()

    def __len__(self) -> int:
        return len(self._slices)

    @property
    def nbytes(self) -> int:
        """Approximate bytes held (8 per class per head per slice)."""
        return sum(8 * len(v) for held in self._slices.values() for v in held.values())

    def scores(self) -> tuple[SeriesScore, ...]:
        """Every score head over the slices held now."""
        out = []
        for head in self.heads:
            per_slice = [held[head.name] for held in self._slices.values() if head.name in held]
            classes = []
            for i, c in enumerate(head.classes):
                values = [p[i] for p in per_slice]
                score = aggregate(values, head.aggregation)
                positive = sum(1 for v in values if v >= c.threshold)
                classes.append(SeriesClassScore(c.name, score, c.threshold, score >= c.threshold, positive))
            run = None
            if head.series_model is not None:
                spec = head.series_model
                run = SeriesModelRun("pending", slices=len(per_slice), input=(spec.depth, spec.height, spec.width))
            out.append(
                SeriesScore(
                    head.name,
                    head.aggregation,
                    len(per_slice),
                    tuple(classes),
                    self.dropped,
                    provisional=run is not None,
                    series_model=run,
                )
            )
        return tuple(out)
