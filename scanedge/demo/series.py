"""The demo series: one synthetic patient's axial FLAIR-like MR series, written as real DICOM with pydicom.

The pixels ship inside the package as a compressed array (``demo/data/demo_patient.npz``, a held-out
subject of the demo model's generator, with its true lesion labels); the DICOM files are written on
first use into a cache folder, with proper UIDs (deterministic, so reruns give the same series),
geometry, rescale and window. Nothing here needs the ``train`` extra.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from scanedge.demo.assets import DEMO_PATIENT_PATH
from scanedge.imaging.dicom import dataset_from_slice
from scanedge.imaging.metrics import dice
from scanedge.imaging.slices import Slice, SliceGeometry, SliceIdentity

__all__ = ["DemoPatient", "demo_series_dir", "dice_against_truth", "load_demo_patient", "write_demo_series"]

_MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
_UID_ROOT = "1.2.826.0.1.3680043.8.498."  # pydicom's UID root, as generate_uid() uses


@dataclass(frozen=True, eq=False)
class DemoPatient:
    """The shipped synthetic patient: stored pixel values, the lesions the generator put there, geometry.

    Attributes:
        pixel_spacing: (row, column) spacing in mm.
    """

    pixels: np.ndarray  # (slices, rows, cols) int16 stored values
    labels: np.ndarray  # (slices, rows, cols) uint8 true lesion labels
    z_mm: np.ndarray  # (slices,) slice positions along the feet-head axis
    pixel_spacing: tuple[float, float]
    digest: str  # sha256 of the shipped file: names the cache folder and seeds the UIDs


def load_demo_patient(path: Path = DEMO_PATIENT_PATH) -> DemoPatient:
    """The demo patient stored at ``path`` (default: the one shipped in the package); FileNotFoundError
    when it is missing."""
    if not path.is_file():
        raise FileNotFoundError(
            f"the demo patient is missing ({path}); reinstall scanedge or regenerate it with "
            "`python -m scanedge.demo.train`"
        )
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    with np.load(path) as data:
        return DemoPatient(
            pixels=data["pixels"],
            labels=data["labels"],
            z_mm=data["z_mm"],
            pixel_spacing=(float(data["pixel_spacing"][0]), float(data["pixel_spacing"][1])),
            digest=digest,
        )


def dice_against_truth(masks: Sequence[np.ndarray], patient: DemoPatient | None = None) -> float:
    """Dice of the demo series' label masks (one per slice, in series order) against the lesions the
    generator put there: possible only because the demo patient is synthetic."""
    patient = patient or load_demo_patient()
    return dice(patient.labels, np.stack(masks))


def _uid(digest: str, *parts: object) -> str:
    h = hashlib.sha256("/".join([digest, *map(str, parts)]).encode()).hexdigest()
    return _UID_ROOT + str(int(h[:24], 16))[: 64 - len(_UID_ROOT)]


def write_demo_series(
    out_dir: str | os.PathLike[str],
    patient: DemoPatient | None = None,
    *,
    pixels: np.ndarray | None = None,
    study: str = "study",
    date: str = "20260101",
) -> list[Path]:
    """Write the demo patient as one DICOM file per slice (``IM0001.dcm`` ...); returns the paths.

    ``pixels`` (the patient's shape), ``study`` (seeds the UIDs) and ``date`` (YYYYMMDD) make another study of
    the same patient: the follow-up demo's prior (:mod:`scanedge.demo.followup_series`)."""
    patient = patient or load_demo_patient()
    volume = patient.pixels if pixels is None else pixels
    if volume.shape != patient.pixels.shape:
        raise ValueError(f"pixels {volume.shape} must have the demo patient's shape {patient.pixels.shape}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    key = "" if study == "study" else f"{study}/"  # the shipped study keeps its UIDs
    study_uid, series_uid, frame_uid = (_uid(patient.digest, key + k) for k in ("study", "series", "frame"))
    # window: black to just above the brightest lesions, so lesions stand out of white matter and cortex
    lo, hi = 0.0, 1.1 * float(np.percentile(patient.pixels, 99.99))
    rows, cols = patient.pixels.shape[1:]
    sr, sc = patient.pixel_spacing
    middle = float(patient.z_mm.max()) / 2
    step = float(np.diff(patient.z_mm).mean()) if len(patient.z_mm) > 1 else 1.0
    paths = []
    for i, (plane, z) in enumerate(zip(volume, patient.z_mm)):
        slice_ = Slice.from_array(
            np.ascontiguousarray(plane, np.int16),
            geometry=SliceGeometry(
                pixel_spacing=(sr, sc),
                slice_thickness=1.0,
                # radiological display: columns run to the patient's left (+x), rows to posterior (+y)
                image_position=(-(cols - 1) * sc / 2, -(rows - 1) * sr / 2, float(z) - middle),
                image_orientation=(1, 0, 0, 0, 1, 0),
                slice_location=float(z) - middle,
            ),
            identity=SliceIdentity(series_uid=series_uid, instance_number=i + 1, modality="MR"),
            window_center=round((lo + hi) / 2),
            window_width=round(hi - lo),
        )
        ds = dataset_from_slice(
            slice_,
            sop_class_uid=_MR_IMAGE_STORAGE,
            sop_instance_uid=_uid(patient.digest, key + "instance", i),
            study_uid=study_uid,
        )
        ds.FrameOfReferenceUID = frame_uid
        ds.PatientName = "DEMO^SYNTHETIC"
        ds.PatientID = "SCANEDGE-DEMO"
        ds.PatientSex = "O"
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = date
        ds.StudyTime = ds.SeriesTime = ds.ContentTime = "120000"
        ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName = "1", "", ""
        ds.Manufacturer = "scanedge synthetic demo"
        ds.SeriesDescription = "AX FLAIR synthetic demo (not a real patient)"
        ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
        ds.SeriesNumber = 1
        ds.ScanningSequence, ds.SequenceVariant = ["SE", "IR"], ["SK"]
        ds.RepetitionTime, ds.EchoTime, ds.InversionTime = 9000, 120, 2500
        ds.MagneticFieldStrength = 3
        ds.PatientPosition = "HFS"
        ds.SpacingBetweenSlices = step
        ds.RescaleType = "US"
        path = out / f"IM{i + 1:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def _cache_root() -> Path:
    root = os.environ.get("SCANEDGE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache"), "scanedge"
    )
    return Path(root)


def demo_series_dir() -> Path:
    """The demo series folder, written on first use (atomically, so a crash leaves no half series)."""
    patient = load_demo_patient()
    target = _cache_root() / f"demo-series-{patient.digest[:12]}"
    if target.is_dir() and len(list(target.glob("*.dcm"))) == len(patient.pixels):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".demo-series-", dir=target.parent))
    try:
        write_demo_series(tmp, patient)
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target
