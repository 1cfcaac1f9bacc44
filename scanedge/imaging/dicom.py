"""DICOM -> slices, with pydicom.

Decoding normalises what every later stage would otherwise have to know about: MONOCHROME1 is inverted
to MONOCHROME2 (window centre mirrored with it), YBR and palette colour become RGB, multi-frame objects
split into one slice per frame with per-frame geometry and rescale from the functional groups when
present. Compressed transfer syntaxes decode through pydicom's plugins; the ``dicom`` extra installs
them (pylibjpeg with libjpeg, openjpeg and RLE), and without them the error says so.

Patient identifiers are never copied out of the dataset.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from scanedge.errors import (
    CodecUnavailableError,
    DicomError,
    ImageTooLargeError,
    MissingPixelDataError,
    NotDicomError,
    UnsupportedPhotometricError,
)
from scanedge.imaging.slices import DEFAULT_LIMITS, Slice, SliceGeometry, SliceIdentity, SliceLimits

__all__ = [
    "SUPPORTED_PHOTOMETRIC",
    "dataset_from_slice",
    "encode_dicom",
    "invert_monochrome1",
    "read_dataset",
    "slices_from_dicom",
]

SUPPORTED_PHOTOMETRIC = (
    "MONOCHROME1",
    "MONOCHROME2",
    "RGB",
    "YBR_FULL",
    "YBR_FULL_422",
    "YBR_ICT",
    "YBR_RCT",
    "PALETTE COLOR",
)
_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_INSTALL_CODECS = "pip install 'scanedge[dicom]'"

DicomSource = bytes | bytearray | memoryview | str | os.PathLike[str] | Any  # Any: a pydicom Dataset


def read_dataset(source: DicomSource) -> Any:
    """Parse DICOM bytes or a file into a pydicom Dataset, mapping pydicom's failures to scanedge errors."""
    import pydicom
    from pydicom.dataset import Dataset
    from pydicom.errors import InvalidDicomError

    if isinstance(source, Dataset):
        return source
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        if len(data) < 8:
            raise NotDicomError(f"{len(data)} bytes is too short to be a DICOM object")
        fp: Any = io.BytesIO(data)
        name = "DICOM bytes"
    else:
        fp, name = os.fspath(source), os.path.basename(os.fspath(source))
    try:
        try:
            return pydicom.dcmread(fp)
        except InvalidDicomError:
            # a bare dataset without the 128-byte preamble is legal on the wire: accept it only when it
            # starts with a group 0x0002 or 0x0008 tag, so random bytes are still refused
            head = data[:2] if isinstance(source, (bytes, bytearray, memoryview)) else _head(fp)
            if head not in (b"\x02\x00", b"\x08\x00"):
                raise
            if hasattr(fp, "seek"):
                fp.seek(0)
            return pydicom.dcmread(fp, force=True)
    except InvalidDicomError as exc:
        raise NotDicomError(f"{name} is not DICOM (no 'DICM' prefix and no recognisable dataset)") from exc
    except (EOFError, OSError, ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise NotDicomError(f"{name} is truncated or corrupt and cannot be parsed: {exc}") from exc


def _head(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read(2)


def slices_from_dicom(
    source: DicomSource, *, limits: SliceLimits = DEFAULT_LIMITS, max_frames: int = 4096
) -> list[Slice]:
    """Every frame of a DICOM image object as a :class:`Slice` (one for single-frame objects)."""
    ds = read_dataset(source)
    try:
        return _slices(ds, limits, max_frames)
    except DicomError:
        raise
    except ImageTooLargeError:
        raise
    except (AttributeError, KeyError, TypeError, IndexError) as exc:
        raise DicomError(f"DICOM attributes needed to read the pixels are missing or malformed: {exc}") from exc


def _slices(ds: Any, limits: SliceLimits, max_frames: int) -> list[Slice]:
    if not any(k in ds for k in _PIXEL_KEYWORDS):
        sop = getattr(ds, "SOPClassUID", None)
        what = f" ({sop.name})" if sop is not None and hasattr(sop, "name") else ""
        raise MissingPixelDataError(f"the DICOM object{what} has no Pixel Data, so there is no image to segment")
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    if photometric not in SUPPORTED_PHOTOMETRIC:
        raise UnsupportedPhotometricError(
            f"photometric interpretation {photometric!r} is not supported; scanedge reads "
            f"{', '.join(SUPPORTED_PHOTOMETRIC)}"
        )
    rows, cols = int(ds.Rows), int(ds.Columns)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if rows * cols > limits.max_pixels or max(rows, cols) > limits.max_side:
        raise ImageTooLargeError(
            f"DICOM image of {rows}x{cols} exceeds the limit of {limits.max_pixels} pixels per slice"
        )
    if frames > max_frames:
        raise ImageTooLargeError(f"DICOM object has {frames} frames; the limit is {max_frames}")
    pixels = _decode(ds, photometric)
    if frames == 1 and pixels.ndim == (2 if _samples(ds) == 1 else 3):
        pixels = pixels[None]
    if photometric == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        pixels = apply_color_lut(pixels, ds)
    slices = []
    for index in range(pixels.shape[0]):
        frame = np.ascontiguousarray(pixels[index])
        slope, intercept = _rescale(ds, index)
        center, width = _window(ds, index)
        if photometric == "MONOCHROME1":
            frame, center = _invert(ds, frame, slope, intercept, center)
        slices.append(
            Slice.from_array(
                frame,
                geometry=_geometry(ds, index),
                identity=SliceIdentity(
                    series_uid=str(ds.get("SeriesInstanceUID", "")),
                    sop_instance_uid=str(ds.get("SOPInstanceUID", "")),
                    instance_number=_int_or_none(ds.get("InstanceNumber")),
                    frame_index=index,
                    modality=str(ds.get("Modality", "")),
                ),
                rescale_slope=slope,
                rescale_intercept=intercept,
                window_center=center,
                window_width=width,
                limits=limits,
            )
        )
    return slices


def _samples(ds: Any) -> int:
    return int(ds.get("SamplesPerPixel", 1) or 1)


def _decode(ds: Any, photometric: str) -> np.ndarray:
    from pydicom.pixels import get_decoder, pixel_array

    tsyntax = ds.file_meta.TransferSyntaxUID if "TransferSyntaxUID" in getattr(ds, "file_meta", {}) else None
    if tsyntax is not None and tsyntax.is_compressed:
        try:
            decoder = get_decoder(tsyntax)
        except NotImplementedError as exc:
            raise CodecUnavailableError(f"no decoder exists for transfer syntax {tsyntax.name}") from exc
        if not decoder.is_available:
            raise CodecUnavailableError(
                f"the pixels are compressed ({tsyntax.name}) and no decoder plugin for it is installed; "
                f"install the codecs with: {_INSTALL_CODECS}"
            )
    try:
        return pixel_array(ds, as_rgb=photometric not in ("PALETTE COLOR",))
    except (RuntimeError, NotImplementedError, ImportError) as exc:
        name = tsyntax.name if tsyntax is not None else "this transfer syntax"
        raise CodecUnavailableError(f"cannot decode {name} pixels ({exc}); {_INSTALL_CODECS}") from exc
    except (ValueError, EOFError, IndexError, KeyError, AttributeError, TypeError) as exc:
        raise DicomError(f"the Pixel Data is truncated or inconsistent with the image attributes: {exc}") from exc


def _functional(ds: Any, index: int, sequence: str) -> Any | None:
    """An item of a functional-group macro for frame ``index``: per-frame first, then shared."""
    for groups, i in (("PerFrameFunctionalGroupsSequence", index), ("SharedFunctionalGroupsSequence", 0)):
        seq = ds.get(groups)
        if seq is not None and len(seq) > i and sequence in seq[i] and len(seq[i][sequence].value):
            return seq[i][sequence].value[0]
    return None


def _first(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, Sequence) and not isinstance(value, str):
        value = value[0] if len(value) else None
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if np.isfinite(v) else None


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value) if value is not None and str(value).strip() != "" else None
    except (TypeError, ValueError):
        return None


def _floats(value: Any, n: int) -> tuple[float, ...] | None:
    if value is None:
        return None
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    return out if len(out) == n and all(np.isfinite(out)) else None


def _positive(values: tuple[float, ...] | None) -> tuple[float, ...] | None:
    return values if values is not None and all(v > 0 for v in values) else None


def _rescale(ds: Any, index: int) -> tuple[float, float]:
    item = _functional(ds, index, "PixelValueTransformationSequence") or ds
    slope = _first(item.get("RescaleSlope"))
    intercept = _first(item.get("RescaleIntercept"))
    return (slope if slope not in (None, 0.0) else 1.0), (intercept if intercept is not None else 0.0)


def _window(ds: Any, index: int) -> tuple[float | None, float | None]:
    item = _functional(ds, index, "FrameVOILUTSequence") or ds
    center, width = _first(item.get("WindowCenter")), _first(item.get("WindowWidth"))
    if center is None or width is None or width <= 0:
        return None, None
    return center, width


def _geometry(ds: Any, index: int) -> SliceGeometry:
    measures = _functional(ds, index, "PixelMeasuresSequence") or ds
    position = _functional(ds, index, "PlanePositionSequence") or ds
    orientation = _functional(ds, index, "PlaneOrientationSequence") or ds
    spacing = _positive(_floats(measures.get("PixelSpacing"), 2)) or _positive(_floats(ds.get("ImagerPixelSpacing"), 2))
    return SliceGeometry(
        pixel_spacing=spacing,  # type: ignore[arg-type]
        slice_thickness=_first(measures.get("SliceThickness")),
        image_position=_floats(position.get("ImagePositionPatient"), 3),  # type: ignore[arg-type]
        image_orientation=_floats(orientation.get("ImageOrientationPatient"), 6),  # type: ignore[arg-type]
        slice_location=_first(ds.get("SliceLocation")),
    )


def _invert(
    ds: Any, frame: np.ndarray, slope: float, intercept: float, center: float | None
) -> tuple[np.ndarray, float | None]:
    bits = int(ds.get("BitsStored", frame.dtype.itemsize * 8))
    return invert_monochrome1(frame, bits, slope, intercept, center)


def invert_monochrome1(
    pixels: np.ndarray, bits_stored: int, slope: float, intercept: float, center: float | None
) -> tuple[np.ndarray, float | None]:
    """MONOCHROME1 -> MONOCHROME2: s' = (smin + smax) - s over the stored range; the window mirrors.

    Slope and intercept stay as they are; the window centre c becomes ``slope*(smin+smax) + 2*intercept - c``
    so the same tissue stays inside the window.
    """
    if pixels.dtype.kind == "f":
        total = 0.0
        inverted = -pixels
    else:
        signed = pixels.dtype.kind == "i"
        smin, smax = (-(2 ** (bits_stored - 1)), 2 ** (bits_stored - 1) - 1) if signed else (0, 2**bits_stored - 1)
        total = float(smin + smax)
        inverted = (total - pixels.astype(np.int64)).astype(pixels.dtype.newbyteorder("="))
    if center is not None:
        center = slope * total + 2 * intercept - center
    return inverted, center


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
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.Modality = ident.modality or "OT"
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
