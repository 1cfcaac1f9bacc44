"""Text and legends burned into images: labels that read on any background, colour bars, class legends.

A picture that leaves the viewer (a PNG in a report, a montage in an e-mail) must carry what a reader
needs to trust it: which slice, which way is left, what the colours mean, and whether the model may be
used clinically. Everything here draws onto RGB uint8 arrays in place with OpenCV, sized from the image
so that labels stay legible from 64 to 2048 pixels, and every text has a dark outline so that it reads
on black background, white bone and red Doppler flow alike.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import cv2
import numpy as np

__all__ = [
    "NOT_FOR_CLINICAL_USE",
    "Patch",
    "color_bar",
    "color_bar_patch",
    "draw_patch",
    "font_scale",
    "legend_strip",
    "put_label",
    "stamp_not_for_clinical_use",
    "text_size",
]

#: the words burned into pictures of models whose manifest says ``not_for_clinical_use``
NOT_FOR_CLINICAL_USE = "NOT FOR CLINICAL USE"

_FONT = cv2.FONT_HERSHEY_SIMPLEX
_WHITE = (255, 255, 255)
_BLACK = (0, 0, 0)


def font_scale(image_side: int) -> float:
    """A font scale that makes text about 1/24 of ``image_side`` high, within legible bounds."""
    return float(np.clip(image_side / 600.0, 0.35, 1.2))


def _thickness(scale: float) -> int:
    return 1 if scale < 0.7 else 2


def text_size(text: str, scale: float) -> tuple[int, int]:
    """(width, height) in pixels of ``text`` at ``scale``, outline included."""
    thick = _thickness(scale)
    (w, h), baseline = cv2.getTextSize(text, _FONT, scale, thick)
    return w + 2 * thick, h + baseline + 2 * thick


def put_label(
    image: np.ndarray,
    text: str,
    origin: tuple[int, int],
    scale: float,
    color: tuple[int, int, int] = _WHITE,
    *,
    anchor: str = "top-left",
) -> None:
    """Draw ``text`` with a dark outline; ``origin`` is the corner named by ``anchor`` (``top-left``,
    ``top-right``, ``bottom-left``, ``bottom-right``, ``top-center``, ``center-left``, ``center-right``,
    ``bottom-center``) of the text's box, which is kept inside the image."""
    thick = _thickness(scale)
    w, h = text_size(text, scale)
    x, y = origin
    vertical, _, horizontal = anchor.partition("-")
    if vertical == "center":
        y -= h // 2
    elif vertical == "bottom":
        y -= h
    if horizontal == "right":
        x -= w
    elif horizontal == "center":
        x -= w // 2
    rows, cols = image.shape[:2]
    x = int(np.clip(x, 0, max(0, cols - w)))
    y = int(np.clip(y, 0, max(0, rows - h)))
    (_, text_h), _ = cv2.getTextSize(text, _FONT, scale, thick)
    point = (x + thick, y + thick + text_h)  # putText's origin is the baseline's left end
    # the outline is the same text shifted around the point: a thicker stroke would also advance each
    # glyph further, and over a long line the dark copy would drift out from under the light one
    px, py = point
    for dx, dy in ((-1, -1), (0, -1), (1, -1), (-1, 0), (1, 0), (-1, 1), (0, 1), (1, 1)):
        cv2.putText(image, text, (px + dx, py + dy), _FONT, scale, _BLACK, thick, cv2.LINE_AA)
    cv2.putText(image, text, point, _FONT, scale, color, thick, cv2.LINE_AA)


