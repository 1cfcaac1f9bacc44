"""The SEG output: a completed series and one model's results -> DICOM Segmentation objects (highdicom).

:class:`SegOutput` is the node's first :class:`~scanedge.dicomnet.outputs.base.DicomOutput` and the
precedent for the next (a structured report would be ``outputs/sr.py``, built the same way); the rest of
this module is the builder it calls, usable on its own.

One SEG per model and per group of source images that can share one: the single-frame instances of a
series with the same rows and columns, frame of reference and orientation together, each at a position
of its own (an instance at a position the group already has, as in multi-echo or diffusion series, or a
copy of one slice under another UID, starts another group), and each multi-frame instance (Enhanced
MR/CT, multi-frame US) on its own, as a SEG's frames reference either many single-frame images or the
frames of one image. A group highdicom refuses is built again one instance per SEG, so one odd instance
never costs the others their SEG.

The SEG's SOP Instance UID is derived from the model and the source instances it references (and its
Series Instance UID from the source series and the model), so building it again after a crash or a
retry writes the same object under the same name, not a second one.

Each SEG references every source instance it covers (and so the source series, study and
frame of reference), describes every foreground class of the model as a segment with its coded property
category and type from the manifest, and names the algorithm: the model's name and version, and the
scanedge version that ran it. A model's further mask heads (manifest ``heads`` of role ``mask``) add their
foreground classes as further segments of the same SEG, numbered on after the model's own, labelled
``HEAD: CLASS`` (one printable line of at most 64 characters), coded from the head's classes.

``binary``: one bit per pixel and class, from the label mask. ``fractional``: the class probability per
pixel (``PROBABILITY``, 8 bits), from the model's probabilities resized to the slice.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from scanedge._moved import forward_names
from scanedge.dicomnet.outputs.base import DicomOutput
from scanedge.dicomnet.series import HeldFrame, HeldInstance, OpenSeries, unpack
from scanedge.imaging.heads import head_labels
from scanedge.manifest import ClassSpec, CodedConcept, Manifest
from scanedge.safe_text import printable
from scanedge.version import __version__

if TYPE_CHECKING:
    from scanedge.dicomnet.config import ListenerConfig

__all__ = [
    "GENERIC_CATEGORY",
    "GENERIC_TYPE",
    "HeadSegment",
    "SegOutput",
    "SegmentationConfig",
    "SegmentationKind",
    "build_segmentations",
    "derived_uid",
    "head_segments",
    "seg_instance_uid",
    "segment_descriptions",
]

log = logging.getLogger("scanedge.dicomnet")

SegmentationKind = Literal["binary", "fractional"]

#: How a class without coded concepts in its manifest is described (SNOMED CT "Tissue").
GENERIC_CATEGORY = CodedConcept("85756007", "SCT", "Tissue")
GENERIC_TYPE = CodedConcept("85756007", "SCT", "Tissue")

#: Type 2 patient and study attributes a SEG must carry (empty when the source has none); highdicom
#: copies them from the source, so a source that omits one gets it empty here.
_TYPE2_COPIED = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "StudyID",
    "AccessionNumber",
    "ReferringPhysicianName",
)


@dataclass(frozen=True)
class SegmentationConfig:
    """How SEGs are written.

    Attributes:
        kind: ``binary`` (label masks) or ``fractional`` (probabilities).
        series_number_offset: a SEG's Series Number is the source's plus this (the source's absent: this).
        manufacturer: the Manufacturer of the SEG (the software that made it).
        device_serial_number: the SEG's Device Serial Number (the listener's AE title, say).
    """

    kind: SegmentationKind = "binary"
    series_number_offset: int = 1000
    manufacturer: str = "scanedge"
    device_serial_number: str = "scanedge"


def _code(concept: CodedConcept) -> Any:
    from pydicom.sr.coding import Code

    return Code(concept.value, concept.scheme, concept.meaning)


def segment_descriptions(manifest: Manifest) -> list[Any]:
    """One highdicom SegmentDescription per foreground class (segment number = label value), then one per
    foreground class of each further mask head, numbered on in manifest order, labelled ``HEAD: CLASS``."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    algorithm = hd.AlgorithmIdentificationSequence(
        name=manifest.name[:64],
        family=codes.cid7162.ArtificialIntelligence,
        version=manifest.version[:64],
        source=f"scanedge {__version__}",
    )
    out = []
    for label, spec in enumerate(manifest.classes[1:], start=1):
        out.append(_description(hd, label, spec, algorithm))
    for segment in head_segments(manifest):
        out.append(_description(hd, segment.number, segment.spec, algorithm, segment.segment_label))
    return out


