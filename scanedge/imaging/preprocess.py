"""Slice -> model input tensor, exactly as the manifest says.

Order: stored values -> float32 -> colour to the model's order -> resize (or pad) to the model's size ->
DICOM rescale -> intensity normalisation -> the model's layout. Rescale runs after resizing because it
is affine (the two commute) and the model's grid is usually smaller than the slice's; it is skipped for
z-score and percentile, whose result does not change under a positive affine map.

The same :class:`Preprocessor` feeds inference, calibration (``scanedge convert --precision int8``)
and the demo model's training, so all three see identical tensors. The returned tensor is a buffer
owned by the preprocessor and reused for the next call of the same shape: consume it (or copy it)
before calling again. One preprocessor per thread.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from scanedge.errors import InvalidSliceError
from scanedge.imaging.slices import Slice
from scanedge.manifest import IntensityPolicy, Manifest

__all__ = ["PreprocessInfo", "Preprocessor", "normalize_intensity"]

_INTERPOLATION = {
    "linear": cv2.INTER_LINEAR,
    "area": cv2.INTER_AREA,
    "nearest": cv2.INTER_NEAREST,
    "cubic": cv2.INTER_CUBIC,
}
#: Percentiles are estimated on at most this many pixels (a regular subsample): exact for 256x256,
#: within a fraction of a grey level for larger images, and 10x cheaper than a full sort at 1024x1024.
PERCENTILE_SAMPLE = 256 * 256


@dataclass(frozen=True)
class PreprocessInfo:
    """What the postprocessor needs to map the model's output back onto the slice.

    Attributes:
        slice_shape: the slice's (rows, cols).
        model_shape: the (height, width) of the tensor given to the model.
    """

    slice_shape: tuple[int, int]
    model_shape: tuple[int, int]
    valid_shape: tuple[int, int]  # the part of the model grid that holds image (smaller only when padding)


class Preprocessor:
    """Turns slices into the model's input tensor; buffers are allocated once per input shape."""

    def __init__(self, manifest: Manifest) -> None:
        self.manifest = manifest
        spec = manifest.input
        self._planes = spec.planes
        self._cpp = spec.channels_per_plane
        self._nchw = spec.layout == "NCHW"
        self._interp = _INTERPOLATION[manifest.size.interpolation]
        self._pad = manifest.size.mode == "pad"
        self._rescale_matters = manifest.intensity.apply_rescale and manifest.intensity.mode in (
            "none",
            "window",
            "scale",
        )
        self._tensors: dict[tuple[int, int], np.ndarray] = {}
        self._scratch: dict[tuple[int, ...], np.ndarray] = {}

    def _tensor(self, h: int, w: int) -> np.ndarray:
        t = self._tensors.get((h, w))
        if t is None:
            c = self.manifest.input.channels
            t = np.zeros((1, c, h, w) if self._nchw else (1, h, w, c), np.float32)
            self._tensors[(h, w)] = t
        return t

    def __call__(self, slice_: Slice, context: Sequence[Slice] = ()) -> tuple[np.ndarray, PreprocessInfo]:
        """The input tensor for ``slice_``.

        ``context`` holds the neighbouring slices of a 2.5D model, ordered by position, slice excluded:
        ``2 * context_slices`` of them (missing neighbours at the ends of a series are filled with the
        nearest available slice, the same way at training and inference).
        """
        rows, cols = slice_.shape
        mh, mw = self.manifest.size.model_size(rows, cols)
        vh, vw = (rows, cols) if self._pad else (mh, mw)
        tensor = self._tensor(mh, mw)
        planes = _stack_context(slice_, context, self.manifest.input.context_slices)
        for k, plane in enumerate(planes):
            if plane.shape != (rows, cols):
                raise InvalidSliceError(
                    f"context slice {k} is {plane.shape[0]}x{plane.shape[1]}, the slice is {rows}x{cols}"
                )
            self._write_plane(plane, k, tensor, vh, vw)
        valid = tensor[:, :, :vh, :vw] if self._nchw else tensor[:, :vh, :vw, :]
        normalize_intensity(valid, self.manifest.intensity, slice_, self._cpp, channels_axis=1 if self._nchw else 3)
        return tensor, PreprocessInfo((rows, cols), (mh, mw), (vh, vw))

    def _as_float32(self, pixels: np.ndarray) -> np.ndarray:
        if pixels.dtype == np.float32:
            return pixels
        buf = self._scratch.get(pixels.shape)
        if buf is None:
            buf = self._scratch[pixels.shape] = np.empty(pixels.shape, np.float32)
        np.copyto(buf, pixels, casting="unsafe")
        return buf

    def _write_plane(self, plane: Slice, k: int, tensor: np.ndarray, vh: int, vw: int) -> None:
        src = self._as_float32(_to_model_color(plane.pixels, self.manifest.input.color))
        cpp = self._cpp
        channels = slice(k * cpp, (k + 1) * cpp)
        view = tensor[0, channels, :vh, :vw] if self._nchw else tensor[0, :vh, :vw, channels]
        if self._nchw and cpp == 1:
            _resize_into(src, view[0], self._interp)  # the hot path: straight into the tensor
        else:
            sized = src if src.shape[:2] == (vh, vw) else cv2.resize(src, (vw, vh), interpolation=self._interp)
            sized = sized.reshape(vh, vw, cpp)
            view[...] = sized.transpose(2, 0, 1) if self._nchw else sized
        if self._rescale_matters and plane.has_rescale:
            view *= plane.rescale_slope
            view += plane.rescale_intercept


