"""Ready-to-draw overlays: class colours alpha-blended onto the windowed slice, at the slice's size.

All of it is OpenCV on uint8 (a window is one saturating ``addWeighted`` from the stored values, colour
is a ``LUT``, blending is ``addWeighted`` + ``copyTo``), so a 512x512 overlay costs well under a
millisecond. The result is an RGB uint8 array; encoding to PNG/JPEG happens only on request
(:mod:`scanedge.imaging.encode`).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from scanedge.imaging.slices import Slice
from scanedge.manifest import Manifest

__all__ = ["OverlayOptions", "OverlayRenderer", "display_image"]

# dtypes OpenCV arithmetic takes directly; others are converted to float32 first
_CV_DTYPES = {np.dtype(t) for t in ("uint8", "int8", "uint16", "int16", "int32", "float32", "float64")}


@dataclass(frozen=True)
class OverlayOptions:
    """How findings are drawn. ``alpha`` is the opacity of the class colour over the image.

    Every fraction must lie in [0, 1] (ValueError otherwise).

    Attributes:
        fill: fill each finding with its class colour (blended by ``alpha``).
        contours: outline each finding in its class colour.
        contour_thickness: outline width in pixels, >= 1.
        heatmap: tint the image by the foreground probability (inferno colour map).
        heatmap_alpha: the heat map's opacity.
    """

    alpha: float = 0.5
    fill: bool = True
    contours: bool = False
    contour_thickness: int = 1
    heatmap: bool = False
    heatmap_alpha: float = 0.4
    heatmap_floor: float = 0.1  # probabilities below this are not tinted

    def __post_init__(self) -> None:
        for name in ("alpha", "heatmap_alpha", "heatmap_floor"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"OverlayOptions.{name} must be within [0, 1], got {v}")
        if self.contour_thickness < 1:
            raise ValueError("OverlayOptions.contour_thickness must be >= 1")


def display_image(slice_: Slice) -> np.ndarray:
    """The slice as 8-bit grey (rows, cols) or RGB (rows, cols, 3), using its DICOM window if it has one."""
    px = slice_.pixels
    if px.dtype not in _CV_DTYPES:
        px = px.astype(np.float32)
    if px.dtype == np.uint8 and (slice_.window_center is None or slice_.is_color):
        return px
    if slice_.window_center is not None and not slice_.is_color:
        lo = slice_.window_center - slice_.window_width / 2.0  # type: ignore[operator]
        gain = 255.0 / slice_.window_width  # type: ignore[operator]
        slope = slice_.rescale_slope
        alpha, beta = slope * gain, (slice_.rescale_intercept - lo) * gain
        if slope > 0:
            # clip below the window in stored units, then one saturating scale: 8x cheaper than a
            # saturating addWeighted, and |a*x + b| == a*x + b once x is at or above the window floor
            floor = (lo - slice_.rescale_intercept) / slope
            floor = float(np.ceil(floor)) if px.dtype.kind in "iu" else floor
            # OpenCV takes a scalar for either operand; its stubs list arrays only
            return cv2.convertScaleAbs(cv2.max(px, floor), alpha=alpha, beta=beta)  # type: ignore[call-overload]
        return cv2.addWeighted(px, alpha, px, 0.0, beta, dtype=cv2.CV_8U)
    lo_v, hi_v = _min_max(px)
    gain = 255.0 / max(hi_v - lo_v, 1e-6)
    return cv2.convertScaleAbs(px, alpha=gain, beta=-lo_v * gain)  # every value is >= the minimum


def _min_max(px: np.ndarray) -> tuple[float, float]:
    if px.ndim == 2:
        lo, hi, _, _ = cv2.minMaxLoc(px)
        return float(lo), float(hi)
    return float(px.min()), float(px.max())


class OverlayRenderer:
    """Draws one model's classes; colour tables are built once."""

    def __init__(self, manifest: Manifest, options: OverlayOptions | None = None) -> None:
        self.options = options or OverlayOptions()
        self._classes = manifest.classes
        self._fg_offset = 0 if manifest.output.activation == "softmax" else 1
        lut = np.zeros((256, 1, 3), np.uint8)
        for label, cls in enumerate(manifest.classes):
            lut[label, 0] = cls.color
        self._lut = lut

    def render(
        self,
        slice_: Slice,
        mask: np.ndarray,
        probabilities: np.ndarray | None = None,
        options: OverlayOptions | None = None,
    ) -> np.ndarray:
        """RGB uint8 overlay of ``mask`` (slice grid) on ``slice_``; ``probabilities`` feed the heat map."""
        opts = options or self.options
        shown = display_image(slice_)
        base = cv2.cvtColor(shown, cv2.COLOR_GRAY2RGB) if shown.ndim == 2 else shown.copy()
        if opts.heatmap and probabilities is not None:
            self._heatmap(base, probabilities, opts)
        x, y, w, h = cv2.boundingRect(mask)  # findings are small: draw only around them
        if w and opts.fill and opts.alpha > 0:
            roi, labels = base[y : y + h, x : x + w], mask[y : y + h, x : x + w]
            colour = cv2.LUT(cv2.cvtColor(labels, cv2.COLOR_GRAY2RGB), self._lut)
            blended = cv2.addWeighted(roi, 1.0 - opts.alpha, colour, opts.alpha, 0.0)
            cv2.copyTo(blended, labels, roi)
        if w and opts.contours:
            labels = mask[y : y + h, x : x + w]
            for label in range(1, len(self._classes)):
                binary = labels if len(self._classes) == 2 else np.equal(labels, label).view(np.uint8)
                contours, _ = cv2.findContours(binary, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE, offset=(x, y))
                if contours:
                    cv2.drawContours(base, contours, -1, self._classes[label].color, opts.contour_thickness)
        return base

    def _heatmap(self, base: np.ndarray, probabilities: np.ndarray, opts: OverlayOptions) -> None:
        fg = probabilities[1 - self._fg_offset :]
        p = fg[0] if fg.shape[0] == 1 else fg.max(axis=0)
        p8 = cv2.addWeighted(p, 255.0, p, 0.0, 0.0, dtype=cv2.CV_8U)
        rows, cols = base.shape[:2]
        if p8.shape != (rows, cols):
            p8 = cv2.resize(p8, (cols, rows), interpolation=cv2.INTER_LINEAR)
        heat = cv2.cvtColor(cv2.applyColorMap(p8, cv2.COLORMAP_INFERNO), cv2.COLOR_BGR2RGB)
        tinted = cv2.addWeighted(base, 1.0 - opts.heatmap_alpha, heat, opts.heatmap_alpha, 0.0)
        # OpenCV takes a scalar for either operand; its stubs list arrays only
        floor = cv2.compare(p8, int(opts.heatmap_floor * 255), cv2.CMP_GE)  # type: ignore[call-overload]
        cv2.copyTo(tinted, floor, base)
