"""Pairing slices of several series of one study: for each reference slice, its partners in the other roles.

A FLAIR + T1 model needs, for every FLAIR slice, the T1 slice at the same place in the patient, on the
FLAIR slice's pixel grid. Slices arrive one by one, the two series interleaved in any order, so the
:class:`PairingBuffer` holds what arrived (per study, bounded in slices and bytes) and answers, for a
reference slice, the partner of every other role:

- only within the same Study Instance UID, and only from the same Frame of Reference (positions of two
  frames of reference cannot be compared: such a partner is refused, never silently paired);
- the nearest slice along the reference slice's normal, within ``tolerance_mm`` (slices without
  patient position pair by Slice Location, and without that by Instance Number);
- resampled onto the reference grid when the grids differ (in-plane size, spacing, offset, in-plane
  rotation; bilinear, zero outside the partner's field of view), keeping its own place along the normal.
  Planes that are not parallel are refused.

:meth:`PairingBuffer.wait` blocks on a condition until every partner is there, at most ``wait_s``, then
raises :class:`~scanedge.errors.MissingInputError` naming the role, the series held for it and the
position it lacks. No networking here: the runtime, the DICOM node and tests feed it slices.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

import cv2
import numpy as np

from scanedge.errors import MissingInputError
from scanedge.imaging.slices import Slice, SliceGeometry
from scanedge.manifest_inputs import InputsSpec, PairingPolicy

__all__ = ["HeldSlice", "PairingBuffer", "pair_position", "resample_onto", "slices_by_role"]

#: normals whose directions differ by more than about 2.5 degrees are not parallel planes
PARALLEL_COS = 0.999


@dataclass(frozen=True, eq=False)
class HeldSlice:
    """A slice held for pairing.

    Attributes:
        role: its input role.
        slice: the slice as it arrived (its own grid).
        nbytes: its pixel bytes (what counts against the study's byte bound).
    """

    role: str
    slice: Slice
    nbytes: int
    place: _Place = field(default=None)  # type: ignore[assignment]  # computed on construction

    def __post_init__(self) -> None:
        if self.place is None:
            object.__setattr__(self, "place", _place_of(self.slice))


@dataclass(frozen=True)
class _Place:
    """Where a slice lies, as plain floats: its unit normal, its position, its Slice Location (each or None).
    Kept with every held slice, so looking for a partner among many costs a few multiplications each."""

    normal: tuple[float, float, float] | None
    position: tuple[float, float, float] | None
    location: float | None


def _place_of(s: Slice) -> _Place:
    g = s.geometry
    normal = None
    o = g.image_orientation
    if o is not None:
        n = (o[1] * o[5] - o[2] * o[4], o[2] * o[3] - o[0] * o[5], o[0] * o[4] - o[1] * o[3])
        norm = math.sqrt(n[0] * n[0] + n[1] * n[1] + n[2] * n[2])
        if norm >= 1e-6:
            normal = (n[0] / norm, n[1] / norm, n[2] / norm)
    return _Place(normal, g.image_position, g.slice_location)


def _dot(a: tuple[float, float, float], b: tuple[float, float, float]) -> float:
    return a[0] * b[0] + a[1] * b[1] + a[2] * b[2]


def _along(ref: _Place, other: _Place) -> float | None:
    if ref.normal is not None and other.normal is not None and ref.position is not None and other.position is not None:
        if abs(_dot(ref.normal, other.normal)) < PARALLEL_COS:
            return None
        return _dot(ref.normal, other.position)
    if ref.position is None and other.position is None and other.location is not None:
        return float(other.location)
    return None


class _Study:
    """What is held of one study: slices per role, in arrival order, and their byte count."""

    def __init__(self) -> None:
        self.held: OrderedDict[int, HeldSlice] = OrderedDict()  # arrival key -> slice
        self.nbytes = 0


def pair_position(reference: Slice, other: Slice) -> float | None:
    """Where ``other`` lies along ``reference``'s normal, in mm (comparable to the reference's own
    :func:`pair_position`); None when the two cannot be placed on one axis (no geometry, planes not parallel)."""
    return _along(_place_of(reference), _place_of(other))


def _key(reference: Slice) -> float | None:
    return pair_position(reference, reference)


def resample_onto(partner: Slice, reference: Slice) -> Slice:
    """``partner`` on ``reference``'s pixel grid (bilinear; zero outside the partner's field of view).

    With full geometry on both (position, orientation, spacing) every reference pixel centre is mapped into
    the partner's plane, so different matrix sizes, spacings, offsets and in-plane rotations all resample
    exactly; the result has the reference's grid at the partner's own place along the normal. Without it,
    a partner of another size is scaled to the reference's size (the same field of view assumed). A partner
    already on the reference grid is returned as it is (no copy).
    """
    g, h = reference.geometry, partner.geometry
    rows, cols = reference.shape
    full = all(
        v is not None
        for v in (g.image_position, g.image_orientation, g.pixel_spacing, h.image_position, h.image_orientation)
    ) and (h.pixel_spacing is not None)
    if not full:
        if partner.shape == (rows, cols):
            return partner
        src = partner.pixels.astype(np.float32, copy=False)
        pixels = cv2.resize(src, (cols, rows), interpolation=cv2.INTER_LINEAR)
        return replace(partner, pixels=np.ascontiguousarray(pixels), geometry=g)
    r_ref, c_ref = np.asarray(g.image_orientation[:3]), np.asarray(g.image_orientation[3:])  # type: ignore[index]
    r_p, c_p = np.asarray(h.image_orientation[:3]), np.asarray(h.image_orientation[3:])  # type: ignore[index]
    sr, sc = g.pixel_spacing  # type: ignore[misc]
    sr_p, sc_p = h.pixel_spacing  # type: ignore[misc]
    offset = np.asarray(g.image_position, np.float64) - np.asarray(h.image_position, np.float64)
    # partner (x', y') = M @ (x, y, 1) for reference column x, row y
    m = np.array(
        [
            [np.dot(r_ref, r_p) * sc / sc_p, np.dot(c_ref, r_p) * sr / sc_p, np.dot(offset, r_p) / sc_p],
            [np.dot(r_ref, c_p) * sc / sr_p, np.dot(c_ref, c_p) * sr / sr_p, np.dot(offset, c_p) / sr_p],
        ],
        np.float64,
    )
    if partner.shape == (rows, cols) and np.allclose(m, [[1, 0, 0], [0, 1, 0]], atol=1e-4):
        return partner
    src = partner.pixels.astype(np.float32, copy=False)
    pixels = cv2.warpAffine(
        src,
        m,
        (cols, rows),
        flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=0,
    )
    return replace(partner, pixels=np.ascontiguousarray(pixels), geometry=_grid_at(g, h))


def _grid_at(g: SliceGeometry, h: SliceGeometry) -> SliceGeometry:
    """The reference grid ``g``, moved along its normal to where the partner ``h`` lies (its own position)."""
    r, c = np.asarray(g.image_orientation[:3]), np.asarray(g.image_orientation[3:])  # type: ignore[index]
    n = np.cross(r, c)
    n = n / max(float(np.linalg.norm(n)), 1e-12)
    origin = np.asarray(g.image_position, np.float64)
    shift = float(np.dot(n, np.asarray(h.image_position, np.float64) - origin))
    moved = origin + shift * n
    at = (float(moved[0]), float(moved[1]), float(moved[2]))
    return replace(g, image_position=at, slice_thickness=h.slice_thickness)


class PairingBuffer:
    """Slices of several roles of several studies, held for pairing; thread-safe.

    ``add`` from whoever receives slices, ``partners`` (at once) or ``wait`` (bounded) from whoever
    segments a reference slice. Bounds (per study: ``max_slices``, ``max_bytes``; ``max_studies`` in all)
    drop the oldest slices and the least recently used studies; a dropped partner is answered
    ``MISSING_INPUT`` like one that never came.
    """

    def __init__(self, inputs: InputsSpec, policy: PairingPolicy | None = None) -> None:
        self.inputs = inputs
        self.policy = policy or inputs.pairing
        self._cond = threading.Condition()
        self._studies: OrderedDict[str, _Study] = OrderedDict()
        self._arrivals = 0
        self.dropped = 0  # slices dropped to keep within the bounds

    # --- holding ----------------------------------------------------------------------------------------

    def add(self, role: str, slice_: Slice) -> None:
        """Hold ``slice_`` as ``role`` of its study (a slice of the same SOP instance and frame replaces the
        earlier one) and wake whoever waits for it. KeyError for a role the model does not have."""
        self.inputs.role(role)
        nbytes = int(slice_.pixels.nbytes)
        ident = slice_.identity
        with self._cond:
            study = self._studies.get(ident.study_uid)
            if study is None:
                study = self._studies[ident.study_uid] = _Study()
            self._studies.move_to_end(ident.study_uid)
            if ident.sop_instance_uid:
                for k, held in list(study.held.items()):
                    same = held.slice.identity
                    if same.sop_instance_uid == ident.sop_instance_uid and same.frame_index == ident.frame_index:
                        study.nbytes -= study.held.pop(k).nbytes
            self._arrivals += 1
            study.held[self._arrivals] = HeldSlice(role, slice_, nbytes)
            study.nbytes += nbytes
            p = self.policy
            while study.held and (len(study.held) > p.max_slices or study.nbytes > p.max_bytes):
                _, old = study.held.popitem(last=False)
                study.nbytes -= old.nbytes
                self.dropped += 1
            while len(self._studies) > p.max_studies:
                _, gone = self._studies.popitem(last=False)
                self.dropped += len(gone.held)
            self._cond.notify_all()

    def held(self, study_uid: str | None = None) -> tuple[int, int]:
        """(slices, bytes) held: of one study, or of all."""
        with self._cond:
            studies = list(self._studies.values()) if study_uid is None else [self._studies.get(study_uid)]
            found = [s for s in studies if s is not None]
            return sum(len(s.held) for s in found), sum(s.nbytes for s in found)

    def forget(self, study_uid: str) -> None:
        """Drop everything held of a study (it ended)."""
        with self._cond:
            self._studies.pop(study_uid, None)

    # --- pairing ----------------------------------------------------------------------------------------

    def partners(self, reference: Slice) -> dict[str, Slice] | None:
        """Every other role's slice for ``reference``, resampled onto its grid; None while one is missing.

        MissingInputError at once when a role can never be paired from what is held: its slices are all
        in another frame of reference, or in planes not parallel to the reference's.
        """
        with self._cond:
            found = self._match(reference)
        if found is None:
            return None
        return {role: resample_onto(s, reference) for role, s in found.items()}

    def wait(
        self, reference: Slice, timeout: float | None = None, *, cancelled: Callable[[], bool] | None = None
    ) -> dict[str, Slice]:
        """:meth:`partners`, waiting for them on a condition at most ``timeout`` s (default the policy's
        ``wait_s``); MissingInputError naming what is missing when the wait ends (or ``cancelled()`` holds)."""
        limit = self.policy.wait_s if timeout is None else timeout
        end = time.monotonic() + limit
        with self._cond:
            while True:
                found = self._match(reference)
                remaining = end - time.monotonic()
                if found is not None or remaining <= 0 or (cancelled is not None and cancelled()):
                    break
                self._cond.wait(remaining)
            if found is None:
                raise self._missing_locked(reference, limit)
        return {role: resample_onto(s, reference) for role, s in found.items()}

    def _candidates(self, reference: Slice, role: str) -> list[HeldSlice]:
        study = self._studies.get(reference.identity.study_uid)
        if study is None:
            return []
        return [h for h in study.held.values() if h.role == role]

    def _match(self, reference: Slice) -> dict[str, Slice] | None:
        out: dict[str, Slice] = {}
        for role in self.inputs.names[1:]:
            best = self._nearest(reference, role, self._candidates(reference, role))
            if best is None:
                return None
            out[role] = best
        return out

    def _nearest(self, reference: Slice, role: str, candidates: list[HeldSlice]) -> Slice | None:
        frame = reference.identity.frame_of_reference_uid
        usable = [c for c in candidates if not (frame and c.slice.identity.frame_of_reference_uid != frame)]
        if candidates and not usable:
            raise MissingInputError(
                f"role {role!r}: the held series {_series(candidates)} are in another frame of reference than "
                f"reference slice {_where(reference)} (frame of reference {frame}); they cannot be paired"
            )
        place = _place_of(reference)
        at = _along(place, place)
        if at is None:  # no geometry: pair by instance number
            number = reference.identity.instance_number
            same = [c.slice for c in usable if number is not None and c.slice.identity.instance_number == number]
            return same[-1] if same else None
        best: Slice | None = None
        best_d = float("inf")
        oblique = 0
        for c in usable:
            pos = _along(place, c.place)
            if pos is None:
                oblique += 1
                continue
            d = abs(pos - at)
            if d <= self.policy.tolerance_mm and d <= best_d:
                best, best_d = c.slice, d
        if best is None and usable and oblique == len(usable):
            raise MissingInputError(
                f"role {role!r}: the held series {_series(usable)} have no position comparable with reference "
                f"slice {_where(reference)} (planes not parallel, or no geometry); they cannot be paired"
            )
        return best

    def missing(self, reference: Slice, waited: float | None) -> MissingInputError:
        """The MISSING_INPUT error for ``reference`` after ``waited`` s (None: no wait, every slice was held
        from the start, as in a batch): which role lacks a slice where, and which of its series are held
        (raised, not returned, when the role can never be paired)."""
        with self._cond:
            return self._missing_locked(reference, waited)

    def _missing_locked(self, reference: Slice, waited: float | None) -> MissingInputError:
        lacking = []
        for role in self.inputs.names[1:]:
            candidates = self._candidates(reference, role)
            if self._nearest(reference, role, candidates) is None:
                held = f"series {_series(candidates)} held" if candidates else "no series of it arrived"
                lacking.append(f"role {role!r} ({held})")
        at, number = _key(reference), reference.identity.instance_number
        where = f"instance {number}" if number is not None else "its place"
        if at is not None:
            where = f"position {at:.2f} mm"
        return MissingInputError(
            f"{' and '.join(lacking)} has no slice at {where} (within {self.policy.tolerance_mm:g} mm) for "
            f"reference slice {_where(reference)} of study {reference.identity.study_uid or '(none)'}"
            + ("" if waited is None else f" after waiting {waited:g} s")
        )


def _series(held: list[HeldSlice]) -> str:
    uids = sorted({h.slice.identity.series_uid or "(unnamed)" for h in held})
    return ", ".join(uids[:3]) + (f" and {len(uids) - 3} more" if len(uids) > 3 else "")


def _where(s: Slice) -> str:
    ident = s.identity
    which = ident.sop_instance_uid or (str(ident.instance_number) if ident.instance_number is not None else "(unnamed)")
    return f"{which} of series {ident.series_uid or '(unnamed)'}"


def slices_by_role(reference: Slice, partners: Mapping[str, Slice], inputs: InputsSpec) -> dict[str, Slice]:
    """The reference and its partners keyed by role, in the manifest's role order."""
    found = {inputs.reference.role: reference, **partners}
    return {role: found[role] for role in inputs.names}
