"""Segmenting a set of slices into a folder: one overlay per slice, optional masks, a montage, results.json.

This is what ``scanedge segment`` and ``scanedge demo`` leave behind. The pipeline runs once per slice;
whatever a caller needs afterwards (masks to score, overlays to tile) is kept from that one run instead
of running the model again. One bad slice never stops the batch: a slice the pipeline refuses (out of
the model's scope, non-finite output, ...) is listed in ``skipped`` with its code and reason, next to the
files that could not be read at all, and the others are processed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from scanedge.errors import ConfigError, EngineInputError, InputError, NonFiniteOutputError
from scanedge.imaging.annotate import stamp_not_for_clinical_use
from scanedge.imaging.encode import ImageFormat, encode_image
from scanedge.imaging.files import LoadedSlice, SkippedFile
from scanedge.imaging.head_overlay import head_legend
from scanedge.imaging.heads import MaskHeadLoad, SeriesScore, SeriesScores, head_labels
from scanedge.imaging.lesion_load import SeriesLesionLoad
from scanedge.imaging.montage import montage, tile_label
from scanedge.imaging.postprocess import ClassFindings
from scanedge.imaging.series import context_window
from scanedge.imaging.series_model import SeriesVolume
from scanedge.imaging.series_summary import LatencyPercentiles, SeriesSummary, summarize_series
from scanedge.imaging.slices import SliceGeometry
from scanedge.manifest import Manifest
from scanedge.runtime.core.pipeline import Pipeline, SliceResult, StageTimings

__all__ = ["BatchOutput", "BatchReport", "SegmentedSlice", "prepare_output_dir", "segment_to_folder"]

RESULTS_NAME = "results.json"
MONTAGE_NAME = "montage.png"


@dataclass(frozen=True)
class BatchOutput:
    """Where results go and what is kept.

    ``out_dir`` receives ``<name>.overlay.png|jpg`` per slice and ``results.json``; ``save_masks`` adds
    ``<name>.mask.npy`` (and ``<name>.<head>.mask.npy`` per further mask head); ``montage`` adds
    ``montage.png`` (every overlay tiled, ``montage_columns`` per row); ``keep_masks`` keeps each label mask
    in memory on its :class:`SegmentedSlice`.

    A folder that already holds results (a ``results.json``) is refused unless ``overwrite``, which first
    removes what an earlier run wrote there (overlays, masks, montage, results.json; nothing else).

    Attributes:
        overlay_format: ``png`` (lossless) or ``jpeg`` for the overlay files.
        overwrite: replace the results of an earlier run in ``out_dir``.
    """

    out_dir: Path
    overlay_format: ImageFormat = "png"
    save_masks: bool = False
    montage: bool = False
    montage_columns: int = 8
    keep_masks: bool = False
    overwrite: bool = False


@dataclass(frozen=True, eq=False)
class SegmentedSlice:
    """One slice's outcome: where it came from, what was found, how long it took, where its files went.

    Attributes:
        source: the slice and the file it was read from.
        findings: per foreground class, what was found.
        timings: how long each pipeline stage took.
        overlay_path: the overlay file written for it.
        mask_path: its ``.npy`` label mask; None unless ``BatchOutput.save_masks``.
        head_mask_paths: per further mask head of the model, its ``.npy`` label mask (with ``save_masks``).
    """

    source: LoadedSlice
    result: dict[str, Any]  # SliceResult.to_dict(): identity, model, shape, findings, timings
    findings: tuple[ClassFindings, ...]
    timings: StageTimings
    overlay_path: Path
    mask_path: Path | None = None
    mask: np.ndarray | None = None  # (rows, cols) uint8 labels, only with BatchOutput.keep_masks
    head_mask_paths: tuple[Path, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """The slice's entry in ``results.json``."""
        record: dict[str, Any] = {
            "file": str(self.source.path),
            "name": self.source.name,
            "overlay": str(self.overlay_path),
        }
        record.update(self.result)
        if self.mask_path is not None:
            record["mask"] = str(self.mask_path)
        if self.head_mask_paths:
            record["mask_heads"] = [
                {**head, "mask": str(path)} for head, path in zip(record["mask_heads"], self.head_mask_paths)
            ]
        return record