@dataclass(frozen=True)
class HeadSegment:
    """One foreground class of a further mask head as a segment of the node's SEG (what the SR references).

    Attributes:
        number: its Segment Number: after the model's own classes, in manifest order.
        head: the head's name (its graph output).
        head_label: the head's label (:func:`~scanedge.imaging.heads.head_labels`).
        label: the class's label value in the head's mask (1 first).
        spec: the class.
        segment_label: ``HEAD: CLASS`` as the SEG's Segment Label has it (bounded, printable).
    """

    number: int
    head: str
    head_label: str
    label: int
    spec: ClassSpec
    segment_label: str


def head_segments(manifest: Manifest) -> list[HeadSegment]:
    """Each further mask head's foreground classes as segments of the node's SEG, in segment order: the one
    numbering the SEG and the SR share."""
    heads = manifest.mask_heads
    labels = head_labels([h.name for h in heads])
    number = itertools.count(len(manifest.classes[1:]) + 1)
    return [
        HeadSegment(next(number), head.name, label, k, spec, _segment_label(f"{label}: {spec.name}"))
        for head, label in zip(heads, labels)
        for k, spec in enumerate(head.classes[1:], start=1)
    ]


def _segment_label(text: str) -> str:
    """A Segment Label (LO): one printable line of at most 64 characters without a backslash (the value
    separator); never empty."""
    return printable(text, 64).replace("\\", "/") or "segment"


def _description(hd: Any, label: int, spec: ClassSpec, algorithm: Any, name: str | None = None) -> Any:
    return hd.seg.SegmentDescription(
        segment_number=label,
        segment_label=_segment_label(spec.name if name is None else name),
        segmented_property_category=_code(spec.property_category or GENERIC_CATEGORY),
        segmented_property_type=_code(spec.property_type or GENERIC_TYPE),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm,
        anatomic_regions=None if spec.anatomic_region is None else [_code(spec.anatomic_region)],
    )


def _rounded(values: Any, places: int) -> tuple[float, ...]:
    try:
        return tuple(round(float(v), places) + 0.0 for v in values)
    except (TypeError, ValueError):
        return ()


def _groups(series: OpenSeries) -> list[list[HeldInstance]]:
    """Sources that share one SEG: single-frame instances by size, frame of reference and orientation, each
    position once per group; each multi-frame instance alone, and each instance alone when it has no patient
    coordinates (CR, DX, US without a frame of reference: a SEG can then reference one image only)."""
    from highdicom.spatial import get_image_coordinate_system

    single: dict[tuple[Any, ...], list[tuple[set[tuple[float, ...]], list[HeldInstance]]]] = {}
    groups: list[list[HeldInstance]] = []
    for inst in series.instances.values():
        multi = len(inst.frames) > 1 or int(getattr(inst.header, "NumberOfFrames", 1) or 1) > 1
        if multi or get_image_coordinate_system(inst.header) is None:
            groups.append([inst])
            continue
        key = (
            inst.frames[0].shape,
            str(getattr(inst.header, "FrameOfReferenceUID", "")),
            _rounded(getattr(inst.header, "ImageOrientationPatient", ()), 4),
        )
        position = _rounded(getattr(inst.header, "ImagePositionPatient", ()), 3)
        subgroups = single.setdefault(key, [])
        for taken, members in subgroups:
            if position not in taken:
                taken.add(position)
                members.append(inst)
                break
        else:
            subgroups.append(({position}, [inst]))

    def order(inst: HeldInstance) -> tuple[int, str]:
        number = getattr(inst.header, "InstanceNumber", None)
        try:
            return (int(number) if number is not None and str(number).strip() else 0, inst.sop_instance_uid)
        except (TypeError, ValueError):
            return (0, inst.sop_instance_uid)

    return [sorted(members, key=order) for subs in single.values() for _, members in subs] + groups


def derived_uid(*parts: str) -> str:
    """A UID (2.25 form, from a hash) that is the same whenever ``parts`` are."""
    digest = hashlib.sha256("\x1f".join(parts).encode()).digest()[:16]
    return f"2.25.{int.from_bytes(digest, 'big')}"


