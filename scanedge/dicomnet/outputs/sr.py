"""The SR output: a completed series' tracked lesions as a lesion SEG and a TID 1500 Measurement Report.

For each completed series and model :class:`SrOutput` writes two objects to ``OUT/sr/``:

- the **lesion SEG** (THE LESION SEG CONTRACT, docs/dicom-node.md): a BINARY DICOM Segmentation of the
  current series with one segment per tracked lesion, segment n being the voxels labelled n in the
  comparison's tracking volume, its Tracking ID ``lesion n`` and its Tracking UID the lesion's; Series
  Description ``scanedge lesions ...``, Manufacturer ``scanedge``. A node reading the study later as a prior
  gets the tracking volume and the UIDs back from it, so a lesion keeps its UID from study to study.
- the **Measurement Report** (DICOM SR TID 1500, Comprehensive 3D SR): one measurement group per lesion
  (TID 1411, Tracking Identifier and UID, the lesion's segment in the lesion SEG, its volume in mm3, the
  change class as a coded qualitative evaluation, the prior volume and the prior Tracking UIDs), a group per
  disappeared lesion (TID 1501, volume 0, the prior's UID), and one series group: the lesion load, its
  change in mm3 and %, the count of each change class, what it was compared with (prior study date and
  UID), the matching rules and the registration's verdict, or why there is no prior or why change is
  withheld. The model (name, version, sha256 of its ONNX graph) is named in every group's algorithm
  identification and in the Contributing Equipment Sequence of both objects. A model with score heads gets
one more group per head (each class's series probability, aggregated by the ``scores`` output's own code,
and its decision coded SCT Positive / Negative); a model with score heads and no mask gets an SR of those
groups alone and no lesion SEG. A model with further mask heads gets one group per head class (TID 1411): its
volume over the series in mm3 (the same 3-D load :class:`~scanedge.imaging.heads.MaskHeadLoad` that ``scanedge
segment`` reports), its count of connected 3-D regions, its finding coded from the class's ``property_type`` and
``property_category``, and a reference to the class's segment of the node's SEG (the SEG output's own object:
built with its builder and numbering, written by the ``seg`` output, or beside the SR when the node has none).

The comparison is the node's follow-up (``series.comparisons[model]``); without follow-up the series'
held masks are compared with no prior here (reason ``follow-up not configured``), so the output works on
every node, and its lesions get Tracking UIDs derived from the series, model and label, so a retry (or a
restart) builds the very same objects. Codes: SNOMED CT and DCM where they exist (Volume, Lesion,
Imaging procedure, Study Instance UID), UCUM units, and the private scheme :data:`SCHEME` (``99SCANEDGE``,
described in each SR's Coding Scheme Identification Sequence and in docs/followup.md) for the change
classes and the figures no standard code names.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from scanedge.dicomnet.outputs.base import DicomOutput
from scanedge.dicomnet.outputs.scores import series_head_scores
from scanedge.dicomnet.outputs.seg import (
    HeadSegment,
    SegmentationConfig,
    SegmentationKind,
    _fill_type2,
    _groups,
    build_segmentations,
    derived_uid,
    head_segments,
    seg_instance_uid,
)
from scanedge.dicomnet.series import ComparedSeries, HeldInstance, OpenSeries, unpack
from scanedge.errors import InputError, ScanedgeError
from scanedge.imaging.followup import require_followup_extra
from scanedge.imaging.heads import MaskHeadLoad, head_labels
from scanedge.imaging.lesion_load import SeriesLesionLoad
from scanedge.manifest import CodedConcept, Manifest
from scanedge.version import __version__

if TYPE_CHECKING:
    from scanedge.dicomnet.config import ListenerConfig
    from scanedge.imaging.heads import SeriesScore
    from scanedge.imaging.lesion_change import LesionChange

__all__ = [
    "CHANGE_CONCEPTS",
    "LESION_SEG_DESCRIPTION",
    "MAX_VOXELS",
    "NO_FOLLOWUP_REASON",
    "SCHEME",
    "SrConfig",
    "SrOutput",
    "build_lesion_seg",
    "build_report",
    "lesion_labels",
    "series_tracking",
]

log = logging.getLogger("scanedge.dicomnet")

#: a lesion SEG's Series Description starts with this (THE LESION SEG CONTRACT)
LESION_SEG_DESCRIPTION = "scanedge lesions"
#: the reason an SR gives when the node compares without follow-up
NO_FOLLOWUP_REASON = "follow-up not configured"
#: voxels a series may have to be tracked here without follow-up (the follow-up's own default bound)
MAX_VOXELS = 48 * 1024 * 1024
#: the private coding scheme of the concepts no standard code names (docs/followup.md lists them)
SCHEME = "99SCANEDGE"
_LESION = CodedConcept("52988006", "SCT", "Lesion")
_ABNORMAL = CodedConcept("49755003", "SCT", "Morphologically Abnormal Structure")

#: change class -> (code value, meaning) in :data:`SCHEME`: the value of each lesion's "Change since prior"
CHANGE_CONCEPTS: dict[str, tuple[str, str]] = {
    "new": ("new", "New lesion"),
    "enlarging": ("enlarging", "Enlarging lesion"),
    "stable": ("stable", "Stable lesion"),
    "shrinking": ("shrinking", "Shrinking lesion"),
    "disappeared": ("disappeared", "Disappeared lesion"),
    "merged": ("merged", "Merged lesions"),
    "split": ("split", "Split lesion"),
    "not assessed": ("not-assessed", "Change not assessed"),
}
#: the other concepts of :data:`SCHEME`: (code value, meaning)
_CONCEPTS: dict[str, tuple[str, str]] = {
    "change": ("change", "Change since prior study"),
    "prior volume": ("prior-volume", "Volume in prior study"),
    "volume change": ("volume-change", "Volume change since prior study"),
    "prior uid": ("prior-uid", "Prior lesion Tracking UID"),
    "load": ("lesion-load", "Total lesion load"),
    "prior load": ("prior-load", "Total lesion load in prior study"),
    "load change": ("load-change", "Lesion load change since prior study"),
    "comparison": ("comparison", "Comparison with prior study"),
    "compared": ("compared", "Compared with prior study"),
    "withheld": ("withheld", "Change withheld"),
    "no_prior": ("no-prior", "No prior study"),
    "not_tracked": ("not-tracked", "Lesions not tracked"),
    "compared with": ("compared-with", "Compared with"),
    "rules": ("rules", "Prior matching rules"),
    "registration": ("registration", "Registration"),
    "reason": ("reason", "Reason"),
    "source": ("prior-source", "Prior source"),
    "aggregation": ("aggregation", "Series aggregation"),
    "thresholds": ("thresholds", "Decision thresholds"),
    "operating point": ("operating-point", "Operating point"),
    "regions": ("regions", "Number of connected 3-D regions"),
    "mask head": ("mask-head", "Mask head class"),
}
#: a score head class's decision over the series: SNOMED CT Positive / Negative
_POSITIVE = CodedConcept("10828004", "SCT", "Positive")
_NEGATIVE = CodedConcept("260385009", "SCT", "Negative")
_COUNT_CLASSES = ("new", "enlarging", "stable", "shrinking", "disappeared", "merged", "split")


def _code(value: str, meaning: str, scheme: str = SCHEME) -> Any:
    from pydicom.sr.coding import Code

    return Code(value, scheme, meaning)


def _own(key: str) -> Any:
    value, meaning = _CONCEPTS[key]
    return _code(value, meaning)


def _concept(concept: CodedConcept) -> Any:
    return _code(concept.value, concept.meaning, concept.scheme)


@dataclass(frozen=True)
class SrConfig:
    """How the lesion SEG and the SR are written.

    Attributes:
        series_number_offset: the lesion SEG's Series Number is the source's plus this, the SR's plus this + 1.
        manufacturer: Manufacturer of both objects (the software that made them).
        device_serial_number: their Device Serial Number and the SR's device observer (the node's AE title).
        segmentation: the kind of the node's SEG whose segments the mask head groups reference (the ``seg``
            output's ``--segmentation``; binary when the node has no ``seg`` output).
        seg_output: whether the node's ``seg`` output writes that SEG; if not, the SR output writes it itself.
    """

    series_number_offset: int = 2000
    manufacturer: str = "scanedge"
    device_serial_number: str = "scanedge"
    segmentation: SegmentationKind = "binary"
    seg_output: bool = False


def lesion_labels(manifest: Manifest) -> tuple[int, ...]:
    """The label values of the model's lesion classes: coded SCT 52988006 Lesion, or named ``*lesion*``."""
    out = []
    for label, spec in enumerate(manifest.classes[1:], start=1):
        coded = spec.property_type is not None and (spec.property_type.scheme, spec.property_type.value) == (
            "SCT",
            "52988006",
        )
        if coded or "lesion" in spec.name.lower():
            out.append(label)
    return tuple(out)


