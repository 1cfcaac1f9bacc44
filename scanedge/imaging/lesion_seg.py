"""Reading a scanedge lesion SEG back: a prior's lesions with their Tracking UIDs, on the prior's own grid.

The ``sr`` output writes, beside its SR, a DICOM Segmentation (BINARY) of the series with one segment per
tracked lesion: the segment's Tracking UID (0062,0021) is the lesion's, its Tracking ID "lesion N"; the
SEG's Series Description starts with "scanedge lesions", its Manufacturer is "scanedge", and it references
its source series. A follow-up that finds such a SEG for its prior starts from those lesions and ids rather
than from fresh ones, so a lesion keeps its Tracking UID from study to study.

Frames are placed on the source slices by the SOP Instance UID each frame derives from (its Derivation
Image / Source Image reference) or, without one, by its Image Position (Patient). Bounded: the file's size
and frame count are checked before pixels are decoded.

One reader for every caller: :func:`read_lesion_seg` takes a file (batch follow-up), :func:`lesion_seg_from_dataset`
a dataset already received (the DICOM node's follow-up, from a PACS); :func:`is_lesion_seg_dataset` is the
header test both use.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from scanedge.errors import InputError
from scanedge.imaging.slices import DEFAULT_LIMITS, Slice, SliceLimits

__all__ = [
    "LESION_SEG_DESCRIPTION",
    "LesionSeg",
    "is_lesion_seg",
    "is_lesion_seg_dataset",
    "lesion_seg_from_dataset",
    "read_lesion_seg",
]

#: what the Series Description of a scanedge lesion SEG starts with
LESION_SEG_DESCRIPTION = "scanedge lesions"
#: at most this many segments (lesions) in one SEG
MAX_SEGMENTS = 10_000
_HEADER = ["Modality", "Manufacturer", "SeriesDescription", "ReferencedSeriesSequence", "SOPInstanceUID"]


@dataclass(frozen=True, eq=False)
class LesionSeg:
    """A lesion SEG on its source series' grid.

    Attributes:
        sop_instance_uid: the SEG's SOP Instance UID.
        tracking: (z, y, x) int32 on the source slices given, in their order: n > 0 marks lesion ``uids[n]``.
        uids: label -> Tracking UID (label n is the n-th segment in segment-number order).
    """

    sop_instance_uid: str
    tracking: np.ndarray
    uids: dict[int, str]


def _referenced_series(ds: Any) -> set[str]:
    return {str(item.get("SeriesInstanceUID", "")) for item in ds.get("ReferencedSeriesSequence", [])}


def is_lesion_seg(path: Path, series_uid: str) -> bool:
    """Whether ``path`` is a scanedge lesion SEG of the series ``series_uid`` (headers only)."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=_HEADER)
    except (InvalidDicomError, OSError, ValueError, EOFError, AttributeError, KeyError):
        return False
    return is_lesion_seg_dataset(ds, series_uid)


def is_lesion_seg_dataset(ds: Any, series_uid: str) -> bool:
    """Whether the dataset ``ds`` is a scanedge lesion SEG of the series ``series_uid`` (its headers)."""
    return (
        str(ds.get("Modality", "") or "").strip() == "SEG"
        and str(ds.get("Manufacturer", "") or "").strip() == "scanedge"
        and str(ds.get("SeriesDescription", "") or "").strip().startswith(LESION_SEG_DESCRIPTION)
        and series_uid in _referenced_series(ds)
    )


def _frame_source(frame: Any) -> str:
    for derivation in frame.get("DerivationImageSequence", []):
        for source in derivation.get("SourceImageSequence", []):
            uid = str(source.get("ReferencedSOPInstanceUID", ""))
            if uid:
                return uid
    return ""


def _frame_position(frame: Any) -> np.ndarray | None:
    for plane in frame.get("PlanePositionSequence", []):
        position = plane.get("ImagePositionPatient")
        if position is not None and len(position) == 3:
            return np.asarray([float(v) for v in position])
    return None