def seg_instance_uid(model: str, manifest: Manifest, kind: SegmentationKind, sources: Sequence[str]) -> str:
    """The SOP Instance UID of ``model``'s SEG of the source instances ``sources`` (UIDs), of ``kind``."""
    return derived_uid("seg", model, manifest.name, manifest.version, kind, *sorted(sources))


def _pixels(sources: Sequence[HeldInstance], model: str, manifest: Manifest, kind: SegmentationKind) -> np.ndarray:
    frames = [f for inst in sources for f in inst.frames]
    if manifest.mask_heads:
        return _stacked_pixels(frames, model, manifest, kind)
    if kind == "binary":
        return np.stack([unpack(f.masks[model], f.shape) for f in frames])
    planes = manifest.num_classes - 1
    stacked = np.stack([unpack(f.probabilities[model], (planes, *f.shape)) for f in frames])  # (n, k, r, c)
    return np.moveaxis(stacked, 1, -1).astype(np.float32) / np.float32(255)


def _stacked_pixels(frames: Sequence[HeldFrame], model: str, manifest: Manifest, kind: SegmentationKind) -> np.ndarray:
    """(frames, rows, cols, segments): the model's classes, then each further mask head's, one plane per
    segment (a head's classes may overlap the model's, so one label map cannot hold them). Binary planes
    are 0/1 uint8, fractional ones float32 probabilities. A frame without a head's result (segmented before
    the model had the head) has that head's planes empty."""
    main = len(manifest.classes[1:]) if manifest.output is not None else 0
    counts = [len(h.classes) - 1 for h in manifest.mask_heads]
    rows, cols = frames[0].shape
    dtype = np.uint8 if kind == "binary" else np.float32
    out = np.zeros((len(frames), rows, cols, main + sum(counts)), dtype)
    for i, f in enumerate(frames):
        heads = f.heads.get(model, ())
        if kind == "binary":
            labels = unpack(f.masks[model], f.shape)
            for k in range(main):
                out[i, ..., k] = labels == k + 1
        elif main:
            out[i, ..., :main] = np.moveaxis(unpack(f.probabilities[model], (main, *f.shape)), 0, -1) / np.float32(255)
        start = main
        for j, count in enumerate(counts):
            if j < len(heads):
                if kind == "binary":
                    labels = unpack(heads[j].mask, f.shape)
                    for k in range(count):
                        out[i, ..., start + k] = labels == k + 1
                elif heads[j].probabilities:
                    planes = unpack(heads[j].probabilities, (count, *f.shape))
                    out[i, ..., start : start + count] = np.moveaxis(planes, 0, -1) / np.float32(255)
            start += count
    return out


def _fill_type2(header: Any) -> None:
    for keyword in _TYPE2_COPIED:
        if keyword not in header:
            setattr(header, keyword, "")


def build_segmentations(
    series: OpenSeries, model: str, manifest: Manifest, settings: SegmentationConfig
) -> tuple[list[Any], list[str]]:
    """The SEGs of ``model``'s results for a completed ``series`` (highdicom Segmentation datasets), and why
    any source instance got none (a multi-frame image without patient coordinates cannot be referenced frame
    by frame; a source highdicom refuses even alone: its exception type, never its message, which may quote
    values). A group highdicom refuses is built again one instance per SEG."""
    from highdicom.spatial import get_image_coordinate_system

    descriptions = segment_descriptions(manifest)
    out: list[Any] = []
    problems: list[str] = []
    for sources in _groups(series):
        if len(sources[0].frames) > 1 and get_image_coordinate_system(sources[0].header) is None:
            problems.append(
                f"instance {sources[0].sop_instance_uid}: a multi-frame image without patient coordinates (no frame "
                "of reference or plane positions) cannot be referenced frame by frame by a SEG"
            )
            continue
        try:
            out.append(_build(series, sources, model, manifest, settings, descriptions))
            continue
        except Exception as exc:
            if len(sources) == 1:
                problems.append(f"instance {sources[0].sop_instance_uid}: refused by highdicom ({type(exc).__name__})")
                continue
        for inst in sources:  # one odd instance must not cost the others their SEG
            try:
                out.append(_build(series, [inst], model, manifest, settings, descriptions))
            except Exception as exc:
                problems.append(f"instance {inst.sop_instance_uid}: refused by highdicom ({type(exc).__name__})")
    return out, problems


