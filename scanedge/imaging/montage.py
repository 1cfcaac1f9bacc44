"""A contact sheet: many overlays tiled into one image, to see a whole series at a glance.

A montage travels on its own (attached to a report, pasted into a message), so it carries what a reader
needs: each tile's slice number and position, the patient's left/right and anterior/posterior on the
tile edges (from Image Orientation (Patient), when the slice has it), a legend of the class colours, and
"NOT FOR CLINICAL USE" across the top for models that say so.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from scanedge.imaging.annotate import NOT_FOR_CLINICAL_USE, font_scale, legend_strip, put_label, text_size
from scanedge.imaging.slices import Slice

__all__ = ["MAX_TILE", "MIN_TILE", "TileLabel", "montage", "orientation_markers", "tile_label"]

#: tiles are scaled so that their longer side lies within these bounds: labels stay legible on small
#: slices, and a sheet of 512x512 slices stays a sensible size
MIN_TILE = 192
MAX_TILE = 384

# DICOM patient axes (LPS): +x towards the patient's left, +y posterior, +z head
_AXIS_LETTERS = (("R", "L"), ("A", "P"), ("F", "H"))


def _direction(vector: Sequence[float]) -> str:
    """Letters for where a direction points in the patient, strongest axis first (``L``, ``PL``, ...);
    axes contributing less than 30% of the direction are left out."""
    v = np.asarray(vector, np.float64)
    norm = float(np.abs(v).sum())
    if norm == 0:
        return ""
    order = np.argsort(-np.abs(v))
    return "".join(_AXIS_LETTERS[i][int(v[i] > 0)] for i in order if abs(v[i]) / norm >= 0.3)


def orientation_markers(slice_: Slice) -> tuple[str, str, str, str] | None:
    """(top, right, bottom, left) edge letters of the displayed slice, or None without an orientation.

    Image Orientation (Patient) gives the directions in which columns (along a row) and rows increase;
    the right edge is where the row direction points, the bottom edge where the column direction points.
    A standard axial slice reads A at the top, L on the right (radiological view), P, R.
    """
    o = slice_.geometry.image_orientation
    if o is None:
        return None
    row, col = o[:3], o[3:]
    top, right, bottom, left = (
        _direction([-c for c in col]),
        _direction(row),
        _direction(col),
        _direction([-r for r in row]),
    )
    return (top, right, bottom, left) if all((top, right, bottom, left)) else None


@dataclass(frozen=True)
class TileLabel:
    """What is written on one montage tile.

    Attributes:
        title: top-left text, e.g. ``#12  z -4.0 mm`` (slice number and position).
        orientation: (top, right, bottom, left) edge letters; None when unknown.
    """

    title: str = ""
    orientation: tuple[str, str, str, str] | None = None


def tile_label(slice_: Slice) -> TileLabel:
    """The label of a slice's tile: its instance number (and frame), its position along the slice normal,
    and the orientation markers."""
    ident = slice_.identity
    parts = []
    if ident.instance_number is not None:
        parts.append(f"#{ident.instance_number}" + (f".{ident.frame_index}" if ident.frame_index else ""))
    elif ident.frame_index:
        parts.append(f"frame {ident.frame_index}")
    position = slice_.geometry.position_along_normal
    if position is not None:
        parts.append(f"{position:+.1f} mm")
    return TileLabel("  ".join(parts), orientation_markers(slice_))


def _tile_size(h: int, w: int) -> tuple[int, int]:
    side = max(h, w)
    scale = MIN_TILE / side if side < MIN_TILE else (MAX_TILE / side if side > MAX_TILE else 1.0)
    return max(1, round(h * scale)), max(1, round(w * scale))


def montage(
    images: Sequence[np.ndarray],
    columns: int = 8,
    *,
    labels: Sequence[TileLabel] | None = None,
    legend: Sequence[tuple[str, tuple[int, int, int]]] = (),
    not_for_clinical_use: bool = False,
    notes: Sequence[str] = (),
) -> np.ndarray:
    """Tile uint8 images row by row, ``columns`` per row, into one RGB (rows, cols, 3) uint8 image.

    Every tile takes the size of the first image, scaled so that its longer side lies within
    :data:`MIN_TILE`..:data:`MAX_TILE` (nearest neighbour up, area down); grey tiles are drawn grey; cells
    after the last image stay black. ``labels`` (one per image) are written on the tiles; ``legend``
    (class name and RGB colour) and ``notes`` go into a strip below the tiles; ``not_for_clinical_use``
    adds a red banner across the top. Raises ``ValueError`` for no images, ``columns < 1``, images that
    are not uint8 (rows, cols) / (rows, cols, 3) arrays, or a label count that differs from the images'.
    """
    if not images:
        raise ValueError("a montage needs at least one image")
    if columns < 1:
        raise ValueError(f"columns must be >= 1, got {columns}")
    if labels is not None and len(labels) != len(images):
        raise ValueError(f"{len(labels)} labels for {len(images)} images")
    for img in images:
        if img.dtype != np.uint8 or not (img.ndim == 2 or (img.ndim == 3 and img.shape[2] == 3)):
            raise ValueError(f"montage tiles must be uint8 grey or RGB images, got {img.dtype} {img.shape}")
    h, w = _tile_size(*images[0].shape[:2])
    columns = min(columns, len(images))
    rows = -(-len(images) // columns)
    sheet = np.zeros((rows * h, columns * w, 3), np.uint8)
    scale = font_scale(round(min(h, w) * 1.4))
    for i, img in enumerate(images):
        if img.shape[:2] == (h, w):
            tile = img
        else:
            shrinking = img.shape[0] * img.shape[1] > h * w
            tile = cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_NEAREST)
        if tile.ndim == 2:
            tile = cv2.cvtColor(tile, cv2.COLOR_GRAY2RGB)
        r, c = divmod(i, columns)
        cell = sheet[r * h : (r + 1) * h, c * w : (c + 1) * w]
        cell[:] = tile
        if labels is not None:
            _label_tile(cell, labels[i], scale)
    parts = []
    if not_for_clinical_use:
        parts.append(_banner(sheet.shape[1]))
    parts.append(sheet)
    if legend or notes:
        parts.append(legend_strip(sheet.shape[1], legend, notes))
    return np.vstack(parts) if len(parts) > 1 else sheet


def _label_tile(cell: np.ndarray, label: TileLabel, scale: float) -> None:
    h, w = cell.shape[:2]
    pad = 3
    top_y = pad
    if label.title:
        put_label(cell, label.title, (pad, pad), scale)
        title_w, title_h = text_size(label.title, scale)
        if label.orientation is not None and pad + title_w >= w // 2 - text_size(label.orientation[0], scale)[0]:
            top_y += title_h  # the top marker goes below a title that would run into it
    if label.orientation is not None:
        top, right, bottom, left = label.orientation
        yellow = (255, 220, 90)
        put_label(cell, top, (w // 2, top_y), scale, yellow, anchor="top-center")
        put_label(cell, bottom, (w // 2, h - pad), scale, yellow, anchor="bottom-center")
        put_label(cell, left, (pad, h // 2), scale, yellow, anchor="center-left")
        put_label(cell, right, (w - pad, h // 2), scale, yellow, anchor="center-right")
    cv2.rectangle(cell, (0, 0), (w - 1, h - 1), (60, 60, 60), 1)  # tiles stay apart on black backgrounds


def _banner(width: int) -> np.ndarray:
    scale = font_scale(max(width // 2, 300))
    text = f"{NOT_FOR_CLINICAL_USE} - {NOT_FOR_CLINICAL_USE} - {NOT_FOR_CLINICAL_USE}"
    tw, th = text_size(text, scale)
    strip = np.zeros((th + 12, width, 3), np.uint8)
    strip[:] = (150, 20, 20)
    if tw > width - 8:
        text = NOT_FOR_CLINICAL_USE
    put_label(strip, text, (width // 2, (th + 12) // 2), scale, anchor="center-center")
    return strip
