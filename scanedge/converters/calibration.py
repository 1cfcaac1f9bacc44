"""Calibration data for int8: real slices, through exactly the runtime's preprocessing.

Quantization ranges are learned from the tensors the model will actually see. The reader does not
reimplement any normalisation: it holds a :class:`scanedge.imaging.preprocess.Preprocessor` built from
the model's manifest, the same class the pipeline uses at inference.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from scanedge.errors import ConversionError
from scanedge.imaging.files import load_slices
from scanedge.imaging.preprocess import Preprocessor
from scanedge.imaging.series import context_window
from scanedge.imaging.slices import Slice
from scanedge.manifest import Manifest

__all__ = ["CalibrationSlices", "calibration_tensors"]


def calibration_tensors(manifest: Manifest, slices: Sequence[Slice], limit: int | None = None) -> Iterator[np.ndarray]:
    """Model input tensors for ``slices`` (in series order), exactly as inference would build them."""
    pre = Preprocessor(manifest)
    k = manifest.input.context_slices
    for i, s in enumerate(slices[:limit] if limit else slices):
        tensor, _ = pre(s, context_window(slices, i, k))
        yield tensor.copy()  # the preprocessor reuses its buffer


class CalibrationSlices:
    """An ``onnxruntime.quantization.CalibrationDataReader`` over a folder of DICOM / .npy / image slices."""

    def __init__(self, manifest: Manifest, source: str | os.PathLike[str] | Iterable[Slice], limit: int = 200) -> None:
        if isinstance(source, (str, os.PathLike)):
            slices = [item.slice for item in load_slices([source])]
        else:
            slices = list(source)
        if not slices:
            raise ConversionError(f"no calibration slices found in {source}")
        self.input_name = manifest.input.name
        self.count = min(limit, len(slices))
        self._tensors = list(calibration_tensors(manifest, slices, self.count))
        self._iter: Iterator[np.ndarray] | None = None

    def get_next(self) -> dict[str, Any] | None:
        """The next calibration feed ``{input name: tensor}``; None once every slice has been given."""
        if self._iter is None:
            self._iter = iter(self._tensors)
        tensor = next(self._iter, None)
        return None if tensor is None else {self.input_name: tensor}

    def rewind(self) -> None:
        """Start again from the first slice (the quantizer may read the data more than once)."""
        self._iter = None
