"""A segmented series compared with a prior series read from files: what ``scanedge segment --prior`` and
``scanedge demo --prior`` do after segmenting the current series.

The prior's slices are segmented with the same pipeline, both series become volumes
(:func:`~scanedge.imaging.followup.volume_from_slices`), the prior's lesions get tracking ids
(:func:`~scanedge.imaging.lesion_change.initial_tracking`, or the Tracking UIDs of a scanedge lesion SEG
found beside the prior's images, so ids persist from one follow-up to the next), and the one comparison
of the project runs (:func:`~scanedge.imaging.followup.compare_series`). Before anything is segmented the
prior is checked: the same patient (Patient ID, compared as a digest and never printed or stored), the same
modality, and an earlier study date (a later one is a warning). A prior file that cannot be read is listed
with its typed code and skipped, as in every batch.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from scanedge.errors import InputError, PriorMismatchError
from scanedge.imaging.encode import encode_image
from scanedge.imaging.files import LoadedSlice, SkippedFile
from scanedge.imaging.followup import require_followup_extra as check_followup_extra
from scanedge.imaging.series import context_window
from scanedge.imaging.slices import Slice

if TYPE_CHECKING:  # imported where used: scipy and SimpleITK only when a follow-up runs
    from scanedge.imaging.followup import SeriesComparison
    from scanedge.imaging.registration import RegistrationConfig
    from scanedge.runtime.core.pipeline import Pipeline

__all__ = [
    "CHANGE_MONTAGE_NAME",
    "FollowupOutcome",
    "SeriesFacts",
    "add_to_results",
    "check_prior",
    "compare_with_prior",
    "followup_lines",
    "require_followup_extra",
    "segment_slices",
    "series_facts",
]

CHANGE_MONTAGE_NAME = "change-montage.png"


#: the extra that brings what registration and lesion change need
def require_followup_extra() -> None:
    """Raise ConfigError naming the ``followup`` extra when SimpleITK or scipy is missing."""
    check_followup_extra("comparing with a prior")


@dataclass(frozen=True)
class SeriesFacts:
    """What identifies a series for matching, read from its DICOM headers.

    Attributes:
        patient_key: SHA-256 of the Patient ID ("" when absent): compared, never the ID itself.
        study_uid: Study Instance UID.
        study_date: Study Date, YYYYMMDD ("" when absent).
        series_uid: Series Instance UID.
        modality: DICOM Modality.
    """

    patient_key: str
    study_uid: str
    study_date: str
    series_uid: str
    modality: str


_HEADER_TAGS = ["PatientID", "StudyInstanceUID", "StudyDate", "SeriesInstanceUID", "Modality", "Manufacturer"]


def _text(ds: Any, name: str, limit: int = 64) -> str:
    value = ds.get(name, "")
    return "".join(c for c in str(value or "")[:limit] if c.isprintable()).strip()


def series_facts(loaded: Sequence[LoadedSlice], what: str) -> SeriesFacts:
    """The facts of the one series in ``loaded`` (``what`` names it in errors: "current", "prior").

    Raises InputError for slices that are not DICOM (no patient, date or position to compare) or that
    belong to more than one series or patient."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    if not loaded:
        raise InputError(f"the {what} series has no slices")
    series = {item.slice.identity.series_uid for item in loaded}
    if len(series) > 1:
        raise InputError(f"the {what} files hold {len(series)} series; a follow-up compares one series with one")
    keys: set[str] = set()
    first: Any = None
    for path in sorted({item.path for item in loaded}):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=_HEADER_TAGS)
        except (InvalidDicomError, OSError, ValueError, EOFError) as exc:  # an image, .npy, a broken file
            raise InputError(f"{path.name} is not DICOM; a follow-up needs DICOM series of both studies") from exc
        if "SeriesInstanceUID" not in ds:
            raise InputError(f"{path.name} is not DICOM; a follow-up needs DICOM series of both studies")
        patient = _text(ds, "PatientID")
        keys.add(hashlib.sha256(patient.encode()).hexdigest() if patient else "")
        first = first if first is not None else ds
    if len(keys) > 1:
        raise PriorMismatchError(f"the {what} series holds images of more than one patient")
    return SeriesFacts(
        patient_key=keys.pop(),
        study_uid=_text(first, "StudyInstanceUID"),
        study_date=_text(first, "StudyDate", 8),
        series_uid=_text(first, "SeriesInstanceUID"),
        modality=_text(first, "Modality", 16).upper(),
    )


