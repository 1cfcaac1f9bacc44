"""Follow-up pictures: each tracked lesion drawn in the colour of its change class, with a legend.

The colours are :data:`scanedge.imaging.followup.CHANGE_COLOURS` (the viewer and reports use the same), so
"red = new" means the same everywhere. A plane of change codes (:func:`scanedge.imaging.followup.change_image`)
is drawn like a segmentation overlay: a light tint and an outline edged in black, so that it reads on grey
MR. Lesions of the current mask without a change class (too small to be tracked, or labels withheld) are
outlined in grey, so nothing the model found is hidden.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from scanedge.imaging.followup import CHANGE_CLASSES, CHANGE_CODES, CHANGE_COLOURS
from scanedge.imaging.overlay import display_image
from scanedge.imaging.slices import Slice

__all__ = ["UNCLASSIFIED_COLOUR", "change_legend", "render_change"]

#: outline of a lesion the model found that carries no change class (untracked or withheld)
UNCLASSIFIED_COLOUR = (200, 200, 200)
_ALPHA = 0.35


def change_legend(
    counts: dict[str, int] | None = None, *, unclassified: bool = True
) -> list[tuple[str, tuple[int, int, int]]]:
    """Legend entries (name, RGB) of the change classes that have pixels (``disappeared`` has none): every
    such class, or only those with a non-zero count in ``counts``, ``n`` appended to the name."""
    entries: list[tuple[str, tuple[int, int, int]]] = []
    for name in CHANGE_CLASSES:
        if name not in CHANGE_CODES:
            continue
        if counts is None:
            entries.append((name, CHANGE_COLOURS[name]))
        elif counts.get(name):
            entries.append((f"{name} {counts[name]}", CHANGE_COLOURS[name]))
    if unclassified:
        entries.append(("no class", UNCLASSIFIED_COLOUR))
    return entries


def _draw(base: np.ndarray, binary: np.ndarray, colour: Sequence[int], fill: bool) -> None:
    if not binary.any():
        return
    if fill:
        tint = np.empty_like(base)
        tint[:] = colour
        blended = cv2.addWeighted(base, 1.0 - _ALPHA, tint, _ALPHA, 0.0)
        cv2.copyTo(blended, binary, base)
    contours, _ = cv2.findContours(binary, cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
    kept = base.copy()
    cv2.drawContours(base, contours, -1, (0, 0, 0), 3, cv2.LINE_8)  # a black halo that reads on any grey
    cv2.copyTo(kept, binary, base)
    cv2.drawContours(base, contours, -1, tuple(int(c) for c in colour), 1, cv2.LINE_8)


def render_change(slice_: Slice, codes: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """RGB uint8 picture of ``slice_`` with its change codes (uint8, slice grid) tinted and outlined in their
    class colours; foreground of ``mask`` without a code is outlined in :data:`UNCLASSIFIED_COLOUR`."""
    codes = np.asarray(codes, dtype=np.uint8)
    if codes.shape != slice_.shape[:2]:
        raise ValueError(f"change codes {codes.shape} do not match the slice {slice_.shape[:2]}")
    shown = display_image(slice_)
    base = cv2.cvtColor(shown, cv2.COLOR_GRAY2RGB) if shown.ndim == 2 else shown.copy()
    if mask is not None:
        rest = ((np.asarray(mask) > 0) & (codes == 0)).astype(np.uint8)
        _draw(base, rest, UNCLASSIFIED_COLOUR, fill=False)
    for name, code in CHANGE_CODES.items():
        _draw(base, (codes == code).astype(np.uint8), CHANGE_COLOURS[name], fill=True)
    return base