@dataclass(frozen=True, eq=False)
class BatchReport:
    """Everything a batch produced: per-slice outcomes, per-series summaries and the files written.

    Attributes:
        slices: one outcome per slice, in series order.
        series: one summary per series, in the order the series first appear.
        results_path: the ``results.json`` written.
        montage_path: the montage written; None unless ``BatchOutput.montage`` (or nothing was segmented).
        skipped: files and slices that were not segmented, with the typed code and reason.
    """

    model: str  # name@version
    slices: tuple[SegmentedSlice, ...]
    series: tuple[SeriesSummary, ...]
    results_path: Path
    montage_path: Path | None = None
    skipped: tuple[SkippedFile, ...] = ()

    def latency(self, stage: str = "total_ms") -> LatencyPercentiles:
        """Percentiles over all slices of one stage's time (a :class:`StageTimings` field name)."""
        return LatencyPercentiles.of([getattr(s.timings, stage) for s in self.slices])

    @property
    def masks(self) -> list[np.ndarray]:
        """The kept label masks, in slice order (empty unless ``BatchOutput.keep_masks``)."""
        return [s.mask for s in self.slices if s.mask is not None]

    def to_dict(self) -> dict[str, Any]:
        """The content of ``results.json``."""
        from scanedge.version import __version__

        return {
            "scanedge": __version__,
            "model": self.model,
            "series": [s.to_dict() for s in self.series],
            "slices": [s.to_dict() for s in self.slices],
            "skipped": [s.to_dict() for s in self.skipped],
        }


def _file_stem(item: LoadedSlice) -> str:
    return item.name.replace("#", "_f").replace("/", "_")


#: what a run writes into its folder, and so what ``overwrite`` removes
_OUTPUT_PATTERNS: tuple[str, ...] = ("*.overlay.png", "*.overlay.jpg", "*.mask.npy", MONTAGE_NAME, RESULTS_NAME)
#: what a follow-up (``--prior``) adds: change pictures per slice and their montage
_OUTPUT_PATTERNS += ("*.change.png", "change-montage.png")
#: what the demo's classifier adds beside the demo model (scanedge.demo.classify)
_OUTPUT_PATTERNS += ("classifier-montage.png",)


def prepare_output_dir(output: BatchOutput) -> Path:
    """Make ``output.out_dir`` ready to receive results, or raise ConfigError saying why it cannot.

    Refused: a path that is a file, a folder that cannot be created or written, and a folder that already
    holds results unless ``output.overwrite`` (which removes them first). Called before any slice is
    read, so a wrong ``--out`` costs nothing.
    """
    out = Path(output.out_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out} is a file; results go into a folder: name a new or empty folder")
    if (out / RESULTS_NAME).exists() and not output.overwrite:
        raise ConfigError(
            f"{out} already holds results ({RESULTS_NAME}) of an earlier run; name another folder, "
            "or replace them (--force on the command line, BatchOutput.overwrite)"
        )
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create the folder {out}: {exc.strerror or type(exc).__name__}") from exc
    if not os.access(out, os.W_OK | os.X_OK):
        raise ConfigError(f"cannot write into {out}: permission denied")
    if output.overwrite:
        for pattern in _OUTPUT_PATTERNS:
            for old in out.glob(pattern):
                if old.is_file():
                    old.unlink()
    return out


def _write(path: Path, data: bytes | str) -> None:
    try:
        if isinstance(data, str):
            path.write_text(data)
        else:
            path.write_bytes(data)
    except OSError as exc:  # a full disk, a folder removed mid-run: the user's to fix, said in one line
        raise ConfigError(f"cannot write {path}: {exc.strerror or type(exc).__name__}") from exc