def check_prior(current: SeriesFacts, prior: SeriesFacts, *, any_patient: bool = False) -> list[str]:
    """Warnings about ``prior`` as the prior of ``current``; PriorMismatchError when it must not be compared:
    another patient (unless ``any_patient``), another modality, or the same study."""
    if not any_patient and (not current.patient_key or current.patient_key != prior.patient_key):
        missing = not current.patient_key or not prior.patient_key
        raise PriorMismatchError(
            (
                "a Patient ID is missing, so the prior cannot be matched"
                if missing
                else "the prior is of another patient"
            )
            + " (Patient ID differs); compare anyway with --prior-any-patient"
        )
    if current.modality != prior.modality:
        raise PriorMismatchError(
            f"the prior is {prior.modality or 'of no modality'}, the current series {current.modality}"
        )
    if current.study_uid and current.study_uid == prior.study_uid and current.series_uid == prior.series_uid:
        raise PriorMismatchError("the prior is the current series itself")
    warnings = []
    if any_patient and current.patient_key != prior.patient_key:
        warnings.append("the prior is of another patient (--prior-any-patient): change is not disease activity")
    if not prior.study_date or not current.study_date:
        warnings.append("a study date is missing: cannot tell that the prior is earlier")
    elif prior.study_date > current.study_date:
        warnings.append(f"the prior ({prior.study_date}) is later than the current study ({current.study_date})")
    elif prior.study_date == current.study_date:
        warnings.append(f"the prior is of the same day ({prior.study_date})")
    return warnings


def segment_slices(
    pipe: Pipeline, loaded: Sequence[LoadedSlice], progress: Callable[[int, int], None] | None = None
) -> tuple[list[LoadedSlice], list[np.ndarray], list[SkippedFile]]:
    """Segment ``loaded`` (one series, in order) with ``pipe``, writing nothing: (slices segmented, their label
    masks, slices refused with the reason)."""
    from scanedge.runtime.core.batch import SLICE_ERRORS

    kept: list[LoadedSlice] = []
    masks: list[np.ndarray] = []
    refused: list[SkippedFile] = []
    series = [item.slice for item in loaded]
    k = pipe.manifest.input.context_slices
    for i, item in enumerate(loaded):
        try:
            result = pipe.run(item.slice, context=context_window(series, i, k), overlay=False)
        except SLICE_ERRORS as exc:
            refused.append(SkippedFile.of(item.name, item.path, exc))
        else:
            kept.append(item)
            masks.append(np.asarray(result.mask))
        if progress is not None:
            progress(i + 1, len(loaded))
    return kept, masks, refused


def _stack(slices: Sequence[Slice], masks: Sequence[np.ndarray], what: str) -> tuple[Any, Any, np.ndarray, list[int]]:
    from scanedge.imaging.followup import volume_from_slices
    from scanedge.imaging.registration import MAX_VOXELS

    if not slices:
        raise InputError(f"no slice of the {what} series could be segmented")
    rows, cols = slices[0].shape[:2]
    if len(slices) * rows * cols > MAX_VOXELS:
        raise InputError(f"the {what} series has {len(slices)} slices of {rows}x{cols}: more than {MAX_VOXELS} voxels")
    try:
        volume, geometry, order = volume_from_slices(slices)
    except InputError as exc:
        raise InputError(f"the {what} series cannot be stacked into a volume: {exc.message}") from exc
    mask = np.stack([np.asarray(masks[i]) > 0 for i in order]).astype(np.uint8)
    return volume, geometry, mask, order