def _series_number(header: Any, offset: int) -> int:
    number = getattr(header, "SeriesNumber", None)
    try:
        base = int(number) if number is not None and str(number).strip() else 0
    except (TypeError, ValueError):
        base = 0
    return min(max(1, base + offset), 2**31 - 1)


def _plane_geometry(header: Any) -> Any:
    """The header's plane geometry (single-frame: Image Position/Orientation (Patient), Pixel Spacing)."""
    from scanedge.imaging.slices import SliceGeometry

    def floats(keyword: str, n: int) -> tuple[float, ...] | None:
        values = getattr(header, keyword, None)
        try:
            out = tuple(float(v) for v in values) if values is not None else None
        except (TypeError, ValueError):
            return None
        return out if out is not None and len(out) == n else None

    thickness = getattr(header, "SliceThickness", None)
    try:
        thick = float(thickness) if thickness not in (None, "") else None
    except (TypeError, ValueError):
        thick = None
    return SliceGeometry(
        pixel_spacing=floats("PixelSpacing", 2),  # type: ignore[arg-type]
        slice_thickness=thick,
        image_position=floats("ImagePositionPatient", 3),  # type: ignore[arg-type]
        image_orientation=floats("ImageOrientationPatient", 6),  # type: ignore[arg-type]
    )