def _build(
    series: OpenSeries,
    sources: Sequence[HeldInstance],
    model: str,
    manifest: Manifest,
    settings: SegmentationConfig,
    descriptions: list[Any],
) -> Any:
    import highdicom as hd

    headers = [inst.header for inst in sources]
    for header in headers:
        _fill_type2(header)
    number = getattr(headers[0], "SeriesNumber", None)
    try:
        base = int(number) if number is not None and str(number).strip() else 0
    except (TypeError, ValueError):
        base = 0
    series_number = min(max(1, base + settings.series_number_offset), 2**31 - 1)
    fractional = settings.kind == "fractional"
    algorithm = (model, manifest.name, manifest.version, settings.kind)
    return hd.seg.Segmentation(
        source_images=headers,
        pixel_array=_pixels(sources, model, manifest, settings.kind),
        segmentation_type=hd.seg.SegmentationTypeValues.FRACTIONAL
        if fractional
        else hd.seg.SegmentationTypeValues.BINARY,
        fractional_type=hd.seg.SegmentationFractionalTypeValues.PROBABILITY if fractional else None,
        segment_descriptions=descriptions,
        series_instance_uid=derived_uid("seg-series", series.series_uid, *algorithm),
        series_number=series_number,
        sop_instance_uid=seg_instance_uid(model, manifest, settings.kind, [inst.sop_instance_uid for inst in sources]),
        instance_number=1,
        manufacturer=settings.manufacturer[:64],
        manufacturer_model_name=manifest.name[:64],
        software_versions=f"scanedge {__version__}; {manifest.name} {manifest.version}"[:64],
        device_serial_number=settings.device_serial_number[:64],
        series_description=f"SEG {manifest.name} {manifest.version}"[:64],
        content_label="SCANEDGE",
        content_description=f"{manifest.name} {manifest.version} by scanedge"[:64],
    )


class SegOutput(DicomOutput):
    """One DICOM SEG per model and group of source images (:func:`build_segmentations`), in ``OUT/seg/``."""

    name = "seg"
    label = "SEG"

    def __init__(self, settings: SegmentationConfig) -> None:
        self.settings = settings

    @classmethod
    def from_config(cls, config: ListenerConfig) -> SegOutput:
        """``--segmentation`` decides the kind; the node's AE title is the SEGs' Device Serial Number."""
        return cls(SegmentationConfig(kind=config.segmentation, device_serial_number=config.ae_title))

    @property
    def needs_probabilities(self) -> bool:
        """FRACTIONAL SEGs are the class probabilities."""
        return self.settings.kind == "fractional"

    def describe(self) -> str:
        """``binary SEGs`` or ``fractional SEGs``."""
        return f"{self.settings.kind} SEGs"

    def check_model(self, model: str, manifest: Manifest) -> None:
        """Classes without coded concepts get a generic description in the SEG: say so once, at start."""
        if manifest.output is None and not manifest.mask_heads:
            log.warning("model %s has no mask output (a classifier): it gets no SEG; see the scores output", model)
            return
        classes = [c.name for c in manifest.classes[1:] if c.property_type is None]
        classes += [h.segment_label for h in head_segments(manifest) if h.spec.property_type is None]
        uncoded = [_segment_label(c) for c in classes]
        if uncoded:
            log.warning(
                "model %s: class(es) %s have no coded concepts in the manifest; their SEG segments are "
                "described generically as SCT 85756007 Tissue (see docs/manifest.md)",
                model,
                ", ".join(uncoded),
            )

    def build(self, series: OpenSeries, model: str, manifest: Manifest) -> tuple[list[Any], list[str]]:
        """The SEGs of ``model`` for ``series`` and the instances that got none (:func:`build_segmentations`);
        none for a model without a mask output or further mask head."""
        if manifest.output is None and not manifest.mask_heads:
            return [], []
        return build_segmentations(series, model, manifest, self.settings)


#: earlier names of configuration classes (every frozen configuration is now called ...Config)
__getattr__ = forward_names(
    __name__,
    {
        "SegmentationSettings": ("scanedge.dicomnet.outputs.seg", "SegmentationConfig"),
    },
)