class _HeadMasks:
    """A batch's further mask heads: each slice's head masks written beside its mask (``<stem>.<head>.mask.npy``,
    the head's file-safe label) and each series' 3-D load per head, as the main mask's."""

    def __init__(self, manifest: Manifest) -> None:
        self.heads = manifest.mask_heads
        self.labels = head_labels([h.name for h in self.heads])
        self.files = head_labels([h.name for h in self.heads], file_safe=True)
        self.loads: dict[str, tuple[SeriesLesionLoad, ...]] = {}

    def add(self, result: SliceResult, item: LoadedSlice, out: Path, stem: str, save: bool) -> tuple[Path, ...]:
        """Add one slice's head masks to its series' loads; with ``save`` write them; their paths."""
        if not self.heads:
            return ()
        uid = item.slice.identity.series_uid
        loads = self.loads.get(uid)
        if loads is None:
            loads = self.loads[uid] = tuple(SeriesLesionLoad(tuple(c.name for c in h.classes)) for h in self.heads)
        paths = []
        for head, load, token in zip(result.mask_heads, loads, self.files):
            load.add(head.mask, *_placement(item))
            if save:
                path = out / f"{stem}.{token}.mask.npy"
                try:
                    np.save(path, head.mask)
                except OSError as exc:
                    raise ConfigError(f"cannot write {path}: {exc.strerror or type(exc).__name__}") from exc
                paths.append(path)
        return tuple(paths)

    def summarize(self, summaries: tuple[SeriesSummary, ...]) -> tuple[SeriesSummary, ...]:
        """``summaries`` with each series' head loads."""
        if not self.loads:
            return summaries
        return tuple(
            replace(
                s,
                mask_heads=tuple(
                    MaskHeadLoad(h.name, label, load.load())
                    for h, label, load in zip(self.heads, self.labels, self.loads[s.series_uid])
                ),
            )
            if s.series_uid in self.loads
            else s
            for s in summaries
        )


def _series_scores(pipe: Pipeline, scores: SeriesScores, volume: SeriesVolume | None) -> tuple[SeriesScore, ...]:
    """A read series' scores: the score head with a series model gets that model's answer on the whole series
    (every slice has been read: the series is complete); the others their slices' aggregate."""
    held = scores.scores()
    if volume is None:
        return held
    if pipe.series_model is None:  # a pipeline built from an engine without its series model
        return held
    return pipe.series_model.complete(volume, held)


def _placement(item: LoadedSlice) -> tuple[SliceGeometry, int | None]:
    """Geometry and number that place a slice in its series' 3-D load. Frames of one multi-frame object
    without positions share its instance number; they are placed by their order within it instead."""
    s = item.slice
    number = s.identity.instance_number
    if s.geometry.position_along_normal is None and "#" in item.name:
        number = (number or 0) * 100_000 + s.identity.frame_index
    return s.geometry, number


#: failures that belong to one slice: the batch lists them and carries on (others, such as a device that
#: vanished, would fail every slice and end the batch)
SLICE_ERRORS = (InputError, NonFiniteOutputError, EngineInputError)