def series_tracking(series: OpenSeries, model: str, manifest: Manifest) -> ComparedSeries:
    """The series' tracked lesions for ``model``: the follow-up's comparison when there is one, else the held
    masks compared with no prior (:data:`NO_FOLLOWUP_REASON`), with Tracking UIDs derived from the series,
    the model and the label (the same on every retry). InputError when the series is no volume (no
    single-frame images of one orientation and shape with plane geometry) or past :data:`MAX_VOXELS`."""
    known = series.comparisons.get(model)
    if known is not None:
        return known
    from scanedge.imaging.followup import compare_series, volume_geometry

    groups = [g for g in _groups(series) if len(g[0].frames) == 1]
    candidates = []
    why = "no single-frame images"
    for group in groups:
        try:
            planes = [_plane_geometry(inst.header) for inst in group]
            geometry, order = volume_geometry(planes)
        except ScanedgeError as exc:
            why = exc.message
            continue
        candidates.append((len(group), group, geometry, order))
    if not candidates:
        raise InputError(f"the series is no volume ({why})")
    _, group, geometry, order = max(candidates, key=lambda c: c[0])
    voxels = len(group) * group[0].frames[0].shape[0] * group[0].frames[0].shape[1]
    if voxels > MAX_VOXELS:
        raise InputError(f"the series has {voxels} voxels; at most {MAX_VOXELS} are tracked without follow-up")
    labels = lesion_labels(manifest)
    shape = group[0].frames[0].shape
    masks = []
    for i in order:
        mask = unpack(group[i].frames[0].masks[model], shape)
        masks.append(np.isin(mask, labels) if labels else mask > 0)
    mask_volume = np.stack(masks).astype(np.uint8)
    comparison = compare_series(
        np.zeros(mask_volume.shape, np.float32), geometry, mask_volume, None, no_prior_reason=NO_FOLLOWUP_REASON
    )
    report = comparison.report
    uids = {n: derived_uid("tracking", series.series_uid, model, str(n)) for n in report.uids}
    comparison = replace(comparison, report=replace(report, uids=uids))
    return ComparedSeries(comparison, tuple((group[i].sop_instance_uid, 1) for i in order))


def _algorithm(manifest: Manifest) -> Any:
    import highdicom as hd
    from pydicom.sr.codedict import codes

    parameters = [f"onnx graph sha256 {manifest.onnx_sha256}"] if manifest.onnx_sha256 else None
    return hd.sr.AlgorithmIdentification(
        name=manifest.name[:64],
        version=manifest.version[:64],
        parameters=parameters,
        family=codes.cid7162.ArtificialIntelligence,
    )


def _equipment(manifest: Manifest, settings: SrConfig, what: str = "lesions segmented") -> Any:
    import highdicom as hd
    from pydicom.sr.codedict import codes

    sha = manifest.onnx_sha256 or "not stated in its manifest"
    return hd.ContributingEquipment(
        manufacturer=settings.manufacturer[:64],
        purpose_of_reference=codes.DCM.ProcessingEquipment,
        manufacturer_model_name=manifest.name[:64],
        software_versions=[f"scanedge {__version__}"[:64], f"{manifest.name} {manifest.version}"[:64]],
        device_serial_number=settings.device_serial_number[:64],
        contribution_description=(
            f"{what} by model {manifest.name} {manifest.version} (ONNX graph sha256 {sha}) "
            f"and reported by scanedge {__version__}"
        )[:1024],
    )


def _lesion_class(manifest: Manifest) -> Any:
    labels = lesion_labels(manifest)
    return manifest.classes[labels[0]] if labels else None


