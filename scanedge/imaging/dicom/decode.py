"""A DICOM dataset -> slices: checking the image attributes, decoding the pixels, reading per-frame attributes.

Decoding normalises what every later stage would otherwise have to know about: MONOCHROME1 is inverted
to MONOCHROME2 (window centre mirrored with it), YBR and palette colour become RGB, multi-frame objects
split into one slice per frame with per-frame geometry and rescale from the functional groups when
present. Compressed transfer syntaxes decode through pydicom's plugins; the ``dicom`` extra installs
them (pylibjpeg with libjpeg, openjpeg and RLE), and without them the error says so.

Nothing in the object is trusted before it is bounded (reading it into a dataset is :mod:`.dataset`'s
part): the image attributes are checked against :class:`SliceLimits` before a pixel is decoded, a
codestream that claims more pixels than the image is refused before a decoder allocates them, and objects
that are not images (SEG, SR, RT plans, ...) are refused by SOP class before their pixels are touched.
Whatever pydicom, numpy or a codec raises on malformed data becomes a :class:`DicomError` naming the file
and what was being read, never the exception's own text: pydicom's messages can quote element values, and
those can be patient names.

Patient identifiers are never copied out of the dataset.
"""

from __future__ import annotations

import re
import struct
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, NamedTuple

import numpy as np

from scanedge.errors import (
    CodecUnavailableError,
    DicomError,
    FrameCountError,
    ImageTooLargeError,
    InvalidSliceError,
    MissingPixelDataError,
    NotAnImageError,
    ScanedgeError,
    UnsupportedPhotometricError,
)
from scanedge.imaging.dicom.dataset import MAX_HEADER_BYTES, DicomSource, read_dataset, source_name
from scanedge.imaging.dicom.encode import encode_dicom
from scanedge.imaging.dicom.fast import fast_dataset
from scanedge.imaging.dicom.quiet import pydicom_quiet
from scanedge.imaging.dicom.tags import attr, int_attr, pixel_keyword
from scanedge.imaging.slices import DEFAULT_LIMITS, Slice, SliceAcquisition, SliceGeometry, SliceIdentity, SliceLimits

