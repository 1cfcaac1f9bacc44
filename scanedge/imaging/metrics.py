"""Overlap between two segmentations: Dice, from masks or from pixel counts pooled over many slices.

``scanedge verify`` (engine against reference) and ``scanedge demo`` (model against the generator's true
labels) both report Dice; this is the one definition they share. Pooling counts over a series before
dividing weights every pixel equally, instead of averaging per-slice scores where a slice with two
lesion pixels counts as much as one with two thousand.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Overlap", "dice", "overlap"]


@dataclass(frozen=True)
class Overlap:
    """Pixel counts of two binary masks: their intersection and each one's size.

    Counts add up across slices (``a + b``), so a whole series is scored by summing its slices' overlaps.

    Attributes:
        intersection: pixels set in both masks.
        a_pixels: pixels set in mask A (by convention the reference).
        b_pixels: pixels set in mask B (the candidate).
    """

    intersection: int = 0
    a_pixels: int = 0
    b_pixels: int = 0

    def __add__(self, other: Overlap) -> Overlap:
        return Overlap(
            self.intersection + other.intersection, self.a_pixels + other.a_pixels, self.b_pixels + other.b_pixels
        )

    @property
    def dice(self) -> float:
        """2|A∩B| / (|A| + |B|); 1.0 when both masks are empty (they agree that nothing is there)."""
        total = self.a_pixels + self.b_pixels
        return 2 * self.intersection / total if total else 1.0


def overlap(a: np.ndarray, b: np.ndarray) -> Overlap:
    """Counts for two masks of the same shape; any non-zero value is foreground.

    Raises ``ValueError`` when the shapes differ (a caller's bug, not a user's input).
    """
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"masks differ in shape: {a.shape} and {b.shape}")
    a, b = a.astype(bool, copy=False), b.astype(bool, copy=False)
    return Overlap(int(np.count_nonzero(a & b)), int(np.count_nonzero(a)), int(np.count_nonzero(b)))


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice coefficient of two masks of the same shape (any rank; non-zero is foreground)."""
    return overlap(a, b).dice
