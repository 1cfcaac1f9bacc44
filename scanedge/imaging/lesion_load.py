"""Lesion load of a series as its slices arrive: 3-D lesions, their count, total volume and the largest.

A radiologist counts lesions in 3-D: one lesion spanning five slices is one lesion, not five. During
acquisition the slices come one by one, perhaps out of order, some twice (a console re-sends), some
never (superseded, lost). :class:`SeriesLesionLoad` takes each slice's label mask with its geometry as it
arrives and keeps the series' 3-D picture current, doing pixel work only for what the new slice touches.

Rules (the same for the runtime, the ``segment`` command and a DICOM node):

- **Placing a slice.** A slice's key is its position along the slice normal (DICOM Image Position and
  Orientation; rounded to :data:`POSITION_DECIMALS` decimals of a millimetre, so a re-sent slice lands on
  the same key), or, without geometry, its instance number. A slice arriving on a key that is already
  held *replaces* the earlier one. Slices with neither are counted on their own (never connected).
- **Connectivity.** In-plane 8-connected, as the per-slice ``components`` of the findings; across slices
  26-connected: a pixel touches the 3x3 block around the same row and column on the adjacent slice. So a
  lesion confined to one slice is exactly one of that slice's 2-D components, and two lesions that only
  touch diagonally between slices are one (a conservative count: never more lesions than are there).
- **Adjacency.** Two received slices are adjacent when none lies between them and they are at most
  :data:`ADJACENT_FACTOR` x the series' slice spacing apart. The spacing is the one given to the
  constructor, else the *smallest* distance between neighbouring received slices (a median would be
  fooled once a few slices are missing: it would call a two-slice gap adjacent). So a gap left by a
  missing slice never joins the components on either side of it; when the slice arrives, they join.
  Slices keyed by instance number are adjacent when their numbers are consecutive. Slices of different
  mask shapes are never connected.
- **Volume.** Each slice contributes its pixels x its pixel area (row x column spacing) x the series'
  slice spacing; when the spacing is unknown (fewer than two positioned slices and none given), the
  slice's own thickness is used instead; with neither, or without a pixel spacing, volumes are None
  and only counts and voxels are reported.

Memory: per slice and foreground class, only the bounding box of the class's pixels is kept, bit-packed
(1 bit per pixel), plus each 2-D component's pixel count; the 2-D labelling of a neighbour is recomputed
from those bits when a new slice needs it. A series holds at most ``max_slices`` slices, so its memory is
at most ``max_slices x classes x rows x cols / 8`` bytes (4 MiB for 512 slices of 256x256, one class) and,
for real lesion masks whose boxes are small, a few hundred bytes per slice: :attr:`SeriesLesionLoad.nbytes`
says what it holds. Not thread-safe: one owner, or a lock around it.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import cv2
import msgspec
import numpy as np

from scanedge.imaging.slices import SliceGeometry

__all__ = [
    "ADJACENT_FACTOR",
    "DEFAULT_MAX_SLICES",
    "POSITION_DECIMALS",
    "ClassLesionLoad",
    "LesionLoad",
    "SeriesLesionLoad",
    "SliceKey",
    "accumulate",
    "slice_key",
]

#: positions are rounded to this many decimals of a millimetre when they key a slice (1 µm)
POSITION_DECIMALS = 3
#: neighbouring slices further apart than this many slice spacings are not adjacent (a slice is missing)
ADJACENT_FACTOR = 1.5
#: slices one series may hold; slices at new places beyond it are counted in ``dropped_slices``
DEFAULT_MAX_SLICES = 2048

#: ("pos", mm) for slices placed by geometry, ("idx", n) by instance number, ("anon", k) for neither
SliceKey = tuple[str, float | int]


def slice_key(geometry: SliceGeometry | None, instance_number: int | None = None) -> SliceKey | None:
    """Where a slice sits in its series, or None when neither its position nor its number is known."""
    position = None if geometry is None else geometry.position_along_normal
    if position is not None:
        return ("pos", round(float(position), POSITION_DECIMALS) + 0.0)  # + 0.0: no -0.0 key
    if instance_number is not None:
        return ("idx", int(instance_number))
    return None


class ClassLesionLoad(msgspec.Struct, frozen=True):
    """One foreground class over the slices received so far.

    A msgspec Struct, because the same object is what RESULT carries on the wire (protocol.md section 4).

    Volumes are None when no volume can be computed (see the module's rules). The largest lesion is the
    one with the most volume, or with the most voxels when volumes are unknown.

    Attributes:
        label: the class's label value in the masks (1 or more; 0 is background).
        name: the class's name, ``classes[label]`` as given to :class:`SeriesLesionLoad`.
        lesions: 3-D lesions (26-connected components across adjacent slices).
        voxels: the class's pixels over every slice held.
        volume_mm3: the class's total volume in mm³; None when it cannot be computed.
        largest_mm3: the largest lesion's volume in mm³; None when volumes cannot be computed.
        largest_voxels: the largest lesion's pixels over every slice it spans.
        largest_slices: how many slices the largest lesion spans.
        slices_with_finding: slices held with at least one pixel of this class.
    """

    label: int
    name: str
    lesions: int
    voxels: int
    volume_mm3: float | None
    largest_mm3: float | None
    largest_voxels: int
    largest_slices: int
    slices_with_finding: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready figures; volumes rounded to 0.001 mm³."""
        return {
            "label": self.label,
            "name": self.name,
            "lesions": self.lesions,
            "voxels": self.voxels,
            "volume_mm3": _round(self.volume_mm3),
            "largest_mm3": _round(self.largest_mm3),
            "largest_voxels": self.largest_voxels,
            "largest_slices": self.largest_slices,
            "slices_with_finding": self.slices_with_finding,
        }


class LesionLoad(msgspec.Struct, frozen=True):
    """A series' lesion load at one moment, per foreground class; RESULT's ``series_load`` on the wire.

    Attributes:
        slices: slices held (each place counted once: a replaced slice is not counted again).
        spacing_mm: the slice spacing volumes were computed with, in mm; None when unknown (each slice's
            thickness was used instead, where it has one).
        spacing_source: where the spacing came from: ``given``, ``positions``, ``thickness`` or ``none``.
        classes: one :class:`ClassLesionLoad` per foreground class, in label order (label 1 first).
        dropped_slices: slices at new places refused because the series already held ``max_slices``
            slices; they are in none of the figures.
    """

    slices: int
    spacing_mm: float | None
    spacing_source: str
    classes: tuple[ClassLesionLoad, ...]
    dropped_slices: int = 0

    def load(self, name: str) -> ClassLesionLoad:
        """The load of the class called ``name``; KeyError when there is no such class."""
        for c in self.classes:
            if c.name == name:
                return c
        raise KeyError(f"no class named {name!r}; classes are {[c.name for c in self.classes]}")

    @property
    def lesions(self) -> int:
        """3-D lesions of every foreground class together."""
        return sum(c.lesions for c in self.classes)

    @property
    def volume_mm3(self) -> float | None:
        """Total volume of every foreground class together; None when any class has no volume."""
        volumes = [c.volume_mm3 for c in self.classes]
        return None if any(v is None for v in volumes) else float(sum(volumes))  # type: ignore[arg-type]

    def rounded(self) -> LesionLoad:
        """This load with the spacing and volumes rounded to 0.001 mm (mm³), as it goes on the wire."""
        return msgspec.structs.replace(
            self,
            spacing_mm=_round(self.spacing_mm),
            classes=tuple(
                msgspec.structs.replace(c, volume_mm3=_round(c.volume_mm3), largest_mm3=_round(c.largest_mm3))
                for c in self.classes
            ),
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready figures, the spacing and volumes rounded to 0.001 mm (mm³); the totals over classes
        (:attr:`lesions`, :attr:`volume_mm3`) are left out: they follow from the classes."""
        return {
            "slices": self.slices,
            "spacing_mm": _round(self.spacing_mm),
            "spacing_source": self.spacing_source,
            "dropped_slices": self.dropped_slices,
            "classes": [c.to_dict() for c in self.classes],
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(float(value), 3)


# --- per-slice storage --------------------------------------------------------------------------------


@dataclass(eq=False)
class _ClassSlice:
    """One class on one slice: its bounding box, bit-packed pixels and 2-D component sizes."""

    box: tuple[int, int, int, int]  # x, y, w, h on the slice
    bits: np.ndarray  # np.packbits of the (h, w) binary crop
    areas: np.ndarray  # pixels per 2-D component; component k (1-based) is areas[k - 1]

    @classmethod
    def of(cls, binary: np.ndarray) -> _ClassSlice | None:
        x, y, w, h = cv2.boundingRect(binary)
        if not w:
            return None
        crop = binary[y : y + h, x : x + w]
        n, _, stats, _ = cv2.connectedComponentsWithStats(crop, connectivity=8, ltype=cv2.CV_32S)
        return cls((x, y, w, h), np.packbits(crop != 0), stats[1:n, cv2.CC_STAT_AREA].astype(np.int64))

    def labels(self) -> np.ndarray:
        """The crop's 2-D component labels again (cv2 numbers components in scan order, so they match)."""
        _, _, w, h = self.box
        crop = np.unpackbits(self.bits, count=w * h).reshape(h, w)
        return cv2.connectedComponents(crop, connectivity=8, ltype=cv2.CV_32S)[1]

    @property
    def nbytes(self) -> int:
        return self.bits.nbytes + self.areas.nbytes + 64


@dataclass(eq=False)
class _Slice:
    key: SliceKey
    shape: tuple[int, int]
    pixel_area: float | None
    thickness: float | None
    classes: dict[int, _ClassSlice] = field(default_factory=dict)
    version: int = 0

    @property
    def nbytes(self) -> int:
        return 128 + sum(c.nbytes for c in self.classes.values())


def _touching(a: _ClassSlice, b: _ClassSlice) -> list[tuple[int, int]]:
    """Pairs (component on a, component on b) that touch under 26-connectivity (a 3x3 reach)."""
    ax, ay, aw, ah = a.box
    bx, by, bw, bh = b.box
    # the window: b's box, clipped to a's box grown by one pixel on every side
    x0, y0 = max(bx, ax - 1), max(by, ay - 1)
    x1, y1 = min(bx + bw, ax + aw + 1), min(by + bh, ay + ah + 1)
    if x0 >= x1 or y0 >= y1:
        return []
    la, lb = a.labels(), b.labels()
    h, w = y1 - y0, x1 - x0
    grown = np.zeros((h + 2, w + 2), np.int32)  # a's labels on the window plus a one-pixel border
    gx0, gy0 = max(x0 - 1, ax), max(y0 - 1, ay)
    gx1, gy1 = min(x1 + 1, ax + aw), min(y1 + 1, ay + ah)
    grown[gy0 - y0 + 1 : gy1 - y0 + 1, gx0 - x0 + 1 : gx1 - x0 + 1] = la[gy0 - ay : gy1 - ay, gx0 - ax : gx1 - ax]
    on_b = lb[y0 - by : y1 - by, x0 - bx : x1 - bx]
    inside_b = on_b > 0
    stride = len(a.areas) + 1  # a's labels are 1..len(a.areas)
    codes = on_b[inside_b].astype(np.int64) * stride  # pair (a, b) is code b * stride + a
    pairs = np.zeros((len(b.areas) + 1) * stride, bool)  # a table of every pair: no sorting per shift
    for dy, dx in itertools.product((0, 1, 2), repeat=2):
        pairs[codes + grown[dy : dy + h, dx : dx + w][inside_b]] = True
    found = np.flatnonzero(pairs)
    return [(int(code % stride), int(code // stride)) for code in found if code % stride]


class _Lesions:
    """One class's 3-D lesions: disjoint sets of 2-D components, with each set's voxels, volume and slices
    kept at its root, so joining two sets and reading the totals cost nothing per slice already held."""

    def __init__(self) -> None:
        self.parent: dict[Any, Any] = {}
        self.stats: dict[Any, tuple[int, float | None, frozenset[SliceKey]]] = {}  # root -> voxels, mm³, slices
        self.slices_with_finding = 0

    def add(self, node: Any, voxels: int, volume: float | None, key: SliceKey) -> None:
        self.parent[node] = node
        self.stats[node] = (voxels, volume, frozenset((key,)))

    def find(self, node: Any) -> Any:
        parent = self.parent
        root = node
        while parent[root] != root:
            root = parent[root]
        while parent[node] != root:  # path compression
            parent[node], node = root, parent[node]
        return root

    def join(self, a: Any, b: Any) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        (va, ma, sa), (vb, mb, sb) = self.stats.pop(ra), self.stats.pop(rb)
        self.parent[rb] = ra
        self.stats[ra] = (va + vb, None if ma is None or mb is None else ma + mb, sa | sb)

    def summary(self, label: int, name: str, volume_known: bool) -> ClassLesionLoad:
        if not self.stats:
            return ClassLesionLoad(label, name, 0, 0, 0.0 if volume_known else None, None, 0, 0, 0)
        known = all(m is not None for _, m, _ in self.stats.values())
        if known:  # the largest by volume, ties by voxels, then by place (the same whatever the arrival order)
            root = max(self.stats, key=lambda r: (self.stats[r][1], self.stats[r][0], min(self.stats[r][2])))
        else:
            root = max(self.stats, key=lambda r: (self.stats[r][0], min(self.stats[r][2])))
        voxels, volume, slices = self.stats[root]
        return ClassLesionLoad(
            label=label,
            name=name,
            lesions=len(self.stats),
            voxels=sum(v for v, _, _ in self.stats.values()),
            volume_mm3=float(sum(m for _, m, _ in self.stats.values())) if known else None,  # type: ignore[misc]
            largest_mm3=volume if known else None,
            largest_voxels=voxels,
            largest_slices=len(slices),
            slices_with_finding=self.slices_with_finding,
        )


# --- the accumulator ------------------------------------------------------------------------------------


class SeriesLesionLoad:
    """Incremental 3-D lesion load of one series (see the module's rules).

    Example::

        load = SeriesLesionLoad(("background", "lesion"))
        for result in results:                  # any order; repeats replace
            now = load.add(result.mask, geometry, instance_number)
        print(now.load("lesion").lesions, now.load("lesion").volume_mm3)

    A slice arriving at a new place next to the ones held costs only its own labelling and its neighbours'
    touching test; a replaced slice, a change of the measured spacing, or a slice landing between two
    adjacent ones rebuilds the 3-D picture from the compact slices held (no pixels are re-read but the
    neighbours' bits).
    """

    def __init__(
        self,
        classes: Sequence[str],
        *,
        spacing_mm: float | None = None,
        max_slices: int = DEFAULT_MAX_SLICES,
    ) -> None:
        """Args:
        classes: the model's class names by label; label 0 is background and is not counted.
        spacing_mm: the series' slice spacing when known up front (e.g. DICOM Spacing Between Slices);
            None: measured from the slices' positions as they arrive.
        max_slices: most slices held; slices at new places past it are dropped (and counted).
        """
        if len(classes) < 2:
            raise ValueError("classes must name the background and at least one foreground class")
        if spacing_mm is not None and not spacing_mm > 0:
            raise ValueError(f"spacing_mm must be > 0, got {spacing_mm}")
        if max_slices < 1:
            raise ValueError(f"max_slices must be >= 1, got {max_slices}")
        self.classes = tuple(classes)
        self.spacing_given = spacing_mm
        self.max_slices = max_slices
        self.dropped_slices = 0
        self._slices: dict[SliceKey, _Slice] = {}
        self._places: dict[str, list[float | int]] = {"pos": [], "idx": []}  # sorted, for neighbours
        self._touch: dict[tuple[SliceKey, SliceKey], tuple[int, int, dict[int, list[tuple[int, int]]]]] = {}
        self._anonymous = itertools.count()
        self._versions = itertools.count(1)
        self._lesions: dict[int, _Lesions] = {}
        self._built_spacing: float | None = None
        self._dirty = True
        self._cached: LesionLoad | None = None

    # --- feeding ------------------------------------------------------------------------------------------

    def add(
        self,
        mask: np.ndarray,
        geometry: SliceGeometry | None = None,
        instance_number: int | None = None,
        *,
        key: SliceKey | None = None,
    ) -> LesionLoad:
        """Add (or replace) one slice's label mask and return the series' load with it.

        ``mask`` is a 2-D uint8 label image (0 background, k the class ``classes[k]``), e.g.
        ``SliceResult.mask``; ``geometry`` and ``instance_number`` place it (see :func:`slice_key`).
        ``key`` overrides the placement. The mask is not kept: only its compact form is.
        """
        if not isinstance(mask, np.ndarray) or mask.ndim != 2:
            raise ValueError(f"mask must be a 2-D label array, got {getattr(mask, 'shape', type(mask))}")
        if mask.dtype != np.uint8:
            mask = mask.astype(np.uint8)
        key = key or slice_key(geometry, instance_number) or ("anon", next(self._anonymous))
        replaced = key in self._slices
        if not replaced and len(self._slices) >= self.max_slices:
            self.dropped_slices += 1
            self._cached = None
            return self.load()
        entry = _Slice(
            key=key,
            shape=(int(mask.shape[0]), int(mask.shape[1])),
            pixel_area=None if geometry is None else geometry.pixel_area_mm2,
            thickness=None if geometry is None or not geometry.slice_thickness else float(geometry.slice_thickness),
            version=next(self._versions),
        )
        binary_of = self._binaries(mask)
        for label in range(1, len(self.classes)):
            stored = _ClassSlice.of(binary_of(label))
            if stored is not None:
                entry.classes[label] = stored
        self._slices[key] = entry
        if not replaced and key[0] in self._places:
            bisect.insort(self._places[key[0]], key[1])
        self._cached = None
        if replaced or self._dirty:
            self._dirty = True
        else:
            self._link(entry)
        return self.load()

    def discard(self, key: SliceKey) -> bool:
        """Forget one slice (e.g. a result withdrawn); True when it was held."""
        if self._slices.pop(key, None) is None:
            return False
        if key[0] in self._places:
            self._places[key[0]].remove(key[1])
        self._dirty = True
        self._cached = None
        return True

    def _binaries(self, mask: np.ndarray) -> Callable[[int], np.ndarray]:
        if len(self.classes) == 2:
            return lambda label: mask  # any non-zero label is the one foreground class
        # OpenCV takes a number as the second operand; its type hints do not say so
        return lambda label: cv2.compare(mask, label, cv2.CMP_EQ)  # type: ignore[call-overload]

    # --- reading ------------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._slices)

    @property
    def keys(self) -> list[SliceKey]:
        """The slices held, in series order (positions, then instance numbers, then unplaced ones)."""
        return sorted(self._slices, key=lambda k: ({"pos": 0, "idx": 1}.get(k[0], 2), k[1]))

    @property
    def nbytes(self) -> int:
        """Approximate bytes held for this series (slices' compact masks, the touch cache, the lesion sets)."""
        touch = sum(64 + 16 * sum(len(v) for v in pairs.values()) for _, _, pairs in self._touch.values())
        sets = sum(64 * len(c.parent) for c in self._lesions.values())
        return 256 + sum(s.nbytes for s in self._slices.values()) + touch + sets

    def spacing(self) -> tuple[float | None, str]:
        """The slice spacing in use and where it came from (``given``, ``positions`` or ``none``)."""
        if self.spacing_given is not None:
            return self.spacing_given, "given"
        positions = self._places["pos"]
        gaps = [float(b) - float(a) for a, b in itertools.pairwise(positions) if float(b) - float(a) > 0]
        if gaps:
            return min(gaps), "positions"
        return None, "none"

    def load(self) -> LesionLoad:
        """The series' load now (cached until the next change)."""
        if self._cached is None:
            spacing, source = self.spacing()
            if self._dirty or spacing != self._built_spacing:
                self._rebuild(spacing)
            if spacing is None:
                source = "thickness" if any(s.thickness for s in self._slices.values()) else "none"
            known = bool(self._slices) and all(
                s.pixel_area is not None and (spacing is not None or s.thickness) for s in self._slices.values()
            )
            classes = tuple(
                self._lesions[label].summary(label, self.classes[label], known) for label in range(1, len(self.classes))
            )
            self._cached = LesionLoad(len(self._slices), spacing, source, classes, self.dropped_slices)
        return self._cached

    def to_dict(self) -> dict[str, Any]:
        """:meth:`load` as JSON-ready data."""
        return self.load().to_dict()

    # --- the 3-D picture -----------------------------------------------------------------------------------

    def _adjacent(self, a: _Slice, b: _Slice, spacing: float | None) -> bool:
        if a.key[0] != b.key[0]:
            return False
        if a.key[0] == "idx":
            return abs(int(b.key[1]) - int(a.key[1])) == 1
        if a.key[0] == "pos":
            return spacing is not None and abs(float(b.key[1]) - float(a.key[1])) <= ADJACENT_FACTOR * spacing
        return False

    def _around(self, key: SliceKey) -> tuple[_Slice | None, _Slice | None]:
        """The held slices just before and after ``key`` along the series (same kind of place)."""
        places = self._places.get(key[0])
        if places is None:
            return None, None
        i = bisect.bisect_left(places, key[1])
        before = self._slices[(key[0], places[i - 1])] if i > 0 else None
        after = self._slices[(key[0], places[i + 1])] if i + 1 < len(places) else None
        return before, after

    def _place(self, s: _Slice, spacing: float | None) -> None:
        depth = spacing if spacing is not None else s.thickness
        voxel_mm3 = None if depth is None or s.pixel_area is None else s.pixel_area * depth
        for label, c in s.classes.items():
            lesions = self._lesions[label]
            lesions.slices_with_finding += 1
            for k, area in enumerate(c.areas.tolist(), start=1):
                lesions.add((s.key, k), area, None if voxel_mm3 is None else area * voxel_mm3, s.key)

    def _join(self, a: _Slice, b: _Slice) -> None:
        first, second = (a, b) if a.key[1] <= b.key[1] else (b, a)
        for label, pairs in self._touching(first, second).items():
            for ca, cb in pairs:
                self._lesions[label].join((first.key, ca), (second.key, cb))

    def _link(self, entry: _Slice) -> None:
        """Add a new slice to the 3-D picture without a rebuild, unless it lands between adjacent slices
        (their link must go) or changes the spacing (every volume changes)."""
        spacing, _ = self.spacing()
        before, after = self._around(entry.key)
        if spacing != self._built_spacing or (
            before is not None and after is not None and self._adjacent(before, after, spacing)
        ):
            self._dirty = True
            return
        self._place(entry, spacing)
        for other in (before, after):
            if other is not None and self._adjacent(other, entry, spacing):
                self._join(other, entry)

    def _rebuild(self, spacing: float | None) -> None:
        self._lesions = {label: _Lesions() for label in range(1, len(self.classes))}
        self._built_spacing = spacing
        live: set[tuple[SliceKey, SliceKey]] = set()
        previous: dict[str, _Slice] = {}
        for key in self.keys:  # in series order, so sums do not depend on the order of arrival
            s = self._slices[key]
            self._place(s, spacing)
            p = previous.get(key[0])
            if p is not None and self._adjacent(p, s, spacing):
                self._join(p, s)
                live.add((p.key, s.key))
            previous[key[0]] = s
        for stale in [k for k in self._touch if k not in live]:  # pairs no longer neighbours, or gone
            del self._touch[stale]
        self._dirty = False

    def _touching(self, a: _Slice, b: _Slice) -> dict[int, list[tuple[int, int]]]:
        """Per class, the touching component pairs of two adjacent slices (cached until either changes)."""
        cached = self._touch.get((a.key, b.key))
        if cached is not None and cached[0] == a.version and cached[1] == b.version:
            return cached[2]
        pairs: dict[int, list[tuple[int, int]]] = {}
        if a.shape == b.shape:
            for label in a.classes.keys() & b.classes.keys():
                touching = _touching(a.classes[label], b.classes[label])
                if touching:
                    pairs[label] = touching
        self._touch[(a.key, b.key)] = (a.version, b.version, pairs)
        return pairs


def accumulate(
    classes: Sequence[str], masks: Iterable[tuple[np.ndarray, SliceGeometry | None, int | None]]
) -> LesionLoad:
    """The load of a whole series at once: ``(mask, geometry, instance_number)`` per slice, any order."""
    load = SeriesLesionLoad(classes)
    for mask, geometry, number in masks:
        load.add(mask, geometry, number)
    return load.load()
