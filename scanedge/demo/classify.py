"""The demo's second model: the shipped slice classifier ("is there a lesion on this slice?") run beside the
segmentation model on the same slices, through the same scanedge pipeline.

``scanedge demo`` runs it after the segmentation and adds its per-slice and series scores to the report and
to ``results.json`` (key ``classifier``); ``scanedge demo --live`` serves it beside the segmentation model
(:mod:`scanedge.cli.live`). Its evaluation ships next to it in ``scanedge/models``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from scanedge.imaging.files import LoadedSlice
from scanedge.imaging.heads import HeadScore, SeriesScore, SeriesScores
from scanedge.models import DEMO_CLASSIFIER_PATH

__all__ = ["ClassifiedSlice", "ClassifierReport", "classify_slices", "truth_figures"]


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
    slices: Sequence[LoadedSlice], model: Path = DEMO_CLASSIFIER_PATH, options: Any = None
) -> ClassifierReport:
    """Run the classifier at ``model`` on ``slices`` (series order); series scores per series UID, each slice
    placed as the runtime places it (a slice re-sent to the same place replaces itself). ``options``: the
    engine's options (:class:`~scanedge.runtime.core.engines.EngineOptions`), default the pipeline's."""
    from scanedge.runtime.core.pipeline import Pipeline

    per_series: dict[str, SeriesScores] = {}
    done: list[ClassifiedSlice] = []
    with Pipeline.open(model, options=options) as pipe:
        for item in slices:
            ident = item.slice.identity
            result = pipe.run(item.slice, overlay=False)
            series = ident.series_uid or ""
            store = per_series.setdefault(series, SeriesScores(pipe.manifest.heads))
            store.add(result.scores, item.slice.geometry, ident.instance_number)
            t = result.timings
            done.append(
                ClassifiedSlice(item.name, series, ident.instance_number, result.scores, t.infer_ms, t.total_ms)
            )
        label = f"{pipe.manifest.name}@{pipe.manifest.version}"
    return ClassifierReport(label, model, tuple(done), {uid: s.scores() for uid, s in per_series.items()})


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
