"""The wire protocol of docs/protocol.md: parsing requests, building replies. No sockets here.

Headers are JSON (one frame); pixels and results travel as raw little-endian C-contiguous frames,
received without copying (``np.frombuffer`` over the ZeroMQ frame) and sent without copying.
Every way a message can be wrong maps to one typed error with a wire code.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from scanedge.errors import (
    BadFramesError,
    BadPayloadError,
    ImageTooLargeError,
    InvalidSliceError,
    MessageTooLargeError,
    ProtocolError,
    ScanedgeError,
    UnknownMessageTypeError,
    UnsupportedDtypeError,
    UnsupportedVersionError,
)
from scanedge.imaging.dicom import invert_monochrome1, slices_from_dicom
from scanedge.imaging.overlay import OverlayOptions
from scanedge.imaging.slices import Slice, SliceGeometry, SliceIdentity, SliceLimits

__all__ = [
    "MAX_HEADER_BYTES",
    "MESSAGE_TYPES",
    "OUTPUT_NAMES",
    "PROTOCOL_VERSION",
    "SUPPORTED_VERSIONS",
    "WIRE_DTYPES",
    "SegmentRequest",
    "check_message_size",
    "check_raw_payload",
    "decode_header",
    "encode_header",
    "error_header",
    "parse_segment",
    "payload_nbytes",
    "safe_id",
    "slice_from_request",
]

PROTOCOL_VERSION = 1
SUPPORTED_VERSIONS = (1,)
MAX_HEADER_BYTES = 64 * 1024
MESSAGE_TYPES = ("SEGMENT", "RESULT", "ERROR", "PING", "PONG", "STATS", "STATS_REPLY")
OUTPUT_NAMES = ("mask", "overlay", "probabilities")
WIRE_DTYPES = {
    name: np.dtype(name).newbyteorder("<")
    for name in ("uint8", "int8", "uint16", "int16", "uint32", "int32", "float32", "float64")
}
STATUS_FOR_CODE = {"SUPERSEDED": "superseded", "EXPIRED": "expired", "BUSY": "busy"}


def encode_header(header: Mapping[str, Any]) -> bytes:
    return json.dumps(header, separators=(",", ":"), allow_nan=False).encode()


def decode_header(frame: bytes | memoryview) -> dict[str, Any]:
    """Parse and check the fields every message has. Raises ProtocolError (and subclasses)."""
    if len(frame) > MAX_HEADER_BYTES:
        raise ProtocolError(f"header frame of {len(frame)} bytes exceeds {MAX_HEADER_BYTES}")
    try:
        header = json.loads(bytes(frame))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError(f"header frame is not UTF-8 JSON: {exc}") from exc
    if not isinstance(header, dict):
        raise ProtocolError(f"header must be a JSON object, got {type(header).__name__}")
    request_id = header.get("id")
    if not _valid_id(request_id):
        raise ProtocolError("header 'id' must be a string of 1-64 characters or an integer 0..2^53-1")
    version = header.get("version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise ProtocolError("header 'version' must be an integer")
    if version not in SUPPORTED_VERSIONS:
        raise UnsupportedVersionError(
            f"protocol version {version} is not spoken here (supported: {list(SUPPORTED_VERSIONS)})"
        )
    kind = header.get("type")
    if kind not in MESSAGE_TYPES:
        raise UnknownMessageTypeError(f"unknown message type {kind!r}; known: {', '.join(MESSAGE_TYPES)}")
    return header


def _valid_id(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return 0 <= value < 2**53
    return isinstance(value, str) and 1 <= len(value) <= 64


def safe_id(header_frame: bytes | memoryview) -> Any:
    """Best-effort id from a header that failed validation, so the error can still be attributed."""
    try:
        value = json.loads(bytes(header_frame))
        candidate = value.get("id") if isinstance(value, dict) else None
    except (ValueError, UnicodeDecodeError):
        return None
    return candidate if _valid_id(candidate) else None


@dataclass(frozen=True)
class SegmentRequest:
    """A validated SEGMENT header (the pixel frame is kept separately, unparsed)."""

    id: Any
    series: str = ""
    instance: str = ""
    index: int | None = None
    model: str | None = None
    encoding: str = "raw"
    dtype: str | None = None
    shape: tuple[int, ...] | None = None
    geometry: SliceGeometry = field(default_factory=SliceGeometry)
    rescale_slope: float = 1.0
    rescale_intercept: float = 0.0
    window_center: float | None = None
    window_width: float | None = None
    photometric: str | None = None
    bits_stored: int | None = None
    deadline_ms: float | None = None
    outputs: tuple[str, ...] = ("mask", "overlay")
    overlay_encoding: str = "raw"
    overlay_options: OverlayOptions | None = None
    publish: bool = True
    sent_at: float | None = None


def _get(header: Mapping[str, Any], key: str, kinds: type | tuple[type, ...], default: Any = None) -> Any:
    value = header.get(key, default)
    if value is None or value is default:
        return value
    if isinstance(value, bool) and bool not in (kinds if isinstance(kinds, tuple) else (kinds,)):
        raise ProtocolError(f"field {key!r} has the wrong type (bool)")
    if not isinstance(value, kinds):
        raise ProtocolError(f"field {key!r} has the wrong type ({type(value).__name__})")
    if isinstance(value, float) and not math.isfinite(value):
        raise ProtocolError(f"field {key!r} must be finite")
    return value


def _floats(obj: Mapping[str, Any], key: str, n: int) -> tuple[float, ...] | None:
    value = obj.get(key)
    if value is None:
        return None
    if (
        not isinstance(value, list)
        or len(value) != n
        or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)
    ):
        raise ProtocolError(f"geometry.{key} must be a list of {n} finite numbers")
    return tuple(float(v) for v in value)


def parse_segment(header: Mapping[str, Any], payload_frames: int) -> SegmentRequest:
    """Validate a SEGMENT header against docs/protocol.md section 3."""
    if payload_frames != 1:
        raise BadFramesError(f"SEGMENT carries exactly one pixel frame after the header, got {payload_frames}")
    encoding = _get(header, "encoding", str, "raw")
    if encoding not in ("raw", "dicom"):
        raise ProtocolError(f"encoding must be 'raw' or 'dicom', got {encoding!r}")
    dtype = shape = None
    if encoding == "raw":
        dtype = _get(header, "dtype", str)
        if dtype is None:
            raise ProtocolError("raw SEGMENT needs 'dtype'")
        if dtype not in WIRE_DTYPES:
            raise UnsupportedDtypeError(f"dtype {dtype!r} is not supported; use one of {', '.join(WIRE_DTYPES)}")
        raw_shape = header.get("shape")
        if (
            not isinstance(raw_shape, list)
            or len(raw_shape) not in (2, 3)
            or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in raw_shape)
            or (len(raw_shape) == 3 and raw_shape[2] != 3)
        ):
            raise BadPayloadError(
                f"shape must be [rows, cols] or [rows, cols, 3] of non-negative integers, got {raw_shape!r}"
            )
        shape = tuple(raw_shape)
    geometry_obj = _get(header, "geometry", dict, {}) or {}
    spacing = _floats(geometry_obj, "pixel_spacing", 2)
    thickness = geometry_obj.get("slice_thickness")
    geometry = SliceGeometry(
        pixel_spacing=spacing if spacing and all(v > 0 for v in spacing) else None,  # type: ignore[arg-type]
        slice_thickness=float(thickness)
        if isinstance(thickness, (int, float)) and not isinstance(thickness, bool)
        else None,
        image_position=_floats(geometry_obj, "image_position", 3),  # type: ignore[arg-type]
        image_orientation=_floats(geometry_obj, "image_orientation", 6),  # type: ignore[arg-type]
        slice_location=None,
    )
    rescale = _get(header, "rescale", dict, {}) or {}
    window = _get(header, "window", dict, {}) or {}
    outputs = header.get("outputs", ["mask", "overlay"])
    if not isinstance(outputs, list) or not all(o in OUTPUT_NAMES for o in outputs):
        raise ProtocolError(f"outputs must be a list drawn from {list(OUTPUT_NAMES)}, got {outputs!r}")
    overlay_encoding = _get(header, "overlay_encoding", str, "raw")
    if overlay_encoding not in ("raw", "jpeg", "png"):
        raise ProtocolError(f"overlay_encoding must be raw, jpeg or png, got {overlay_encoding!r}")
    options = None
    raw_options = _get(header, "overlay_options", dict)
    if raw_options:
        unknown = set(raw_options) - {"alpha", "fill", "contours", "heatmap"}
        if unknown:
            raise ProtocolError(f"overlay_options has unknown keys {sorted(unknown)}")
        try:
            options = OverlayOptions(**raw_options)
        except (TypeError, ValueError) as exc:
            raise ProtocolError(f"overlay_options: {exc}") from exc
    deadline = _get(header, "deadline_ms", (int, float))
    if deadline is not None and deadline <= 0:
        raise ProtocolError("deadline_ms must be > 0")
    photometric = _get(header, "photometric", str)
    if photometric not in (None, "MONOCHROME1", "MONOCHROME2", "RGB"):
        raise ProtocolError(f"photometric must be MONOCHROME1, MONOCHROME2 or RGB, got {photometric!r}")
    series = _get(header, "series", str, "") or ""
    if len(series) > 256:
        raise ProtocolError("series must be at most 256 characters")
    return SegmentRequest(
        id=header["id"],
        series=series,
        instance=_get(header, "instance", str, "") or "",
        index=_get(header, "index", int),
        model=_get(header, "model", str),
        encoding=encoding,
        dtype=dtype,
        shape=shape,
        geometry=geometry,
        rescale_slope=float(_num(rescale, "slope", 1.0)),
        rescale_intercept=float(_num(rescale, "intercept", 0.0)),
        window_center=_num(window, "center", None),
        window_width=_num(window, "width", None),
        photometric=photometric,
        bits_stored=_get(header, "bits_stored", int),
        deadline_ms=float(deadline) if deadline is not None else None,
        outputs=tuple(dict.fromkeys(outputs)),
        overlay_encoding=overlay_encoding,
        overlay_options=options,
        publish=bool(_get(header, "publish", bool, True)),
        sent_at=_get(header, "sent_at", (int, float)),
    )


def _num(obj: Mapping[str, Any], key: str, default: float | None) -> float | None:
    value = obj.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ProtocolError(f"{key!r} must be a finite number")
    return float(value)


def payload_nbytes(req: SegmentRequest) -> int:
    """Bytes a raw pixel frame must have for this request's dtype and shape."""
    assert req.dtype is not None and req.shape is not None
    return math.prod(req.shape) * WIRE_DTYPES[req.dtype].itemsize


