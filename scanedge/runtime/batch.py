"""Segmenting a set of slices into a folder: one overlay per slice, optional masks, a montage, results.json.

This is what ``scanedge segment`` and ``scanedge demo`` leave behind. The pipeline runs once per slice;
whatever a caller needs afterwards (masks to score, overlays to tile) is kept from that one run instead
of running the model again.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from scanedge.imaging.encode import ImageFormat, encode_image
from scanedge.imaging.files import LoadedSlice
from scanedge.imaging.montage import montage
from scanedge.imaging.postprocess import ClassFindings
from scanedge.imaging.series_summary import LatencyPercentiles, SeriesSummary, summarize_series
from scanedge.runtime.pipeline import Pipeline, StageTimings

__all__ = ["BatchOutput", "BatchReport", "SegmentedSlice", "segment_to_folder"]

RESULTS_NAME = "results.json"
MONTAGE_NAME = "montage.png"


@dataclass(frozen=True)
class BatchOutput:
    """Where results go and what is kept.

    ``out_dir`` receives ``<name>.overlay.png|jpg`` per slice and ``results.json``; ``save_masks`` adds
    ``<name>.mask.npy``; ``montage`` adds ``montage.png`` (every overlay tiled, ``montage_columns`` per
    row); ``keep_masks`` keeps each label mask in memory on its :class:`SegmentedSlice`.

    Attributes:
        overlay_format: ``png`` (lossless) or ``jpeg`` for the overlay files.
    """

    out_dir: Path
    overlay_format: ImageFormat = "png"
    save_masks: bool = False
    montage: bool = False
    montage_columns: int = 8
    keep_masks: bool = False


@dataclass(frozen=True, eq=False)
class SegmentedSlice:
    """One slice's outcome: where it came from, what was found, how long it took, where its files went.

    Attributes:
        source: the slice and the file it was read from.
        findings: per foreground class, what was found.
        timings: how long each pipeline stage took.
        overlay_path: the overlay file written for it.
        mask_path: its ``.npy`` label mask; None unless ``BatchOutput.save_masks``.
    """

    source: LoadedSlice
    result: dict[str, Any]  # SliceResult.to_dict(): identity, model, shape, findings, timings
    findings: tuple[ClassFindings, ...]
    timings: StageTimings
    overlay_path: Path
    mask_path: Path | None = None
    mask: np.ndarray | None = None  # (rows, cols) uint8 labels, only with BatchOutput.keep_masks

    def to_dict(self) -> dict[str, Any]:
        """The slice's entry in ``results.json``."""
        record = {"file": str(self.source.path), "name": self.source.name, "overlay": str(self.overlay_path)}
        record.update(self.result)
        if self.mask_path is not None:
            record["mask"] = str(self.mask_path)
        return record


@dataclass(frozen=True, eq=False)
class BatchReport:
    """Everything a batch produced: per-slice outcomes, per-series summaries and the files written.

    Attributes:
        slices: one outcome per slice, in series order.
        series: one summary per series, in the order the series first appear.
        results_path: the ``results.json`` written.
        montage_path: the montage written; None unless ``BatchOutput.montage``.
    """

    model: str  # name@version
    slices: tuple[SegmentedSlice, ...]
    series: tuple[SeriesSummary, ...]
    results_path: Path
    montage_path: Path | None = None

    def latency(self, stage: str = "total_ms") -> LatencyPercentiles:
        """Percentiles over all slices of one stage's time (a :class:`StageTimings` field name)."""
        return LatencyPercentiles.of([getattr(s.timings, stage) for s in self.slices])

    @property
    def masks(self) -> list[np.ndarray]:
        """The kept label masks, in slice order (empty unless ``BatchOutput.keep_masks``)."""
        return [s.mask for s in self.slices if s.mask is not None]

    def to_dict(self) -> dict[str, Any]:
        """The content of ``results.json``."""
        from scanedge import __version__

        return {
            "scanedge": __version__,
            "model": self.model,
            "series": [s.to_dict() for s in self.series],
            "slices": [s.to_dict() for s in self.slices],
        }


def _file_stem(item: LoadedSlice) -> str:
    return item.name.replace("#", "_f").replace("/", "_")


def segment_to_folder(
    pipe: Pipeline,
    loaded: Sequence[LoadedSlice],
    output: BatchOutput,
    progress: Callable[[int, int], None] | None = None,
) -> BatchReport:
    """Segment ``loaded`` (in series order, as :func:`~scanedge.imaging.files.load_slices` gives them) with
    ``pipe`` and write the files ``output`` asks for; ``progress(done, total)`` is called after each slice.

    2.5D models get their neighbours from the same list (:meth:`Pipeline.run_series`).
    """
    out = Path(output.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    suffix = "jpg" if output.overlay_format == "jpeg" else "png"
    done: list[SegmentedSlice] = []
    overlays: list[np.ndarray] = []
    results = pipe.run_series([item.slice for item in loaded])
    for i, (item, result) in enumerate(zip(loaded, results)):
        stem = _file_stem(item)
        overlay_path = out / f"{stem}.overlay.{suffix}"
        overlay_path.write_bytes(result.encode_overlay(output.overlay_format))
        if output.montage:
            overlays.append(result.overlay)  # type: ignore[arg-type]  # run_series draws overlays
        mask_path = None
        if output.save_masks:
            mask_path = out / f"{stem}.mask.npy"
            np.save(mask_path, result.mask)
        done.append(
            SegmentedSlice(
                source=item,
                result=result.to_dict(),
                findings=result.findings,
                timings=result.timings,
                overlay_path=overlay_path,
                mask_path=mask_path,
                mask=result.mask if output.keep_masks else None,
            )
        )
        if progress is not None:
            progress(i + 1, len(loaded))
    series = summarize_series(
        [item.slice for item in loaded], [s.findings for s in done], [s.timings.total_ms for s in done]
    )
    montage_path = None
    if overlays:
        montage_path = out / MONTAGE_NAME
        montage_path.write_bytes(encode_image(montage(overlays, output.montage_columns), "png"))
    report = BatchReport(pipe.model_label, tuple(done), series, out / RESULTS_NAME, montage_path)
    report.results_path.write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    return report