def build_lesion_seg(
    series: OpenSeries, model: str, manifest: Manifest, tracked: ComparedSeries, settings: SrConfig
) -> Any | None:
    """The lesion SEG of a series (one segment per tracked lesion), or None when no lesion is tracked."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    report = tracked.comparison.report
    uids = dict(report.uids)
    if not uids:
        return None
    if sorted(uids) != list(range(1, len(uids) + 1)):
        raise InputError("tracking labels must be 1..n to be SEG segment numbers")
    tracking = np.asarray(report.tracking)
    sops = [sop for sop, _ in tracked.frames]
    if len(tracked.frames) != tracking.shape[0]:
        raise InputError(f"{tracking.shape[0]} tracking planes for {len(tracked.frames)} frames")
    missing = [sop for sop in dict.fromkeys(sops) if sop not in series.instances]
    if missing:
        raise InputError(f"the tracked plane of instance {missing[0]} is not held for the series")
    if len(set(sops)) == len(sops):
        sources: list[HeldInstance] = [series.instances[sop] for sop in sops]
        pixels = tracking
    elif len(set(sops)) == 1:
        sources = [series.instances[sops[0]]]
        pixels = np.zeros((len(sources[0].frames), *tracking.shape[1:]), dtype=tracking.dtype)
        for z, (_, frame) in enumerate(tracked.frames):
            pixels[frame - 1] = tracking[z]
    else:
        raise InputError("the tracked planes come from several multi-frame images")
    spec = _lesion_class(manifest)
    algorithm = hd.AlgorithmIdentificationSequence(
        name=manifest.name[:64],
        family=codes.cid7162.ArtificialIntelligence,
        version=manifest.version[:64],
        source=f"scanedge {__version__}",
    )
    category = (spec.property_category if spec is not None else None) or _ABNORMAL
    region = spec.anatomic_region if spec is not None else None
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=n,
            segment_label=f"lesion {n}",
            segmented_property_category=_concept(category),
            segmented_property_type=_concept((spec.property_type if spec is not None else None) or _LESION),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
            tracking_id=f"lesion {n}",
            tracking_uid=uids[n],
            anatomic_regions=None if region is None else [_concept(region)],
        )
        for n in range(1, len(uids) + 1)
    ]
    headers = [inst.header for inst in sources]

    for header in headers:
        _fill_type2(header)
    identity = (series.series_uid, model, manifest.name, manifest.version)
    return hd.seg.Segmentation(
        source_images=headers,
        pixel_array=pixels.astype(np.uint16),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=derived_uid("lesion-seg-series", *identity),
        series_number=_series_number(headers[0], settings.series_number_offset),
        sop_instance_uid=derived_uid("lesion-seg", *identity, *sorted(series.instances)),
        instance_number=1,
        manufacturer=settings.manufacturer[:64],
        manufacturer_model_name=manifest.name[:64],
        software_versions=f"scanedge {__version__}; {manifest.name} {manifest.version}"[:64],
        device_serial_number=settings.device_serial_number[:64],
        series_description=f"{LESION_SEG_DESCRIPTION} {manifest.name} {manifest.version}"[:64],
        content_label="LESIONS",
        content_description=f"tracked lesions, {manifest.name} {manifest.version}"[:64],
        contributing_equipment=[_equipment(manifest, settings)],
    )


def _volumes(tracked: ComparedSeries) -> dict[int, float]:
    """mm3 of each tracking label."""
    report = tracked.comparison.report
    spacing = tracked.comparison.geometry.spacing
    voxel = float(spacing[0] * spacing[1] * spacing[2])
    counts = np.bincount(np.asarray(report.tracking).ravel().clip(0), minlength=len(report.uids) + 1)
    return {n: float(counts[n]) * voxel for n in report.uids}


def _mm3(name: Any, value: float) -> Any:
    import highdicom as hd
    from pydicom.sr.codedict import codes

    return hd.sr.Measurement(name=name, value=round(float(value), 3), unit=codes.UCUM.CubicMillimeter)


def _text(key: str, value: str) -> Any:
    import highdicom as hd

    return hd.sr.TextContentItem(
        name=_own(key), value=value[:1024] or "-", relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
    )


def _uidref(name: Any, uid: str) -> Any:
    import highdicom as hd

    return hd.sr.UIDRefContentItem(name=name, value=uid, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS)


def _change(cls: str) -> Any:
    import highdicom as hd

    value, meaning = CHANGE_CONCEPTS[cls]
    return hd.sr.QualitativeEvaluation(name=_own("change"), value=_code(value, meaning))


def _lesion_groups(tracked: ComparedSeries, seg: Any, manifest: Manifest, algorithm: Any, series_uid: str) -> list[Any]:
    import highdicom as hd
    from pydicom.sr.codedict import codes

    comparison = tracked.comparison
    report = comparison.report
    by_label: dict[int, LesionChange] = {lesion.label: lesion for lesion in report.lesions if lesion.label > 0}
    volumes = _volumes(tracked)
    spec = _lesion_class(manifest)
    finding = _concept((spec.property_type if spec is not None else None) or _LESION)
    sites = None
    if spec is not None and spec.anatomic_region is not None:
        sites = [hd.sr.FindingSite(anatomic_location=_concept(spec.anatomic_region))]
    groups: list[Any] = []
    for n in sorted(report.uids):
        lesion = by_label.get(n)
        measurements = [_mm3(codes.SCT.Volume, lesion.current_volume_mm3 if lesion else volumes[n])]
        if lesion is not None and lesion.change != "new":
            measurements.append(_mm3(_own("prior volume"), lesion.prior_volume_mm3))
            measurements.append(_mm3(_own("volume change"), lesion.current_volume_mm3 - lesion.prior_volume_mm3))
        group = hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=report.uids[n], identifier=f"lesion {n}"),
            referenced_segment=hd.sr.ReferencedSegment(
                sop_class_uid=seg.SOPClassUID,
                sop_instance_uid=seg.SOPInstanceUID,
                segment_number=n,
                source_series=hd.sr.SourceSeriesForSegmentation(series_uid),
            ),
            finding_type=finding,
            algorithm_id=algorithm,
            finding_sites=sites,
            measurements=measurements,
            qualitative_evaluations=[_change(lesion.change if lesion else "not assessed")],
        )
        for uid in lesion.prior_uids if lesion else ():
            group[0].ContentSequence.append(_uidref(_own("prior uid"), uid))
        groups.append(group)
    for lesion in report.lesions:
        if lesion.change != "disappeared":
            continue
        gone = hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=lesion.tracking_uid, identifier="lesion (disappeared)"),
            finding_type=finding,
            algorithm_id=algorithm,
            finding_sites=sites,
            measurements=[
                _mm3(codes.SCT.Volume, 0.0),
                _mm3(_own("prior volume"), lesion.prior_volume_mm3),
                _mm3(_own("volume change"), -lesion.prior_volume_mm3),
            ],
            qualitative_evaluations=[_change("disappeared")],
        )
        for uid in lesion.prior_uids:
            gone[0].ContentSequence.append(_uidref(_own("prior uid"), uid))
        groups.append(gone)
    return groups


def _series_group(tracked: ComparedSeries | None, why_not: str, algorithm: Any, series_uid: str, model: str) -> Any:
    import highdicom as hd
    from pydicom.sr.codedict import codes

    tracking = hd.sr.TrackingIdentifier(uid=derived_uid("lesion-load", series_uid, model), identifier="lesion load")
    if tracked is None:
        group = hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=tracking,
            algorithm_id=algorithm,
            qualitative_evaluations=[hd.sr.QualitativeEvaluation(_own("comparison"), _own("not_tracked"))],
        )
        group[0].ContentSequence.append(_text("reason", f"not tracked: {why_not}"))
        return group
    comparison = tracked.comparison
    report = comparison.report
    prior = comparison.prior
    measurements = [_mm3(_own("load"), report.current_load_mm3)]
    if comparison.status == "compared":
        measurements.append(_mm3(_own("prior load"), report.prior_load_mm3))
        measurements.append(_mm3(_own("load change"), report.load_change_mm3))
        if report.load_change_percent is not None:
            measurements.append(
                hd.sr.Measurement(
                    name=_own("load change"),
                    value=round(float(report.load_change_percent), 2),
                    unit=codes.UCUM.Percent,
                )
            )
        for cls in _COUNT_CLASSES:
            value, meaning = CHANGE_CONCEPTS[cls]
            measurements.append(
                hd.sr.Measurement(
                    name=_code(f"count-{value}"[:16], f"Number of lesions: {meaning.lower()}"),
                    value=report.count(cls),  # type: ignore[arg-type]
                    unit=_code("{lesions}", "lesions", "UCUM"),
                )
            )
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=tracking,
        finding_type=_concept(_LESION),
        algorithm_id=algorithm,
        measurements=measurements,
        qualitative_evaluations=[hd.sr.QualitativeEvaluation(_own("comparison"), _status_concept(comparison.status))],
    )
    items = group[0].ContentSequence
    if prior is not None:
        items.append(
            _text("compared with", f"prior study of {prior.study_date or 'unknown date'}, study {prior.study_uid}")
        )
        items.append(_uidref(codes.DCM.StudyInstanceUID, prior.study_uid))
        if prior.source:
            items.append(_text("source", prior.source))
        if prior.rules:
            items.append(_text("rules", prior.rules))
    if comparison.registration is not None:
        r = comparison.registration
        items.append(_text("registration", f"{r.quality}: {r.reason} ({r.seconds:.2f} s)"))
    if comparison.status == "no_prior":
        items.append(_text("reason", f"no prior: {comparison.reason}"))
    elif comparison.status == "withheld":
        items.append(_text("reason", f"change withheld: {comparison.reason}"))
    return group


def _class_concepts(manifest: Manifest, head: str) -> dict[str, CodedConcept]:
    """A score head's classes coded in the manifest (``property_type``), by class name."""
    spec = next((h for h in manifest.score_heads if h.name == head), None)
    classes = spec.classes if spec is not None else ()
    return {c.name: c.property_type for c in classes if c.property_type is not None}