def segment_to_folder(
    pipe: Pipeline,
    loaded: Sequence[LoadedSlice],
    output: BatchOutput,
    progress: Callable[[int, int], None] | None = None,
    skipped: Sequence[SkippedFile] = (),
    run: Callable[[int, LoadedSlice], SliceResult] | None = None,
) -> BatchReport:
    """Segment ``loaded`` (in series order, as :func:`~scanedge.imaging.files.scan_slices` gives them) with
    ``pipe`` and write the files ``output`` asks for; ``progress(done, total)`` is called after each slice.
    ``run(i, item)`` segments one slice instead of ``pipe.run`` (a multi-input model's slices with their
    partners: :mod:`scanedge.runtime.core.batch_inputs`).

    A slice the pipeline refuses (:data:`SLICE_ERRORS`: out of scope, non-finite output, ...) is added to
    ``skipped`` (files the caller could not read, listed in the report as given) and the batch goes on.
    2.5D models get their neighbours from the same list.
    """
    out = prepare_output_dir(output)
    suffix = "jpg" if output.overlay_format == "jpeg" else "png"
    done: list[SegmentedSlice] = []
    overlays: list[np.ndarray] = []
    refused: list[SkippedFile] = []
    labels = []
    loads: dict[str, SeriesLesionLoad] = {}  # 3-D lesion load per series, accumulated slice by slice
    series_scores: dict[str, SeriesScores] = {}  # score heads per series, aggregated slice by slice
    volumes: dict[str, SeriesVolume] = {}  # a score head's series model: its planes per series
    series_head = pipe.manifest.series_model_head
    head_masks = _HeadMasks(pipe.manifest)  # further mask heads: files and loads per series
    classes = tuple(c.name for c in pipe.manifest.classes)
    research_only = pipe.manifest.not_for_clinical_use
    series = [item.slice for item in loaded]
    k = pipe.manifest.input.context_slices
    for i, item in enumerate(loaded):
        try:
            result = run(i, item) if run is not None else pipe.run(item.slice, context=context_window(series, i, k))
        except SLICE_ERRORS as exc:
            refused.append(SkippedFile.of(item.name, item.path, exc))
        else:
            uid = item.slice.identity.series_uid
            if pipe.manifest.output is not None:  # a classifier has no mask, hence no lesion load
                loads.setdefault(uid, SeriesLesionLoad(classes)).add(result.mask, *_placement(item))
            if result.scores:
                series_scores.setdefault(uid, SeriesScores(pipe.manifest.heads)).add(result.scores, *_placement(item))
            if series_head is not None:
                volumes.setdefault(uid, SeriesVolume(pipe.manifest, series_head)).add(item.slice, _placement(item)[1])
            stem = _file_stem(item)
            overlay_path = out / f"{stem}.overlay.{suffix}"
            picture: np.ndarray = result.overlay  # type: ignore[assignment]  # run draws overlays by default
            if research_only:
                picture = stamp_not_for_clinical_use(picture)
            _write(overlay_path, encode_image(picture, output.overlay_format))
            if output.montage:
                overlays.append(result.overlay)  # type: ignore[arg-type]
                labels.append(tile_label(item.slice))
            mask_path = None
            if output.save_masks:
                mask_path = out / f"{stem}.mask.npy"
                try:
                    np.save(mask_path, result.mask)
                except OSError as exc:
                    raise ConfigError(f"cannot write {mask_path}: {exc.strerror or type(exc).__name__}") from exc
            done.append(
                SegmentedSlice(
                    source=item,
                    result=result.to_dict(),
                    findings=result.findings,
                    timings=result.timings,
                    overlay_path=overlay_path,
                    mask_path=mask_path,
                    mask=result.mask if output.keep_masks else None,
                    head_mask_paths=head_masks.add(result, item, out, stem, output.save_masks),
                )
            )
        if progress is not None:
            progress(i + 1, len(loaded))
    summaries = summarize_series(
        [s.source.slice for s in done],
        [s.findings for s in done],
        [s.timings.total_ms for s in done],
        {uid: load.load() for uid, load in loads.items()},
    )
    if series_scores:
        summaries = tuple(
            replace(s, scores=_series_scores(pipe, series_scores[s.series_uid], volumes.get(s.series_uid)))
            if s.series_uid in series_scores
            else s
            for s in summaries
        )
    summaries = head_masks.summarize(summaries)
    montage_path = None
    if overlays:
        montage_path = out / MONTAGE_NAME
        legend = [(c.name, c.color) for c in pipe.manifest.classes[1:]] + head_legend(pipe.manifest)
        dashed = "; dashed outline = further mask head (label: class)" if pipe.manifest.mask_heads else ""
        sheet = montage(
            overlays,
            output.montage_columns,
            labels=labels,
            legend=legend,
            not_for_clinical_use=research_only,
            notes=[
                f"{pipe.model_label}: {len(overlays)} slice(s); outline = finding{dashed}, #n = instance, "
                "mm along the normal"
            ],
        )
        _write(montage_path, encode_image(sheet, "png"))
    report = BatchReport(
        pipe.model_label, tuple(done), summaries, out / RESULTS_NAME, montage_path, (*skipped, *refused)
    )
    _write(report.results_path, json.dumps(report.to_dict(), indent=2) + "\n")
    return report
