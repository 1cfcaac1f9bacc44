"""Lesion change between a prior study (already resampled onto the current grid) and the current one.

Lesions are 3-D components, 26-connected (the convention of :mod:`scanedge.imaging.lesion_load`: two
lesions touching only diagonally are one). Prior lesions are given as a *tracking volume*: an integer
array whose value n > 0 marks voxels of the prior lesion with tracking UID ``uids[n]``; the result gives
the same for the current study, so a third study compares against it and ids persist
(:func:`initial_tracking` starts a chain from a plain mask). Fresh ids are DICOM UUID-derived UIDs
(``2.25.<uuid as integer>``, PS3.5 B.2), usable as a Tracking UID.

Classes (a prior and a current lesion *correspond* when they share at least ``min_overlap_voxels``):

- **new**: a current lesion with no prior correspondent and volume >= ``min_volume_mm3``;
- **disappeared**: a prior lesion with no current correspondent;
- **merged**: a current lesion corresponding to two or more prior lesions (keeps the largest's id);
- **split**: one of two or more current lesions corresponding to the same single prior lesion (the
  largest keeps the prior id, the others get fresh ones);
- **enlarging** / **shrinking** / **stable**: one prior to one current lesion whose volume changed by
  >= ``enlarge_fraction`` / <= -``shrink_fraction`` / in between, and by at least ``min_change_mm3``
  (smaller changes are within partial-volume noise and read stable).

Default thresholds and their sources (check them against your protocol; they are configurable; what the
sources do and do not say is in docs/followup.md, "Thresholds"):

- ``min_volume_mm3 = 14``: the volume of a sphere 3 mm across (14.1 mm³). MS diagnostic criteria count a
  white-matter lesion from 3 mm in diameter; Grahl et al. (Mult Scler Relat Disord 2019;29:124-129) note
  that this threshold was stipulated rather than derived, and found about 3 mm the size that best told
  relapsing-remitting MS from controls on 3-D 3 T images. The MAGNIMS consensus guidelines (Filippi et al.,
  Lancet Neurol 2016;15:292-303) are the diagnostic context; a 3 mm rule in their text was not confirmed.
- ``enlarge_fraction = 0.2``: a volume increase of at least 20 %. This is a convention of this module, not
  a published figure: no source checked (the 2021 MAGNIMS-CMSC-NAIMS recommendations as far as available,
  two automated longitudinal tools) defines "enlarging" by a volume percentage.
- ``shrink_fraction = 0.2``: the symmetric rule for shrinking (also a convention).
- ``min_change_mm3 = 3``: changes smaller than this read stable whatever their fraction (a floor against
  one-voxel partial-volume differences; a convention).

A registration whose quality is not ``good`` (see :mod:`scanedge.imaging.registration`) withholds all
change labels: the report then carries only the current load and ``withheld`` with the reason.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np

from scanedge.errors import ConfigError, InputError

__all__ = [
    "ChangeConfig",
    "ChangeReport",
    "LesionChange",
    "compare",
    "initial_tracking",
    "new_tracking_uid",
]

ChangeClass = Literal["new", "enlarging", "stable", "shrinking", "disappeared", "merged", "split"]
_STRUCTURE = np.ones((3, 3, 3), dtype=bool)  # 26-connectivity
#: at most this many components per study (bounded work on a pathological mask)
MAX_LESIONS = 10_000


def new_tracking_uid() -> str:
    """A fresh DICOM UID derived from a random UUID (PS3.5 B.2)."""
    return f"2.25.{uuid.uuid4().int}"


@dataclass(frozen=True)
class ChangeConfig:
    """Thresholds of :func:`compare`; defaults and their sources in the module docstring.

    Attributes:
        min_volume_mm3: smallest current lesion (mm³) counted as new, given a tracking id, or counted in the
            current load.
        enlarge_fraction: relative volume increase (of the prior volume) from which a lesion is enlarging.
        shrink_fraction: relative volume decrease (of the prior volume) from which a lesion is shrinking.
        min_change_mm3: smallest absolute volume change (mm³) for enlarging or shrinking; less reads stable.
        min_overlap_voxels: shared voxels needed for a prior and a current lesion to correspond.
    """

    min_volume_mm3: float = 14.0
    enlarge_fraction: float = 0.2
    shrink_fraction: float = 0.2
    min_change_mm3: float = 3.0
    min_overlap_voxels: int = 1

    def __post_init__(self) -> None:
        if self.min_volume_mm3 < 0 or self.min_change_mm3 < 0 or self.min_overlap_voxels < 1:
            raise ConfigError("min_volume_mm3 and min_change_mm3 must be >= 0, min_overlap_voxels >= 1")
        if not 0 < self.enlarge_fraction <= 10 or not 0 < self.shrink_fraction < 1:
            raise ConfigError("enlarge_fraction must be in (0, 10], shrink_fraction in (0, 1)")


@dataclass(frozen=True)
class LesionChange:
    """One lesion's change.

    Attributes:
        tracking_uid: the lesion's DICOM Tracking UID (inherited from the prior, or fresh for new lesions
            and split-off parts); a disappeared lesion keeps its prior UID.
        change: its class: new, enlarging, stable, shrinking, disappeared, merged or split.
        label: its value in the report's tracking volume (0 for disappeared).
        prior_volume_mm3: volume in the prior study in mm³ (summed over the prior lesions it corresponds
            to; 0 for new).
        current_volume_mm3: volume in the current study in mm³ (0 for disappeared).
        prior_uids: tracking UIDs of the corresponding prior lesions (empty for new).
    """

    tracking_uid: str
    change: ChangeClass
    label: int
    prior_volume_mm3: float
    current_volume_mm3: float
    prior_uids: tuple[str, ...]


@dataclass(frozen=True)
class ChangeReport:
    """The comparison. With ``withheld`` set, ``lesions`` is empty and only the current load is given.

    Attributes:
        lesions: the change of every current lesion of at least ``min_volume_mm3`` or with a prior
            correspondent, then of every disappeared prior lesion.
        tracking: the current study's tracking volume (int32, current grid): n > 0 marks voxels of the lesion
            with UID ``uids[n]``, 0 elsewhere (also for lesions too small to be tracked).
        uids: tracking label -> tracking UID, for the next comparison.
        prior_load_mm3: total volume of the prior's tracked lesions in mm³.
        current_load_mm3: total volume in mm³ of the current lesions of at least ``min_volume_mm3``.
        withheld: the reason change labels were withheld (e.g. a registration that is not good); None when
            they were given.
    """

    lesions: tuple[LesionChange, ...]
    tracking: np.ndarray
    uids: Mapping[int, str]
    prior_load_mm3: float
    current_load_mm3: float
    withheld: str | None = None

    @property
    def load_change_mm3(self) -> float:
        """Current minus prior lesion load, in mm³."""
        return self.current_load_mm3 - self.prior_load_mm3

    @property
    def load_change_percent(self) -> float | None:
        """Load change as a percentage of the prior load; None when the prior load is 0."""
        return None if self.prior_load_mm3 == 0 else 100.0 * self.load_change_mm3 / self.prior_load_mm3

    def count(self, change: ChangeClass) -> int:
        """How many lesions of the report have class ``change``."""
        return sum(1 for lesion in self.lesions if lesion.change == change)


def _voxel_mm3(spacing: tuple[float, float, float]) -> float:
    if len(spacing) != 3 or not all(np.isfinite(s) and s > 0 for s in spacing):
        raise InputError("spacing must be three positive values (mm)")
    return float(spacing[0] * spacing[1] * spacing[2])


def _components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    # imported here: the wire protocol carries this package's change summary, and consoles need no scipy
    from scipy import ndimage

    labels, count = ndimage.label(np.asarray(mask) > 0, structure=_STRUCTURE)
    if count > MAX_LESIONS:
        raise InputError(f"{count} lesion components exceed the limit of {MAX_LESIONS}")
    return labels.astype(np.int32, copy=False), int(count)


def initial_tracking(
    mask: np.ndarray, spacing: tuple[float, float, float], config: ChangeConfig | None = None
) -> tuple[np.ndarray, dict[int, str]]:
    """A tracking volume and UIDs for a first study: every lesion of at least ``min_volume_mm3`` gets an id."""
    cfg = config or ChangeConfig()
    voxel = _voxel_mm3(spacing)
    labels, count = _components(mask)
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    keep = np.zeros(count + 1, dtype=np.int32)
    uids: dict[int, str] = {}
    for n in range(1, count + 1):
        if sizes[n] * voxel >= cfg.min_volume_mm3:
            keep[n] = len(uids) + 1
            uids[int(keep[n])] = new_tracking_uid()
    return keep[labels], uids


def compare(
    prior_tracking: np.ndarray,
    prior_uids: Mapping[int, str],
    current_mask: np.ndarray,
    spacing: tuple[float, float, float],
    config: ChangeConfig | None = None,
    *,
    withhold: str | None = None,
) -> ChangeReport:
    """Classify the change from the prior lesions (tracking volume on the current grid) to the current mask.

    ``withhold``: a reason (e.g. the registration's) to give no change labels; the current lesions still
    get a tracking volume with fresh ids so the load is reported.
    """
    cfg = config or ChangeConfig()
    voxel = _voxel_mm3(spacing)
    prior = np.asarray(prior_tracking)
    if prior.shape != np.asarray(current_mask).shape or prior.ndim != 3:
        raise InputError(f"prior {prior.shape} and current {np.asarray(current_mask).shape} must be the same 3-D grid")
    if prior.size and (prior.min() < 0 or prior.max() > MAX_LESIONS):
        raise InputError("prior tracking labels must be in 0..MAX_LESIONS")
    labels, count = _components(current_mask)
    cur_sizes = np.bincount(labels.ravel(), minlength=count + 1).astype(float) * voxel
    prior_ids = [int(v) for v in np.unique(prior) if v > 0]
    for n in prior_ids:
        if n not in prior_uids:
            raise InputError(f"prior tracking label {n} has no UID")
    prior_sizes = {n: float(np.count_nonzero(prior == n)) * voxel for n in prior_ids}
    current_load = float(cur_sizes[1:][cur_sizes[1:] >= cfg.min_volume_mm3].sum()) if count else 0.0
    prior_load = float(sum(prior_sizes.values()))
    # overlap of every (prior, current) pair, in voxels
    both = (prior > 0) & (labels > 0)
    pairs: dict[tuple[int, int], int] = {}
    if both.any():
        keys, counts = np.unique(np.stack([prior[both], labels[both]]), axis=1, return_counts=True)
        for (p, c), k in zip(keys.T.tolist(), counts.tolist(), strict=True):
            if k >= cfg.min_overlap_voxels:
                pairs[(int(p), int(c))] = int(k)
    of_current: dict[int, list[int]] = {}
    of_prior: dict[int, list[int]] = {}
    for p, c in pairs:
        of_current.setdefault(c, []).append(p)
        of_prior.setdefault(p, []).append(c)

    out_label = np.zeros(count + 1, dtype=np.int32)
    uids: dict[int, str] = {}
    lesions: list[LesionChange] = []

    def _assign(c: int, uid: str) -> int:
        out_label[c] = len(uids) + 1
        uids[int(out_label[c])] = uid
        return int(out_label[c])

    if withhold is not None:
        for c in range(1, count + 1):
            if cur_sizes[c] >= cfg.min_volume_mm3:
                _assign(c, new_tracking_uid())
        return ChangeReport((), out_label[labels], uids, prior_load, current_load, withheld=withhold)

    # largest current part of each prior lesion keeps its id when the lesion splits
    split_keeper = {p: max(cs, key=lambda c: (cur_sizes[c], -c)) for p, cs in of_prior.items() if len(cs) > 1}
    for c in range(1, count + 1):
        ps = sorted(of_current.get(c, []))
        now = float(cur_sizes[c])
        if not ps:
            if now < cfg.min_volume_mm3:
                continue
            label = _assign(c, new_tracking_uid())
            lesions.append(LesionChange(uids[label], "new", label, 0.0, now, ()))
            continue
        before = float(sum(prior_sizes[p] for p in ps))
        prior_names = tuple(prior_uids[p] for p in ps)
        if len(ps) > 1:
            keeper = max(ps, key=lambda p: (prior_sizes[p], -p))
            label = _assign(c, prior_uids[keeper])
            lesions.append(LesionChange(uids[label], "merged", label, before, now, prior_names))
            continue
        p = ps[0]
        if p in split_keeper:
            uid = prior_uids[p] if split_keeper[p] == c else new_tracking_uid()
            label = _assign(c, uid)
            lesions.append(LesionChange(uid, "split", label, before, now, prior_names))
            continue
        label = _assign(c, prior_uids[p])
        delta = now - before
        change: ChangeClass = "stable"
        if delta >= cfg.enlarge_fraction * before and delta >= cfg.min_change_mm3:
            change = "enlarging"
        elif -delta >= cfg.shrink_fraction * before and -delta >= cfg.min_change_mm3:
            change = "shrinking"
        lesions.append(LesionChange(uids[label], change, label, before, now, prior_names))
    for p in prior_ids:
        if p not in of_prior:
            lesions.append(LesionChange(prior_uids[p], "disappeared", 0, prior_sizes[p], 0.0, (prior_uids[p],)))
    return ChangeReport(tuple(lesions), out_label[labels], uids, prior_load, current_load)
