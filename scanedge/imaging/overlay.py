"""Ready-to-draw overlays: findings outlined and lightly filled on the windowed slice, at the slice's size.

The default shows the finding without hiding the image under it: each finding is outlined in its class
colour, the outline edged in black so that it reads on grey MR, white bone and red or blue Doppler flow
alike, and filled with a light tint (alpha 0.25) so that small findings still catch the eye. The heat
map is a different picture on purpose: the probability of the foreground classes through a perceptual
colour map (viridis) with a colour bar burned in, outlines at the threshold, and no fill.

All of it is OpenCV on uint8 (a window is one saturating ``addWeighted`` from the stored values, colour
is a ``LUT``, blending is ``addWeighted`` + ``copyTo``, outlines are drawn only inside the findings'
bounding box), so a 512x512 overlay costs well under a millisecond. The result is an RGB uint8 array;
encoding to PNG/JPEG happens only on request (:mod:`scanedge.imaging.encode`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from scanedge._moved import forward_names
from scanedge.imaging.annotate import Patch, color_bar_patch
from scanedge.imaging.slices import Slice
from scanedge.manifest import Manifest

__all__ = ["HEATMAP_LUT", "OverlayConfig", "OverlayRenderer", "display_image"]

# dtypes OpenCV arithmetic takes directly; others are converted to float32 first
#: OpenCV's per-element maximum, which takes a scalar for either operand; its type stubs list arrays only in
#: some versions and scalars too in others, so it is typed loosely here once (no version-dependent ignore)
_cv_max: Callable[..., Any] = cv2.max
_CV_DTYPES = {np.dtype(t) for t in ("uint8", "int8", "uint16", "int16", "int32", "float32", "float64")}


@dataclass(frozen=True)
class OverlayConfig:
    """How findings are drawn. ``alpha`` is the opacity of the class colour filling a finding.

    Every fraction must lie in [0, 1] (ValueError otherwise).

    Attributes:
        fill: fill each finding with its class colour (blended by ``alpha``; not in heat-map mode).
        contours: outline each finding in its class colour.
        contour_thickness: outline width in pixels, >= 1 (2 for JPEG files: 1-pixel lines blur away).
        halo: edge each outline in black, so it reads on bright and colour images too (not over a heat map).
        heatmap: show the foreground probability as a colour map (viridis) with a colour bar, instead of
            the fill.
        heatmap_alpha: the heat map's opacity.
        heads: draw the model's further mask heads (manifest ``heads`` of role ``mask``) as dashed outlines in
            their classes' colours, named in the top-right corner (:mod:`scanedge.imaging.head_overlay`).
    """

    alpha: float = 0.25
    fill: bool = True
    contours: bool = True
    contour_thickness: int = 1
    halo: bool = True
    heatmap: bool = False
    heatmap_alpha: float = 0.6
    heatmap_floor: float = 0.05  # probabilities below this are not tinted
    heads: bool = True

    def __post_init__(self) -> None:
        for name in ("alpha", "heatmap_alpha", "heatmap_floor"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"OverlayConfig.{name} must be within [0, 1], got {v}")
        if self.contour_thickness < 1:
            raise ValueError("OverlayConfig.contour_thickness must be >= 1")


#: the heat map's colour map, RGB, index = probability x 255: viridis is perceptually uniform, readable by
#: colour-blind readers, and its dark end is violet, not black, so low probabilities stay visible
HEATMAP_LUT = cv2.cvtColor(
    cv2.applyColorMap(np.arange(256, dtype=np.uint8).reshape(256, 1), cv2.COLORMAP_VIRIDIS), cv2.COLOR_BGR2RGB
)


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
            return cv2.convertScaleAbs(_cv_max(px, floor), alpha=alpha, beta=beta)
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

    def __init__(self, manifest: Manifest, options: OverlayConfig | None = None) -> None:
        self.options = options or OverlayConfig()
        self._classes = manifest.classes
        self._fg_offset = 0 if manifest.mask_output.activation == "softmax" else 1
        self._caption = "p(" + "/".join(c.name for c in manifest.classes[1:])[:24] + ")"
        lut = np.zeros((256, 1, 3), np.uint8)
        for label, cls in enumerate(manifest.classes):
            lut[label, 0] = cls.color
        self._lut = lut
        self._bars: dict[tuple[int, int, float], Patch] = {}  # colour bars, drawn once per image size

    def render(
        self,
        slice_: Slice,
        mask: np.ndarray,
        probabilities: np.ndarray | None = None,
        options: OverlayConfig | None = None,
    ) -> np.ndarray:
        """RGB uint8 overlay of ``mask`` (slice grid) on ``slice_``; ``probabilities`` feed the heat map."""
        opts = options or self.options
        shown = display_image(slice_)
        base = cv2.cvtColor(shown, cv2.COLOR_GRAY2RGB) if shown.ndim == 2 else shown.copy()
        heatmap = opts.heatmap and probabilities is not None
        if heatmap:
            self._heatmap(base, probabilities, opts)  # type: ignore[arg-type]
        x, y, w, h = cv2.boundingRect(mask)  # findings are small: draw only around them
        if w and opts.fill and opts.alpha > 0 and not heatmap:
            roi, labels = base[y : y + h, x : x + w], mask[y : y + h, x : x + w]
            colour = cv2.LUT(cv2.cvtColor(labels, cv2.COLOR_GRAY2RGB), self._lut)
            blended = cv2.addWeighted(roi, 1.0 - opts.alpha, colour, opts.alpha, 0.0)
            cv2.copyTo(blended, labels, roi)
        if w and opts.contours:  # over a heat map, no halo: it would hide the low probabilities around a finding
            self._outline(base, mask, (x, y, w, h), opts, halo=opts.halo and not heatmap)
        if heatmap:
            rows, cols = base.shape[:2]
            key = (rows, cols, opts.heatmap_floor)
            bar = self._bars.get(key)
            if bar is None:
                if len(self._bars) > 16:  # a stream of ever new sizes must not grow the cache forever
                    self._bars.clear()
                bar = self._bars[key] = color_bar_patch(rows, cols, HEATMAP_LUT, opts.heatmap_floor, 1.0, self._caption)
            bar.apply(base)
        return base

    def _outline(
        self, base: np.ndarray, mask: np.ndarray, box: tuple[int, int, int, int], opts: OverlayConfig, halo: bool
    ) -> None:
        x, y, w, h = box
        labels = mask[y : y + h, x : x + w]
        drawn = []
        for label in range(1, len(self._classes)):
            binary = labels if len(self._classes) == 2 else np.equal(labels, label).view(np.uint8)
            contours, _ = cv2.findContours(binary, cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE, offset=(x, y))
            if contours:
                drawn.append((contours, self._classes[label].color))
        if halo and drawn:
            # a black edge just outside each finding: drawn over the box grown by its width, then the
            # finding's own pixels are put back, so the halo never darkens the finding itself
            pad = opts.contour_thickness + 1
            rows, cols = mask.shape
            x0, y0, x1, y1 = max(0, x - pad), max(0, y - pad), min(cols, x + w + pad), min(rows, y + h + pad)
            roi, inside = base[y0:y1, x0:x1], mask[y0:y1, x0:x1]
            kept = roi.copy()
            for contours, _ in drawn:
                cv2.drawContours(base, contours, -1, (0, 0, 0), 2 * pad - 1, cv2.LINE_8)
            cv2.copyTo(kept, inside, roi)
        for contours, color in drawn:
            cv2.drawContours(base, contours, -1, color, opts.contour_thickness, cv2.LINE_8)

    def _heatmap(self, base: np.ndarray, probabilities: np.ndarray, opts: OverlayConfig) -> None:
        fg = probabilities[1 - self._fg_offset :]
        p = fg[0] if fg.shape[0] == 1 else fg.max(axis=0)
        p8 = cv2.addWeighted(p, 255.0, p, 0.0, 0.0, dtype=cv2.CV_8U)
        rows, cols = base.shape[:2]
        if p8.shape != (rows, cols):
            p8 = cv2.resize(p8, (cols, rows), interpolation=cv2.INTER_LINEAR)
        heat = cv2.LUT(cv2.cvtColor(p8, cv2.COLOR_GRAY2RGB), HEATMAP_LUT)
        tinted = cv2.addWeighted(base, 1.0 - opts.heatmap_alpha, heat, opts.heatmap_alpha, 0.0)
        # OpenCV takes a scalar for either operand; its stubs list arrays only
        floor = cv2.compare(p8, int(opts.heatmap_floor * 255), cv2.CMP_GE)  # type: ignore[call-overload]
        cv2.copyTo(tinted, floor, base)


#: earlier names of configuration classes (every frozen configuration is now called ...Config)
__getattr__ = forward_names(
    __name__,
    {
        "OverlayOptions": ("scanedge.imaging.overlay", "OverlayConfig"),
    },
)