def color_bar(image: np.ndarray, lut: np.ndarray, low: float, high: float, caption: str) -> None:
    """A vertical colour bar on the right edge of ``image`` mapping ``low``..``high`` through ``lut``
    ((256, 1, 3) RGB, index 0 = ``low``), labelled at both ends and captioned (e.g. ``p(lesion)``)."""
    rows, cols = image.shape[:2]
    scale = font_scale(min(rows, cols))
    bar_h = max(16, int(rows * 0.4))
    bar_w = max(4, cols // 48)
    margin = max(3, cols // 64)
    top = (rows - bar_h) // 2
    left = cols - margin - bar_w
    ramp = np.linspace(255, 0, bar_h).astype(np.uint8)  # high at the top
    column = lut[ramp, 0]  # (bar_h, 3)
    image[top : top + bar_h, left : left + bar_w] = column[:, None, :]
    cv2.rectangle(image, (left - 1, top - 1), (left + bar_w, top + bar_h), _WHITE, 1)
    put_label(image, f"{high:g}", (left - 2, top), scale, anchor="top-right")
    put_label(image, f"{low:g}", (left - 2, top + bar_h), scale, anchor="bottom-right")
    put_label(image, caption, (cols - margin, top - 2), scale, anchor="bottom-right")


class Patch(NamedTuple):
    """Pre-drawn annotation pixels: ``pixels`` go where ``mask`` is set, at ``(top, left)`` of an image."""

    top: int
    left: int
    pixels: np.ndarray  # (h, w, 3) uint8 RGB
    mask: np.ndarray  # (h, w) uint8, nonzero where the annotation drew

    def apply(self, image: np.ndarray) -> None:
        """Copy the annotation onto ``image`` (RGB, at least as large as when it was drawn) in place."""
        h, w = self.mask.shape
        cv2.copyTo(self.pixels, self.mask, image[self.top : self.top + h, self.left : self.left + w])


def draw_patch(rows: int, cols: int, draw: Callable[[np.ndarray], None]) -> Patch:
    """Whatever ``draw`` puts on a (rows, cols) RGB image, captured once as a :class:`Patch`: drawn onto
    black and onto white, a pixel belongs to the annotation where the two differ from their background."""
    black = np.zeros((rows, cols, 3), np.uint8)
    white = np.full((rows, cols, 3), 255, np.uint8)
    draw(black)
    draw(white)
    drawn = ((black != 0) | (white != 255)).any(axis=-1)
    ys, xs = np.nonzero(drawn)
    if ys.size == 0:
        return Patch(0, 0, np.zeros((1, 1, 3), np.uint8), np.zeros((1, 1), np.uint8))
    top, bottom, left, right = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    pixels = np.where(drawn[..., None], black, 0)[top:bottom, left:right].astype(np.uint8)
    return Patch(int(top), int(left), np.ascontiguousarray(pixels), drawn[top:bottom, left:right].astype(np.uint8))


def color_bar_patch(rows: int, cols: int, lut: np.ndarray, low: float, high: float, caption: str) -> Patch:
    """:func:`color_bar` for images of (rows, cols), drawn once: applying it costs one masked copy."""
    return draw_patch(rows, cols, lambda image: color_bar(image, lut, low, high, caption))


def legend_strip(
    width: int, entries: Sequence[tuple[str, tuple[int, int, int]]], notes: Sequence[str] = ()
) -> np.ndarray:
    """A dark RGB strip ``width`` pixels wide: a colour swatch and name per entry, then ``notes`` in grey."""
    scale = font_scale(max(width // 5, 200))
    _, line_h = text_size("Ag", scale)
    height = line_h + 12
    strip = np.full((height, width, 3), 24, np.uint8)
    x = 8
    for name, color in entries:
        side = line_h - 4
        top = (height - side) // 2
        cv2.rectangle(strip, (x, top), (x + side, top + side), tuple(int(c) for c in color), -1)
        cv2.rectangle(strip, (x, top), (x + side, top + side), _WHITE, 1)
        x += side + 6
        put_label(strip, name, (x, height // 2), scale, anchor="center-left")
        x += text_size(name, scale)[0] + 18
    for note in notes:
        put_label(strip, note, (x, height // 2), scale, (190, 190, 190), anchor="center-left")
        x += text_size(note, scale)[0] + 18
    return strip


def stamp_not_for_clinical_use(image: np.ndarray) -> np.ndarray:
    """A copy of ``image`` (RGB) with "NOT FOR CLINICAL USE" along its bottom edge, for pictures of models
    whose manifest says so: a file leaves the viewer and travels without the manifest beside it."""
    out = image.copy() if image.ndim == 3 else cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    rows, cols = out.shape[:2]
    put_label(out, NOT_FOR_CLINICAL_USE, (cols // 2, rows - 2), font_scale(min(rows, cols)), (255, 120, 120),
              anchor="bottom-center")  # fmt: skip
    return out
