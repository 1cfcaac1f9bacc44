"""A live Orthanc holding two studies of one patient (older and newer) and a study of another patient."""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

from tests.orthanc import Orthanc, free_port, orthanc_server

CLIENT_AET = "SCANEDGETEST"
PATIENT = "PRIOR-PAT-4711"
PATIENT_NAME = "Doe^Jane"
OTHER = "OTHER-PAT-0815"


def mr_instance(
    patient: str, study_uid: str, series_uid: str, date: str, *, body_part: str, description: str, index: int
) -> bytes:
    """One small real MR image (16x16, 16 bit) as DICOM Part 10 bytes."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.PatientID = patient
    ds.PatientName = PATIENT_NAME if patient == PATIENT else "Roe^Rick"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyDate = date
    ds.StudyTime = "101500"
    ds.Modality = "MR"
    ds.BodyPartExamined = body_part
    ds.SeriesDescription = description
    ds.SeriesNumber = 1
    ds.InstanceNumber = index + 1
    ds.ImagePositionPatient = [0.0, 0.0, float(index)]
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    ds.PixelSpacing = [1.0, 1.0]
    ds.SliceThickness = 1.0
    ds.Rows = ds.Columns = 16
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.PixelData = (np.arange(256, dtype=np.uint16) + index).tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


@dataclass(frozen=True)
class PacsContent:
    orthanc: Orthanc
    old_study: str
    old_flair: str
    old_t1: str
    mid_study: str
    new_study: str
    other_study: str
    move_port: int = 0  # where CLIENT_AET listens for a C-MOVE, as Orthanc's DicomModalities says


@pytest.fixture(scope="package")
def pacs() -> Iterator[PacsContent]:
    """Patient PATIENT: 2024 study (FLAIR brain + T1 brain), 2025 study (spine only), 2026 study (current);
    patient OTHER: a 2025 FLAIR brain study that must never be chosen. Orthanc knows CLIENT_AET at
    127.0.0.1:move_port, the C-MOVE destination."""
    move_port = free_port()
    with orthanc_server(CLIENT_AET, move_port) as orthanc:
        uids = {
            k: generate_uid() for k in ("old", "old_flair", "old_t1", "mid", "mid_se", "new", "new_se", "o", "o_se")
        }
        series = [
            (PATIENT, "old", "old_flair", "20240301", "BRAIN", "AX FLAIR", 3),
            (PATIENT, "old", "old_t1", "20240301", "BRAIN", "AX T1", 2),
            (PATIENT, "mid", "mid_se", "20250601", "SPINE", "SAG FLAIR", 2),
            (PATIENT, "new", "new_se", "20260105", "BRAIN", "AX FLAIR", 2),
            (OTHER, "o", "o_se", "20251201", "BRAIN", "AX FLAIR", 2),
        ]
        for patient, study, se, date, body, desc, n in series:
            for i in range(n):
                orthanc.upload(
                    mr_instance(patient, uids[study], uids[se], date, body_part=body, description=desc, index=i)
                )
        yield PacsContent(
            orthanc, uids["old"], uids["old_flair"], uids["old_t1"], uids["mid"], uids["new"], uids["o"], move_port
        )