def _class_code(concept: CodedConcept | None, own: str, meaning: str) -> Any:
    """A score class's item named by the class's own coded concept (its code and scheme; the meaning names the
    class and what the item says of it), or by scanedge's private code when the manifest codes none."""
    if concept is None:
        return _code(own[:16], meaning[:64])
    return _code(concept.value, meaning[:64], concept.scheme)


def _score_groups(
    head_scores: Sequence[SeriesScore], manifest: Manifest, algorithm: Any, series_uid: str, model: str
) -> list[Any]:
    """One TID 1501 group per score head: per class its series probability (NUM, UCUM 1) and decision (SCT
    Positive / Negative), then the aggregation, the thresholds and the operating point as TEXT. Both items of a
    class are named by its ``property_type`` when the manifest gives one (private 99SCANEDGE codes otherwise);
    their meanings name the class (``Probability of bleed``, ``Decision: bleed``)."""
    import highdicom as hd

    points = {h.name: h.operating_point for h in manifest.score_heads}
    groups: list[Any] = []
    for head in head_scores:
        coded = _class_concepts(manifest, head.head)
        measurements = [
            hd.sr.Measurement(
                name=_class_code(coded.get(c.name), f"probability-{i}", f"Probability of {c.name}"),
                value=round(float(c.score), 6),
                unit=_code("1", "no units", "UCUM"),
            )
            for i, c in enumerate(head.classes, start=1)
        ]
        decisions = [
            hd.sr.QualitativeEvaluation(
                name=_class_code(coded.get(c.name), f"decision-{i}", f"Decision: {c.name}"),
                value=_concept(_POSITIVE if c.decision else _NEGATIVE),
            )
            for i, c in enumerate(head.classes, start=1)
        ]
        group = hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(
                uid=derived_uid("score-head", series_uid, model, head.head), identifier=head.head[:64]
            ),
            algorithm_id=algorithm,
            measurements=measurements,
            qualitative_evaluations=decisions,
        )
        items = group[0].ContentSequence
        items.append(_text("aggregation", _aggregation_text(head)))
        items.append(_text("thresholds", "; ".join(f"{c.name} >= {c.threshold:g}" for c in head.classes)))
        point = points.get(head.head)
        if point is not None:
            pairs = (("sensitivity", point.sensitivity), ("specificity", point.specificity))
            stated = [f"{k} {v:g}" for k, v in pairs if v is not None]
            items.append(_text("operating point", point.name + (f" ({', '.join(stated)})" if stated else "")))
        groups.append(group)
    return groups