@dataclass(frozen=True, eq=False)
class FollowupOutcome:
    """A series compared with a prior read from files.

    Attributes:
        comparison: the comparison (:class:`~scanedge.imaging.followup.SeriesComparison`).
        prior: the prior's facts (its patient key is never reported).
        prior_slices: how many prior slices were compared.
        warnings: what the user should know (a later prior, another patient allowed, ...).
        prior_skipped: prior files or slices that could not be used, with the reason.
        tracking_source: where the prior's tracking ids came from (``prior lesion SEG <uid>`` or ``new ids``).
        planes: for each z plane of the compared volume, the index of its slice in the current batch.
        pictures: the change pictures written (one per current slice, then the montage).
    """

    comparison: SeriesComparison
    prior: SeriesFacts
    prior_slices: int
    warnings: tuple[str, ...]
    prior_skipped: tuple[SkippedFile, ...]
    tracking_source: str
    planes: tuple[int, ...]
    pictures: tuple[Path, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        """The ``followup`` object of results.json: every figure of the comparison, each lesion with its
        Tracking UID."""
        c = self.comparison
        report = c.report
        summary = c.summary()
        reg = c.registration
        lesions = [
            {
                "tracking_uid": lesion.tracking_uid,
                "change": lesion.change,
                "label": lesion.label,
                "prior_volume_mm3": round(lesion.prior_volume_mm3, 1),
                "current_volume_mm3": round(lesion.current_volume_mm3, 1),
                "change_mm3": round(lesion.current_volume_mm3 - lesion.prior_volume_mm3, 1),
                "change_percent": (
                    round(100.0 * (lesion.current_volume_mm3 - lesion.prior_volume_mm3) / lesion.prior_volume_mm3, 1)
                    if lesion.prior_volume_mm3
                    else None
                ),
                "prior_uids": list(lesion.prior_uids),
            }
            for lesion in report.lesions
        ]
        return {
            "status": c.status,
            "reason": c.reason,
            "prior": {
                "study_uid": self.prior.study_uid,
                "series_uid": self.prior.series_uid,
                "study_date": self.prior.study_date,
                "modality": self.prior.modality,
                "slices": self.prior_slices,
                "tracking": self.tracking_source,
            },
            "registration": None
            if reg is None
            else {
                "quality": reg.quality,
                "reason": reg.reason,
                "seconds": round(reg.seconds, 3),
                "metric": None if not np.isfinite(reg.metric) else round(reg.metric, 4),
                "head_dice": round(reg.head_dice, 4),
                "iterations": reg.iterations,
                "stopped_by_budget": reg.stopped_by_budget,
                "matrix": [[round(v, 6) for v in row] for row in reg.matrix],
            },
            "counts": {name: getattr(summary.counts, name) for name in _CLASSES} if summary.counts else None,
            "lesions": lesions,
            "current_tracking": {str(n): uid for n, uid in sorted(report.uids.items())},
            "prior_load_mm3": summary.prior_load_mm3,
            "current_load_mm3": summary.current_load_mm3,
            "load_change_mm3": round(report.load_change_mm3, 1) if c.prior is not None else None,
            "load_change_percent": summary.load_change_percent,
            "warnings": list(self.warnings),
            "prior_skipped": [s.to_dict() for s in self.prior_skipped],
            "pictures": [str(p) for p in self.pictures],
        }


_CLASSES = ("new", "enlarging", "stable", "shrinking", "disappeared", "merged", "split")


def _lesion_seg(
    loaded: Sequence[LoadedSlice], skipped: Sequence[SkippedFile], facts: SeriesFacts, warnings: list[str]
) -> tuple[Path, Any] | None:
    """The newest usable scanedge lesion SEG of the prior among the files read as no image (a SEG is not an
    image), on the prior's slices in volume order; a SEG that does not fit is a warning, not an error."""
    from scanedge.imaging.followup import volume_from_slices
    from scanedge.imaging.lesion_seg import is_lesion_seg, read_lesion_seg

    candidates = [s.path for s in skipped if s.code == "NOT_AN_IMAGE" and is_lesion_seg(s.path, facts.series_uid)]
    if not candidates:
        return None
    try:
        _, _, order = volume_from_slices([item.slice for item in loaded])
    except InputError:
        return None  # the prior cannot be stacked at all: said when the comparison stacks it
    ordered = [loaded[i].slice for i in order]
    for path in sorted(candidates, key=lambda p: p.stat().st_mtime, reverse=True):
        try:
            seg = read_lesion_seg(path, ordered)
        except InputError as exc:
            warnings.append(f"the lesion SEG {path.name} cannot be used ({exc.message}); lesions get new ids")
            continue
        # back to the order of ``loaded``, as the masks of a segmented prior are
        tracking = np.zeros_like(seg.tracking)
        tracking[np.asarray(order)] = seg.tracking
        return path, type(seg)(seg.sop_instance_uid, tracking, seg.uids)
    return None


def _prior_volume(
    kept: Sequence[LoadedSlice], masks: Sequence[np.ndarray], facts: SeriesFacts, source: str, seg: Any = None
) -> tuple[Any, str]:
    from scanedge.imaging.followup import PriorVolume
    from scanedge.imaging.lesion_change import initial_tracking

    volume, geometry, mask, order = _stack([item.slice for item in kept], masks, "prior")
    if seg is not None:
        tracking, uids = seg.tracking[np.asarray(order)], dict(seg.uids)
        how = f"prior lesion SEG {seg.sop_instance_uid}"
    else:
        tracking, uids = initial_tracking(mask, geometry.spacing)
        how = "new ids (no scanedge lesion SEG beside the prior)"
    prior = PriorVolume(
        study_uid=facts.study_uid,
        series_uid=facts.series_uid,
        study_date=facts.study_date,
        volume=volume,
        geometry=geometry,
        tracking=tracking,
        uids=uids,
        source=source,
        rules="same patient, same modality (command line)",
    )
    return prior, how


def _write_pictures(
    out_dir: Path,
    current: Sequence[tuple[LoadedSlice, np.ndarray]],
    comparison: SeriesComparison,
    order: Sequence[int],
    *,
    montage_too: bool,
    montage_limit: int | None,
    research_only: bool,
    note: str,
) -> list[Path]:
    from scanedge.imaging.change_overlay import change_legend, render_change
    from scanedge.imaging.followup import CHANGE_CODES, change_image
    from scanedge.imaging.montage import montage, tile_label
    from scanedge.runtime.core.batch import _write

    report = comparison.report
    counts: dict[str, int] = {lesion.change: report.count(lesion.change) for lesion in report.lesions}
    legend = change_legend(counts if comparison.status == "compared" else {})
    pictures: list[Path] = []
    tiles: list[np.ndarray] = []
    labels = []
    changed: list[int] = []  # pixels of a class other than stable, per z plane
    for z, index in enumerate(order):
        item, mask = current[index]
        codes = change_image(report.tracking[z], report)
        picture = render_change(item.slice, codes, mask)
        tiles.append(picture)
        labels.append(tile_label(item.slice))
        changed.append(int(np.count_nonzero((codes > 0) & (codes != CHANGE_CODES["stable"]))))
        single = _with_legend(picture, codes, mask, research_only)
        path = out_dir / f"{item.name.replace('#', '_f').replace('/', '_')}.change.png"
        _write(path, encode_image(single, "png"))
        pictures.append(path)
    if montage_too and tiles:
        if montage_limit is not None and len(tiles) > montage_limit:
            # the planes with the most change, shown in series order
            keep = sorted(sorted(range(len(tiles)), key=lambda z: -changed[z])[:montage_limit])
            tiles, labels = [tiles[z] for z in keep], [labels[z] for z in keep]
        columns = 8 if montage_limit is None else min(8, max(1, (len(tiles) + 1) // 2))
        sheet = montage(tiles, columns, labels=labels, legend=legend, not_for_clinical_use=research_only, notes=[note])
        path = out_dir / CHANGE_MONTAGE_NAME
        _write(path, encode_image(sheet, "png"))
        pictures.append(path)
    return pictures


def _with_legend(picture: np.ndarray, codes: np.ndarray, mask: np.ndarray, research_only: bool) -> np.ndarray:
    """One slice's change picture for a file: at least 512 pixels wide (nearest neighbour, so the legend has
    room), stamped when the model is for research only, with a legend of the classes on this slice."""
    import cv2

    from scanedge.imaging.annotate import legend_strip, stamp_not_for_clinical_use
    from scanedge.imaging.change_overlay import UNCLASSIFIED_COLOUR
    from scanedge.imaging.followup import CHANGE_CODES, CHANGE_COLOURS

    factor = max(1, -(-512 // picture.shape[1]))
    if factor > 1:
        picture = cv2.resize(picture, None, fx=factor, fy=factor, interpolation=cv2.INTER_NEAREST)
    if research_only:
        picture = stamp_not_for_clinical_use(picture)
    present = {int(v) for v in np.unique(codes)}
    entries: list[tuple[str, tuple[int, int, int]]] = [
        (name, CHANGE_COLOURS[name]) for name, code in CHANGE_CODES.items() if code in present
    ]
    if ((np.asarray(mask) > 0) & (codes == 0)).any():
        entries.append(("no class", UNCLASSIFIED_COLOUR))
    notes = [] if entries else ["no tracked lesion on this slice"]
    return np.vstack([picture, legend_strip(picture.shape[1], entries, notes)])


def compare_with_prior(
    pipe: Pipeline,
    current: Sequence[tuple[LoadedSlice, np.ndarray]],
    prior_loaded: Sequence[LoadedSlice],
    prior_skipped: Sequence[SkippedFile] = (),
    *,
    any_patient: bool = False,
    out_dir: Path | None = None,
    montage: bool = True,
    montage_limit: int | None = None,
    source: str = "prior folder",
    registration: RegistrationConfig | None = None,
    progress: Callable[[str], None] | None = None,
    slice_progress: Callable[[int, int], None] | None = None,
) -> FollowupOutcome:
    """Compare the segmented current series (each slice with its label mask, one series, in series order) with
    the prior slices ``prior_loaded``: check, segment, stack, register, classify; write the change pictures into
    ``out_dir`` (one per current slice, and ``change-montage.png`` when ``montage``: every slice, or the
    ``montage_limit`` slices with the most change). A prior of which no slice can be read or segmented
    gives a ``no_prior`` comparison with the reason.

    Raises PriorMismatchError for a prior that must not be compared, InputError for series that cannot be
    stacked, ConfigError (naming the ``followup`` extra) without SimpleITK or scipy. A registration that
    fails is not an error: the comparison is ``withheld`` with the reason."""
    from scanedge.imaging.followup import compare_series

    require_followup_extra()
    say = progress or (lambda _message: None)
    current_facts = series_facts([item for item, _ in current], "current")
    volume, geometry, mask, order = _stack([item.slice for item, _ in current], [m for _, m in current], "current")
    kept: list[LoadedSlice] = []
    refused: list[SkippedFile] = []
    how = ""
    if not prior_loaded:
        prior_facts = SeriesFacts("", "", "", "", "")
        warnings: list[str] = []
        reason = (
            f"none of the prior's {len(prior_skipped)} file(s) could be read" if prior_skipped else "no prior slices"
        )
        comparison = compare_series(volume, geometry, mask, None, no_prior_reason=reason)
    else:
        prior_facts = series_facts(prior_loaded, "prior")
        warnings = check_prior(current_facts, prior_facts, any_patient=any_patient)
        seg = _lesion_seg(prior_loaded, prior_skipped, prior_facts, warnings)
        if seg is not None:  # the prior's lesions and Tracking UIDs as the earlier follow-up left them
            seg_path, lesions = seg
            prior_skipped = [s for s in prior_skipped if s.path != seg_path]
            kept = list(prior_loaded)
            masks = [lesions.tracking[z] > 0 for z in range(len(kept))]
        else:
            say(f"segmenting the prior series ({len(prior_loaded)} slice(s)) ...")
            kept, masks, refused = segment_slices(pipe, prior_loaded, slice_progress)
        if kept:
            prior, how = _prior_volume(kept, masks, prior_facts, source, seg[1] if seg else None)
            say("registering the prior onto the current series ...")
            comparison = compare_series(volume, geometry, mask, prior, registration=registration)
        else:
            reason = f"none of the prior's {len(prior_loaded)} slice(s) could be segmented"
            comparison = compare_series(volume, geometry, mask, None, no_prior_reason=reason)
    pictures: list[Path] = []
    if out_dir is not None:
        gone = comparison.report.count("disappeared")
        note = (
            f"compared with {_date(prior_facts.study_date)}"
            + (f"; disappeared {gone} (prior only, not drawn)" if gone else "")
            if comparison.status == "compared"
            else f"{comparison.status.replace('_', ' ')}: {comparison.reason}"
        )
        pictures = _write_pictures(
            out_dir,
            current,
            comparison,
            order,
            montage_too=montage,
            montage_limit=montage_limit,
            research_only=bool(pipe.manifest.not_for_clinical_use),
            note=note,
        )
    return FollowupOutcome(
        comparison=comparison,
        prior=prior_facts,
        prior_slices=len(kept),
        warnings=tuple(warnings),
        prior_skipped=(*prior_skipped, *refused),
        tracking_source=how,
        planes=tuple(order),
        pictures=tuple(pictures),
    )


def _date(yyyymmdd: str) -> str:
    """20260101 -> 2026-01-01 (as given when it is not eight digits)."""
    d = yyyymmdd
    return f"{d[:4]}-{d[4:6]}-{d[6:8]}" if len(d) == 8 and d.isdigit() else (d or "an undated prior")


def _mm3(v: float) -> str:
    return f"{v:.0f}" if abs(v) >= 100 else f"{v:.1f}"


def _signed(v: float, unit: str) -> str:
    return ("+" if v >= 0 else "-") + _mm3(abs(v)) + unit


def followup_lines(outcome: FollowupOutcome) -> list[str]:
    """The report's follow-up section, one line each (plain text: print it literally)."""
    c = outcome.comparison
    report = c.report
    lines = []
    if c.status == "no_prior":
        lines.append(f"follow-up: no prior ({c.reason}); current lesion load {_mm3(report.current_load_mm3)} mm³")
        return lines
    reg = c.registration
    lines.append(
        f"follow-up: compared with {_date(outcome.prior.study_date)} ({outcome.prior.modality}, "
        f"{outcome.prior_slices} slice(s); tracking ids: {outcome.tracking_source})"
    )
    if reg is not None:
        lines.append(f"registration: {reg.quality} in {reg.seconds:.2f} s ({reg.reason})")
    for warning in outcome.warnings:
        lines.append(f"warning: {warning}")
    if c.status == "withheld":
        lines.append(f"change withheld: {c.reason}")
        lines.append(f"current lesion load {_mm3(report.current_load_mm3)} mm³ (no change given)")
        return lines
    for name in _CLASSES:
        members = [lesion for lesion in report.lesions if lesion.change == name]
        if not members:
            continue
        members.sort(key=lambda lesion: -max(lesion.current_volume_mm3, lesion.prior_volume_mm3))
        shown = []
        for lesion in members[:8]:
            if name == "new":
                shown.append(f"{_mm3(lesion.current_volume_mm3)}")
            elif name == "disappeared":
                shown.append(f"{_mm3(lesion.prior_volume_mm3)}")
            else:
                delta = lesion.current_volume_mm3 - lesion.prior_volume_mm3
                pct = f", {_signed(100 * delta / lesion.prior_volume_mm3, ' %')}" if lesion.prior_volume_mm3 else ""
                shown.append(
                    f"{_mm3(lesion.prior_volume_mm3)} -> {_mm3(lesion.current_volume_mm3)} ({_signed(delta, '')}{pct})"
                )
        more = f", ... {len(members) - 8} more" if len(members) > 8 else ""
        lines.append(f"  {name} {len(members)}: " + "; ".join(shown) + " mm³" + more)
    percent = report.load_change_percent
    lines.append(
        f"total lesion load: {_mm3(report.prior_load_mm3)} -> {_mm3(report.current_load_mm3)} mm³ "
        f"({_signed(report.load_change_mm3, ' mm³')}" + (f", {_signed(percent, ' %')})" if percent is not None else ")")
    )
    return lines


def add_to_results(results_path: Path, outcome: FollowupOutcome, extra: dict[str, Any] | None = None) -> None:
    """Add the ``followup`` object (and ``extra`` keys) to the results.json a batch wrote."""
    import json

    from scanedge.runtime.core.batch import _write

    data = json.loads(results_path.read_text())
    data["followup"] = outcome.to_dict()
    data.update(extra or {})
    _write(results_path, json.dumps(data, indent=2) + "\n")
