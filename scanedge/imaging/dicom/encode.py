"""A slice -> DICOM: the dataset or Part-10 bytes that hold it (demo series, benchmarks, tests, warm-up).

The inverse of :mod:`.decode` for what a slice carries (pixels, geometry, rescale, window, identity),
so ``slices_from_dicom(encode_dicom(s))`` gives ``s`` back. Writing other kinds of DICOM object belongs
in a module of its own beside this one.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np

from scanedge.imaging.slices import Slice

__all__ = ["dataset_from_slice", "encode_dicom"]

_SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
_DICOM_DTYPES = {"uint8": (8, 0), "int8": (8, 1), "uint16": (16, 0), "int16": (16, 1)}


def dataset_from_slice(
    slice_: Slice,
    *,
    sop_class_uid: str = _SECONDARY_CAPTURE,
    sop_instance_uid: str | None = None,
    series_uid: str | None = None,
    study_uid: str | None = None,
) -> Any:
    """A pydicom FileDataset holding the slice: pixels, geometry, rescale, window and identity.

    No patient module is filled in; callers that need one (the demo series) add it. Integer pixels of
    8 or 16 bits only; grey or RGB.
    """
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, ExplicitVRLittleEndian, generate_uid

    px = slice_.pixels
    if px.dtype.name not in _DICOM_DTYPES or (slice_.is_color and px.dtype != np.uint8):
        raise ValueError(f"DICOM encoding takes 8/16-bit integer grey or 8-bit RGB pixels, not {px.dtype}")
    bits, signed = _DICOM_DTYPES[px.dtype.name]
    ident, geo = slice_.identity, slice_.geometry
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class_uid)
    meta.MediaStorageSOPInstanceUID = UID(sop_instance_uid or ident.sop_instance_uid or generate_uid())
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = FileDataset("", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class_uid, meta.MediaStorageSOPInstanceUID
    ds.SeriesInstanceUID = series_uid or ident.series_uid or generate_uid()
    ds.StudyInstanceUID = study_uid or ident.study_uid or generate_uid()
    if ident.frame_of_reference_uid:
        ds.FrameOfReferenceUID = ident.frame_of_reference_uid
    ds.Modality = ident.modality or "OT"
    acq = slice_.acquisition
    if acq.body_part:
        ds.BodyPartExamined = acq.body_part
    if acq.image_type:
        ds.ImageType = list(acq.image_type)
    if acq.series_number is not None:
        ds.SeriesNumber = acq.series_number
    if acq.series_description:
        ds.SeriesDescription = acq.series_description
    if acq.scanning_sequence:
        ds.ScanningSequence = list(acq.scanning_sequence)
    if acq.sequence_name:
        ds.SequenceName = acq.sequence_name[:16]
    if acq.contrast_agent:
        ds.ContrastBolusAgent = acq.contrast_agent
    if ident.instance_number is not None:
        ds.InstanceNumber = ident.instance_number
    if geo.pixel_spacing is not None:
        ds.PixelSpacing = list(geo.pixel_spacing)
    if geo.slice_thickness is not None:
        ds.SliceThickness = geo.slice_thickness
    if geo.image_position is not None:
        ds.ImagePositionPatient = list(geo.image_position)
    if geo.image_orientation is not None:
        ds.ImageOrientationPatient = list(geo.image_orientation)
    if geo.slice_location is not None:
        ds.SliceLocation = geo.slice_location
    ds.Rows, ds.Columns = slice_.shape
    ds.SamplesPerPixel = 3 if slice_.is_color else 1
    ds.PhotometricInterpretation = "RGB" if slice_.is_color else "MONOCHROME2"
    if slice_.is_color:
        ds.PlanarConfiguration = 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits, bits - 1, signed
    if slice_.has_rescale or not slice_.is_color:
        ds.RescaleSlope, ds.RescaleIntercept = slice_.rescale_slope, slice_.rescale_intercept
    if slice_.window_center is not None:
        ds.WindowCenter, ds.WindowWidth = slice_.window_center, slice_.window_width
    ds.PixelData = np.ascontiguousarray(px, px.dtype.newbyteorder("<")).tobytes()
    return ds


def encode_dicom(slice_: Slice, **uids: str) -> bytes:
    """The slice as Part-10 DICOM bytes (explicit VR little endian). See :func:`dataset_from_slice`."""
    buf = io.BytesIO()
    dataset_from_slice(slice_, **uids).save_as(buf, enforce_file_format=True)
    return buf.getvalue()