def _aggregation_text(head: SeriesScore) -> str:
    """How the head's series score was made: its slices' aggregate, or its 3-D series model (and when that model
    could not run, why, beside the provisional aggregate)."""
    run = head.series_model
    if run is not None and run.status == "done":
        d, h, w = run.input
        return f"3-D series model on {run.slices} slices resampled to {d}x{h}x{w}"
    text = f"{head.aggregation} over {head.slices} slices"
    if run is not None:
        text = f"provisional {text}; series model {run.status}" + (f": {run.code}" if run.code else "")
    return text


@dataclass(frozen=True, eq=False)
class _HeadSection:
    """What the SR reports of a model's further mask heads for one series.

    Attributes:
        loads: each head's 3-D load over ``sources``' frames, by head name.
        segments: the head classes as segments of the node's SEG (:func:`~scanedge.dicomnet.outputs.seg.head_segments`).
        seg: the node's SEG of ``sources`` (holding those segments), or None when none could be built.
        why_not: why ``seg`` is None.
    """

    loads: dict[str, MaskHeadLoad]
    segments: tuple[HeadSegment, ...]
    seg: Any | None
    why_not: str = ""


def _instance_number(header: Any) -> int | None:
    number = getattr(header, "InstanceNumber", None)
    try:
        return int(number) if number is not None and str(number).strip() else None
    except (TypeError, ValueError):
        return None


def _mask_head_loads(sources: Sequence[HeldInstance], model: str, manifest: Manifest) -> dict[str, MaskHeadLoad]:
    """Each further mask head's :class:`MaskHeadLoad` over the frames of ``sources``, placed as decoding places
    them (a multi-frame image's frames without positions by their order in it, as ``scanedge segment`` does); a
    frame segmented before the model had the head is not counted."""
    from scanedge.imaging.dicom.decode import frame_geometry
    from scanedge.imaging.slices import SliceGeometry

    heads = manifest.mask_heads
    labels = head_labels([h.name for h in heads])
    loads = [SeriesLesionLoad(tuple(c.name for c in h.classes)) for h in heads]
    for inst in sources:
        number = _instance_number(inst.header)
        for index, frame in enumerate(inst.frames):
            try:
                geometry = frame_geometry(inst.header, index)
            except ScanedgeError:  # values out of physical bounds: placed by number, no volume
                geometry = SliceGeometry()
            place = number
            if len(inst.frames) > 1 and geometry.position_along_normal is None:
                place = (number or 0) * 100_000 + index
            held = frame.heads.get(model, ())
            for held_head, load in zip(held, loads):
                load.add(unpack(held_head.mask, frame.shape), geometry, place)
    return {h.name: MaskHeadLoad(h.name, label, load.load()) for h, label, load in zip(heads, labels, loads)}


def _head_section(series: OpenSeries, model: str, manifest: Manifest, settings: SrConfig) -> _HeadSection:
    """The node's SEG of the series' largest group of images (the SEG output's own builder, so the very object
    and UID it writes) and the heads' loads over that group's frames; without a SEG, the loads over the largest
    group and why there is none."""
    config = SegmentationConfig(kind=settings.segmentation, device_serial_number=settings.device_serial_number)
    segments = tuple(head_segments(manifest))
    groups = sorted(_groups(series), key=lambda g: -sum(len(inst.frames) for inst in g))
    if not groups:
        raise InputError("the series holds no image")
    built, _ = build_segmentations(series, model, manifest, config)
    by_uid = {str(seg.SOPInstanceUID): seg for seg in built}
    for group in groups:
        uid = seg_instance_uid(model, manifest, config.kind, [inst.sop_instance_uid for inst in group])
        if uid in by_uid:
            return _HeadSection(_mask_head_loads(group, model, manifest), segments, by_uid[uid])
    why = "no SEG could be built for the series' largest group of images"
    return _HeadSection(_mask_head_loads(groups[0], model, manifest), segments, None, why)


