"""One series against its prior: the volume built from slices, the prior aligned onto it, the change classified.

Everything that compares a current series with a prior goes through :func:`compare_series` (the DICOM
node live and at completion, the runtime, ``scanedge segment --prior``, the demo), so the rules are
the same everywhere: the prior's intensities are registered onto the current volume
(:mod:`scanedge.imaging.registration`), its lesion tracking volume resampled through that transform by
nearest neighbour, and the change classified (:mod:`scanedge.imaging.lesion_change`). A registration
that is not ``good`` withholds change labels (the report says why); no prior gives tracking ids and the
load, and says "no prior" with the reason.

:class:`SeriesChange` is what a RESULT carries of it (docs/protocol.md): a msgspec Struct, so the wire
encodes it as it is. :data:`CHANGE_CODES` are the pixel values of a RESULT's ``change`` frame.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import msgspec
import numpy as np

from scanedge.errors import ConfigError, InputError
from scanedge.imaging.lesion_change import ChangeClass, ChangeConfig, ChangeReport, LesionChange, compare
from scanedge.imaging.registration import (
    RegistrationConfig,
    RegistrationResult,
    VolumeGeometry,
    register,
    resample_labels,
)
from scanedge.imaging.slices import Slice, SliceGeometry

__all__ = [
    "CHANGE_CLASSES",
    "CHANGE_CODES",
    "CHANGE_COLOURS",
    "FOLLOWUP_EXTRA",
    "ChangeCounts",
    "ComparisonStatus",
    "PriorVolume",
    "SeriesChange",
    "SeriesComparison",
    "change_image",
    "compare_series",
    "require_followup_extra",
    "volume_from_slices",
    "volume_geometry",
]

#: pixel value of each change class in a ``change`` frame (0: no tracked lesion; disappeared lesions have no
#: current pixels)
CHANGE_CODES: dict[ChangeClass, int] = {"new": 1, "enlarging": 2, "stable": 3, "shrinking": 4, "merged": 5, "split": 6}
#: how to install what comparing with a prior needs (SciPy labels lesions, SimpleITK registers)
FOLLOWUP_EXTRA = "pip install 'scanedge[followup]'"

#: display colour (RGB) of each change class, the same in overlays, the viewer's legend and reports
CHANGE_COLOURS: dict[ChangeClass, tuple[int, int, int]] = {
    "new": (255, 59, 48),  # red
    "enlarging": (255, 149, 0),  # orange
    "stable": (52, 199, 89),  # green
    "shrinking": (10, 132, 255),  # blue
    "disappeared": (142, 142, 147),  # grey (prior outline only: no current pixels)
    "merged": (175, 82, 222),  # purple
    "split": (255, 45, 146),  # pink
}
#: every change class, in the order reports list them
CHANGE_CLASSES: tuple[ChangeClass, ...] = ("new", "enlarging", "stable", "shrinking", "disappeared", "merged", "split")

#: where a comparison stands: looking for the prior, aligning it, compared, change labels withheld (the
#: registration was not good enough), or no prior (reason says why)
ComparisonStatus = Literal["searching", "registering", "compared", "withheld", "no_prior"]


def require_followup_extra(what: str, modules: Sequence[str] = ("scipy", "SimpleITK")) -> None:
    """ConfigError naming the ``followup`` extra when a module ``what`` needs is not installed (checked at start,
    so a node or command refuses clearly instead of failing on its first series)."""

    def installed(name: str) -> bool:
        if name in sys.modules:  # None there: known not to import
            return sys.modules[name] is not None
        return importlib.util.find_spec(name) is not None

    missing = [m for m in modules if not installed(m)]
    if missing:
        raise ConfigError(f"{what} needs {' and '.join(missing)}: {FOLLOWUP_EXTRA}")


class ChangeCounts(msgspec.Struct, frozen=True, omit_defaults=True):
    """How many lesions of each change class."""

    new: int = 0
    enlarging: int = 0
    stable: int = 0
    shrinking: int = 0
    disappeared: int = 0
    merged: int = 0
    split: int = 0

    @classmethod
    def of(cls, lesions: Sequence[LesionChange]) -> ChangeCounts:
        """The counts of ``lesions``."""
        counts = dict.fromkeys(CHANGE_CLASSES, 0)
        for lesion in lesions:
            counts[lesion.change] += 1
        return cls(**counts)


class SeriesChange(msgspec.Struct, frozen=True, omit_defaults=True):
    """A series' change against its prior so far, as a RESULT carries it (docs/protocol.md section 4).

    Attributes:
        status: see :data:`ComparisonStatus`.
        reason: why there is no prior, or why change labels are withheld; empty otherwise.
        prior_date: the prior study's date, YYYYMMDD ("compared with ...").
        prior_study: the prior's Study Instance UID.
        source: where the prior came from (``prior store``, ``PACS ORTHANC over DIMSE``, ...).
        rules: the prior-matching rules in force, as :class:`~scanedge.dicomnet.priors.PriorRules` states them.
        registration: the registration's quality and figures.
        counts: lesions of each change class over the series so far.
        slice_counts: lesions of each class that have voxels on this RESULT's slice.
        prior_load_mm3: total volume of the prior's tracked lesions.
        current_load_mm3: total volume of the current tracked lesions so far.
        load_change_percent: current load against the prior's, in % (None when the prior load is 0).
    """

    status: ComparisonStatus
    reason: str = ""
    prior_date: str = ""
    prior_study: str = ""
    source: str = ""
    rules: str = ""
    registration: str = ""
    counts: ChangeCounts | None = None
    slice_counts: ChangeCounts | None = None
    prior_load_mm3: float | None = None
    current_load_mm3: float | None = None
    load_change_percent: float | None = None


@dataclass(frozen=True)
class PriorVolume:
    """A prior series ready to compare against, wherever it came from.

    Attributes:
        study_uid: its Study Instance UID.
        series_uid: its Series Instance UID.
        study_date: its Study Date, YYYYMMDD.
        volume: its intensities (z, y, x), float32: what is registered.
        geometry: where ``volume`` sits in the patient.
        tracking: its lesion tracking volume (z, y, x), int32, same grid as ``volume``: n > 0 marks the lesion
            whose Tracking UID is ``uids[n]``.
        uids: tracking label -> Tracking UID.
        source: where it came from, for the report (never a patient identifier).
        rules: the matching rules that chose it.
    """

    study_uid: str
    series_uid: str
    study_date: str
    volume: np.ndarray
    geometry: VolumeGeometry
    tracking: np.ndarray
    uids: Mapping[int, str]
    source: str = ""
    rules: str = ""

    def __post_init__(self) -> None:
        if np.asarray(self.volume).ndim != 3 or np.asarray(self.volume).shape != np.asarray(self.tracking).shape:
            raise InputError("a prior's volume and tracking volume must be the same 3-D grid")


@dataclass(frozen=True)
class SeriesComparison:
    """A series compared with its prior (or with none).

    Attributes:
        status: ``compared``, ``withheld`` or ``no_prior``.
        reason: why withheld or why no prior.
        report: the change (its ``tracking`` volume is on the current grid, in the z order of the volume
            compared; with no prior or withheld, only tracking ids and the load).
        prior: the prior compared with, or None.
        registration: the registration, or None without a prior.
        geometry: the current volume's geometry.
    """

    status: ComparisonStatus
    reason: str
    report: ChangeReport
    prior: PriorVolume | None
    registration: RegistrationResult | None
    geometry: VolumeGeometry

    def summary(self, slice_index: int | None = None) -> SeriesChange:
        """What a RESULT carries of this comparison; ``slice_index`` (z in the compared volume) adds the counts
        of the lesions with voxels on that slice."""
        report = self.report
        lesions = report.lesions
        slice_counts = None
        if slice_index is not None and report.tracking.ndim == 3 and 0 <= slice_index < report.tracking.shape[0]:
            on_slice = {int(v) for v in np.unique(report.tracking[slice_index]) if v > 0}
            slice_counts = ChangeCounts.of([lesion for lesion in lesions if lesion.label in on_slice])
        prior = self.prior
        percent = report.load_change_percent
        return SeriesChange(
            status=self.status,
            reason=self.reason,
            prior_date=prior.study_date if prior else "",
            prior_study=prior.study_uid if prior else "",
            source=prior.source if prior else "",
            rules=prior.rules if prior else "",
            registration=(
                f"{self.registration.quality}: {self.registration.reason} ({self.registration.seconds:.2f} s)"
                if self.registration
                else ""
            ),
            counts=ChangeCounts.of(lesions) if self.status == "compared" else None,
            slice_counts=slice_counts if self.status == "compared" else None,
            prior_load_mm3=round(report.prior_load_mm3, 1) if prior else None,
            current_load_mm3=round(report.current_load_mm3, 1),
            load_change_percent=round(percent, 1) if prior and percent is not None else None,
        )


def volume_from_slices(slices: Sequence[Slice]) -> tuple[np.ndarray, VolumeGeometry, list[int]]:
    """The slices of one series stacked in order along their normal: (volume (z, y, x) float32, its geometry,
    the index in ``slices`` of each z plane).

    Needs every slice's position, orientation and pixel spacing, one orientation and one shape; the slice
    spacing is the median distance between neighbours (the slice thickness for a single slice)."""
    if not slices:
        raise InputError("no slices to stack")
    shape = slices[0].shape[:2]
    if any(s.shape[:2] != shape for s in slices):
        raise InputError("every slice of a volume needs the same shape, a position and a pixel spacing")
    geometry, order = volume_geometry([s.geometry for s in slices])
    volume = np.stack([np.asarray(slices[i].pixels, dtype=np.float32).reshape(shape) for i in order])
    return volume, geometry, order


def volume_geometry(planes: Sequence[SliceGeometry]) -> tuple[VolumeGeometry, list[int]]:
    """Where the planes of one series sit as a volume, and the index in ``planes`` of each z plane: what
    :func:`volume_from_slices` needs of its slices, for callers that hold only the headers (the DICOM node's
    SR output). Same rules: one orientation, a position and pixel spacing each, no two at one position."""
    if not planes:
        raise InputError("no slices to stack")
    first = planes[0]
    if first.image_orientation is None or first.pixel_spacing is None:
        raise InputError("a volume needs every slice's orientation and pixel spacing")
    orientation = np.asarray(first.image_orientation, dtype=float)
    row, col = orientation[:3], orientation[3:]
    normal = np.cross(row, col)
    keyed: list[tuple[float, int]] = []
    for i, g in enumerate(planes):
        if g.image_position is None or g.pixel_spacing is None:
            raise InputError("every slice of a volume needs the same shape, a position and a pixel spacing")
        if g.image_orientation is None or not np.allclose(g.image_orientation, orientation, atol=1e-4):
            raise InputError("every slice of a volume needs the same orientation")
        keyed.append((float(np.dot(g.image_position, normal)), i))
    keyed.sort()
    order = [i for _, i in keyed]
    gaps = np.diff([p for p, _ in keyed])
    if len(gaps) and float(np.min(gaps)) < 1e-3:
        raise InputError("two slices of a volume share one position")
    spacing_z = float(np.median(gaps)) if len(gaps) else float(first.slice_thickness or 1.0)
    row_mm, col_mm = first.pixel_spacing
    origin = np.asarray(planes[order[0]].image_position, dtype=float)
    # SimpleITK's direction columns are x (along a row: the row cosines), y (down a column), z (the normal)
    direction = np.stack([row, col, normal], axis=1)
    geometry = VolumeGeometry(
        spacing=(float(col_mm), float(row_mm), spacing_z),
        origin=(float(origin[0]), float(origin[1]), float(origin[2])),
        direction=tuple(float(v) for v in direction.ravel()),
    )
    return geometry, order


def change_image(tracking_plane: np.ndarray, report: ChangeReport) -> np.ndarray:
    """One plane of ``report``'s tracking volume as change codes (uint8, :data:`CHANGE_CODES`): what a RESULT's
    ``change`` frame carries. Lesions without a class (withheld, too small) are 0."""
    lut = np.zeros(max(report.uids, default=0) + 1, dtype=np.uint8)
    for lesion in report.lesions:
        if lesion.label > 0 and lesion.change in CHANGE_CODES:
            lut[lesion.label] = CHANGE_CODES[lesion.change]
    plane = np.asarray(tracking_plane)
    return lut[np.clip(plane, 0, len(lut) - 1)]


def compare_series(
    volume: np.ndarray,
    geometry: VolumeGeometry,
    mask: np.ndarray,
    prior: PriorVolume | None,
    *,
    registration: RegistrationConfig | None = None,
    change: ChangeConfig | None = None,
    no_prior_reason: str = "no prior study found",
) -> SeriesComparison:
    """Compare the current ``volume``/``mask`` (z, y, x, same grid) with ``prior``; never raises for a
    registration that fails (the comparison is ``withheld`` with the reason), only for bad input."""
    spacing = geometry.spacing
    mask = np.asarray(mask)
    if mask.shape != np.asarray(volume).shape or mask.ndim != 3:
        raise InputError(f"mask {mask.shape} and volume {np.asarray(volume).shape} must be the same 3-D grid")
    empty = np.zeros(mask.shape, dtype=np.int32)
    if prior is None:
        report = compare(empty, {}, mask, spacing, change, withhold=no_prior_reason)
        return SeriesComparison("no_prior", no_prior_reason, report, None, None, geometry)
    result = register(volume, geometry, prior.volume, prior.geometry, registration)
    if not result.usable:
        reason = f"registration {result.quality}: {result.reason}"
        report = compare(empty, {}, mask, spacing, change, withhold=reason)
        return SeriesComparison("withheld", reason, report, prior, result, geometry)
    tracking = resample_labels(prior.tracking.astype(np.int32), prior.geometry, mask.shape, geometry, result)
    # prior lesions whose every voxel fell outside the current grid are not compared (not "disappeared")
    present = {int(v) for v in np.unique(tracking) if v > 0}
    uids = {n: uid for n, uid in prior.uids.items() if n in present}
    report = compare(tracking, uids, mask, spacing, change)
    return SeriesComparison("compared", "", report, prior, result, geometry)
