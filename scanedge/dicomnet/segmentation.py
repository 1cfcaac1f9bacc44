"""A completed series and one model's results -> DICOM Segmentation objects, built with highdicom.

One SEG per model and per group of source images that can share one: the single-frame instances of a
series with the same rows and columns together, and each multi-frame instance (Enhanced MR/CT,
multi-frame US) on its own, as a SEG's frames reference either many single-frame images or the frames
of one image. Each SEG references every source instance it covers (and so the source series, study and
frame of reference), describes every foreground class of the model as a segment with its coded property
category and type from the manifest, and names the algorithm: the model's name and version, and the
scanedge version that ran it.

``binary``: one bit per pixel and class, from the label mask. ``fractional``: the class probability per
pixel (``PROBABILITY``, 8 bits), from the model's probabilities resized to the slice.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from scanedge import __version__
from scanedge.dicomnet.series import HeldInstance, OpenSeries, unpack
from scanedge.manifest import ClassSpec, CodedConcept, Manifest

__all__ = ["GENERIC_CATEGORY", "GENERIC_TYPE", "SegmentationKind", "SegmentationSettings", "build_segmentations"]

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
class SegmentationSettings:
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
    """One highdicom SegmentDescription per foreground class (segment number = label value)."""
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
    return out


def _description(hd: Any, label: int, spec: ClassSpec, algorithm: Any) -> Any:
    return hd.seg.SegmentDescription(
        segment_number=label,
        segment_label=spec.name[:64],
        segmented_property_category=_code(spec.property_category or GENERIC_CATEGORY),
        segmented_property_type=_code(spec.property_type or GENERIC_TYPE),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm,
        anatomic_regions=None if spec.anatomic_region is None else [_code(spec.anatomic_region)],
    )


def _groups(series: OpenSeries) -> list[list[HeldInstance]]:
    """Sources that share one SEG: single-frame instances in one frame of reference by size, each multi-frame
    instance alone, and each instance alone when it has no patient coordinates (CR, DX, US without a frame
    of reference: a SEG can then reference one image only)."""
    from highdicom.spatial import get_image_coordinate_system

    single: dict[tuple[tuple[int, int], str], list[HeldInstance]] = {}
    groups: list[list[HeldInstance]] = []
    for inst in series.instances.values():
        multi = len(inst.frames) > 1 or int(getattr(inst.header, "NumberOfFrames", 1) or 1) > 1
        if multi or get_image_coordinate_system(inst.header) is None:
            groups.append([inst])
        else:
            key = (inst.frames[0].shape, str(getattr(inst.header, "FrameOfReferenceUID", "")))
            single.setdefault(key, []).append(inst)

    def order(inst: HeldInstance) -> tuple[int, str]:
        number = getattr(inst.header, "InstanceNumber", None)
        return (int(number) if number is not None and str(number).strip() else 0, inst.sop_instance_uid)

    return [sorted(g, key=order) for g in single.values()] + groups


def _pixels(sources: Sequence[HeldInstance], model: str, manifest: Manifest, kind: SegmentationKind) -> np.ndarray:
    frames = [f for inst in sources for f in inst.frames]
    if kind == "binary":
        return np.stack([unpack(f.masks[model], f.shape) for f in frames])
    planes = manifest.num_classes - 1
    stacked = np.stack([unpack(f.probabilities[model], (planes, *f.shape)) for f in frames])  # (n, k, r, c)
    return np.moveaxis(stacked, 1, -1).astype(np.float32) / np.float32(255)


def _fill_type2(header: Any) -> None:
    for keyword in _TYPE2_COPIED:
        if keyword not in header:
            setattr(header, keyword, "")


def build_segmentations(
    series: OpenSeries, model: str, manifest: Manifest, settings: SegmentationSettings
) -> tuple[list[Any], list[str]]:
    """The SEGs of ``model``'s results for a completed ``series`` (highdicom Segmentation datasets), and why
    any source instance got none (a multi-frame image without patient coordinates cannot be referenced
    frame by frame)."""
    import highdicom as hd
    from highdicom.spatial import get_image_coordinate_system

    descriptions = segment_descriptions(manifest)
    out, skipped = [], []
    for sources in _groups(series):
        headers = [inst.header for inst in sources]
        if len(sources[0].frames) > 1 and get_image_coordinate_system(headers[0]) is None:
            skipped.append(
                f"instance {sources[0].sop_instance_uid}: a multi-frame image without patient coordinates (no frame "
                "of reference or plane positions) cannot be referenced frame by frame by a SEG"
            )
            continue
        for header in headers:
            _fill_type2(header)
        number = getattr(headers[0], "SeriesNumber", None)
        base = int(number) if number is not None and str(number).strip() else 0
        series_number = min(max(1, base + settings.series_number_offset), 2**31 - 1)
        fractional = settings.kind == "fractional"
        out.append(
            hd.seg.Segmentation(
                source_images=headers,
                pixel_array=_pixels(sources, model, manifest, settings.kind),
                segmentation_type=hd.seg.SegmentationTypeValues.FRACTIONAL
                if fractional
                else hd.seg.SegmentationTypeValues.BINARY,
                fractional_type=hd.seg.SegmentationFractionalTypeValues.PROBABILITY if fractional else None,
                segment_descriptions=descriptions,
                series_instance_uid=hd.UID(),
                series_number=series_number,
                sop_instance_uid=hd.UID(),
                instance_number=1,
                manufacturer=settings.manufacturer[:64],
                manufacturer_model_name=manifest.name[:64],
                software_versions=f"scanedge {__version__}; {manifest.name} {manifest.version}"[:64],
                device_serial_number=settings.device_serial_number[:64],
                series_description=f"SEG {manifest.name} {manifest.version}"[:64],
                content_label="SCANEDGE",
                content_description=f"{manifest.name} {manifest.version} by scanedge"[:64],
            )
        )
    return out, skipped
