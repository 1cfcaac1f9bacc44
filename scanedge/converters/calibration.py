"""Calibration data for int8: real slices, through exactly the runtime's preprocessing.

Quantization ranges are learned from the tensors the model will actually see. The readers do not
reimplement any normalisation: a one-input model's slices go through a
:class:`scanedge.imaging.preprocess.Preprocessor` built from the model's manifest, a multi-input model's
paired slices (one per role, on the reference grid) through a :class:`scanedge.imaging.role_inputs.RoleAssembler`,
the same classes the pipeline uses at inference. Pairing a study is not done here (it is the runtime's
policy, :mod:`scanedge.runtime.core.batch_inputs`, one floor up): ``scanedge convert`` pairs the study and
hands the sets in.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from scanedge.errors import ConversionError
from scanedge.imaging.files import load_slices
from scanedge.imaging.preprocess import Preprocessor
from scanedge.imaging.role_inputs import RoleAssembler
from scanedge.imaging.scope import check_scope
from scanedge.imaging.series import context_window
from scanedge.imaging.slices import Slice
from scanedge.manifest import Manifest

__all__ = [
    "MIN_CALIBRATION_SLICES",
    "CalibrationFeeds",
    "CalibrationReader",
    "CalibrationSlices",
    "calibration_tensors",
]

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


class CalibrationReader:
    """An ``onnxruntime.quantization.CalibrationDataReader`` over feeds ``{graph input: tensor}`` built up front.

    Attributes:
        count: calibration slices (or paired slice sets) used.
        excluded: those left out because they are outside the model's scope.
        notes: warnings for the person converting (too few slices, slices left out and why).
    """

    count: int
    excluded: int
    notes: list[str]
    _feeds: list[dict[str, np.ndarray]]
    _iter: Iterator[dict[str, np.ndarray]] | None = None

    def get_next(self) -> dict[str, Any] | None:
        """The next calibration feed ``{input name: tensor}``; None once every slice has been given."""
        if self._iter is None:
            self._iter = iter(self._feeds)
        return next(self._iter, None)

    def rewind(self) -> None:
        """Start again from the first slice (the quantizer may read the data more than once)."""
        self._iter = None

    def _scoped(self, manifest: Manifest, references: Sequence[Slice], where: str, what: str) -> list[int]:
        """Indices of ``references`` inside the model's scope (manifest ``applies_to``): int8 ranges learned from
        a CT would fit a brain MR model badly. Sets ``excluded`` and the notes; none left is a ConversionError."""
        verdicts = [check_scope(manifest.applies_to, s) for s in references]
        outside = [v for v in verdicts if v.status == "outside"]
        self.excluded = len(outside)
        self.notes = []
        if outside:
            self.notes.append(
                f"left out {len(outside)} calibration {what}(s) outside the model's scope ({outside[0].detail})"
            )
        kept = [i for i, v in enumerate(verdicts) if v.status != "outside"]
        if not kept:
            raise ConversionError(
                f"none of the calibration {what}s{where} is inside the model's scope; calibrate on images "
                f"like those the model is made for: {manifest.applies_to.describe()}"
            )
        return kept

    def _check_count(self, limit: int, available: int, what: str) -> None:
        self.count = min(limit, available)
        if self.count < MIN_CALIBRATION_SLICES:
            self.notes.append(
                f"only {self.count} calibration {what}; int8 ranges from fewer than {MIN_CALIBRATION_SLICES} may "
                "miss intensities the model will meet: verify the result (scanedge verify) on other slices"
            )


class CalibrationSlices(CalibrationReader):
    """The calibration reader of a one-input model, over a folder of DICOM / .npy / image slices.

    Slices outside the model's scope are left out and said in ``notes``, as is a count below
    :data:`MIN_CALIBRATION_SLICES`; none at all is a ConversionError. A multi-input model (manifest
    ``inputs``) is refused: its feeds need the study paired, given to :class:`CalibrationFeeds`.

    Attributes:
        input_name: the model input the feeds are for.
    """

    def __init__(self, manifest: Manifest, source: str | os.PathLike[str] | Iterable[Slice], limit: int = 200) -> None:
        if manifest.inputs is not None:
            raise ConversionError(
                f"model {manifest.name} takes several series at once ({', '.join(manifest.roles)}): its calibration "
                "data is a study paired slice by slice (scanedge convert --calibration STUDY or --roles ROLE=DIR), "
                "given as paired sets (CalibrationFeeds), not slices of one series"
            )
        where = f" in {source}" if isinstance(source, (str, os.PathLike)) else ""
        if isinstance(source, (str, os.PathLike)):
            slices = [item.slice for item in load_slices([source])]
        else:
            slices = list(source)
        if not slices:
            raise ConversionError(f"no calibration slices found{where}")
        slices = [slices[i] for i in self._scoped(manifest, slices, where, "slice")]
        self.input_name = manifest.input.name
        self._check_count(limit, len(slices), "slice(s)")
        self._feeds = [{self.input_name: t} for t in calibration_tensors(manifest, slices, self.count)]


class CalibrationFeeds(CalibrationReader):
    """The calibration reader of a multi-input model (manifest ``inputs``): each feed holds every graph input,
    built by :class:`~scanedge.imaging.role_inputs.RoleAssembler` from one paired set, as the runtime builds it.

    ``sets``: per reference slice, one slice per role, partners already on the reference grid (what
    :func:`scanedge.runtime.core.batch_inputs.paired_slices` gives). A set outside the model's scope (by its
    reference slice) is left out and said in ``notes``, as is a count below :data:`MIN_CALIBRATION_SLICES`;
    none at all, or a set lacking a role, is a ConversionError.

    Attributes:
        input_names: the graph inputs every feed holds.
        roles: the roles each set gives, reference first.
    """

    def __init__(self, manifest: Manifest, sets: Iterable[Mapping[str, Slice]], limit: int = 200) -> None:
        if manifest.inputs is None:
            raise ConversionError(f"model {manifest.name} takes one input; calibrate it on slices (CalibrationSlices)")
        self.roles = manifest.roles
        items = list(sets)
        if not items:
            raise ConversionError(
                f"no paired calibration slice sets: model {manifest.name} needs a slice of every role "
                f"({', '.join(self.roles)}) at each position"
            )
        for item in items:
            lacking = [r for r in self.roles if r not in item]
            if lacking:
                raise ConversionError(f"a calibration set lacks role(s) {', '.join(lacking)} of model {manifest.name}")
        reference = self.roles[0]
        items = [items[i] for i in self._scoped(manifest, [s[reference] for s in items], "", "slice set")]
        self._check_count(limit, len(items), "paired slice set(s)")
        assemble = RoleAssembler(manifest)
        self.input_names = manifest.graph_inputs()
        self._feeds = []
        for item in items[: self.count]:
            feeds, _ = assemble(item)
            self._feeds.append({name: tensor.copy() for name, tensor in feeds.items()})  # its buffers are reused
