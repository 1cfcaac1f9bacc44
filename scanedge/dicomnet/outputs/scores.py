"""The ``scores`` output: a classification model's series scores as a small JSON file (the SR reports them too).

For each completed series and each model with score heads (manifest ``heads``), one file
``scores/<series UID>.<model>.scores.json`` holds every score head over the series (aggregated as the
manifest says: ``max``, ``mean`` or ``noisy_or``; a head with a series model: that 3-D model's answer on the
completed series, ``aggregation: "series_model"``) and per frame its class probabilities and decisions. It is
not DICOM and is never forwarded; a model without score heads gets no file (logged once at start). The
format is documented in docs/dicom-node.md ("Series scores"). UIDs only: no patient identifiers.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from scanedge.dicomnet.outputs.base import DicomOutput, OutputStats
from scanedge.dicomnet.series import OpenSeries, frame_number_key
from scanedge.imaging.heads import SeriesScore, SeriesScores
from scanedge.manifest import Manifest

if TYPE_CHECKING:
    from scanedge.dicomnet.config import ListenerConfig

__all__ = ["SCORES_FORMAT", "ScoreReport", "ScoresOutput", "series_head_scores", "series_score_report"]

log = logging.getLogger(__name__)

#: the ``format`` value of the JSON file; a change of meaning gets a new one
SCORES_FORMAT = "scanedge.series-scores/1"


@dataclass(frozen=True)
class ScoreReport:
    """One series' scores under one model, as written.

    Attributes:
        series_uid: the series' Series Instance UID.
        model: the model's name (as the node's models are keyed).
        content: the JSON document (see :func:`series_score_report`).
    """

    series_uid: str
    model: str
    content: dict[str, Any]

    @property
    def SOPInstanceUID(self) -> str:
        """A stable key for the writer (the same series and model: the same file, overwritten on retry)."""
        return "scores-" + hashlib.sha256(f"{self.series_uid}\0{self.model}".encode()).hexdigest()[:32]


def series_head_scores(
    series: OpenSeries, model: str, manifest: Manifest
) -> tuple[tuple[SeriesScore, ...], list[dict[str, Any]]]:
    """``model``'s score heads over ``series`` (aggregated as the manifest says) and the frames' scores as
    JSON; nothing when the model has no score heads or no frame of the series has scores. Frames are placed
    by instance number (frames of a multi-frame instance by their order within it), as the lesion load
    places slices without geometry. The one aggregation behind both the scores JSON and the SR; a head with a
    series model has the answer the node's completion got from it (``series.series_scores``)."""
    if not manifest.score_heads:
        return (), []
    aggregate = SeriesScores(manifest.heads)
    frames = []
    for inst in series.instances.values():
        number = inst.header.get("InstanceNumber", None)
        for f, frame in enumerate(inst.frames):
            scores = frame.scores.get(model)
            if not scores:
                continue
            aggregate.add(scores, None, frame_number_key(number, f))
            entry: dict[str, Any] = {
                "sop_instance_uid": inst.sop_instance_uid,
                "frame": f + 1,
                "scores": [s.to_dict() for s in scores],
            }
            heads = frame.heads.get(model)
            if heads:  # the further mask heads' findings on the frame (their pixels are in the SEG)
                entry["mask_heads"] = [{"head": h.label, "findings": list(h.findings)} for h in heads]
            frames.append(entry)
    if not frames:
        return (), []
    return series.series_scores.get(model) or aggregate.scores(), frames


def series_score_report(series: OpenSeries, model: str, manifest: Manifest) -> dict[str, Any] | None:
    """The JSON document for ``model``'s scores over ``series`` (:func:`series_head_scores`); None when the
    model has no score heads or no frame of the series has scores."""
    head_scores, frames = series_head_scores(series, model, manifest)
    if not frames:
        return None
    return {
        "format": SCORES_FORMAT,
        "series_uid": series.series_uid,
        "model": f"{manifest.name}@{manifest.version}",
        "not_for_clinical_use": manifest.not_for_clinical_use,
        "series_scores": [s.to_dict() for s in head_scores],
        "frames": frames,
    }


class ScoresOutput(DicomOutput):
    """Series scores as JSON next to the node's DICOM outputs (``ListenerConfig(outputs=("seg", "scores"))``)."""

    name: ClassVar[str] = "scores"
    label: ClassVar[str] = "score report"

    @classmethod
    def from_config(cls, config: ListenerConfig) -> ScoresOutput:
        """Nothing to configure."""
        return cls()

    @property
    def forwarded(self) -> bool:
        """JSON is not DICOM: never sent to the ``--forward`` node."""
        return False

    def describe(self) -> str:
        """``series score JSON``."""
        return "series score JSON"

    def check_model(self, model: str, manifest: Manifest) -> None:
        """A model without score heads gets no file: say so once."""
        if not manifest.score_heads:
            log.warning("model %s has no score heads in its manifest: the scores output writes nothing for it", model)

    def counters(self, stats: OutputStats) -> dict[str, int]:
        """``score_reports_written``, ``score_report_failures``, ``score_report_retries`` in ``status.json``."""
        return {
            "score_reports_written": stats.written,
            "score_report_failures": stats.failures,
            "score_report_retries": stats.retries,
        }

    def build(self, series: OpenSeries, model: str, manifest: Manifest) -> tuple[list[Any], list[str]]:
        """One :class:`ScoreReport` when the model scored the series; none otherwise."""
        content = series_score_report(series, model, manifest)
        return ([] if content is None else [ScoreReport(series.series_uid, model, content)]), []

    def file_name(self, obj: Any) -> str:
        """``<series UID>.<model>.scores.json``."""
        return f"{obj.series_uid}.{obj.model}.scores.json"

    def save(self, obj: Any, path: Path) -> None:
        """The document as indented JSON."""
        path.write_text(json.dumps(obj.content, indent=2) + "\n", encoding="utf-8")
