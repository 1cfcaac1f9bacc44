"""The model manifest: everything scanedge must know about a segmentation model that ONNX does not say.

An ONNX graph says "float32[1,1,256,256] in, float32[1,2,256,256] out". It does not say that the input is
a z-scored FLAIR slice resized to 256², that channel 1 of the output is "lesion" drawn in red, or that the
outputs are logits. Getting any of that wrong gives a plausible but wrong mask, so the manifest travels
*inside* the ONNX file (``metadata_props["scanedge.manifest"]``, JSON) and can also be kept as a JSON
sidecar (``MODEL.onnx.manifest.json``) for models that cannot be rewritten.

Compatibility: new fields get defaults; the meaning of an existing field never changes; unknown fields
are refused (a typo must not silently fall back to a default). ``onnx_sha256`` is the sha256 of the
serialized ONNX *graph* (nodes and weights, not the metadata), so embedding the manifest does not change
it, while any change to the network does.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from scanedge.errors import ManifestInvalidError, ManifestMismatchError, ManifestMissingError, ModelFileError
from scanedge.manifest_inputs import InputRole, InputsSpec, PairingPolicy

__all__ = [
    "CODE_STRING",
    "METADATA_KEY",
    "SCHEMA_VERSION",
    "SERIES_MODEL_AGGREGATION",
    "AppliesTo",
    "ClassSpec",
    "CodedConcept",
    "FollowupSpec",
    "HeadSpec",
    "InputRole",
    "InputSpec",
    "InputsSpec",
    "IntensityPolicy",
    "Manifest",
    "ManifestSource",
    "OperatingPoint",
    "OutputSpec",
    "PairingPolicy",
    "SeriesModelSpec",
    "SizePolicy",
    "check_head_output",
    "check_model_io",
    "check_model_output",
    "embed_manifest",
    "graph_sha256",
    "load_manifest",
    "load_onnx_model",
    "sidecar_path",
]

SCHEMA_VERSION = 1
METADATA_KEY = "scanedge.manifest"

Layout = Literal["NCHW", "NHWC"]
ColorOrder = Literal["gray", "rgb", "bgr"]
SizeMode = Literal["fixed", "multiple", "pad"]
Interpolation = Literal["linear", "area", "nearest", "cubic"]
IntensityMode = Literal["none", "window", "percentile", "zscore", "scale"]
OutputKind = Literal["logits", "probabilities"]
Activation = Literal["softmax", "sigmoid"]
HeadRole = Literal["mask", "score", "saliency"]
Aggregation = Literal["max", "mean", "noisy_or"]
#: the ``aggregation`` a series score states when a score head's series model gave it (never a manifest value)
SERIES_MODEL_AGGREGATION = "series_model"


def _fail(what: str, problem: str) -> ManifestInvalidError:
    return ManifestInvalidError(f"manifest field {what}: {problem}")


def _choice(what: str, value: Any, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise _fail(what, f"{value!r} is not one of {', '.join(map(repr, allowed))}")


def _positive_int(what: str, value: Any, *, allow_zero: bool = False) -> None:
    low = 0 if allow_zero else 1
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise _fail(what, f"{value!r} must be an integer >= {low}")


def _finite(what: str, value: Any) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise _fail(what, f"{value!r} must be a finite number")


@dataclass(frozen=True)
class InputSpec:
    """The model's image input.

    ``channels`` must equal ``(2 * context_slices + 1) * (3 if colour else 1)``: a 2.5D model that takes
    one neighbour on each side of a grey slice has three channels, ordered caudal neighbour, slice, cranial
    neighbour (by position in the series).

    Attributes:
        name: the input tensor's name in the ONNX graph.
        layout: ``NCHW`` or ``NHWC``.
        color: ``gray``, or the channel order of a colour model: ``rgb`` or ``bgr``.
        context_slices: neighbouring slices stacked on each side of the slice (2.5D models); 0 for 2-D.
    """

    name: str = "image"
    layout: Layout = "NCHW"
    channels: int = 1
    color: ColorOrder = "gray"
    context_slices: int = 0

    def __post_init__(self) -> None:
        if not self.name:
            raise _fail("input.name", "must not be empty")
        _choice("input.layout", self.layout, ("NCHW", "NHWC"))
        _choice("input.color", self.color, ("gray", "rgb", "bgr"))
        _positive_int("input.channels", self.channels)
        _positive_int("input.context_slices", self.context_slices, allow_zero=True)
        expected = self.planes * self.channels_per_plane
        if self.channels != expected:
            raise _fail(
                "input.channels",
                f"{self.channels} does not match color={self.color!r} with "
                f"context_slices={self.context_slices} (that makes {expected})",
            )

    @property
    def planes(self) -> int:
        """Slices stacked into one input: the slice itself plus its context on both sides."""
        return 2 * self.context_slices + 1

    @property
    def channels_per_plane(self) -> int:
        """Channels one slice contributes: 1 for grey, 3 for colour."""
        return 1 if self.color == "gray" else 3


@dataclass(frozen=True)
class SizePolicy:
    """How a slice of any size becomes the model's input size.

    ``fixed``: resize to ``height`` x ``width``. ``multiple``: resize each side to the nearest multiple of
    ``multiple`` (for models with dynamic height/width). ``pad``: zero-pad bottom/right up to the next
    multiple, keeping the pixel grid exactly (the output is cropped back).

    Attributes:
        mode: ``fixed``, ``multiple`` or ``pad``, as above.
        interpolation: how slices are resized: ``area`` (best for shrinking), ``linear``, ``cubic`` or
            ``nearest``.
    """

    mode: SizeMode = "fixed"
    height: int | None = 256
    width: int | None = 256
    multiple: int = 32
    interpolation: Interpolation = "area"

    def __post_init__(self) -> None:
        _choice("size.mode", self.mode, ("fixed", "multiple", "pad"))
        _choice("size.interpolation", self.interpolation, ("linear", "area", "nearest", "cubic"))
        _positive_int("size.multiple", self.multiple)
        if self.mode == "fixed":
            _positive_int("size.height", self.height)
            _positive_int("size.width", self.width)

    def model_size(self, height: int, width: int) -> tuple[int, int]:
        """The (height, width) the model sees for a slice of this size."""
        if self.mode == "fixed":
            return int(self.height), int(self.width)  # type: ignore[arg-type]
        m = self.multiple
        if self.mode == "pad":
            return -(-height // m) * m, -(-width // m) * m
        return max(m, round(height / m) * m), max(m, round(width / m) * m)


@dataclass(frozen=True)
class IntensityPolicy:
    """How stored pixel values become the numbers the model was trained on.

    Steps, in order: DICOM rescale (``apply_rescale``, slope/intercept, e.g. to Hounsfield units), then one
    normalisation ``mode``:

    - ``window``: clip to ``window_center`` ± ``window_width``/2 and map to [0, 1]; without a centre/width
      the slice's own DICOM window is used, and without that its min/max.
    - ``percentile``: clip to the ``percentile_low``/``percentile_high`` percentiles, map to [0, 1].
    - ``zscore``: subtract the image mean, divide by its standard deviation.
    - ``scale``: ``(x * scale - mean[c]) / std[c]`` per channel, as most imported models expect
      (e.g. scale=1/255 with ImageNet mean/std).
    - ``none``: the rescaled values as they are.

    Attributes:
        mean: per-channel means for ``scale`` (empty: no subtraction); as many as one slice has channels.
        std: per-channel standard deviations for ``scale``, each > 0; as many as ``mean``.
    """

    mode: IntensityMode = "zscore"
    apply_rescale: bool = True
    window_center: float | None = None
    window_width: float | None = None
    percentile_low: float = 0.5
    percentile_high: float = 99.5
    scale: float = 1.0
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        _choice("intensity.mode", self.mode, ("none", "window", "percentile", "zscore", "scale"))
        if (self.window_center is None) != (self.window_width is None):
            raise _fail("intensity.window_center/window_width", "give both or neither")
        if self.window_center is not None:
            _finite("intensity.window_center", self.window_center)
            _finite("intensity.window_width", self.window_width)
            if self.window_width <= 0:  # type: ignore[operator]
                raise _fail("intensity.window_width", "must be > 0")
        _finite("intensity.percentile_low", self.percentile_low)
        _finite("intensity.percentile_high", self.percentile_high)
        if not 0 <= self.percentile_low < self.percentile_high <= 100:
            raise _fail("intensity.percentile_low/high", "need 0 <= low < high <= 100")
        _finite("intensity.scale", self.scale)
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        if len(self.mean) != len(self.std):
            raise _fail("intensity.mean/std", "must have the same length")
        if any(s <= 0 for s in self.std):
            raise _fail("intensity.std", "every value must be > 0")


@dataclass(frozen=True)
class OutputSpec:
    """The model's output: per-class scores, NCHW.

    softmax: one channel per class, background included. sigmoid: one channel per foreground class
    (class k+1 is channel k); a pixel takes the most probable class over its threshold, else background.

    Attributes:
        name: the output tensor's name in the ONNX graph.
        kind: ``logits`` (the activation is applied by scanedge) or ``probabilities`` (already applied).
        activation: ``softmax`` or ``sigmoid``, as above.
    """

    name: str = "logits"
    kind: OutputKind = "logits"
    activation: Activation = "softmax"

    def __post_init__(self) -> None:
        if not self.name:
            raise _fail("output.name", "must not be empty")
        _choice("output.kind", self.kind, ("logits", "probabilities"))
        _choice("output.activation", self.activation, ("softmax", "sigmoid"))


@dataclass(frozen=True)
class CodedConcept:
    """A concept from a coding scheme, as DICOM writes it (a Code Sequence item): SNOMED CT ``SCT``, ``DCM``, ...

    DICOM objects scanedge writes (a SEG's segment descriptions) describe classes by code, not by name, so
    that a PACS or viewer can tell a lesion from an organ whatever the model calls it.

    Attributes:
        value: the code value (``52988006``), 1-64 characters.
        scheme: the coding scheme designator (``SCT``), 1-16 characters.
        meaning: the code's meaning in words (``Lesion``), 1-64 characters.
    """

    value: str
    scheme: str
    meaning: str

    def __post_init__(self) -> None:
        for what, text, limit in (
            ("value", self.value, 64),
            ("scheme", self.scheme, 16),
            ("meaning", self.meaning, 64),
        ):
            if not isinstance(text, str) or not 1 <= len(text) <= limit or not text.isprintable():
                raise _fail(f"code.{what}", f"{text!r} must be printable text of 1-{limit} characters")
        if "\\" in self.value + self.scheme + self.meaning:
            raise _fail("code", "a backslash is the DICOM value separator and cannot be part of a code")


_CODED = ("property_category", "property_type", "anatomic_region")


@dataclass(frozen=True)
class ClassSpec:
    """One label value. ``color`` is RGB 0-255; ``threshold`` is the probability a pixel needs to be
    called this class (sigmoid outputs, and the foreground class of a two-class softmax).

    Attributes:
        name: the class's name in results and reports (``lesion``); unique within a manifest.
        property_category: what kind of thing the class is, coded (DICOM CID 7150, e.g. SCT 49755003
            "Morphologically abnormal structure"); used in DICOM SEG segment descriptions. Optional.
        property_type: what the class is, coded (DICOM CID 7151, e.g. SCT 52988006 "Lesion"). Optional;
            given together with ``property_category``.
        anatomic_region: where it is, coded (DICOM CID 4, e.g. SCT 12738006 "Brain"). Optional.
    """

    name: str
    color: tuple[int, int, int] = (255, 0, 0)
    threshold: float = 0.5
    property_category: CodedConcept | None = None
    property_type: CodedConcept | None = None
    anatomic_region: CodedConcept | None = None

    def __post_init__(self) -> None:
        if not self.name:
            raise _fail("classes[].name", "must not be empty")
        for what in _CODED:
            value = getattr(self, what)
            if isinstance(value, Mapping):
                object.__setattr__(self, what, _build(CodedConcept, value, f"classes[{self.name}].{what}"))
            elif value is not None and not isinstance(value, CodedConcept):
                raise _fail(f"classes[{self.name}].{what}", "must be an object {value, scheme, meaning}")
        if (self.property_category is None) != (self.property_type is None):
            raise _fail(f"classes[{self.name}].property_category/property_type", "give both or neither")
        color = tuple(self.color)
        if len(color) != 3 or not all(isinstance(c, int) and 0 <= c <= 255 for c in color):
            raise _fail(f"classes[{self.name}].color", f"{self.color!r} must be three integers 0-255")
        object.__setattr__(self, "color", color)
        _finite(f"classes[{self.name}].threshold", self.threshold)
        if not 0 < self.threshold < 1:
            raise _fail(f"classes[{self.name}].threshold", "must be between 0 and 1 (exclusive)")


#: What a DICOM Code String may hold (PS3.5 6.2): Modality, Body Part Examined, Image Type values, ...
CODE_STRING = re.compile(r"[A-Z0-9_ ]{1,16}")


def _code_strings(what: str, values: Any) -> tuple[str, ...]:
    if isinstance(values, str) or not isinstance(values, (tuple, list)):
        raise _fail(what, f"{values!r} must be a list of DICOM code strings")
    out = []
    for v in values:
        text = v.strip().upper() if isinstance(v, str) else v
        if not isinstance(text, str) or not CODE_STRING.fullmatch(text):
            raise _fail(what, f"{v!r} is not a DICOM code string (1-16 of A-Z, 0-9, space, underscore)")
        out.append(text)
    if len(out) > 64:
        raise _fail(what, "at most 64 values")
    return tuple(out)


def _range(what: str, value: Any) -> tuple[float, float] | None:
    if value is None:
        return None
    if isinstance(value, str) or not isinstance(value, (tuple, list)) or len(value) != 2:
        raise _fail(what, f"{value!r} must be [min, max] in millimetres")
    _finite(what, value[0])
    _finite(what, value[1])
    low, high = float(value[0]), float(value[1])
    if not 0 <= low <= high <= 1e4:
        raise _fail(what, f"{list(value)} needs 0 <= min <= max <= 10000")
    return low, high


@dataclass(frozen=True)
class AppliesTo:
    """Which images the model was made for; a slice outside is refused with OUT_OF_SCOPE.

    A brain-FLAIR model run on a spine CT still produces red marks, and nobody at the console can tell
    they mean nothing. These rules, in the spirit of MONAI Deploy's series-selection rules, say what the
    model may see. Every rule is optional and the empty section accepts every image (the default, so
    manifests written before it keep their meaning). A rule is tested only against attributes the slice
    carries: a raw pixel frame without a modality, or a DICOM object without Body Part Examined, passes
    that rule untested (results say ``scope: unchecked`` when nothing could be tested). Code strings are
    compared case-insensitively.

    Attributes:
        modalities: DICOM Modality values accepted (``MR``, ``CT``, ...); empty: any.
        body_parts: Body Part Examined values accepted (``BRAIN``, ``HEAD``, ...); empty: any.
        image_type: values Image Type must all contain (e.g. ``ORIGINAL``, ``PRIMARY``); empty: any.
        series_description: a regular expression Series Description must match (searched, ignoring case);
            empty: any.
        photometric: photometric interpretations accepted, as stored (``MONOCHROME2``, ``RGB``,
            ``YBR_FULL_422``, ...); empty: any.
        pixel_spacing_mm: [min, max] in-plane pixel spacing (both directions); None: any.
        slice_thickness_mm: [min, max] Slice Thickness; None: any.
    """

    modalities: tuple[str, ...] = ()
    body_parts: tuple[str, ...] = ()
    image_type: tuple[str, ...] = ()
    series_description: str = ""
    photometric: tuple[str, ...] = ()
    pixel_spacing_mm: tuple[float, float] | None = None
    slice_thickness_mm: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        for name in ("modalities", "body_parts", "image_type", "photometric"):
            object.__setattr__(self, name, _code_strings(f"applies_to.{name}", getattr(self, name)))
        if not isinstance(self.series_description, str) or len(self.series_description) > 256:
            raise _fail("applies_to.series_description", "must be a regular expression of at most 256 characters")
        try:
            re.compile(self.series_description)
        except re.error as exc:
            raise _fail("applies_to.series_description", f"is not a regular expression: {exc}") from None
        for name in ("pixel_spacing_mm", "slice_thickness_mm"):
            object.__setattr__(self, name, _range(f"applies_to.{name}", getattr(self, name)))

    @property
    def restricts(self) -> bool:
        """Whether any rule is set (an empty section accepts every image)."""
        return self != _UNRESTRICTED

    def describe(self) -> str:
        """The scope in words, e.g. ``MR images (body part BRAIN or HEAD, photometric MONOCHROME2)``."""
        parts = []
        if self.body_parts:
            parts.append("body part " + " or ".join(self.body_parts))
        if self.image_type:
            parts.append("image type " + "\\".join(self.image_type))
        if self.series_description:
            parts.append(f"series description matching {self.series_description!r}")
        if self.photometric:
            parts.append("photometric " + " or ".join(self.photometric))
        for what, r in (("pixel spacing", self.pixel_spacing_mm), ("slice thickness", self.slice_thickness_mm)):
            if r is not None:
                parts.append(f"{what} {r[0]:g}-{r[1]:g} mm")
        images = (" or ".join(self.modalities) + " images") if self.modalities else "images"
        return images + (f" ({', '.join(parts)})" if parts else "")


#: a scope that accepts every image (compared against, not built, on each slice)
_UNRESTRICTED = AppliesTo()


#: most heads one manifest may declare (a graph with more outputs names the ones scanedge reads)
MAX_HEADS = 16
#: most classes over all score heads (an ImageNet-size head fits), and the longest name of one (a RESULT
#: carries the most probable of them: :data:`scanedge.imaging.heads.WIRE_SCORE_CLASSES`)
MAX_SCORE_CLASSES = 1000
MAX_SCORE_NAME = 64


#: a series model's fixed input: depth (slices after resampling) and each in-plane side
MAX_SERIES_DEPTH = 512
MAX_SERIES_SIDE = 1024
#: most planes a series model's volume holds per series, and most values (planes x height x width x colour
#: channels) held per series: 2^26 float32 values are 256 MiB
MAX_SERIES_SLICES = 2048
MAX_SERIES_VALUES = 1 << 26
_SERIES_PATH = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*(/[A-Za-z0-9_][A-Za-z0-9._-]*)*")


@dataclass(frozen=True)
class SeriesModelSpec:
    """A score head's 3-D model: run once on the whole series when it completes, its answer is the head's
    series score (the slices' aggregate stands in until then).

    Each slice is normalised by the manifest's own ``intensity`` rules and resized to ``height`` x ``width``
    (``size.interpolation``) as it arrives and kept; at completion the planes, ordered along the slices'
    normal (else by instance number), are resampled linearly to ``depth`` and given to the model as one
    float32 tensor [1, C, depth, height, width] (C: 1 for grey, 3 for a colour ``input.color``). The model
    answers [1, classes] for the head's classes, in the head's order, read by ``kind`` and ``activation``.

    Attributes:
        path: the ONNX file, relative to the manifest (its folder: the model's, for an embedded or sidecar
            manifest); plain relative names only (``a-z A-Z 0-9 . _ -`` and ``/``, no ``..``).
        depth, height, width: the model's fixed input size.
        input: the graph input's name.
        output: the graph output's name.
        kind, activation: how the output is read, as a score head's.
        onnx_sha256: :func:`graph_sha256` of the file; checked when it is loaded, when set.
        max_slices: planes held per series (a slice at a new place past it is counted as dropped).
    """

    path: str
    depth: int
    height: int
    width: int
    input: str = "volume"
    output: str = "logits"
    kind: OutputKind = "logits"
    activation: Activation = "softmax"
    onnx_sha256: str | None = None
    max_slices: int = 512

    def __post_init__(self) -> None:
        where = "series_model"
        if (
            not isinstance(self.path, str)
            or len(self.path) > 256
            or not _SERIES_PATH.fullmatch(self.path)
            or ".." in self.path.split("/")
        ):
            raise _fail(f"{where}.path", "must be a relative file name beside the manifest (a-z 0-9 . _ - /, no ..)")
        for name, most in (("depth", MAX_SERIES_DEPTH), ("height", MAX_SERIES_SIDE), ("width", MAX_SERIES_SIDE)):
            _positive_int(f"{where}.{name}", getattr(self, name))
            if getattr(self, name) > most:
                raise _fail(f"{where}.{name}", f"{getattr(self, name)} is more than {most}")
        _positive_int(f"{where}.max_slices", self.max_slices)
        if self.max_slices > MAX_SERIES_SLICES:
            raise _fail(f"{where}.max_slices", f"{self.max_slices} is more than {MAX_SERIES_SLICES}")
        for name in ("input", "output"):
            value = getattr(self, name)
            if not isinstance(value, str) or not 1 <= len(value) <= 256:
                raise _fail(f"{where}.{name}", "must be a graph tensor name of 1-256 characters")
        _choice(f"{where}.kind", self.kind, ("logits", "probabilities"))
        _choice(f"{where}.activation", self.activation, ("softmax", "sigmoid"))
        if self.onnx_sha256 is not None and (
            not isinstance(self.onnx_sha256, str)
            or len(self.onnx_sha256) != 64
            or any(c not in "0123456789abcdef" for c in self.onnx_sha256)
        ):
            raise _fail(f"{where}.onnx_sha256", "must be 64 lower-case hex digits")
        # what one series holds (planes) and one run takes (the resampled volume), for 3 colour channels at most
        for what, values in (
            ("max_slices x height x width", self.max_slices * self.height * self.width * 3),
            ("depth x height x width", self.depth * self.height * self.width * 3),
        ):
            if values > MAX_SERIES_VALUES * 3:
                raise _fail(where, f"{what} is more than {MAX_SERIES_VALUES} values (256 MiB as float32)")

    def to_dict(self) -> dict[str, Any]:
        """Plain values; ``onnx_sha256`` left out while unset."""
        out = dataclasses.asdict(self)
        if self.onnx_sha256 is None:
            del out["onnx_sha256"]
        return out


@dataclass(frozen=True)
class OperatingPoint:
    """The operating point a score head's thresholds were chosen at, as its makers validated it.

    scanedge decides with the classes' ``threshold`` values; this says what those thresholds mean, so that
    reports and the console can show it next to the decision.

    Attributes:
        name: the operating point's name (``high-sensitivity``).
        sensitivity: the sensitivity measured at it (0-1); None when not stated.
        specificity: the specificity measured at it (0-1); None when not stated.
        description: where the figures come from (data set, reader study), for people.
    """

    name: str
    sensitivity: float | None = None
    specificity: float | None = None
    description: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not 1 <= len(self.name) <= 64 or not self.name.isprintable():
            raise _fail("operating_point.name", "must be printable text of 1-64 characters")
        for what in ("sensitivity", "specificity"):
            value = getattr(self, what)
            if value is not None:
                _finite(f"operating_point.{what}", value)
                if not 0 <= value <= 1:
                    raise _fail(f"operating_point.{what}", f"{value!r} must be between 0 and 1")
        if not isinstance(self.description, str) or len(self.description) > 1024:
            raise _fail("operating_point.description", "must be text of at most 1024 characters")


@dataclass(frozen=True)
class HeadSpec:
    """One further output of the graph and its role.

    - ``mask``: per-pixel scores, NCHW, read exactly as ``output`` is (``kind``, ``activation`` and its own
      ``classes``, background first).
    - ``score``: image-level classification, shaped [N, C]: one value per class in ``classes`` (softmax:
      mutually exclusive classes that sum to 1; sigmoid: independent classes). A class is decided present
      on a slice when its probability reaches the class's ``threshold``; over a series the per-slice
      probabilities are combined by ``aggregation`` and the same threshold decides.
    - ``saliency``: a per-pixel map (NCHW, 1 channel or one per class of the score head it explains) that
      shows where a score head looked; drawn as a heat map. Scanedge never makes one up: without a
      saliency head there is none.

    Attributes:
        name: the output tensor's name in the ONNX graph.
        role: ``mask``, ``score`` or ``saliency``, as above.
        kind: ``logits`` or ``probabilities`` (mask and score heads).
        activation: ``softmax`` or ``sigmoid`` (mask and score heads).
        classes: the head's classes (mask: background first, 2 or more; score: 1 or more, 2 or more for
            softmax); empty for a saliency head.
        aggregation: how a score head's slice probabilities make the series' score: ``max``, ``mean`` or
            ``noisy_or`` (1 - the product of 1 - p: the chance that at least one slice is positive, if
            slices were independent).
        operating_point: what a score head's thresholds mean (:class:`OperatingPoint`); optional.
        of: for a saliency head, the name of the score head it explains.
        series_model: for a score head, a 3-D model whose answer on the completed series is the head's series
            score (:class:`SeriesModelSpec`); ``aggregation`` then gives the provisional score until it runs.
    """

    name: str
    role: HeadRole
    kind: OutputKind = "logits"
    activation: Activation = "softmax"
    classes: tuple[ClassSpec, ...] = ()
    aggregation: Aggregation = "max"
    operating_point: OperatingPoint | None = None
    of: str = ""
    series_model: SeriesModelSpec | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise _fail("heads[].name", "must not be empty")
        where = f"heads[{self.name}]"
        _choice(f"{where}.role", self.role, ("mask", "score", "saliency"))
        _choice(f"{where}.kind", self.kind, ("logits", "probabilities"))
        _choice(f"{where}.activation", self.activation, ("softmax", "sigmoid"))
        _choice(f"{where}.aggregation", self.aggregation, ("max", "mean", "noisy_or"))
        if isinstance(self.classes, (str, bytes)) or not isinstance(self.classes, (tuple, list)):
            raise _fail(f"{where}.classes", "must be a list of {name, color, threshold} objects")
        classes = tuple(_build(ClassSpec, c, f"{where}.classes[{i}]") for i, c in enumerate(self.classes))
        object.__setattr__(self, "classes", classes)
        if isinstance(self.operating_point, Mapping):
            object.__setattr__(
                self, "operating_point", _build(OperatingPoint, self.operating_point, f"{where}.operating_point")
            )
        elif self.operating_point is not None and not isinstance(self.operating_point, OperatingPoint):
            raise _fail(f"{where}.operating_point", "must be an object {name, sensitivity, specificity}")
        names = [c.name for c in classes]
        if len(set(names)) != len(names):
            raise _fail(f"{where}.classes", f"names must be unique, got {names}")
        if self.role != "score" and (self.aggregation != "max" or self.operating_point is not None):
            raise _fail(where, "aggregation and operating_point belong to score heads")
        if self.role != "saliency" and self.of:
            raise _fail(f"{where}.of", "only a saliency head explains another head")
        if isinstance(self.series_model, Mapping):
            object.__setattr__(
                self, "series_model", _build(SeriesModelSpec, self.series_model, f"{where}.series_model")
            )
        elif self.series_model is not None and not isinstance(self.series_model, SeriesModelSpec):
            raise _fail(f"{where}.series_model", "must be an object {path, depth, height, width, ...}")
        if self.series_model is not None:
            if self.role != "score":
                raise _fail(f"{where}.series_model", "only a score head has a series model")
            if self.series_model.activation == "softmax" and len(classes) < 2:
                raise _fail(f"{where}.series_model.activation", "softmax needs 2 or more classes; use sigmoid")
        if self.role == "mask" and not 2 <= len(classes) <= 255:
            raise _fail(f"{where}.classes", "a mask head needs 2 to 255 classes (background first)")
        if self.role == "score":
            low = 2 if self.activation == "softmax" else 1
            if not low <= len(classes) <= MAX_SCORE_CLASSES:
                raise _fail(
                    f"{where}.classes", f"a {self.activation} score head needs {low} to {MAX_SCORE_CLASSES} classes"
                )
            long = [n for n in names if len(n) > MAX_SCORE_NAME or not n.isprintable()]
            if long:
                raise _fail(f"{where}.classes", f"names must be printable, at most {MAX_SCORE_NAME} characters: {long}")
        if self.role == "saliency":
            if classes:
                raise _fail(f"{where}.classes", "a saliency head has no classes of its own (see of)")
            if not self.of:
                raise _fail(f"{where}.of", "name the score head this saliency map explains")

    @property
    def channels(self) -> int:
        """Values per image of a mask or score head: one per class, but no background channel for a
        sigmoid mask."""
        if self.role == "mask" and self.activation == "sigmoid":
            return len(self.classes) - 1
        return len(self.classes)

    def to_dict(self) -> dict[str, Any]:
        """The head as plain values, fields at their defaults left out (the shape :class:`Manifest` reads)."""
        out: dict[str, Any] = {"name": self.name, "role": self.role}
        if self.role != "saliency":
            out["kind"], out["activation"] = self.kind, self.activation
            out["classes"] = [
                {k: v for k, v in dataclasses.asdict(c).items() if v is not None or k not in _CODED}
                for c in self.classes
            ]
        if self.role == "score":
            out["aggregation"] = self.aggregation
            if self.operating_point is not None:
                out["operating_point"] = dataclasses.asdict(self.operating_point)
        if self.role == "saliency":
            out["of"] = self.of
        if self.series_model is not None:
            out["series_model"] = self.series_model.to_dict()
        return out


def _check_heads(manifest: Manifest) -> None:
    """Head names are unique graph outputs; a saliency head explains a score head of this manifest."""
    heads = manifest.heads
    if isinstance(heads, (str, bytes)) or not isinstance(heads, (tuple, list)):
        raise _fail("heads", "must be a list of head objects")
    heads = tuple(_build(HeadSpec, h, f"heads[{i}]") for i, h in enumerate(heads))
    object.__setattr__(manifest, "heads", heads)
    if len(heads) > MAX_HEADS:
        raise _fail("heads", f"at most {MAX_HEADS}")
    names = [h.name for h in heads] + ([manifest.output.name] if manifest.output is not None else [])
    if len(set(names)) != len(names):
        raise _fail("heads", f"every head reads its own graph output; names given: {names}")
    scores = {h.name for h in heads if h.role == "score"}
    if sum(len(h.classes) for h in heads if h.role == "score") > MAX_SCORE_CLASSES:
        raise _fail("heads", f"at most {MAX_SCORE_CLASSES} classes over all score heads")
    explained: set[str] = set()
    for h in heads:
        if h.role == "saliency":
            if h.of not in scores:
                raise _fail(f"heads[{h.name}].of", f"{h.of!r} is not a score head of this manifest ({sorted(scores)})")
            if h.of in explained:
                raise _fail(f"heads[{h.name}].of", f"{h.of!r} already has a saliency head")
            explained.add(h.of)
    with_series = [h.name for h in heads if h.series_model is not None]
    if len(with_series) > 1:
        raise _fail("heads", f"at most one score head has a series_model; {with_series} do")
    if with_series and manifest.inputs is not None:
        raise _fail(f"heads[{with_series[0]}].series_model", "is not supported for a model with several inputs")
    if manifest.output is None and not any(h.role in ("mask", "score") for h in heads):
        raise _fail("output", "a model without a mask output (output: null) needs a score or mask head in heads")


@dataclass(frozen=True)
class FollowupSpec:
    """How a follow-up of this model's series finds and reads the prior (``scanedge dicom-listen
    --prior-...``; its own flags win over this section).

    Attributes:
        prior_description: the prior series' Series Description must contain a match of this regular
            expression (case-insensitive); None: any description.
        same_body_part: the prior series has the current series' Body Part Examined.
        same_modality: the prior series has the current series' Modality.
        lesion_class: the class whose lesions are compared; None: every foreground class.
    """

    prior_description: str | None = None
    same_body_part: bool = True
    same_modality: bool = True
    lesion_class: str | None = None

    def __post_init__(self) -> None:
        if self.prior_description is not None:
            if not isinstance(self.prior_description, str) or len(self.prior_description) > 256:
                raise _fail("followup.prior_description", "must be a regular expression of at most 256 characters")
            try:
                re.compile(self.prior_description)
            except re.error as exc:
                raise _fail("followup.prior_description", f"is not a regular expression: {exc}") from None
        for name in ("same_body_part", "same_modality"):
            if not isinstance(getattr(self, name), bool):
                raise _fail(f"followup.{name}", "must be true or false")
        if self.lesion_class is not None and (not isinstance(self.lesion_class, str) or not self.lesion_class):
            raise _fail("followup.lesion_class", "must be a class name")


@dataclass(frozen=True)
class Manifest:
    """A validated, immutable description of one model (a segmentation, a classifier, or both, see
    ``heads``). ``classes[0]`` is background.

    Invalid values raise ManifestInvalidError on construction.

    Attributes:
        name: the model's name, as results and the runtime report it.
        version: the model's version (free text, e.g. ``1.2.0``).
        classes: one entry per label value, background first; 2 to 255 of them.
        input: the image input tensor.
        size: how slices become the input's height and width.
        intensity: how pixel values become the input's numbers.
        output: the per-pixel score output tensor (the mask head); None for a model without one (a
            classifier: then ``classes`` is empty and ``heads`` has a score head).
        description: what the model does, for people.
        intended_use: what it may and may not be used for, for people.
        onnx_sha256: :func:`graph_sha256` of the model it describes; checked on load when set.
        schema_version: the manifest format's version (this scanedge reads 1).
        applies_to: the images the model was made for; others are refused (OUT_OF_SCOPE).
        not_for_clinical_use: burn "not for clinical use" into the montages and overlay files scanedge
            writes (demonstration and research models).
        heads: the graph's further outputs and their roles (:class:`HeadSpec`): image-level scores,
            saliency maps, more masks. Empty (the default): ``output`` is the model's only head.
        inputs: several sequences as input (roles, assembly, pairing; :mod:`scanedge.manifest_inputs`);
            None: one input, one series, as before the section existed.
        followup: how a follow-up finds the prior of this model's series and which class it compares
            (:class:`FollowupSpec`); None: the node's flags alone.
    """

    name: str
    version: str
    classes: tuple[ClassSpec, ...]
    input: InputSpec = field(default_factory=InputSpec)
    size: SizePolicy = field(default_factory=SizePolicy)
    intensity: IntensityPolicy = field(default_factory=IntensityPolicy)
    output: OutputSpec | None = field(default_factory=OutputSpec)
    description: str = ""
    intended_use: str = ""
    onnx_sha256: str | None = None
    precision: Literal["fp32", "fp16", "int8"] = "fp32"  # of the graph; set by `scanedge convert`
    schema_version: int = SCHEMA_VERSION
    applies_to: AppliesTo = field(default_factory=AppliesTo)
    not_for_clinical_use: bool = False
    heads: tuple[HeadSpec, ...] = ()
    inputs: InputsSpec | None = None
    followup: FollowupSpec | None = None

    def __post_init__(self) -> None:
        if not self.name:
            raise _fail("name", "must not be empty")
        if not self.version:
            raise _fail("version", "must not be empty")
        _choice("precision", self.precision, ("fp32", "fp16", "int8"))
        if self.schema_version != SCHEMA_VERSION:
            raise _fail(
                "schema_version",
                f"{self.schema_version} is not supported by this scanedge (it reads {SCHEMA_VERSION}); "
                "upgrade scanedge or rewrite the manifest with `scanedge manifest init`",
            )
        object.__setattr__(self, "classes", tuple(self.classes))
        _check_heads(self)
        if self.followup is not None and self.followup.lesion_class is not None:
            if self.followup.lesion_class not in [c.name for c in self.classes[1:]]:
                raise _fail("followup.lesion_class", f"{self.followup.lesion_class!r} is not a foreground class")
        if self.output is None:
            if self.classes:
                raise _fail("classes", "are the mask's classes; a model without a mask output (output: null) has none")
        elif len(self.classes) < 2:
            raise _fail("classes", "need at least two (background and one finding)")
        names = [c.name for c in self.classes]
        if len(set(names)) != len(names):
            raise _fail("classes", f"names must be unique, got {names}")
        if len(self.classes) > 255:
            raise _fail("classes", "at most 255 classes fit a uint8 label mask")
        norm = self.intensity.mean
        if norm and len(norm) != self.input.channels_per_plane:
            raise _fail(
                "intensity.mean/std",
                f"has {len(norm)} values but the input has {self.input.channels_per_plane} channel(s) per slice",
            )
        if isinstance(self.inputs, Mapping):
            object.__setattr__(self, "inputs", _build(InputsSpec, self.inputs, "inputs"))
        if self.inputs is not None and not isinstance(self.inputs, InputsSpec):
            raise _fail("inputs", "must be an object {roles, assembly, pairing}")
        if not isinstance(self.not_for_clinical_use, bool):
            raise _fail("not_for_clinical_use", f"{self.not_for_clinical_use!r} must be true or false")
        if self.onnx_sha256 is not None and (
            len(self.onnx_sha256) != 64 or any(c not in "0123456789abcdef" for c in self.onnx_sha256)
        ):
            raise _fail("onnx_sha256", "must be 64 lower-case hex digits")

    @property
    def num_classes(self) -> int:
        """Classes including background."""
        return len(self.classes)

    @property
    def image_channels(self) -> int:
        """Channels of the image tensor: ``input.channels``, times the roles when they are stacked as channels."""
        inputs = self.inputs
        if inputs is not None and inputs.assembly == "channels":
            return self.input.channels * len(inputs.roles)
        return self.input.channels

    @property
    def roles(self) -> tuple[str, ...]:
        """The input roles, reference first; empty for a one-input model."""
        return () if self.inputs is None else self.inputs.names

    def graph_inputs(self) -> tuple[str, ...]:
        """The image inputs the graph is fed: the manifest's ``input.name``, or one per role (``named``)."""
        if self.inputs is not None and self.inputs.assembly == "named":
            return tuple(r.input for r in self.inputs.roles)
        return (self.input.name,)

    def intensity_for(self, role: str) -> IntensityPolicy:
        """The normalisation of ``role``'s slices: its own, or the manifest's."""
        if self.inputs is None:
            return self.intensity
        own = self.inputs.role(role).intensity
        return own if own is not None else self.intensity

    @property
    def output_channels(self) -> int:
        """Channels the output tensor must have for this manifest (0 without a mask output)."""
        if self.output is None:
            return 0
        return self.num_classes if self.output.activation == "softmax" else self.num_classes - 1

    @property
    def mask_output(self) -> OutputSpec:
        """``output``, for code that draws or measures the mask; ManifestMismatchError for a model without one."""
        if self.output is None:
            raise ManifestMismatchError(
                f"model {self.name} has no mask output (output: null): it gives scores, not a segmentation"
            )
        return self.output

    @property
    def score_heads(self) -> tuple[HeadSpec, ...]:
        """The image-level classification heads, in manifest order."""
        return tuple(h for h in self.heads if h.role == "score")

    @property
    def series_model_head(self) -> HeadSpec | None:
        """The score head with a 3-D series model (at most one); None when no head declares one."""
        return next((h for h in self.heads if h.series_model is not None), None)

    @property
    def mask_heads(self) -> tuple[HeadSpec, ...]:
        """The further per-pixel heads (``output``, when there is one, is not among them)."""
        return tuple(h for h in self.heads if h.role == "mask")

    def saliency_for(self, score_head: str) -> HeadSpec | None:
        """The saliency head that explains ``score_head``; None when the manifest declares none."""
        return next((h for h in self.heads if h.role == "saliency" and h.of == score_head), None)

    def mask_manifest(self, head: HeadSpec) -> Manifest:
        """This manifest as if ``head`` (a mask head) were its only output: what the mask postprocessing of
        that head reads."""
        return self.replace(output=OutputSpec(head.name, head.kind, head.activation), classes=head.classes, heads=())

    # --- serialisation -------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Every field as plain values (nested dicts and tuples), the shape :meth:`from_dict` reads.

        ``applies_to`` and ``not_for_clinical_use`` are left out while they hold their defaults, and a
        class's coded concepts appear only when set, so a manifest that uses none of them reads exactly as
        it did before they existed (and older scanedge versions, which refuse unknown keys, still read it).
        """
        out = dataclasses.asdict(self)
        out["classes"] = [{k: v for k, v in c.items() if v is not None or k not in _CODED} for c in out["classes"]]
        if self.heads:
            out["heads"] = [h.to_dict() for h in self.heads]
        else:
            del out["heads"]
        if not self.applies_to.restricts:
            del out["applies_to"]
        if not self.not_for_clinical_use:
            del out["not_for_clinical_use"]
        if self.inputs is None:
            del out["inputs"]
        else:
            out["inputs"] = self.inputs.to_dict()
        if self.followup is None:
            del out["followup"]
        return out

    def to_json(self, *, indent: int | None = 2) -> str:
        """:meth:`to_dict` as JSON text (``indent=None``: one line)."""
        return json.dumps(self.to_dict(), indent=indent, sort_keys=False)

    def replace(self, **changes: Any) -> Manifest:
        """A copy with ``changes`` applied, validated again."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Manifest:
        """The manifest ``data`` describes (as parsed JSON); ManifestInvalidError for unknown or missing keys,
        wrong types, invalid values, or a newer schema version."""
        if not isinstance(data, Mapping):
            raise ManifestInvalidError(f"a manifest must be a JSON object, got {type(data).__name__}")
        data = dict(data)
        version = data.get("schema_version", SCHEMA_VERSION)
        if isinstance(version, int) and version > SCHEMA_VERSION:
            raise ManifestInvalidError(
                f"this manifest uses schema version {version}; this scanedge reads version {SCHEMA_VERSION}. "
                "Upgrade scanedge."
            )
        try:
            sections = {
                "input": _build(InputSpec, data.pop("input", {}), "input"),
                "size": _build(SizePolicy, data.pop("size", {}), "size"),
                "intensity": _build(IntensityPolicy, data.pop("intensity", {}), "intensity"),
                "output": None
                if data.get("output", {}) is None
                else _build(OutputSpec, data.pop("output", {}), "output"),
                "applies_to": _build(AppliesTo, data.pop("applies_to", {}), "applies_to"),
            }
            raw_inputs = data.pop("inputs", None)
            if raw_inputs is not None:
                sections["inputs"] = _build(InputsSpec, raw_inputs, "inputs")
            raw_followup = data.pop("followup", None)
            if raw_followup is not None:
                sections["followup"] = _build(FollowupSpec, raw_followup, "followup")
            raw_classes = data.pop("classes", None)
            if not isinstance(raw_classes, list):
                raise _fail("classes", "must be a list of {name, color, threshold} objects")
            classes = tuple(_build(ClassSpec, c, f"classes[{i}]") for i, c in enumerate(raw_classes))
            raw_heads = data.pop("heads", [])
            if not isinstance(raw_heads, list) or len(raw_heads) > MAX_HEADS:
                raise _fail("heads", f"must be a list of at most {MAX_HEADS} head objects")
            heads = tuple(_build(HeadSpec, h, f"heads[{i}]") for i, h in enumerate(raw_heads))
            data.pop("output", None)
            return _build(cls, {**data, **sections, "classes": classes, "heads": heads}, "manifest")
        except ManifestInvalidError:
            raise
        except (TypeError, ValueError) as exc:  # wrong JSON types deep inside a field
            raise ManifestInvalidError(f"manifest does not validate: {exc}") from exc

    @classmethod
    def from_json(cls, text: str | bytes) -> Manifest:
        """The manifest in JSON ``text``; ManifestInvalidError when it is not JSON or not a valid manifest."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ManifestInvalidError(f"manifest is not valid JSON: {exc}") from exc
        return cls.from_dict(data)


def _build(kind: type, data: Any, where: str) -> Any:
    if isinstance(data, kind):
        return data
    if not isinstance(data, Mapping):
        raise _fail(where, f"must be an object, got {type(data).__name__}")
    known = {f.name for f in dataclasses.fields(kind)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise _fail(where, f"unknown key(s) {unknown}; known keys are {sorted(known)}")
    values = dict(data)
    for f in dataclasses.fields(kind):
        if f.name in values and isinstance(values[f.name], list) and f.name not in ("classes", "heads"):
            values[f.name] = tuple(values[f.name])
    missing = [
        f.name
        for f in dataclasses.fields(kind)
        if f.name not in values and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise _fail(where, f"missing required key(s) {missing}")
    return kind(**values)


# --- where manifests live ----------------------------------------------------------------------

ManifestSource = Literal["explicit", "sidecar", "embedded"]


def sidecar_path(model_path: str | os.PathLike[str]) -> Path:
    """``model.onnx`` -> ``model.onnx.manifest.json``."""
    p = Path(model_path)
    return p.with_name(p.name + ".manifest.json")


def graph_sha256(model: Any) -> str:
    """sha256 of the serialized graph of an ``onnx.ModelProto`` (metadata excluded)."""
    return hashlib.sha256(model.graph.SerializeToString(deterministic=True)).hexdigest()


def load_onnx_model(path: str | os.PathLike[str], *, load_external_data: bool = False) -> Any:
    """The ``onnx.ModelProto`` in ``path``; :class:`ModelFileError` when the file is not a readable ONNX model.

    Protobuf accepts more than ONNX files: an empty file parses as an empty ModelProto. A model without an
    IR version, an opset or a graph with outputs is therefore refused as well, so every caller (the
    pipeline, ``inspect``, ``manifest init``) gets the same typed error for a wrong or damaged file.
    """
    import onnx

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"model file not found: {p}")
    try:
        model = onnx.load(str(p), load_external_data=load_external_data)
    except Exception as exc:  # protobuf's DecodeError, or whatever a damaged file makes the parser raise
        raise ModelFileError(
            f"{p.name} is not a readable ONNX model: it cannot be parsed ({type(exc).__name__}); "
            "is it truncated, or a file of another kind?"
        ) from exc
    if model.ir_version < 1 or not model.opset_import or not model.HasField("graph") or not model.graph.output:
        raise ModelFileError(
            f"{p.name} is not a readable ONNX model: it has no IR version, opset or graph outputs "
            f"({p.stat().st_size} bytes)"
        )
    return model


def load_manifest(
    model_path: str | os.PathLike[str],
    manifest_path: str | os.PathLike[str] | None = None,
    *,
    verify_sha: bool = True,
) -> tuple[Manifest, ManifestSource]:
    """The manifest for a model: an explicit file, else the sidecar, else the one embedded in the ONNX.

    With ``verify_sha`` a manifest that names a different graph (its ``onnx_sha256``) is refused: it was
    written for another model, and its thresholds or normalisation may not fit this one.
    """
    path = Path(model_path)
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    source: ManifestSource
    text: str | None = None
    if manifest_path is not None:
        text, source = Path(manifest_path).read_text(encoding="utf-8"), "explicit"
    elif sidecar_path(path).is_file():
        text, source = sidecar_path(path).read_text(encoding="utf-8"), "sidecar"
    model = load_onnx_model(path) if path.suffix.lower() == ".onnx" else None
    if text is None:
        source = "embedded"
        if model is not None:
            text = {p.key: p.value for p in model.metadata_props}.get(METADATA_KEY)
        if text is None:
            raise ManifestMissingError(
                f"{path.name} has no scanedge manifest (none embedded, no {sidecar_path(path).name}). "
                "Describe the model once with `scanedge manifest init "
                f"{path} --name NAME --classes background,finding ...` "
                "(see `scanedge manifest init --help`), or pass a manifest JSON explicitly."
            )
    manifest = Manifest.from_json(text)
    if verify_sha and model is not None and manifest.onnx_sha256 is not None:
        actual = graph_sha256(model)
        if actual != manifest.onnx_sha256:
            raise ManifestMismatchError(
                f"the {source} manifest of {path.name} was written for another graph "
                f"(manifest onnx_sha256 {manifest.onnx_sha256[:12]}..., model {actual[:12]}...). "
                "Re-run `scanedge manifest init` on this model, or convert it with `scanedge convert`."
            )
    return manifest, source


def embed_manifest(model: Any, manifest: Manifest, out_path: str | os.PathLike[str] | None = None) -> Manifest:
    """Write ``manifest`` (with this graph's sha256) into an ``onnx.ModelProto``; save it if a path is given."""
    import onnx

    stamped = manifest.replace(onnx_sha256=graph_sha256(model))
    props = [p for p in model.metadata_props if p.key != METADATA_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(props)
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, stamped.to_json(indent=None)
    if out_path is not None:
        onnx.save(model, str(out_path))
    return stamped


def check_model_io(
    manifest: Manifest,
    inputs: Iterable[tuple[str, Sequence[int | str | None]]],
    outputs: Iterable[tuple[str, Sequence[int | str | None]]],
) -> None:
    """Refuse a model whose declared inputs/outputs contradict its manifest.

    ``inputs``/``outputs`` are (name, shape) pairs as the engine reports them; a dimension that is not a
    positive int is dynamic and matches anything.
    """
    ins, outs = dict(inputs), dict(outputs)
    spec, size = manifest.input, manifest.size
    names = manifest.graph_inputs()
    for name in names:
        if name not in ins:
            what = "input.name" if name == spec.name and len(names) == 1 else "inputs.roles[].input"
            raise ManifestMismatchError(
                f"manifest {what} is {name!r} but the model's inputs are {sorted(ins)}; fix {what} in the manifest"
            )
    shape = tuple(ins[names[0]])
    for name in names[1:]:
        if tuple(ins[name]) != shape:
            raise ManifestMismatchError(
                f"input {name!r} is shaped {list(ins[name])} but {names[0]!r} is {list(shape)}; the roles' "
                "inputs must have one shape"
            )
    if len(shape) != 4:
        raise ManifestMismatchError(f"input {spec.name!r} has rank {len(shape)}; scanedge needs a 4-D image input")
    c_axis, h_axis, w_axis = (1, 2, 3) if spec.layout == "NCHW" else (3, 1, 2)

    def fixed(d: Any) -> int | None:
        return d if isinstance(d, int) and d > 0 else None

    if fixed(shape[c_axis]) not in (None, manifest.image_channels):
        raise ManifestMismatchError(
            f"input {names[0]!r} has {shape[c_axis]} channels ({spec.layout} shape {list(shape)}) but the "
            f"manifest declares {manifest.image_channels}{_per_role(manifest)}"
            + ("" if manifest.roles else _channel_hint(shape[c_axis]))
        )
    h, w = fixed(shape[h_axis]), fixed(shape[w_axis])
    if size.mode == "fixed":
        if (h, w) != (None, None) and (h, w) != (size.height, size.width):
            raise ManifestMismatchError(
                f"input {spec.name!r} is {h}x{w} but the manifest resizes to {size.height}x{size.width}"
            )
    elif h is not None or w is not None:
        raise ManifestMismatchError(
            f"manifest size.mode={size.mode!r} feeds varying sizes, but input {spec.name!r} has a fixed "
            f"height/width ({list(shape)}); use size.mode='fixed'"
        )
    if manifest.output is not None:
        out = manifest.output
        if out.name not in outs:
            raise ManifestMismatchError(
                f"manifest output.name is {out.name!r} but the model's outputs are {sorted(outs)}"
            )
        _check_mask_shape(
            out.name,
            outs[out.name],
            manifest.output_channels,
            f"{manifest.num_classes} classes with {out.activation}",
            (fixed(shape[h_axis]), fixed(shape[w_axis])),
        )
    for head in manifest.heads:
        if head.name not in outs:
            raise ManifestMismatchError(
                f"manifest head {head.name!r} ({head.role}) is not an output of the model; its outputs are "
                f"{sorted(outs)}"
            )
        hshape = tuple(outs[head.name])
        if head.role == "mask":
            _check_mask_shape(
                head.name,
                hshape,
                head.channels,
                f"{len(head.classes)} classes with {head.activation}",
                (fixed(shape[h_axis]), fixed(shape[w_axis])),
            )
        elif head.role == "score":
            if len(hshape) != 2 or fixed(hshape[0]) not in (None, 1) or fixed(hshape[1]) not in (None, head.channels):
                raise ManifestMismatchError(
                    f"score head {head.name!r} is declared {list(hshape)}, but scanedge reads it as "
                    f"[1, {head.channels}] (one value per class of the head)"
                )
        else:
            n = len(next(h for h in manifest.heads if h.name == head.of).classes)
            if len(hshape) != 4 or fixed(hshape[0]) not in (None, 1) or fixed(hshape[1]) not in (None, 1, n):
                raise ManifestMismatchError(
                    f"saliency head {head.name!r} is declared {list(hshape)}, but scanedge reads it as "
                    f"[1, 1 or {n}, height, width] (one map, or one per class of {head.of!r})"
                )


def _check_mask_shape(
    name: str, oshape: Sequence[Any], channels: int, why: str, input_hw: tuple[int | None, int | None]
) -> None:
    """A per-pixel head: NCHW, batch 1, ``channels`` channels, at the input's height and width when fixed."""
    oshape = tuple(oshape)
    if len(oshape) != 4:
        raise ManifestMismatchError(f"output {name!r} has rank {len(oshape)}; scanedge needs NCHW scores")
    got_c = oshape[1] if isinstance(oshape[1], int) and oshape[1] > 0 else None
    if got_c not in (None, channels):
        raise ManifestMismatchError(f"output {name!r} has {oshape[1]} channels but {why} need {channels}")
    # the scores are read pixel for pixel at the input's grid: a fixed output size must be the input's
    expected = (1, channels, *input_hw)
    for axis, (want, got) in enumerate(zip(expected, oshape)):
        if want is not None and (got if isinstance(got, int) and got > 0 else None) not in (None, want):
            raise ManifestMismatchError(
                f"output {name!r} is declared {list(oshape)}, but scanedge reads it as "
                f"{_shape_text(expected)} (batch 1, {channels} channels, the input's height and "
                f"width); dimension {axis} differs"
            )


def _channel_hint(channels: Any) -> str:
    """What makes a manifest's channel count match the graph's: colour planes, context slices, or both."""
    if not isinstance(channels, int) or channels < 2:
        return ""
    ways = []
    if channels % 3 == 0 and (channels // 3) % 2 == 1:
        k = (channels // 3 - 1) // 2
        ways.append("--color rgb (or bgr) for a colour model" + (f" with --context-slices {k}" if k else ""))
    if channels % 2 == 1:
        ways.append(f"--context-slices {(channels - 1) // 2} for a 2.5D grey model")
    if not ways:
        return ""
    return "; describe it with " + ", or ".join(ways) + " (manifest input.color / input.context_slices)"


def _per_role(manifest: Manifest) -> str:
    if manifest.image_channels == manifest.input.channels:
        return ""
    return f" ({manifest.input.channels} for each of {len(manifest.roles)} roles)"


def _shape_text(shape: Sequence[int | None]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def check_model_output(manifest: Manifest, output: Any, input_shape: Sequence[int], where: str) -> None:
    """Refuse scores that do not fit the manifest, before anything is read from them.

    ``output`` is the array an engine returned for an input of ``input_shape``; it must be floating point
    and shaped (batch, the manifest's output channels, the input's height, the input's width). An engine
    whose metadata declares dynamic output dims (a remote server's model above all) is held to the
    manifest here, on every reply: a wrong shape is a ManifestMismatchError naming expected and got,
    never an index error in postprocessing nor a mask read from the wrong channels.
    """
    if manifest.output is None:
        raise ManifestMismatchError(f"{where}: the manifest declares no mask output to check")
    spec = manifest.input
    h_axis, w_axis = (2, 3) if spec.layout == "NCHW" else (1, 2)
    expected = (input_shape[0], manifest.output_channels, input_shape[h_axis], input_shape[w_axis])
    shape, dtype = tuple(getattr(output, "shape", ())), getattr(output, "dtype", None)
    if shape != expected or getattr(dtype, "kind", "") != "f":
        raise ManifestMismatchError(
            f"{where}: output {manifest.output.name!r} came back as {dtype} {list(shape)}, but the manifest needs "
            f"floating-point scores shaped {list(expected)} ({manifest.num_classes} classes with "
            f"{manifest.output.activation} at the input's {expected[2]}x{expected[3]}); no result is made from it"
        )


def check_head_output(manifest: Manifest, head: HeadSpec, output: Any, input_shape: Sequence[int], where: str) -> None:
    """:func:`check_model_output` for one of ``manifest.heads``: floating point, batch ``input_shape[0]``,
    shaped as the head's role needs (a saliency map may have any height and width: it is resized)."""
    shape, dtype = tuple(getattr(output, "shape", ())), getattr(output, "dtype", None)
    batch = input_shape[0]
    if head.role == "mask":
        h_axis, w_axis = (2, 3) if manifest.input.layout == "NCHW" else (1, 2)
        ok = shape == (batch, head.channels, input_shape[h_axis], input_shape[w_axis])
        want = f"[{batch}, {head.channels}, {input_shape[h_axis]}, {input_shape[w_axis]}]"
    elif head.role == "score":
        ok, want = shape == (batch, head.channels), f"[{batch}, {head.channels}]"
    else:
        of = next(h for h in manifest.heads if h.name == head.of)
        ok = len(shape) == 4 and shape[0] == batch and shape[1] in (1, len(of.classes)) and min(shape[2:]) > 0
        want = f"[{batch}, 1 or {len(of.classes)}, height, width]"
    if not ok or getattr(dtype, "kind", "") != "f":
        raise ManifestMismatchError(
            f"{where}: {head.role} head {head.name!r} came back as {dtype} {list(shape)}, but the manifest needs "
            f"floating-point values shaped {want}; no result is made from it"
        )
