"""Is this slice one the model was made for? The manifest's ``applies_to`` rules against the slice.

A segmentation model answers for any pixels it is given: a brain-FLAIR model finds "lesions" on the
vertebral cortex of a spine CT with probability 1.00. The check is a few string and number comparisons
per slice, done before preprocessing, so an image outside the model's scope costs nothing but the
refusal. The refusal names what the model expects and what the slice is, quoting only values that are
DICOM code strings (a modality, a body part, a photometric interpretation) or numbers: never free text,
which could hold anything a person typed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from scanedge.errors import OutOfScopeError
from scanedge.imaging.slices import Slice
from scanedge.manifest import CODE_STRING, AppliesTo

__all__ = ["UNCHECKED", "ScopeStatus", "ScopeVerdict", "check_scope", "require_scope"]

#: ``in``: every rule that could be tested passed; ``unchecked``: no rule could be tested (the model
#: declares no scope, or the slice carries none of the attributes its rules test); ``outside``: a rule
#: failed (a result only says so when the caller overrode the scope).
ScopeStatus = Literal["in", "unchecked", "outside"]


@dataclass(frozen=True)
class ScopeVerdict:
    """The outcome of checking one slice against a model's ``applies_to``.

    Attributes:
        status: ``in``, ``unchecked`` or ``outside`` (see :data:`ScopeStatus`).
        detail: for ``outside``, what the model expects and what the slice is; "" otherwise.
        tested: the attributes that were tested (``modality``, ``body part``, ...).
    """

    status: ScopeStatus = "unchecked"
    detail: str = ""
    tested: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, str]:
        """``{"status": ..., "detail": ...}`` for results.json and the wire."""
        return {"status": self.status, "detail": self.detail}


#: the verdict when nothing could be tested (also: the model declares no scope)
UNCHECKED = ScopeVerdict()


def _shown(value: str) -> str:
    return value if CODE_STRING.fullmatch(value) else "(not a defined term)"


def check_scope(rules: AppliesTo, slice_: Slice) -> ScopeVerdict:
    """Test ``slice_`` against ``rules``; attributes the slice does not carry are not tested."""
    if not rules.restricts:
        return UNCHECKED
    acq, geo = slice_.acquisition, slice_.geometry
    tested: list[str] = []
    wrong: list[str] = []
    modality = slice_.identity.modality.strip().upper()
    if rules.modalities and modality:
        tested.append("modality")
        if modality not in rules.modalities:
            wrong.append(f"modality {_shown(modality)}")
    if rules.body_parts and acq.body_part:
        tested.append("body part")
        if acq.body_part not in rules.body_parts:
            wrong.append(f"body part {_shown(acq.body_part)}")
    if rules.image_type and acq.image_type:
        tested.append("image type")
        missing = [v for v in rules.image_type if v not in acq.image_type]
        if missing:
            wrong.append("image type without " + "\\".join(missing))
    if rules.series_description and acq.series_description:
        tested.append("series description")
        if not re.search(rules.series_description, acq.series_description, re.IGNORECASE):
            wrong.append("a series description that does not match the model's pattern")
    if rules.photometric and acq.photometric:
        tested.append("photometric")
        if acq.photometric not in rules.photometric:
            wrong.append(f"photometric {_shown(acq.photometric)}")
    if rules.pixel_spacing_mm is not None and geo.pixel_spacing is not None:
        tested.append("pixel spacing")
        low, high = rules.pixel_spacing_mm
        if not all(low <= v <= high for v in geo.pixel_spacing):
            wrong.append(f"pixel spacing {geo.pixel_spacing[0]:g} x {geo.pixel_spacing[1]:g} mm")
    if rules.slice_thickness_mm is not None and geo.slice_thickness:
        tested.append("slice thickness")
        low, high = rules.slice_thickness_mm
        if not low <= geo.slice_thickness <= high:
            wrong.append(f"slice thickness {geo.slice_thickness:g} mm")
    if wrong:
        detail = f"the model is made for {rules.describe()}; this slice has {', '.join(wrong)}"
        return ScopeVerdict("outside", detail, tuple(tested))
    return ScopeVerdict("in" if tested else "unchecked", "", tuple(tested))


def require_scope(rules: AppliesTo, slice_: Slice, model: str, *, ignore: bool = False) -> ScopeVerdict:
    """:func:`check_scope`, raising :class:`OutOfScopeError` for a slice outside unless ``ignore``
    (research use: the verdict, ``outside``, then travels with the result)."""
    verdict = check_scope(rules, slice_)
    if verdict.status == "outside" and not ignore:
        raise OutOfScopeError(
            f"{model}: {verdict.detail}. Its findings on this image would mean nothing, so it was not "
            "segmented (override the scope only for research: --ignore-scope, or ignore_scope in a SEGMENT)"
        )
    return verdict
