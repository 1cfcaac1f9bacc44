"""A prior study of the demo patient, with a known motion and known lesion changes: ``scanedge demo --prior``.

The shipped demo series is the *current* study. The prior is made from it: the lesions are separated from
the anatomy (each lesion region in-painted from its surroundings gives the lesion-free head; the lesion is
what the image has above it), then put back changed: two lesions left out (so they are *new* in the
current study), two drawn smaller (they *enlarge*), one drawn larger (it *shrinks*), one lesion added where
the current study has none (it *disappears*); the others stay as they are (*stable*). The head is then
moved by a known rigid transform (in-plane rotation and shift, a small tilt) and resampled onto the same
grid. Both studies are written as DICOM of one patient (the prior a year earlier), so the demo runs exactly
what ``scanedge segment --prior`` runs, and the result can be scored against the truth
(:func:`score_followup`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from scanedge.demo.followup import rigid_matrix
from scanedge.demo.series import DemoPatient, load_demo_patient, write_demo_series

__all__ = ["DemoFollowup", "FollowupScore", "make_demo_followup", "score_followup", "write_demo_followup"]

#: the prior's study date (the current demo series is of 2026-01-01)
PRIOR_DATE = "20250101"
#: the prior's motion against the current study: rotation (x, y, z degrees) and shift (x, y, z mm)
PRIOR_ANGLES = (0.3, -0.2, 4.0)
PRIOR_SHIFT = (4.0, -3.0, 0.0)


@dataclass(frozen=True, eq=False)
class DemoFollowup:
    """The demo patient's prior study and the truth of how it differs from the current one.

    Attributes:
        prior: the prior's stored pixel values (slices, rows, cols) int16, on the current series' grid.
        matrix: the true 4x4 transform mapping current-study points (patient mm) to prior-study points.
        origin: patient position (mm) of voxel [0, 0, 0] of both grids; ``spacing`` (x, y, z) mm.
        current_lesions: each planted class with the lesion's voxels in the current study (bool volume).
        disappeared: the added prior lesion's voxels on the prior grid (bool volume).
        head: points of the current head, (4, n) homogeneous patient mm: where registration error is measured.
    """

    prior: np.ndarray
    matrix: np.ndarray
    origin: tuple[float, float, float]
    spacing: tuple[float, float, float]
    current_lesions: tuple[tuple[str, np.ndarray], ...]
    disappeared: np.ndarray
    head: np.ndarray


def _grid(patient: DemoPatient) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """Origin and spacing of the demo series as :func:`write_demo_series` places it."""
    rows, cols = patient.pixels.shape[1:]
    sr, sc = patient.pixel_spacing
    middle = float(patient.z_mm.max()) / 2
    step = float(np.diff(patient.z_mm).mean()) if len(patient.z_mm) > 1 else 1.0
    origin = (-(cols - 1) * sc / 2, -(rows - 1) * sr / 2, float(patient.z_mm[0]) - middle)
    return origin, (float(sc), float(sr), step)


def _components(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from scipy import ndimage

    comp, count = ndimage.label(labels > 0, structure=np.ones((3, 3, 3), bool))
    return comp, np.bincount(comp.ravel(), minlength=count + 1)


def _region(binary: np.ndarray, grow: int) -> np.ndarray:
    """``binary`` grown by ``grow`` pixels in-plane, slice by slice (partial-volume rim included)."""
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * grow + 1, 2 * grow + 1))
    return np.stack([cv2.dilate(p.astype(np.uint8), kernel) > 0 for p in binary])


def _scaled(layer: np.ndarray, region: np.ndarray, scale: float) -> np.ndarray:
    """The lesion layer inside ``region`` scaled in-plane by ``scale`` about its centre, slice by slice."""
    zs, ys, xs = np.nonzero(region)
    cy, cx = float(ys.mean()), float(xs.mean())
    m = cv2.getRotationMatrix2D((cx, cy), 0.0, scale)
    out = np.zeros_like(layer)
    rows, cols = layer.shape[1:]
    for z in np.unique(zs):
        out[z] = cv2.warpAffine(layer[z] * region[z], m, (cols, rows), flags=cv2.INTER_LINEAR)
    return out


def make_demo_followup(patient: DemoPatient | None = None) -> DemoFollowup:
    """The prior of ``patient`` (default: the shipped demo patient); deterministic."""
    from scanedge.imaging.registration import VolumeGeometry, resample_volume

    patient = patient or load_demo_patient()
    pixels = patient.pixels.astype(np.float32)
    comp, sizes = _components(patient.labels)
    lesion_area = _region(comp > 0, 2)
    clean = np.stack(
        [cv2.inpaint(p, a.astype(np.uint8), 5, cv2.INPAINT_TELEA) for p, a in zip(pixels, lesion_area, strict=True)]
    )
    layer = np.clip(pixels - clean, 0, None)  # what the lesions add to the lesion-free head
    # medium lesions change (big enough to be found in both studies, small enough to be typical)
    ranked = [int(n) for n in np.argsort(sizes[1:])[::-1] + 1 if 40 <= sizes[n] <= 170]
    plan = {"new": ranked[3:5], "enlarging": ranked[0:2], "shrinking": ranked[5:6]}
    prior = clean.copy()
    planted: list[tuple[str, np.ndarray]] = []
    changed = {n for ns in plan.values() for n in ns}
    for n in range(1, len(sizes)):
        region = _region(comp == n, 2)
        if n in plan["new"]:
            part = np.zeros_like(layer)
        elif n in plan["enlarging"]:
            part = _scaled(layer, region, 0.7)
        elif n in plan["shrinking"]:
            part = _scaled(layer, region, 1.4)
        else:
            part = layer * region
        prior = np.maximum(prior, clean + part)
        kind = next((k for k, ns in plan.items() if n in ns), "stable")
        planted.append((kind, comp == n))
    # a lesion the current study no longer has: the largest stable lesion's pattern, moved into white matter
    donor = next(n for n in ranked if n not in changed)
    donor_region = _region(comp == donor, 2)
    moved = _moved_copy(layer * donor_region, donor_region, lesion_area, clean)
    prior = np.maximum(prior, clean + moved)
    origin, spacing = _grid(patient)
    geometry = VolumeGeometry(spacing=spacing, origin=origin)
    shape = pixels.shape
    centre = np.asarray(origin) + np.asarray(spacing) * (np.asarray(shape[::-1]) - 1) / 2
    motion = rigid_matrix(PRIOR_ANGLES, PRIOR_SHIFT, centre)  # prior(q) = head(motion @ q)
    moved_prior = resample_volume(prior, geometry, shape, geometry, motion)
    gone = resample_volume((moved > 0).astype(np.int32), geometry, shape, geometry, motion, nearest=True) > 0
    rng = np.random.default_rng(7)
    moved_prior = moved_prior + rng.normal(0, 8, shape).astype(np.float32) * (moved_prior > 0)
    stored = np.clip(np.rint(moved_prior), 0, np.iinfo(np.int16).max).astype(np.int16)
    return DemoFollowup(
        prior=stored,
        matrix=np.linalg.inv(motion),  # a current point p holds head(p); the prior holds it at motion^-1 p
        origin=origin,
        spacing=spacing,
        current_lesions=tuple(planted),
        disappeared=gone,
        head=_head_points(pixels, origin, spacing),
    )


def _moved_copy(pattern: np.ndarray, region: np.ndarray, lesions: np.ndarray, clean: np.ndarray) -> np.ndarray:
    """``pattern`` shifted in-plane to the nearest place inside the brain, away from every lesion."""
    from scipy import ndimage

    zs = np.nonzero(region)[0]
    z0, z1 = int(zs.min()), int(zs.max())
    brain = clean > np.percentile(clean[clean > 0], 40)
    far = ndimage.distance_transform_edt(~lesions) > 12
    for dy, dx in ((0, 40), (0, -40), (40, 0), (-40, 0), (30, 30), (-30, 30), (30, -30), (-30, -30)):
        target = np.roll(region, (dy, dx), axis=(1, 2))
        if np.all(brain[z0 : z1 + 1][target[z0 : z1 + 1]]) and np.all(far[target]):
            return np.roll(pattern, (dy, dx), axis=(1, 2))
    raise RuntimeError("no place for the disappearing lesion in the demo patient")  # the shipped patient has one


def write_demo_followup(out_dir: Path, followup: DemoFollowup | None = None) -> tuple[Path, Path]:
    """Write the current demo series and its prior as DICOM into ``out_dir``/current and ``out_dir``/prior."""
    patient = load_demo_patient()
    followup = followup or make_demo_followup(patient)
    current, prior = Path(out_dir) / "current", Path(out_dir) / "prior"
    write_demo_series(current, patient)
    write_demo_series(prior, patient, pixels=followup.prior, study="prior", date=PRIOR_DATE)
    return current, prior


@dataclass(frozen=True)
class FollowupScore:
    """The demo's follow-up against the planted truth.

    Attributes:
        new_found: planted new lesions reported new; ``new_true`` how many were planted.
        false_new: lesions reported new where no new lesion was planted.
        enlarging_ok: planted enlarging lesions reported enlarging; ``enlarging_true`` how many were planted.
        classes_ok: planted lesions (every class) reported with their true class; ``classes_true`` how many.
        disappeared_ok: whether the lesion removed since the prior is reported disappeared.
        tre_mm: mean distance (mm) over the head between where the registration and the truth map a point.
        registration_s: the registration's time.
        wrong: each planted lesion reported with another class, in words.
    """

    new_found: int
    new_true: int
    false_new: int
    enlarging_ok: int
    enlarging_true: int
    classes_ok: int
    classes_true: int
    disappeared_ok: bool
    tre_mm: float
    registration_s: float
    wrong: tuple[str, ...]

    def lines(self) -> list[str]:
        """The score as the demo prints it."""
        out = [
            "against the planted truth (a prior made from the demo patient: known motion, lesions changed):",
            f"  new-lesion sensitivity {self.new_found}/{self.new_true}, false new lesions {self.false_new}",
            f"  enlarging lesions found enlarging {self.enlarging_ok}/{self.enlarging_true}; lesions with their true "
            f"class {self.classes_ok}/{self.classes_true} (disappeared {'yes' if self.disappeared_ok else 'no'})",
            f"  registration error {self.tre_mm:.2f} mm mean over the head against the known motion "
            f"({self.registration_s:.2f} s)",
        ]
        out.extend(f"  wrong: {w}" for w in self.wrong)
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}


def score_followup(followup: DemoFollowup, comparison: Any, planes: Mapping[int, int] | None = None) -> FollowupScore:
    """Score ``comparison`` (a :class:`~scanedge.imaging.followup.SeriesComparison` of the demo series, its
    volume in series order) against the truth of ``followup``."""
    report = comparison.report
    tracking = report.tracking
    by_label = {lesion.label: lesion for lesion in report.lesions if lesion.label}
    kinds: dict[str, list[bool]] = {}
    new_labels: set[int] = set()
    wrong: list[str] = []
    for i, (kind, voxels) in enumerate(followup.current_lesions):
        found = [int(v) for v in tracking[voxels] if v > 0]
        lesion = by_label.get(max(set(found), key=found.count)) if found else None
        got = lesion.change if lesion else "missed"
        kinds.setdefault(kind, []).append(got == kind)
        if got != kind:
            wrong.append(f"planted lesion {i + 1} ({kind}) reported {got}")
        if kind == "new":
            new_labels.update(found)
    false_new = sum(1 for lesion in report.lesions if lesion.change == "new" and lesion.label not in new_labels)
    prior = comparison.prior
    disappeared_ok = False
    if prior is not None:
        labels = [int(v) for v in np.asarray(prior.tracking)[followup.disappeared] if v > 0]
        uid = prior.uids.get(max(set(labels), key=labels.count)) if labels else None
        disappeared_ok = any(lesion.tracking_uid == uid and lesion.change == "disappeared" for lesion in report.lesions)
        if not disappeared_ok:
            wrong.append("the lesion removed since the prior is not reported disappeared")
    tre = float("nan")
    reg = comparison.registration
    if reg is not None:
        tre = _tre(followup, reg.as_array())
    kinds.setdefault("disappeared", []).append(disappeared_ok)
    return FollowupScore(
        new_found=sum(kinds.get("new", [])),
        new_true=len(kinds.get("new", [])),
        false_new=false_new,
        enlarging_ok=sum(kinds.get("enlarging", [])),
        enlarging_true=len(kinds.get("enlarging", [])),
        classes_ok=sum(sum(v) for v in kinds.values()),
        classes_true=sum(len(v) for v in kinds.values()),
        disappeared_ok=disappeared_ok,
        tre_mm=tre,
        registration_s=float(reg.seconds) if reg is not None else float("nan"),
        wrong=tuple(wrong),
    )


def _head_points(
    pixels: np.ndarray, origin: tuple[float, float, float], spacing: tuple[float, float, float]
) -> np.ndarray:
    """Every 40th voxel of the head (above a tenth of the 99th percentile), as (4, n) patient mm."""
    head = np.argwhere(pixels > 0.1 * np.percentile(pixels, 99))[::40]  # (z, y, x)
    (sx, sy, sz), (ox, oy, oz) = spacing, origin
    return np.stack([head[:, 2] * sx + ox, head[:, 1] * sy + oy, head[:, 0] * sz + oz, np.ones(len(head))])


def _tre(followup: DemoFollowup, matrix: np.ndarray) -> float:
    """Mean distance (mm) over the head between where ``matrix`` and the true transform map each point."""
    return float(np.linalg.norm(((matrix - followup.matrix) @ followup.head)[:3], axis=0).mean())
