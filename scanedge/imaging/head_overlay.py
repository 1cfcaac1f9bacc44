"""A model's further mask heads drawn on its overlay: dashed outlines in each head's class colours, named.

The main mask is filled and outlined with a solid line edged in black (:mod:`scanedge.imaging.overlay`). A
further mask head (a manifest ``heads`` entry of role ``mask``: organs beside lesions, say) is drawn so that it
never reads as the main finding: an outline only, **dashed** (:data:`DASH` pixels on, as many off, along each
contour), in the colour of the head's class (``ClassSpec.color``), with no fill and no halo, so the anatomy
and the main mask's fill stay visible under it. Each head class that has pixels on the slice is named in the
top-right corner (``organs: liver``), in its colour; a head that found nothing on the slice draws nothing at
all, so its overlay is exactly the overlay of a model without that head.

The cost stays within the findings: contours are traced only inside the head's bounding box, the dashes are
set as pixels (no line drawing), and each name is drawn once per image size and then copied
(:class:`~scanedge.imaging.annotate.Patch`).
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from scanedge.imaging.annotate import Patch, draw_patch, font_scale, put_label, text_size
from scanedge.imaging.heads import MaskHead, head_labels
from scanedge.manifest import Manifest
from scanedge.safe_text import printable

__all__ = ["DASH", "MAX_HEAD_NAMES", "HeadOverlay", "head_class_name", "head_legend"]

#: pixels on, then as many off, along a further mask head's outline
DASH = 3
#: head classes named in an overlay's corner; the rest are summed up in one more line
MAX_HEAD_NAMES = 8
_NAME_CHARS = 40  # characters of a head or class name drawn (names come from the manifest: bounded here)
_MAX_PATCHES = 512  # drawn names kept (per image size and line); a stream of new sizes must not grow it forever


def head_class_name(label: str, class_name: str) -> str:
    """``label: class`` as the overlay and legends write a head's class: one ASCII line (OpenCV draws no other
    characters), control characters and escape sequences removed, at most 40 characters per name."""
    text = f"{printable(label, _NAME_CHARS)}: {printable(class_name, _NAME_CHARS)}"
    return text.encode("ascii", "replace").decode("ascii")


def head_legend(manifest: Manifest) -> list[tuple[str, tuple[int, int, int]]]:
    """Every foreground class of every further mask head as (``label: class``, colour), in manifest order: the
    entries a montage's legend adds after the main classes."""
    heads = manifest.mask_heads
    labels = head_labels([h.name for h in heads])
    return [(head_class_name(label, c.name), c.color) for h, label in zip(heads, labels) for c in h.classes[1:]]


def _readable(color: tuple[int, int, int]) -> tuple[int, int, int]:
    """A class colour for text: white when the colour is too dark to read on the black outline."""
    return color if sum(color) >= 200 else (255, 255, 255)


class HeadOverlay:
    """Draws one model's further mask heads (colour tables and names built once; not thread-safe: one per
    pipeline, as :class:`~scanedge.imaging.overlay.OverlayRenderer`)."""

    def __init__(self, manifest: Manifest) -> None:
        heads = manifest.mask_heads
        labels = head_labels([h.name for h in heads])
        self._colours = {h.name: [c.color for c in h.classes] for h in heads}
        self._names = {h.name: [head_class_name(label, c.name) for c in h.classes] for h, label in zip(heads, labels)}
        self._text = {h.name: [_readable(c.color) for c in h.classes] for h in heads}
        self._patches: dict[tuple[str, int, float], Patch] = {}

    @property
    def empty(self) -> bool:
        """True when the model has no further mask heads (nothing is ever drawn)."""
        return not self._colours

    def draw(self, image: np.ndarray, masks: Sequence[MaskHead], thickness: int = 1) -> int:
        """Draw ``masks`` (each on ``image``'s grid) onto ``image`` (RGB uint8) in place; returns how many head
        classes were drawn. Heads without a foreground pixel leave ``image`` untouched."""
        lines: list[tuple[str, int]] = []
        for head in masks:
            colours = self._colours.get(head.head)
            if colours is None or head.mask.shape != image.shape[:2]:
                continue  # not this model's head, or not on this slice's grid: never drawn misplaced
            x, y, w, h = cv2.boundingRect(head.mask)
            if not w:
                continue
            labels = head.mask[y : y + h, x : x + w]
            present = np.flatnonzero(np.bincount(labels.ravel(), minlength=2)[1:]) + 1
            for label in present:
                if label >= len(colours):
                    continue  # a label the head has no class for (never from the decoder)
                binary = labels if len(colours) == 2 else np.equal(labels, label).view(np.uint8)
                contours, _ = cv2.findContours(binary, cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE, offset=(x, y))
                if contours:
                    _dashes(image, np.concatenate(contours).reshape(-1, 2), colours[label], thickness)
                    lines.append((head.head, int(label)))
        if lines:
            self._name(image, lines)
        return len(lines)

    def _name(self, image: np.ndarray, lines: list[tuple[str, int]]) -> None:
        """Name each drawn head class in the top-right corner, one line each, in its colour."""
        rows, cols = image.shape[:2]
        scale = font_scale(min(rows, cols))
        more = len(lines) - MAX_HEAD_NAMES + 1 if len(lines) > MAX_HEAD_NAMES else 0
        shown = lines[: MAX_HEAD_NAMES - 1] if more else lines
        y = 2
        for head, label in shown:
            y += self._line(image, (head, label, scale), self._names[head][label], self._text[head][label], y)
        if more:
            self._line(image, ("", more, scale), f"... {more} more", (255, 255, 255), y)

    def _line(
        self, image: np.ndarray, key: tuple[str, int, float], text: str, colour: tuple[int, int, int], y: int
    ) -> int:
        rows, cols = image.shape[:2]
        patch = self._patches.get(key)
        if patch is None:
            if len(self._patches) >= _MAX_PATCHES:
                self._patches.clear()
            w, h = text_size(text, key[2])
            patch = self._patches[key] = draw_patch(h, w, lambda img: put_label(img, text, (0, 0), key[2], colour))
        ph, pw = patch.mask.shape
        top, left = y + patch.top, cols - 2 - pw
        if left < 0 or top + ph > rows:
            return 0  # the image is too small for the name: the outline alone is drawn
        patch._replace(top=top, left=left).apply(image)
        return ph + 2


def _dashes(image: np.ndarray, points: np.ndarray, colour: tuple[int, int, int], thickness: int) -> None:
    """Set every other run of :data:`DASH` outline ``points`` (x, y) to ``colour``, ``thickness`` pixels wide."""
    on = points[(np.arange(len(points)) // DASH) % 2 == 0]
    rows, cols = image.shape[:2]
    xs, ys = on[:, 0], on[:, 1]
    for dy in range(thickness):
        for dx in range(thickness):
            image[np.minimum(ys + dy, rows - 1), np.minimum(xs + dx, cols - 1)] = colour