def read_lesion_seg(path: Path, slices: Sequence[Slice], limits: SliceLimits = DEFAULT_LIMITS) -> LesionSeg:
    """The lesion SEG at ``path`` on the grid of ``slices`` (its source series, in volume order).

    Raises InputError for a SEG that does not fit them: segments without a Tracking UID, frames of another
    size, frames that name no slice of them, more frames or segments than bounded, a file too large."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    if not slices:
        raise InputError("no source slices to place the lesion SEG on")
    if path.stat().st_size > limits.max_decoded_bytes:
        raise InputError(f"{path.name} is larger than {limits.max_decoded_bytes} bytes")
    try:
        ds = pydicom.dcmread(path)
    except (InvalidDicomError, OSError, ValueError, EOFError) as exc:
        raise InputError(f"{path.name} cannot be read as DICOM ({type(exc).__name__})") from exc
    return lesion_seg_from_dataset(ds, slices, limits, name=path.name)


def lesion_seg_from_dataset(
    ds: Any, slices: Sequence[Slice], limits: SliceLimits = DEFAULT_LIMITS, *, name: str = "the lesion SEG"
) -> LesionSeg:
    """The lesion SEG ``ds`` (a pydicom Dataset with its pixels) on the grid of ``slices``; ``name`` is what
    errors call it. Raises InputError as :func:`read_lesion_seg` does."""
    if not slices:
        raise InputError("no source slices to place the lesion SEG on")
    segments = list(ds.get("SegmentSequence", []))
    if not segments or len(segments) > MAX_SEGMENTS:
        raise InputError(f"{name} has {len(segments)} segments (1..{MAX_SEGMENTS} expected)")
    number_to_label: dict[int, int] = {}
    uids: dict[int, str] = {}
    for segment in sorted(segments, key=lambda s: int(s.get("SegmentNumber", 0))):
        uid = str(segment.get("TrackingUID", "") or "")
        if not uid:
            raise InputError(f"{name}: segment {segment.get('SegmentNumber')} has no Tracking UID")
        label = len(uids) + 1
        number_to_label[int(segment.SegmentNumber)] = label
        uids[label] = uid
    rows, cols = int(ds.get("Rows", 0)), int(ds.get("Columns", 0))
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if (rows, cols) != slices[0].shape[:2]:
        raise InputError(f"{name}: frames of {rows}x{cols} do not fit the {slices[0].shape[:2]} source slices")
    if frames > len(slices) * len(segments) or rows * cols * frames > limits.max_decoded_bytes:
        raise InputError(f"{name}: {frames} frames are more than its source and segments allow")
    per_frame = list(ds.get("PerFrameFunctionalGroupsSequence", []))
    if len(per_frame) != frames:
        raise InputError(f"{name}: {len(per_frame)} per-frame descriptions for {frames} frames")
    by_uid = {s.identity.sop_instance_uid: z for z, s in enumerate(slices) if s.identity.sop_instance_uid}
    positions = [s.geometry.image_position for s in slices]
    try:
        pixels = np.asarray(ds.pixel_array).reshape(frames, rows, cols)
    except Exception as exc:  # pydicom's decoders raise many types for broken pixel data
        raise InputError(f"{name}: its pixel data cannot be decoded ({type(exc).__name__})") from exc
    tracking = np.zeros((len(slices), rows, cols), dtype=np.int32)
    for i, frame in enumerate(per_frame):
        ident = frame.get("SegmentIdentificationSequence", [])
        number = int(ident[0].ReferencedSegmentNumber) if ident else 0
        frame_label = number_to_label.get(number)
        if frame_label is None:
            raise InputError(f"{name}: frame {i + 1} names segment {number}, which it does not describe")
        z: int | None = by_uid.get(_frame_source(frame))
        if z is None:
            where = _frame_position(frame)
            near = [
                k
                for k, p in enumerate(positions)
                if where is not None and p is not None and np.allclose(np.asarray(p), where, atol=0.01)
            ]
            z = near[0] if near else None
        if z is None:
            raise InputError(f"{name}: frame {i + 1} matches no slice of its source series")
        tracking[z][pixels[i] > 0] = frame_label
    return LesionSeg(str(ds.SOPInstanceUID), tracking, uids)