def _mask_head_groups(heads: _HeadSection, algorithm: Any, series_uid: str, model: str) -> list[Any]:
    """One group per further mask head class: TID 1411 referencing the class's segment of the node's SEG (TID
    1501 with the reason when there is no SEG), its volume over the series in mm3 (0 when the head found
    nothing; left out, with the reason, when the slices have no spacing), its count of connected 3-D regions,
    its finding coded from the class (``property_type``, ``property_category``, ``anatomic_region``) or
    named by the private code ``segment-N`` whose meaning is the segment label."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    groups: list[Any] = []
    for segment in heads.segments:
        load = heads.loads[segment.head].lesion_load
        figures = load.classes[segment.label - 1]
        spec = segment.spec
        measurements = []
        if figures.volume_mm3 is not None:
            measurements.append(_mm3(codes.SCT.Volume, figures.volume_mm3))
        measurements.append(
            hd.sr.Measurement(
                name=_own("regions"),
                value=figures.lesions,
                unit=_code("{regions}", "regions", "UCUM"),
            )
        )
        common: dict[str, Any] = {
            "tracking_identifier": hd.sr.TrackingIdentifier(
                uid=derived_uid("mask-head", series_uid, model, segment.head, str(segment.label)),
                identifier=segment.segment_label,
            ),
            "finding_type": _concept(spec.property_type)
            if spec.property_type is not None
            else _code(f"segment-{segment.number}", segment.segment_label),
            "finding_category": None if spec.property_category is None else _concept(spec.property_category),
            "finding_sites": None
            if spec.anatomic_region is None
            else [hd.sr.FindingSite(anatomic_location=_concept(spec.anatomic_region))],
            "algorithm_id": algorithm,
            "measurements": measurements,
        }
        group: Any
        if heads.seg is not None:
            group = hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
                referenced_segment=hd.sr.ReferencedSegment(
                    sop_class_uid=heads.seg.SOPClassUID,
                    sop_instance_uid=heads.seg.SOPInstanceUID,
                    segment_number=segment.number,
                    source_series=hd.sr.SourceSeriesForSegmentation(series_uid),
                ),
                **common,
            )
        else:
            group = hd.sr.MeasurementsAndQualitativeEvaluations(**common)
        items = group[0].ContentSequence
        items.append(_text("mask head", segment.segment_label))
        if figures.volume_mm3 is None:
            items.append(_text("reason", "volume not known: the slices have no pixel spacing or slice spacing"))
        if heads.seg is None:
            items.append(_text("reason", heads.why_not))
        groups.append(group)
    return groups


def _status_concept(status: str) -> Any:
    """The comparison's status as a code; a comparison still under way (never at completion) reads not tracked."""
    return _own(status if status in ("compared", "withheld", "no_prior") else "not_tracked")


def build_report(
    series: OpenSeries,
    model: str,
    manifest: Manifest,
    tracked: ComparedSeries | None,
    seg: Any | None,
    settings: SrConfig,
    why_not: str = "",
    head_scores: Sequence[SeriesScore] = (),
    heads: _HeadSection | None = None,
) -> Any:
    """The TID 1500 Measurement Report (Comprehensive 3D SR) of a series' tracked lesions; ``tracked`` None
    (with ``why_not``) gives a report that says why no lesion is tracked. ``head_scores`` adds a group per
    score head, ``heads`` one per further mask head class; a model without a mask output gets those groups
    only."""
    import highdicom as hd
    from pydicom.dataset import Dataset
    from pydicom.sr.codedict import codes

    algorithm = _algorithm(manifest)
    lesions = getattr(manifest, "output", None) is not None
    groups: list[Any] = []
    if lesions and tracked is not None and seg is not None:
        groups = _lesion_groups(tracked, seg, manifest, algorithm, series.series_uid)
    if lesions:
        groups.append(_series_group(tracked, why_not, algorithm, series.series_uid, model))
    groups.extend(_score_groups(head_scores, manifest, algorithm, series.series_uid, model))
    if heads is not None:
        groups.extend(_mask_head_groups(heads, algorithm, series.series_uid, model))
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=derived_uid("device", settings.device_serial_number, manifest.name, manifest.version),
            name=f"scanedge {manifest.name}"[:64],
            manufacturer_name=settings.manufacturer[:64],
            model_name=f"{manifest.name} {manifest.version}"[:64],
            serial_number=settings.device_serial_number[:64],
        ),
    )
    content = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=codes.SCT.ImagingProcedure,
        imaging_measurements=groups,
    )
    headers = [inst.header for inst in series.instances.values()]
    if tracked is not None:
        wanted = {sop for sop, _ in tracked.frames}
        headers = [inst.header for sop, inst in series.instances.items() if sop in wanted]
    for header in headers:
        _fill_type2(header)
    evidence = [*headers, *([seg] if seg is not None else [])]
    if heads is not None and heads.seg is not None:
        evidence.append(heads.seg)
    identity = (series.series_uid, model, manifest.name, manifest.version)
    kind = "lesion" if lesions else "score" if heads is None else "finding"
    what = "lesions segmented" if lesions else "series scored" if heads is None else "series segmented"
    sr = hd.sr.Comprehensive3DSR(
        evidence=evidence,
        content=content[0],
        series_instance_uid=derived_uid("sr-series", *identity),
        series_number=_series_number(headers[0], settings.series_number_offset + 1),
        sop_instance_uid=derived_uid("sr", *identity, *sorted(series.instances)),
        instance_number=1,
        manufacturer=settings.manufacturer[:64],
        is_complete=True,
        series_description=f"scanedge {kind} report {manifest.name} {manifest.version}"[:64],
        contributing_equipment=[_equipment(manifest, settings, what)],
    )
    scheme = Dataset()
    scheme.CodingSchemeDesignator = SCHEME
    scheme.CodingSchemeName = "scanedge follow-up concepts"
    scheme.CodingSchemeResponsibleOrganization = "scanedge (docs/followup.md)"
    sr.CodingSchemeIdentificationSequence = [scheme]
    return sr