def _resize_into(src: np.ndarray, dst: np.ndarray, interp: int) -> None:
    if src.shape[:2] == dst.shape[:2]:
        np.copyto(dst, src)
        return
    if dst.flags.c_contiguous:
        cv2.resize(src, (dst.shape[1], dst.shape[0]), dst=dst, interpolation=interp)
        return
    dst[...] = cv2.resize(src, (dst.shape[1], dst.shape[0]), interpolation=interp)


def _to_model_color(pixels: np.ndarray, color: str) -> np.ndarray:
    if pixels.ndim == 2:
        return pixels if color == "gray" else np.repeat(pixels[:, :, None], 3, axis=2)
    if color == "gray":
        src = pixels if pixels.dtype in (np.uint8, np.uint16, np.float32) else pixels.astype(np.float32)
        return cv2.cvtColor(src, cv2.COLOR_RGB2GRAY)
    return pixels if color == "rgb" else pixels[:, :, ::-1]


def _stack_context(slice_: Slice, context: Sequence[Slice], k: int) -> list[Slice]:
    if k == 0:
        return [slice_]
    before = list(context[: len(context) // 2])[-k:]
    after = list(context[len(context) // 2 :])[:k]
    before = [before[0] if before else slice_] * (k - len(before)) + before
    after = after + [after[-1] if after else slice_] * (k - len(after))
    return [*before, slice_, *after]


def normalize_intensity(
    tensor: np.ndarray,
    policy: IntensityPolicy,
    slice_: Slice | None = None,
    channels_per_plane: int = 1,
    *,
    channels_axis: int = 1,
) -> None:
    """Apply ``policy``'s normalisation to a float32 tensor in place (rescale already applied)."""
    mode = policy.mode
    if mode == "none":
        return
    if mode == "zscore":
        mean, std = _mean_std(tensor)
        tensor -= mean
        tensor *= 1.0 / max(std, 1e-6)
        return
    if mode == "scale":
        if policy.scale != 1.0:
            tensor *= policy.scale
        if policy.mean:
            channels = tensor.shape[channels_axis]
            for c in range(channels):
                idx: list[slice | int] = [slice(None)] * tensor.ndim
                idx[channels_axis] = c
                view = tensor[tuple(idx)]
                j = c % channels_per_plane
                view -= policy.mean[j]
                view *= 1.0 / policy.std[j]
        return
    if mode == "window":
        lo, hi = _window(tensor, policy, slice_)
    else:  # percentile
        sample = _subsample(tensor, channels_axis)
        lo, hi = (float(v) for v in np.percentile(sample, (policy.percentile_low, policy.percentile_high)))
    tensor -= lo
    tensor *= 1.0 / max(hi - lo, 1e-6)
    np.clip(tensor, 0.0, 1.0, out=tensor)


def _mean_std(tensor: np.ndarray) -> tuple[float, float]:
    # cv2.meanStdDev accumulates in float64 and is ~4x faster than numpy; it needs a 2-D view.
    flat = tensor.reshape(-1, tensor.shape[-1]) if tensor.flags.c_contiguous else np.squeeze(tensor)
    if flat.ndim == 2 and flat.strides[1] == flat.itemsize:
        mean, std = cv2.meanStdDev(flat)
        return float(mean[0, 0]), float(std[0, 0])
    return float(tensor.mean(dtype=np.float64)), float(tensor.std(dtype=np.float64))


def _window(tensor: np.ndarray, policy: IntensityPolicy, slice_: Slice | None) -> tuple[float, float]:
    if policy.window_center is not None:
        c, w = policy.window_center, policy.window_width
    elif slice_ is not None and slice_.window_center is not None:
        c, w = slice_.window_center, slice_.window_width
    else:
        return float(tensor.min()), float(tensor.max())
    return c - w / 2.0, c + w / 2.0  # type: ignore[operator]


def _subsample(tensor: np.ndarray, channels_axis: int) -> np.ndarray:
    step = max(1, int(np.ceil(np.sqrt(tensor.size / PERCENTILE_SAMPLE))))
    if step == 1:
        return tensor
    index = [slice(None, None, step)] * tensor.ndim
    index[0] = index[channels_axis] = slice(None)
    return tensor[tuple(index)]