def check_raw_payload(req: SegmentRequest, nbytes: int, limits: SliceLimits) -> None:
    """Refuse a raw pixel frame whose length contradicts dtype x shape, or an image over the limits.

    Cheap enough for the I/O thread, so a malformed slice is refused before it can supersede a good one.
    """
    expected = payload_nbytes(req)
    if nbytes != expected:
        raise BadPayloadError(
            f"shape {list(req.shape or ())} x {req.dtype} needs {expected} bytes, the pixel frame has {nbytes}"
        )
    rows, cols = (req.shape or (0, 0))[:2]
    if rows * cols > limits.max_pixels or max(rows, cols) > limits.max_side:
        raise ImageTooLargeError(f"image of {rows}x{cols} exceeds the limit of {limits.max_pixels} pixels")


def slice_from_request(req: SegmentRequest, payload: memoryview | bytes, limits: SliceLimits) -> Slice:
    """The request's slice; raw pixels are viewed in place (no copy) when already native little-endian."""
    if req.encoding == "dicom":
        frames = slices_from_dicom(bytes(payload), limits=limits)
        if len(frames) != 1:
            from scanedge.errors import DicomError

            raise DicomError(f"a SEGMENT carries one slice; this DICOM object has {len(frames)} frames")
        s = frames[0]
        ident = s.identity
        return Slice(
            pixels=s.pixels,
            geometry=s.geometry,
            identity=SliceIdentity(
                series_uid=req.series or ident.series_uid,
                sop_instance_uid=req.instance or ident.sop_instance_uid,
                instance_number=req.index if req.index is not None else ident.instance_number,
                modality=ident.modality,
            ),
            rescale_slope=s.rescale_slope,
            rescale_intercept=s.rescale_intercept,
            window_center=s.window_center,
            window_width=s.window_width,
        )
    check_raw_payload(req, len(payload), limits)
    if req.shape and 0 in req.shape:
        raise InvalidSliceError(f"pixels are empty (shape {list(req.shape)})")
    pixels = np.frombuffer(payload, dtype=WIRE_DTYPES[req.dtype]).reshape(req.shape)  # type: ignore[index]
    center = req.window_center
    if req.photometric == "MONOCHROME1":
        bits = req.bits_stored or pixels.dtype.itemsize * 8
        pixels, center = invert_monochrome1(pixels, bits, req.rescale_slope, req.rescale_intercept, center)
    return Slice.from_array(
        pixels,
        geometry=req.geometry,
        identity=SliceIdentity(series_uid=req.series, sop_instance_uid=req.instance, instance_number=req.index),
        rescale_slope=req.rescale_slope,
        rescale_intercept=req.rescale_intercept,
        window_center=center,
        window_width=req.window_width,
        limits=limits,
    )


def error_header(
    request_id: Any,
    error: ScanedgeError | str,
    message: str = "",
    req: SegmentRequest | None = None,
    received_at: float | None = None,
) -> dict[str, Any]:
    """An ERROR reply for a typed error (or a bare code such as "SUPERSEDED")."""
    code = error.code if isinstance(error, ScanedgeError) else error
    text = error.message if isinstance(error, ScanedgeError) else message
    header: dict[str, Any] = {
        "version": PROTOCOL_VERSION,
        "type": "ERROR",
        "id": request_id,
        "status": STATUS_FOR_CODE.get(code, "error"),
        "code": code,
        "message": text,
    }
    if req is not None:
        header.update(series=req.series, instance=req.instance, index=req.index, sent_at=req.sent_at)
    header["received_at"] = received_at
    header["replied_at"] = time.time()
    return header


def check_message_size(frames: Sequence[Any], limit: int) -> None:
    size = sum(len(f) for f in frames)
    if size > limit:
        raise MessageTooLargeError(f"message of {size} bytes exceeds the runtime's limit of {limit} bytes")