__all__ = [
    "SUPPORTED_PHOTOMETRIC",
    "fast_slices",
    "frame_geometry",
    "invert_monochrome1",
    "slices_from_dicom",
    "warm_up_decoding",
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
_INSTALL_CODECS = "pip install 'scanedge[dicom]'"


def slices_from_dicom(
    source: DicomSource, *, limits: SliceLimits = DEFAULT_LIMITS, max_frames: int = 4096, fast: bool = True
) -> list[Slice]:
    """Every frame of a DICOM image object as a :class:`Slice` (one for single-frame objects).

    Bad input of any kind raises a :class:`~scanedge.errors.DicomError` (or :class:`ImageTooLargeError`);
    a file that cannot be opened raises its ``OSError``. Bytes of the common simple kind (uncompressed
    little-endian grey, :mod:`.fast`) are read without a pydicom Dataset, with the
    same result; ``fast=False`` reads everything through pydicom (for comparisons).
    """
    if fast and isinstance(source, (bytes, bytearray, memoryview)):
        simple = fast_slices(source, limits, max_frames, source_name(source))
        if simple is not None:
            return simple
    return _pydicom_slices(source, limits, max_frames)


def _pydicom_slices(source: DicomSource, limits: SliceLimits, max_frames: int) -> list[Slice]:
    """:func:`slices_from_dicom` through a pydicom Dataset, for every object the fast reader leaves."""
    where = source_name(source)
    with pydicom_quiet():
        ds = read_dataset(source, limits=limits)
        with _reading(where, "the image attributes"):
            return _slices(ds, limits, max_frames, where)


def fast_slices(
    source: bytes | bytearray | memoryview, limits: SliceLimits, max_frames: int, where: str
) -> list[Slice] | None:
    """The slices of a simple object (:mod:`.fast`) by the same code as for a pydicom
    Dataset; None when the object is not that simple, or is wrong in any way (pydicom's reader then says how).
    """
    ds = fast_dataset(source, limits.max_decoded_bytes + MAX_HEADER_BYTES)
    if ds is None:
        return None
    try:
        photometric = attr(ds, "PhotometricInterpretation", "MONOCHROME2")
        rows, cols, allocated = attr(ds, "Rows"), attr(ds, "Columns"), attr(ds, "BitsAllocated")
        frames = attr(ds, "NumberOfFrames", 1)
        data = attr(ds, "PixelData")
        if (
            photometric not in ("MONOCHROME1", "MONOCHROME2")
            or allocated not in (8, 16)
            or not (isinstance(rows, int) and isinstance(cols, int) and isinstance(frames, int))
            or not 0 < rows * cols * frames * allocated // 8 <= len(data)
        ):
            return None
        return _slices(ds, limits, max_frames, where)
    except Exception:  # the full reader gives this object's typed error in its own words
        return None


@contextmanager
def _reading(where: str, what: str) -> Iterator[None]:
    """Map whatever malformed data makes pydicom or numpy raise to a DicomError naming ``what``."""
    try:
        yield
    except ScanedgeError:
        raise
    except MemoryError as exc:
        raise ImageTooLargeError(f"{where}: reading {what} needs more memory than is available") from exc
    except Exception as exc:  # only the class name: the message may quote element values
        raise DicomError(f"{where}: {what} are malformed and cannot be read ({type(exc).__name__})") from exc


# SOP classes whose objects carry no image to segment, by the UID roots of their families ...
_NOT_IMAGE_ROOTS = tuple(
    root + "."
    for root in (
        "1.2.840.10008.5.1.4.1.1.9",  # waveforms: ECG, haemodynamic, audio, ...
        "1.2.840.10008.5.1.4.1.1.11",  # presentation states
        "1.2.840.10008.5.1.4.1.1.66",  # registrations, fiducials, segmentations, surfaces, tractography
        "1.2.840.10008.5.1.4.1.1.88",  # structured reports (all), key object selection
        "1.2.840.10008.5.1.4.1.1.104",  # encapsulated PDF, CDA, STL, OBJ, MTL
        "1.2.840.10008.5.1.4.1.1.481",  # radiotherapy: dose, structure sets, plans, records (RT Image aside)
        "1.2.840.10008.5.1.4.1.1.200",  # acquisition and defined procedure protocols
        "1.2.840.10008.5.1.4.34",  # second-generation radiotherapy
    )
)
# ... and one by one
_NOT_IMAGES = frozenset(
    {
        "1.2.840.10008.1.3.10",  # Media Storage Directory (DICOMDIR)
        "1.2.840.10008.5.1.4.1.1.66",  # Raw Data
        "1.2.840.10008.5.1.4.1.1.4.2",  # MR Spectroscopy
        "1.2.840.10008.5.1.4.1.1.67",  # Real World Value Mapping
        "1.2.840.10008.5.1.4.1.1.68.1",  # Surface Scan Mesh
        "1.2.840.10008.5.1.4.1.1.68.2",  # Surface Scan Point Cloud
        "1.2.840.10008.5.1.4.1.1.90.1",  # Content Assessment Results
        "1.2.840.10008.5.1.4.1.1.91.1",  # Microscopy Bulk Simple Annotations
        "1.2.840.10008.5.1.4.1.1.131",  # Basic Structured Display
        "1.2.840.10008.5.1.4.38.1",  # Hanging Protocol
        "1.2.840.10008.5.1.4.39.1",  # Color Palette
        "1.2.840.10008.5.1.4.43.1",  # Generic Implant Template
        "1.2.840.10008.5.1.4.44.1",  # Implant Assembly Template
        "1.2.840.10008.5.1.4.45.1",  # Implant Template Group
    }
)
_IMAGES_AMONG_THEM = frozenset({"1.2.840.10008.5.1.4.1.1.481.1"})  # RT Image: a radiograph


def _refuse_non_images(ds: Any, where: str) -> None:
    meta = getattr(ds, "file_meta", None)
    for value in (attr(ds, "SOPClassUID"), None if meta is None else attr(meta, "MediaStorageSOPClassUID")):
        sop = str(value or "").strip().rstrip("\0")
        if sop in _IMAGES_AMONG_THEM or not (sop in _NOT_IMAGES or sop.startswith(_NOT_IMAGE_ROOTS)):
            continue
        from pydicom.uid import UID

        raise NotAnImageError(f"{where}: a DICOM {UID(sop).name} object is not an image; nothing to segment")


class _Layout(NamedTuple):
    """The image attributes that size the decoded pixels, validated."""

    rows: int
    cols: int
    frames: int
    samples: int
    bits_allocated: int
    bits_stored: int


def _layout(ds: Any, keyword: str, photometric: str, limits: SliceLimits, max_frames: int, where: str) -> _Layout:
    """Check the attributes that say how large the decoded pixels are, before any pixel is decoded."""
    rows, cols = int_attr(ds, "Rows", where), int_attr(ds, "Columns", where)
    frames = int_attr(ds, "NumberOfFrames", where, default=1)
    samples = int_attr(ds, "SamplesPerPixel", where, default=1)
    float_bits = {"FloatPixelData": 32, "DoubleFloatPixelData": 64}.get(keyword)
    allocated = int_attr(ds, "BitsAllocated", where, default=float_bits)
    stored = int_attr(ds, "BitsStored", where, default=allocated if float_bits else None)
    high_bit = int_attr(ds, "HighBit", where, default=stored - 1 if 1 <= stored <= allocated else 0)
    representation = int_attr(ds, "PixelRepresentation", where, default=0)
    if rows < 1 or cols < 1:
        raise DicomError(f"{where}: the image has {rows}x{cols} pixels")
    if rows * cols > limits.max_pixels or max(rows, cols) > limits.max_side:
        raise ImageTooLargeError(
            f"{where}: a DICOM image of {rows}x{cols} exceeds the limit of {limits.max_pixels} pixels per slice"
        )
    if frames < 1:
        raise DicomError(f"{where}: NumberOfFrames is {frames}")
    if frames > max_frames:
        raise FrameCountError(f"{where}: the DICOM object has {frames} frames; at most {max_frames} are taken here")
    want_samples = 1 if photometric.startswith("MONOCHROME") or photometric == "PALETTE COLOR" else 3
    if samples != want_samples:
        raise DicomError(f"{where}: SamplesPerPixel is {samples}, but {photometric} has {want_samples}")
    if allocated not in ((float_bits,) if float_bits else (1, 8, 16, 32, 64)):
        raise DicomError(f"{where}: BitsAllocated {allocated} is not a pixel size DICOM defines for {keyword}")
    if not 1 <= stored <= allocated or not 0 <= high_bit < allocated or representation not in (0, 1):
        raise DicomError(
            f"{where}: BitsStored {stored}, HighBit {high_bit} and PixelRepresentation {representation} do not "
            f"fit BitsAllocated {allocated}"
        )
    decoded = rows * cols * frames * samples * max(1, allocated // 8)
    if photometric == "PALETTE COLOR":
        decoded *= 6  # expanded through 16-bit lookup tables into three channels
    if decoded > limits.max_decoded_bytes:
        raise ImageTooLargeError(
            f"{where}: {frames} frame(s) of {rows}x{cols}x{samples} at {allocated} bits decode to {decoded} bytes, "
            f"over the limit of {limits.max_decoded_bytes} (SliceLimits.max_decoded_bytes)"
        )
    return _Layout(rows, cols, frames, samples, allocated, stored)


#: What a Code String may hold (PS3.5 6.2): quoting a value of this shape cannot leak a name or raw bytes.
_DEFINED_TERM = re.compile(r"[A-Z0-9_ ]{1,16}")


def _slices(ds: Any, limits: SliceLimits, max_frames: int, where: str) -> list[Slice]:
    _refuse_non_images(ds, where)
    keyword = pixel_keyword(ds)
    if keyword is None:
        from pydicom.uid import UID_dictionary

        sop = str(attr(ds, "SOPClassUID", ""))
        what = f" ({UID_dictionary[sop][0]})" if sop in UID_dictionary else ""  # a known name, never the value
        raise MissingPixelDataError(
            f"{where}: the DICOM object{what} has no Pixel Data, so there is no image to segment"
        )
    photometric = str(attr(ds, "PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    if photometric not in SUPPORTED_PHOTOMETRIC:
        named = repr(photometric) if _DEFINED_TERM.fullmatch(photometric) else "(not a defined term)"
        raise UnsupportedPhotometricError(
            f"{where}: photometric interpretation {named} is not supported; scanedge reads "
            f"{', '.join(SUPPORTED_PHOTOMETRIC)}"
        )
    layout = _layout(ds, keyword, photometric, limits, max_frames, where)
    pixels = _decode(ds, photometric, layout, where)
    with _reading(where, "the decoded pixels"):
        if layout.frames == 1 and pixels.ndim == (2 if layout.samples == 1 else 3):
            pixels = pixels[None]
        if photometric == "PALETTE COLOR":
            from pydicom.pixels import apply_color_lut

            pixels = apply_color_lut(pixels, ds)
    with _reading(where, "the per-frame attributes (geometry, rescale, window)"):
        groups = _functional_groups(ds)
        acquisition = _acquisition(ds, photometric)
        slices = []
        for index in range(pixels.shape[0]):
            frame = np.ascontiguousarray(pixels[index])
            slope, intercept = _rescale(ds, groups, index)
            center, width = _window(ds, groups, index)
            if photometric == "MONOCHROME1":
                frame, center = invert_monochrome1(frame, layout.bits_stored, slope, intercept, center)
            slices.append(
                Slice.from_array(
                    frame,
                    geometry=_geometry(ds, groups, index),
                    identity=SliceIdentity(
                        series_uid=str(attr(ds, "SeriesInstanceUID", "")),
                        sop_instance_uid=str(attr(ds, "SOPInstanceUID", "")),
                        instance_number=_int_or_none(attr(ds, "InstanceNumber")),
                        frame_index=index,
                        modality=str(attr(ds, "Modality", "")),
                        study_uid=str(attr(ds, "StudyInstanceUID", "")),
                        frame_of_reference_uid=str(attr(ds, "FrameOfReferenceUID", "")),
                    ),
                    rescale_slope=slope,
                    rescale_intercept=intercept,
                    window_center=center,
                    window_width=width,
                    limits=limits,
                    acquisition=acquisition,
                )
            )
    return slices


def _acquisition(ds: Any, photometric: str) -> SliceAcquisition:
    """What kind of image the object holds (body part, image type, series name): what scopes test."""
    image_type = attr(ds, "ImageType")
    if isinstance(image_type, str):  # one value, or none ("" is no image type, not one empty value)
        image_type = image_type.split("\\") if image_type else []
    values = tuple(str(v) for v in list(image_type or ())[:16])
    return SliceAcquisition(
        body_part=_text_value(attr(ds, "BodyPartExamined")),
        image_type=values,
        photometric=photometric,
        series_number=_int_or_none(attr(ds, "SeriesNumber")),
        series_description=_text_value(attr(ds, "SeriesDescription")),
        scanning_sequence=_multi_text(attr(ds, "ScanningSequence")),
        sequence_name=_text_value(attr(ds, "SequenceName")),
        contrast_agent=_text_value(attr(ds, "ContrastBolusAgent")),
    )


def _multi_text(value: Any) -> tuple[str, ...]:
    """A multi-valued code string as its values (one value, several, or none)."""
    if value is None or value == "":
        return ()
    if isinstance(value, str):
        return tuple(value.split("\\"))
    return tuple(str(v) for v in list(value)[:16])


def _decode(ds: Any, photometric: str, layout: _Layout, where: str) -> np.ndarray:
    from pydicom.pixels import get_decoder, pixel_array

    meta = getattr(ds, "file_meta", None)
    tsyntax: Any = None if meta is None else attr(meta, "TransferSyntaxUID")
    if tsyntax is not None and not tsyntax.is_transfer_syntax:
        raise DicomError(f"{where}: the file meta names a transfer syntax UID that is not a known transfer syntax")
    compressed = tsyntax is not None and tsyntax.is_compressed
    if compressed:
        try:
            decoder = get_decoder(tsyntax)
        except NotImplementedError as exc:
            raise CodecUnavailableError(f"{where}: no decoder exists for transfer syntax {tsyntax.name}") from exc
        if not decoder.is_available:
            raise CodecUnavailableError(
                f"{where}: the pixels are compressed ({tsyntax.name}) and no decoder plugin for it is installed; "
                f"install the codecs with: {_INSTALL_CODECS}"
            )
        with _reading(where, "the compressed frames"):
            _check_codestreams(ds, layout, tsyntax, where)
    if not compressed and photometric in ("MONOCHROME1", "MONOCHROME2"):
        native = _native_grey(ds, layout, tsyntax)
        if native is not None:
            return native
    try:
        return pixel_array(ds, as_rgb=photometric not in ("PALETTE COLOR",))
    except MemoryError as exc:
        raise ImageTooLargeError(f"{where}: decoding the pixels needs more memory than is available") from exc
    except BaseException as exc:  # Rust codecs panic with a BaseException (pyo3's PanicException)
        if not isinstance(exc, Exception) and type(exc).__name__ != "PanicException":
            raise
        if compressed:
            raise DicomError(
                f"{where}: the {tsyntax.name} pixel stream is corrupt or truncated; the decoder failed "
                f"({type(exc).__name__})"
            ) from exc
        raise DicomError(
            f"{where}: the Pixel Data is truncated or inconsistent with the image attributes ({type(exc).__name__})"
        ) from exc


def _check_codestreams(ds: Any, layout: _Layout, tsyntax: Any, where: str) -> None:
    """Refuse a frame whose JPEG, JPEG-LS or JPEG 2000 header declares more pixels than the DICOM attributes.

    The decoders size their output by the codestream's own header, not by Rows and Columns: a 4 KB JPEG
    that claims 60000x60000 pixels exhausts memory inside libjpeg before pydicom can compare the sizes.
    """
    from pydicom.encaps import generate_frames

    if tsyntax == "1.2.840.10008.1.2.5":  # RLE: its decoder sizes the output by Rows and Columns
        return
    offsets = None
    if "ExtendedOffsetTable" in ds and "ExtendedOffsetTableLengths" in ds:
        offsets = (ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths)
    frames = generate_frames(attr(ds, "PixelData"), number_of_frames=layout.frames, extended_offsets=offsets)
    for index, frame in enumerate(frames):
        size = _codestream_size(frame)
        if size is not None and (size[0] > layout.rows or size[1] > layout.cols):
            raise DicomError(
                f"{where}: the {tsyntax.name} stream of frame {index} declares {size[0]}x{size[1]} pixels, but the "
                f"image is {layout.rows}x{layout.cols}; the stream is corrupt"
            )


#: JPEG frame headers (SOF0-15 but DHT, JPG and DAC) and JPEG-LS's (SOF55, SOF57).
_JPEG_SOF = frozenset({*range(0xC0, 0xD0)} - {0xC4, 0xC8, 0xCC} | {0xF7, 0xF9})
_J2K_SIZ = b"\xff\x4f\xff\x51"  # start of codestream, then the image and tile size marker


def _codestream_size(frame: bytes) -> tuple[int, int] | None:
    """(rows, columns) as a JPEG, JPEG-LS or JPEG 2000 codestream's header declares them; None if not found."""
    if not frame.startswith(b"\xff\xd8"):
        siz = frame.find(_J2K_SIZ, 0, 4096)  # a bare codestream, or one inside JP2 boxes
        if siz < 0 or len(frame) < siz + 24:
            return None
        width, height, x_offset, y_offset = struct.unpack_from(">IIII", frame, siz + 8)
        return height - y_offset, width - x_offset
    pos = 2
    while pos + 9 <= len(frame) and frame[pos] == 0xFF:
        marker = frame[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
        elif marker in _JPEG_SOF:
            return struct.unpack_from(">HH", frame, pos + 5)
        elif marker == 0xDA:  # a scan before any frame header
            return None
        elif 0xD0 <= marker <= 0xD8 or marker == 0x01:  # markers without a length
            pos += 2
        else:
            pos += 2 + struct.unpack_from(">H", frame, pos + 2)[0]
    return None


_LITTLE_ENDIAN_NATIVE = frozenset({"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.1.99"})


def _native_grey(ds: Any, layout: _Layout, tsyntax: Any) -> np.ndarray | None:
    """Uncompressed little-endian 8/16-bit greyscale, the common case, as a read-only view on the Pixel Data.

    What pydicom's ``pixel_array`` returns for it, without its per-call set-up (a twentieth of a 512x512
    slice's decoding time) or its copy; unused high bits are cleared (or sign-extended) the same way. Any
    other case, or Pixel Data shorter than the attributes say, answers None and goes through pydicom.
    """
    if tsyntax not in _LITTLE_ENDIAN_NATIVE or layout.bits_allocated not in (8, 16):
        return None
    data = attr(ds, "PixelData")
    count = layout.frames * layout.rows * layout.cols
    if not isinstance(data, (bytes, bytearray, memoryview)) or len(data) < count * layout.bits_allocated // 8:
        return None
    signed = attr(ds, "PixelRepresentation", 0) == 1
    dtype = np.dtype(f"<{'i' if signed else 'u'}{layout.bits_allocated // 8}")
    pixels = np.frombuffer(data, dtype, count).reshape(layout.frames, layout.rows, layout.cols)
    unused = layout.bits_allocated - layout.bits_stored
    if unused:
        pixels = np.left_shift(pixels, unused)
        np.right_shift(pixels, unused, out=pixels)
    return pixels


def _functional_groups(ds: Any) -> tuple[Any, Any]:
    """The per-frame and shared functional group sequences, or None: looked up once per object."""
    return attr(ds, "PerFrameFunctionalGroupsSequence"), attr(ds, "SharedFunctionalGroupsSequence")


def _functional(groups: tuple[Any, Any], index: int, sequence: str) -> Any | None:
    """An item of a functional-group macro for frame ``index``: per-frame first, then shared."""
    for seq, i in ((groups[0], index), (groups[1], 0)):
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


def _text_value(value: Any) -> str:
    """A single-valued text element as written: "" when absent or empty, values that should not be several
    joined back with the backslash they were written with (never a Python list's repr)."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return "\\".join(str(v) for v in value)
    return str(value)


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value) if value is not None and str(value).strip() != "" else None
    except (TypeError, ValueError, OverflowError):
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


def _rescale(ds: Any, groups: tuple[Any, Any], index: int) -> tuple[float, float]:
    item = _functional(groups, index, "PixelValueTransformationSequence") or ds
    slope = _first(attr(item, "RescaleSlope"))
    intercept = _first(attr(item, "RescaleIntercept"))
    return (slope if slope not in (None, 0.0) else 1.0), (intercept if intercept is not None else 0.0)


def _window(ds: Any, groups: tuple[Any, Any], index: int) -> tuple[float | None, float | None]:
    item = _functional(groups, index, "FrameVOILUTSequence") or ds
    center, width = _first(attr(item, "WindowCenter")), _first(attr(item, "WindowWidth"))
    if center is None or width is None or width <= 0:
        return None, None
    return center, width


def _geometry(ds: Any, groups: tuple[Any, Any], index: int) -> SliceGeometry:
    measures = _functional(groups, index, "PixelMeasuresSequence") or ds
    position = _functional(groups, index, "PlanePositionSequence") or ds
    orientation = _functional(groups, index, "PlaneOrientationSequence") or ds
    spacing = _positive(_floats(attr(measures, "PixelSpacing"), 2))
    spacing = spacing or _positive(_floats(attr(ds, "ImagerPixelSpacing"), 2))
    return SliceGeometry(
        pixel_spacing=spacing,  # type: ignore[arg-type]
        slice_thickness=_first(attr(measures, "SliceThickness")),
        image_position=_floats(attr(position, "ImagePositionPatient"), 3),  # type: ignore[arg-type]
        image_orientation=_floats(attr(orientation, "ImageOrientationPatient"), 6),  # type: ignore[arg-type]
        slice_location=_first(attr(ds, "SliceLocation")),
    )


def frame_geometry(ds: Any, index: int = 0) -> SliceGeometry:
    """Frame ``index``'s geometry exactly as decoding gives it to a slice, from a header held without its pixels
    (the DICOM node's SR places each frame's further mask heads in the series' 3-D load with it)."""
    return _geometry(ds, _functional_groups(ds), index)


def invert_monochrome1(
    pixels: np.ndarray, bits_stored: int, slope: float, intercept: float, center: float | None
) -> tuple[np.ndarray, float | None]:
    """MONOCHROME1 -> MONOCHROME2: s' = (smin + smax) - s over the stored range; the window mirrors.

    Slope and intercept stay as they are; the window centre c becomes ``slope*(smin+smax) + 2*intercept - c``
    so the same tissue stays inside the window. ``bits_stored`` comes from outside (a DICOM header, a wire
    message), so it is checked against the pixel type before ``2**bits_stored`` is computed.
    """
    if not 1 <= bits_stored <= pixels.dtype.itemsize * 8:
        raise InvalidSliceError(
            f"bits_stored {bits_stored} does not fit {pixels.dtype} pixels (1..{pixels.dtype.itemsize * 8})"
        )
    if pixels.dtype.kind == "f":
        total = 0.0
        inverted = -pixels
    else:
        signed = pixels.dtype.kind == "i"
        smin, smax = (-(2 ** (bits_stored - 1)), 2 ** (bits_stored - 1) - 1) if signed else (0, 2**bits_stored - 1)
        total = float(smin + smax)
        # in the pixels' own (native) type, wrapping like a cast would: no int64 and float64 temporaries
        inverted = np.subtract(smin + smax, pixels, dtype=pixels.dtype.newbyteorder("="))
    if center is not None:
        center = slope * total + 2 * intercept - center
    return inverted, center


#: transfer syntaxes whose decoder plugins :func:`warm_up_decoding` loads: JPEG baseline, extended and
#: lossless, JPEG-LS, JPEG 2000, RLE
_WARM_SYNTAXES = (
    "1.2.840.10008.1.2.4.50",
    "1.2.840.10008.1.2.4.51",
    "1.2.840.10008.1.2.4.57",
    "1.2.840.10008.1.2.4.70",
    "1.2.840.10008.1.2.4.80",
    "1.2.840.10008.1.2.4.81",
    "1.2.840.10008.1.2.4.90",
    "1.2.840.10008.1.2.4.91",
    "1.2.840.10008.1.2.5",
)
_warm_lock = threading.Lock()
_warmed = False


def warm_up_decoding() -> None:
    """Load what decoding the first DICOM slice would otherwise load: pydicom, its pixel machinery and the
    installed codec plugins. Once per process; later calls return at once.

    Without it the first slice of a scan pays a quarter to almost a second of imports (measured here:
    240-900 ms, against about 1 ms for the next one), which is the one slice a console waits for most.
    A decoder that cannot be loaded is left for the slice that needs it to report.
    """
    global _warmed
    with _warm_lock:
        if _warmed:
            return
        from pydicom.pixels import get_decoder

        for uid in _WARM_SYNTAXES:
            try:
                decoder = get_decoder(uid)
                if decoder.is_available:
                    decoder.available_plugins  # noqa: B018  # touching it imports the plugins
            except Exception:  # a missing or broken plugin is reported when a slice needs it
                continue
        sample = Slice.from_array(np.arange(64, dtype=np.uint16).reshape(8, 8))
        slices_from_dicom(encode_dicom(sample))
        _warmed = True
