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
from scanedge.imaging.scope import check_scope
from scanedge.imaging.series import context_window
from scanedge.imaging.slices import Slice
from scanedge.manifest import Manifest

__all__ = ["MIN_CALIBRATION_SLICES", "CalibrationSlices", "calibration_tensors"]

#: Fewer calibration slices than this give int8 ranges from too little of the anatomy and contrast the
#: model will see: the conversion warns (documented in the README's int8 section).
MIN_CALIBRATION_SLICES = 20


def calibration_tensors(manifest: Manifest, slices: Sequence[Slice], limit: int | None = None) -> Iterator[np.ndarray]:
    """Model input tensors for ``slices`` (in series order), exactly as inference would build them."""
    pre = Preprocessor(manifest)
    k = manifest.input.context_slices
    for i, s in enumerate(slices[:limit] if limit else slices):
        tensor, _ = pre(s, context_window(slices, i, k))
        yield tensor.copy()  # the preprocessor reuses its buffer


class CalibrationSlices:
    """An ``onnxruntime.quantization.CalibrationDataReader`` over a folder of DICOM / .npy / image slices.

    Slices outside the model's scope (manifest ``applies_to``) are left out: int8 ranges learned from a CT
    would fit a brain MR model badly. ``notes`` says what was left out and when fewer than
    :data:`MIN_CALIBRATION_SLICES` remain; none at all is a ConversionError.

    Attributes:
        input_name: the model input the feeds are for.
        count: calibration slices used.
        excluded: slices left out because they are outside the model's scope.
        notes: warnings for the person converting (too few slices, slices left out and why).
    """

    def __init__(self, manifest: Manifest, source: str | os.PathLike[str] | Iterable[Slice], limit: int = 200) -> None:
        if manifest.inputs is not None:
            raise ConversionError(
                f"int8 calibration feeds slices of one series; model {manifest.name} takes several at once "
                f"({', '.join(manifest.roles)}): convert it to fp16, or keep it fp32"
            )
        where = f" in {source}" if isinstance(source, (str, os.PathLike)) else ""
        if isinstance(source, (str, os.PathLike)):
            slices = [item.slice for item in load_slices([source])]
        else:
            slices = list(source)
        if not slices:
            raise ConversionError(f"no calibration slices found{where}")
        verdicts = [check_scope(manifest.applies_to, s) for s in slices]
        outside = [v for v in verdicts if v.status == "outside"]
        slices = [s for s, v in zip(slices, verdicts) if v.status != "outside"]
        self.excluded = len(outside)
        self.notes: list[str] = []
        if outside:
            self.notes.append(
                f"left out {len(outside)} calibration slice(s) outside the model's scope ({outside[0].detail})"
            )
        if not slices:
            raise ConversionError(
                f"none of the calibration slices{where} is inside the model's scope; calibrate on images "
                f"like those the model is made for: {manifest.applies_to.describe()}"
            )
        self.input_name = manifest.input.name
        self.count = min(limit, len(slices))
        if self.count < MIN_CALIBRATION_SLICES:
            self.notes.append(
                f"only {self.count} calibration slice(s); int8 ranges from fewer than {MIN_CALIBRATION_SLICES} may "
                "miss intensities the model will meet: verify the result (scanedge verify) on other slices"
            )
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
