"""The demo's second model: the shipped slice classifier ("is there a lesion on this slice?") run beside the
segmentation model on the same slices, through the same scanedge pipeline.

``scanedge demo`` runs it after the segmentation and adds its per-slice and series scores to the report and
to ``results.json`` (key ``classifier``), and tiles its overlays (the scores written on each slice under the
model's own saliency map) into ``classifier-montage.png``; ``scanedge demo --live`` serves it beside the
segmentation model (:mod:`scanedge.cli.live`). Its evaluation ships next to it in ``scanedge/models``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from scanedge.imaging.encode import encode_image
from scanedge.imaging.files import LoadedSlice
from scanedge.imaging.heads import HeadScore, SaliencyMap, SeriesScore, SeriesScores
from scanedge.imaging.montage import MAX_TILE, TileLabel, montage, tile_label
from scanedge.imaging.overlay import display_image
from scanedge.imaging.score_overlay import draw_saliency
from scanedge.imaging.slices import Slice
from scanedge.models import DEMO_CLASSIFIER_PATH

__all__ = ["CLASSIFIER_MONTAGE_NAME", "ClassifiedSlice", "ClassifierReport", "classify_slices", "truth_figures"]

#: the classifier's overlays tiled, beside the segmentation's ``montage.png``
CLASSIFIER_MONTAGE_NAME = "classifier-montage.png"


@dataclass(frozen=True)
class ClassifiedSlice:
    """One slice's answer from the classifier.

    Attributes:
        name: the file (``#frame`` for multi-frame DICOM) the slice came from.
        series: the slice's series UID.
        instance_number: its instance number, when the file gave one.
        scores: per score head, each class's probability and decision.
        infer_ms: the engine's inference time.
        total_ms: preprocessing to decoded scores.
    """

    name: str
    series: str
    instance_number: int | None
    scores: tuple[HeadScore, ...]
    infer_ms: float
    total_ms: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (the same score entries as ``results.json``'s slices carry for a model with heads)."""
        return {
            "name": self.name,
            "series": self.series,
            "instance_number": self.instance_number,
            "scores": [s.to_dict() for s in self.scores],
            "timings_ms": {"infer": round(self.infer_ms, 3), "total": round(self.total_ms, 3)},
        }


@dataclass(frozen=True)
class ClassifierReport:
    """The classifier over a set of slices: per slice, and per series its heads' aggregated scores."""

    model: str  # name@version
    path: Path  # the classifier's ONNX file
    slices: tuple[ClassifiedSlice, ...]  # every slice classified, in slice order
    series: dict[str, tuple[SeriesScore, ...]]  # Series Instance UID -> its heads' scores over its slices
    montage_path: Path | None = None  # the classifier's overlays tiled, when asked for

    def probabilities(self, head: str, name: str) -> np.ndarray:
        """The probability of class ``name`` of head ``head`` on every slice, in slice order."""
        out = []
        for s in self.slices:
            (score,) = [h for h in s.scores if h.head == head]
            out.append(score.score(name).probability)
        return np.asarray(out, np.float64)

    def to_dict(self) -> dict[str, Any]:
        """``results.json``'s ``classifier`` entry."""
        return {
            "model": self.model,
            "file": self.path.name,
            "series": [
                {"series": uid, "series_scores": [s.to_dict() for s in scores]} for uid, scores in self.series.items()
            ],
            "slices": [s.to_dict() for s in self.slices],
        }


def classify_slices(
    slices: Sequence[LoadedSlice],
    model: Path = DEMO_CLASSIFIER_PATH,
    options: Any = None,
    *,
    montage_dir: Path | None = None,
) -> ClassifierReport:
    """Run the classifier at ``model`` on ``slices`` (series order); series scores per series UID, each slice
    placed as the runtime places it (a slice re-sent to the same place replaces itself). ``options``: the
    engine's options (:class:`~scanedge.runtime.core.engines.EngineOptions`), default the pipeline's.
    ``montage_dir``: also write :data:`CLASSIFIER_MONTAGE_NAME` there, each slice's overlay (its scores, and
    the model's own saliency map when the manifest declares one) shrunk to a tile as it is made, so a long
    series never holds full-size overlays."""
    from scanedge.runtime.core.pipeline import Pipeline

    per_series: dict[str, SeriesScores] = {}
    done: list[ClassifiedSlice] = []
    tiles: list[np.ndarray] = []
    labels: list[TileLabel] = []
    with Pipeline.open(model, options=options) as pipe:
        for item in slices:
            ident = item.slice.identity
            result = pipe.run(item.slice, overlay=False)
            if montage_dir is not None:
                tiles.append(_tile(item.slice, result.saliency))
                labels.append(_scored_label(tile_label(item.slice), result.scores))
            series = ident.series_uid or ""
            store = per_series.setdefault(series, SeriesScores(pipe.manifest.heads))
            store.add(result.scores, item.slice.geometry, ident.instance_number)
            t = result.timings
            done.append(
                ClassifiedSlice(item.name, series, ident.instance_number, result.scores, t.infer_ms, t.total_ms)
            )
        label = f"{pipe.manifest.name}@{pipe.manifest.version}"
        research_only = pipe.manifest.not_for_clinical_use
        saliency = any(h.role == "saliency" for h in pipe.manifest.heads)
    path = None
    if montage_dir is not None and tiles:
        path = Path(montage_dir) / CLASSIFIER_MONTAGE_NAME
        drawn = "class p+ decided present, p- absent" + ("; heat = the model's own saliency map" if saliency else "")
        sheet = montage(tiles, 8, labels=labels, not_for_clinical_use=research_only, notes=[f"{label}: {drawn}"])
        path.write_bytes(encode_image(sheet, "png"))
    by_series = {uid: s.scores() for uid, s in per_series.items()}
    return ClassifierReport(label, model, tuple(done), by_series, path)


def _scored_label(label: TileLabel, scores: Sequence[HeadScore]) -> TileLabel:
    """The tile's label with each score head's top class, its probability and decision (``+`` present, ``-``
    absent), as the overlay writes them (:func:`~scanedge.imaging.score_overlay.score_lines`)."""
    parts = [label.title]
    for head in scores:
        top = head.score(head.top)
        parts.append(f"{top.name} {top.probability:.2f}{'+' if top.decision else '-'}")
    return replace(label, title="  ".join(p for p in parts if p))


def _tile(slice_: Slice, saliency: Sequence[SaliencyMap]) -> np.ndarray:
    """The slice as displayed, under the model's own saliency map when it gives one, shrunk (area) so its longer
    side is at most the montage's largest tile. Its scores go into the tile's label, where they are legible."""
    image = display_image(slice_)
    if image.ndim == 2:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    if saliency:
        draw_saliency(image, saliency[0])
    rows, cols = image.shape[:2]
    scale = MAX_TILE / max(rows, cols)
    if scale >= 1:
        return image
    return cv2.resize(image, (max(1, round(cols * scale)), max(1, round(rows * scale))), interpolation=cv2.INTER_AREA)


def truth_figures(decisions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Sensitivity and specificity of per-slice decisions against the demo patient's true lesion labels (a
    slice is positive when a lesion pixel lies on it): possible only because the demo patient is synthetic."""
    truth = labels.reshape(len(labels), -1).any(axis=1)
    d = np.asarray(decisions, bool)
    return {
        "sensitivity": float(np.sum(truth & d) / max(1, np.sum(truth))),
        "specificity": float(np.sum(~truth & ~d) / max(1, np.sum(~truth))),
        "positive_slices": int(truth.sum()),
        "negative_slices": int((~truth).sum()),
    }
