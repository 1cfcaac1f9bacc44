"""Write a synthetic follow-up pair (``scanedge.demo.followup.make_pair``) as two real DICOM series of one patient."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.uid import generate_uid

from scanedge.imaging.dicom import dataset_from_slice
from scanedge.imaging.registration import VolumeGeometry
from scanedge.imaging.slices import Slice, SliceGeometry, SliceIdentity

__all__ = ["write_series"]

_MR = "1.2.840.10008.5.1.4.1.1.4"


def write_series(
    folder: Path, volume: np.ndarray, geometry: VolumeGeometry, *, patient_id: str, date: str, modality: str = "MR"
) -> list[Path]:
    """One DICOM file per z plane of ``volume`` (axial, identity direction, ``geometry``'s spacing and origin)."""
    folder.mkdir(parents=True, exist_ok=True)
    study_uid, series_uid, frame_uid = generate_uid(), generate_uid(), generate_uid()
    sx, sy, sz = geometry.spacing
    ox, oy, oz = geometry.origin
    stored = np.clip(np.rint(volume), 0, 32767).astype(np.int16)
    paths = []
    for z, plane in enumerate(stored):
        slice_ = Slice.from_array(
            np.ascontiguousarray(plane),
            geometry=SliceGeometry(
                pixel_spacing=(sy, sx),
                slice_thickness=sz,
                image_position=(ox, oy, oz + z * sz),
                image_orientation=(1, 0, 0, 0, 1, 0),
            ),
            identity=SliceIdentity(series_uid=series_uid, instance_number=z + 1, modality=modality),
            window_center=500,
            window_width=1000,
        )
        ds = dataset_from_slice(slice_, sop_class_uid=_MR, study_uid=study_uid)
        ds.FrameOfReferenceUID = frame_uid
        ds.PatientName, ds.PatientID = "TEST^FOLLOWUP", patient_id
        ds.PatientBirthDate, ds.PatientSex, ds.StudyTime, ds.StudyID = "", "O", "120000", "1"
        ds.AccessionNumber, ds.ReferringPhysicianName = "", ""
        ds.StudyDate = ds.SeriesDate = date
        ds.Modality = modality
        ds.BodyPartExamined = "BRAIN"
        path = folder / f"IM{z + 1:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def write_lesion_seg(path: Path, source_folder: Path, mask: np.ndarray) -> dict[int, str]:
    """A scanedge lesion SEG (the contract the ``sr`` output writes) of the series in ``source_folder``: one
    segment per 3-D component of ``mask`` (z in file order), with a Tracking UID each; returns label -> UID."""
    import highdicom as hd
    import pydicom
    from pydicom.sr.codedict import codes
    from scipy import ndimage

    sources = [pydicom.dcmread(p) for p in sorted(source_folder.glob("*.dcm"))]
    labels, count = ndimage.label(mask > 0, structure=np.ones((3, 3, 3), bool))
    uids = {n: generate_uid(prefix="2.25.") for n in range(1, count + 1)}
    algorithm = hd.AlgorithmIdentificationSequence(
        name="test", version="1", family=codes.cid7162.ArtificialIntelligence
    )
    segments = [
        hd.seg.SegmentDescription(
            segment_number=n,
            segment_label=f"lesion {n}",
            segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
            segmented_property_type=codes.SCT.Lesion,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
            tracking_uid=uids[n],
            tracking_id=f"lesion {n}",
        )
        for n in range(1, count + 1)
    ]
    pixels = np.stack([labels == n for n in range(1, count + 1)], axis=-1).astype(np.uint8)
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=pixels,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=segments,
        series_instance_uid=generate_uid(),
        series_number=99,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer="scanedge",
        manufacturer_model_name="scanedge",
        software_versions="test",
        device_serial_number="1",
        series_description="scanedge lesions (test)",
    )
    seg.save_as(path)
    return uids
