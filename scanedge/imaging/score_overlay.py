"""A classification model's overlay: its scores written on the image, its saliency map as a heat map.

A score is a number about the whole image, so it is drawn as text in the top-left corner (one line per
class: name, probability, and ``+`` when the class is decided present), coloured as the class is in the
manifest. A saliency map is drawn only when the model itself gives one (a manifest ``saliency`` head):
scanedge never makes one up, because a heat map that is not the model's own would claim a reason the
model did not have. The map is scaled to 0-1 over the slice and drawn through the same colour map as the
mask heat map (viridis), with the lowest 20% left untinted so the anatomy stays readable.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from scanedge.imaging.annotate import font_scale, put_label, text_size
from scanedge.imaging.heads import HeadScore, SaliencyMap
from scanedge.imaging.overlay import HEATMAP_LUT
from scanedge.manifest import Manifest

__all__ = ["SALIENCY_ALPHA", "SALIENCY_FLOOR", "draw_saliency", "draw_scores", "score_lines"]

#: opacity of the saliency heat map
SALIENCY_ALPHA = 0.45
#: normalised saliency below this is left untinted
SALIENCY_FLOOR = 0.2


def draw_saliency(image: np.ndarray, saliency: SaliencyMap) -> None:
    """Blend ``saliency`` (normalised over the slice) onto ``image`` (RGB uint8, the slice's grid) in place."""
    values = saliency.normalized()
    if values.shape != image.shape[:2]:
        values = cv2.resize(values, (image.shape[1], image.shape[0]), interpolation=cv2.INTER_LINEAR)
    v8 = cv2.convertScaleAbs(values, alpha=255.0)
    heat = cv2.LUT(cv2.cvtColor(v8, cv2.COLOR_GRAY2RGB), HEATMAP_LUT)
    tinted = cv2.addWeighted(image, 1.0 - SALIENCY_ALPHA, heat, SALIENCY_ALPHA, 0.0)
    shown = (v8 >= int(SALIENCY_FLOOR * 255)).view(np.uint8)
    cv2.copyTo(tinted, shown, image)


def score_lines(scores: Sequence[HeadScore]) -> list[str]:
    """The text drawn for ``scores``: ``head: class 0.87 +`` per class (``+``: decided present)."""
    lines = []
    several = len(scores) > 1
    for head in scores:
        for c in head.classes:
            mark = " +" if c.decision else ""
            lines.append(f"{head.head + ': ' if several else ''}{c.name} {c.probability:.2f}{mark}")
    return lines


def draw_scores(image: np.ndarray, scores: Sequence[HeadScore], manifest: Manifest, *, max_lines: int = 8) -> None:
    """Write ``scores`` into ``image``'s top-left corner in place (at most ``max_lines`` lines, the rest
    summarised), each class in its manifest colour (white when the colour is too dark to read)."""
    colours = {
        (h.name, c.name): c.color if sum(c.color) >= 200 else (255, 255, 255)
        for h in manifest.score_heads
        for c in h.classes
    }
    entries = [(h.head, c.name) for h in scores for c in h.classes]
    lines = score_lines(scores)
    if len(lines) > max_lines:
        lines, entries = [*lines[: max_lines - 1], f"... {len(lines) - max_lines + 1} more"], entries[: max_lines - 1]
    scale = font_scale(min(image.shape[:2]))
    y = 2
    for i, text in enumerate(lines):
        colour = colours.get(entries[i], (255, 255, 255)) if i < len(entries) else (255, 255, 255)
        put_label(image, text, (2, y), scale, colour)
        y += text_size(text, scale)[1]
