"""A contact sheet: many overlays tiled into one image, to see a whole series at a glance."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

__all__ = ["montage"]


def montage(images: Sequence[np.ndarray], columns: int = 8) -> np.ndarray:
    """Tile uint8 images row by row, ``columns`` per row, into one RGB (rows, cols, 3) uint8 image.

    Every tile takes the size of the first image (others are resized with area interpolation); grey
    tiles are drawn grey; cells after the last image stay black. Raises ``ValueError`` for no images,
    ``columns < 1`` or images that are not uint8 (rows, cols) / (rows, cols, 3) arrays.
    """
    if not images:
        raise ValueError("a montage needs at least one image")
    if columns < 1:
        raise ValueError(f"columns must be >= 1, got {columns}")
    for img in images:
        if img.dtype != np.uint8 or not (img.ndim == 2 or (img.ndim == 3 and img.shape[2] == 3)):
            raise ValueError(f"montage tiles must be uint8 grey or RGB images, got {img.dtype} {img.shape}")
    h, w = images[0].shape[:2]
    columns = min(columns, len(images))
    rows = -(-len(images) // columns)
    sheet = np.zeros((rows * h, columns * w, 3), np.uint8)
    for i, img in enumerate(images):
        tile = img if img.shape[:2] == (h, w) else cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA)
        if tile.ndim == 2:
            tile = cv2.cvtColor(tile, cv2.COLOR_GRAY2RGB)
        r, c = divmod(i, columns)
        sheet[r * h : (r + 1) * h, c * w : (c + 1) * w] = tile
    return sheet