class SrOutput(DicomOutput):
    """A lesion SEG and a TID 1500 Measurement Report per model and completed series, in ``OUT/sr/``."""

    name = "sr"
    label = "SR"

    def __init__(self, settings: SrConfig) -> None:
        self.settings = settings

    @classmethod
    def from_config(cls, config: ListenerConfig) -> SrOutput:
        """The node's AE title is the objects' Device Serial Number and the SR's device observer (whether the
        lesion tracking's SciPy is needed depends on the models: :meth:`check_model`). The mask head groups
        reference the SEG the node's ``seg`` output writes (its kind); a node without one gets that SEG (binary)
        from this output."""
        seg_output = "seg" in config.outputs
        return cls(
            SrConfig(
                device_serial_number=config.ae_title,
                segmentation=config.segmentation if seg_output else "binary",
                seg_output=seg_output,
            )
        )

    def describe(self) -> str:
        """``lesion SEGs and TID 1500 SRs``."""
        return "lesion SEGs and TID 1500 SRs"

    def check_model(self, model: str, manifest: Manifest) -> None:
        """A model without a lesion class has every foreground class tracked as lesions: say so once."""
        if getattr(manifest, "output", None) is None:
            if manifest.score_heads or manifest.mask_heads:
                log.info("model %s has no mask output: its SR reports its further heads (no lesion SEG)", model)
            else:
                log.warning("model %s has neither a mask output nor score heads: it gets no lesion SEG or SR", model)
            return
        # lesions are tracked in masks: ConfigError at start when the followup extra (SciPy) is not installed; a
        # classifier's SR (score groups alone) needs none of it
        require_followup_extra(f"the sr output's lesion tracking (model {model} has a mask)", ("scipy",))
        if not lesion_labels(manifest):
            log.warning(
                "model %s: no class is coded SCT 52988006 Lesion or named like 'lesion'; its SR tracks every "
                "foreground class (%s) as lesions",
                model,
                ", ".join(c.name for c in manifest.classes[1:]),
            )

    def build(self, series: OpenSeries, model: str, manifest: Manifest) -> tuple[list[Any], list[str]]:
        """The lesion SEG (when a lesion is tracked) and the SR of ``model`` for ``series``; a series that is no
        volume gets an SR saying why its lesions are not tracked. Score heads add their groups (a model with
        score heads and no mask: an SR of those groups alone, when it scored the series). Further mask heads add a
        group per head class, referencing the node's SEG, which this output writes too when the node has no
        ``seg`` output."""
        head_scores, _ = series_head_scores(series, model, manifest)
        heads = _head_section(series, model, manifest, self.settings) if manifest.mask_heads else None
        head_seg = [heads.seg] if heads is not None and heads.seg is not None and not self.settings.seg_output else []
        if getattr(manifest, "output", None) is None:
            if not head_scores and heads is None:
                return [], []
            report = build_report(
                series, model, manifest, None, None, self.settings, head_scores=head_scores, heads=heads
            )
            return [*head_seg, report], []
        try:
            tracked: ComparedSeries | None = series_tracking(series, model, manifest)
            why_not = ""
        except InputError as exc:
            tracked, why_not = None, exc.message
        seg = None
        if tracked is not None:
            try:
                seg = build_lesion_seg(series, model, manifest, tracked, self.settings)
            except InputError as exc:
                tracked, why_not = None, exc.message
        report = build_report(series, model, manifest, tracked, seg, self.settings, why_not, head_scores, heads)
        return [*([seg] if seg is not None else []), *head_seg, report], []
