"""Grouping slices into series, ordering them in space, and picking a 2.5D model's neighbours."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

import numpy as np

from scanedge.imaging.slices import Slice

__all__ = ["context_window", "order_key", "slice_spacing", "sort_slices"]

T = TypeVar("T")


def order_key(slice_: Slice) -> tuple:
    """Sort key: series, then position along the slice normal, then instance number, then frame."""
    ident = slice_.identity
    position = slice_.geometry.position_along_normal
    return (
        ident.series_uid,
        position is None,
        position if position is not None else 0.0,
        ident.instance_number is None,
        ident.instance_number or 0,
        ident.frame_index,
    )


def sort_slices(items: Sequence[T], key_slice: Callable[[Any], Slice] = lambda item: item) -> list[T]:
    """Items (slices, or records holding one; ``key_slice`` extracts it) in series and spatial order.

    The sort is stable, so slices with no geometry and no instance numbers keep their given order.
    """
    return sorted(items, key=lambda item: order_key(key_slice(item)))


def context_window(series: Sequence[Slice], index: int, context_slices: int) -> list[Slice]:
    """The ``context_slices`` neighbours on each side of ``series[index]`` within the same series,
    ordered by position, the slice itself excluded (fewer at the ends of the series)."""
    if context_slices == 0:
        return []
    uid = series[index].identity.series_uid
    lo = index
    while lo > 0 and index - lo < context_slices and series[lo - 1].identity.series_uid == uid:
        lo -= 1
    hi = index
    while hi < len(series) - 1 and hi - index < context_slices and series[hi + 1].identity.series_uid == uid:
        hi += 1
    before, after = list(series[lo:index]), list(series[index + 1 : hi + 1])
    # the preprocessor splits context in half, so pad the shorter side with its nearest slice
    while len(before) < len(after):
        before.insert(0, before[0] if before else series[index])
    while len(after) < len(before):
        after.append(after[-1] if after else series[index])
    return before + after


def slice_spacing(slices: Iterable[Slice]) -> dict[str, float]:
    """Median distance (mm) between neighbouring slices, per series UID, from positions along the normal.

    Slice thickness is not used: spacing is what turns summed areas into a volume, and slices may
    overlap or leave gaps. The median shrugs off one missing slice. Series with fewer than two
    positioned slices are left out (their spacing is unknown).
    """
    positions: dict[str, list[float]] = {}
    for s in slices:
        pos = s.geometry.position_along_normal
        if pos is not None:
            positions.setdefault(s.identity.series_uid, []).append(pos)
    return {uid: float(np.median(np.diff(sorted(p)))) for uid, p in positions.items() if len(p) > 1}
