"""Payload frames: pixels in, result arrays out, without copying where the bytes allow it.

Raw pixel frames become numpy views over the received ZeroMQ frame (little-endian on the wire, which is
native here); DICOM frames go through :mod:`scanedge.imaging.dicom`. Result arrays go out as they are
(sent with ``copy=False``) or encoded as JPEG/PNG when a console asks. Every length, dtype and shape is
checked against the header before a single byte is interpreted.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from scanedge.errors import BadPayloadError, DicomError, ImageTooLargeError, InvalidSliceError, ProtocolError
from scanedge.imaging.dicom import invert_monochrome1, slices_from_dicom
from scanedge.imaging.encode import encode_image
from scanedge.imaging.followup import SeriesChange
from scanedge.imaging.heads import SeriesScore, for_wire
from scanedge.imaging.lesion_load import LesionLoad
from scanedge.imaging.overlay import OverlayConfig
from scanedge.imaging.slices import Slice, SliceAcquisition, SliceGeometry, SliceIdentity, SliceLimits
from scanedge.manifest import Manifest
from scanedge.runtime.core.pairing import pair_position
from scanedge.runtime.wire.protocol import (
    FRAME_HEAD_CLASS_CHARS,
    FRAME_HEAD_CLASSES,
    HEAD_MASK_PREFIX,
    WIRE_DTYPES,
    Echo,
    Finding,
    FrameInfo,
    Geometry,
    HeadClass,
    PairedInputs,
    Partner,
    Result,
    Segment,
    Timings,
    result_reply,
)
from scanedge.safe_text import printable

if TYPE_CHECKING:
    from scanedge.runtime.core.pipeline import SliceResult

__all__ = [
    "arrays_from_frames",
    "check_raw_payload",
    "geometry_from_slice",
    "head_mask_frames",
    "head_masks_from_arrays",
    "overlay_options",
    "paired_inputs",
    "pipeline_reply",
    "result_frames",
    "slice_from_request",
    "wire_array",
]

_DTYPES = {name: np.dtype(name).newbyteorder("<") for name in WIRE_DTYPES}


def check_raw_payload(req: Segment, nbytes: int, limits: SliceLimits) -> None:
    """Refuse a raw pixel frame whose length contradicts dtype x shape, or an image over the limits.

    Cheap enough for the I/O thread, so a malformed slice is refused before it can supersede a good one.
    """
    assert req.dtype is not None and req.shape is not None  # decode_request guarantees both for raw
    rows, cols = req.shape[:2]
    if rows * cols > limits.max_pixels or max(rows, cols) > limits.max_side:
        raise ImageTooLargeError(f"image of {rows}x{cols} exceeds the limit of {limits.max_pixels} pixels")
    expected = math.prod(req.shape) * _DTYPES[req.dtype].itemsize
    if nbytes != expected:
        raise BadPayloadError(
            f"shape {list(req.shape)} x {req.dtype} needs {expected} bytes, the pixel frame has {nbytes}"
        )


def _geometry(geo: Geometry | None) -> SliceGeometry:
    if geo is None:
        return SliceGeometry()
    spacing = geo.pixel_spacing
    return SliceGeometry(
        pixel_spacing=spacing if spacing is not None and min(spacing) > 0 else None,
        slice_thickness=geo.slice_thickness or None,
        image_position=geo.image_position,
        image_orientation=geo.image_orientation,
    )


def slice_from_request(req: Segment, payload: memoryview | bytes, limits: SliceLimits) -> Slice:
    """The request's slice; raw pixels are viewed in place (no copy) when already native little-endian."""
    if req.encoding == "dicom":
        frames = slices_from_dicom(payload, limits=limits, max_frames=1)
        if len(frames) != 1:
            raise DicomError(f"a SEGMENT carries one slice; this DICOM object has {len(frames)} frames")
        s = frames[0]
        ident, acq = s.identity, s.acquisition
        if req.body_part and not acq.body_part:
            acq = dataclasses.replace(acq, body_part=req.body_part)
        return Slice(
            pixels=s.pixels,
            geometry=s.geometry,
            identity=SliceIdentity(
                series_uid=req.series or ident.series_uid,
                sop_instance_uid=req.instance or ident.sop_instance_uid,
                instance_number=req.index if req.index is not None else ident.instance_number,
                modality=ident.modality or req.modality or "",
                study_uid=ident.study_uid or req.study,
                frame_of_reference_uid=ident.frame_of_reference_uid or req.frame_of_reference,
            ),
            rescale_slope=s.rescale_slope,
            rescale_intercept=s.rescale_intercept,
            window_center=s.window_center,
            window_width=s.window_width,
            acquisition=acq,
        )
    check_raw_payload(req, len(payload), limits)
    assert req.dtype is not None and req.shape is not None
    if 0 in req.shape:
        raise InvalidSliceError(f"pixels are empty (shape {list(req.shape)})")
    pixels = np.frombuffer(payload, dtype=_DTYPES[req.dtype]).reshape(req.shape)
    slope, intercept = (req.rescale.slope, req.rescale.intercept) if req.rescale else (1.0, 0.0)
    center = req.window.center if req.window else None
    width = req.window.width if req.window else None
    if req.photometric == "MONOCHROME1":
        bits = req.bits_stored or pixels.dtype.itemsize * 8
        if bits > pixels.dtype.itemsize * 8:
            raise InvalidSliceError(f"bits_stored {bits} exceeds the {pixels.dtype.itemsize * 8} bits of {req.dtype}")
        pixels, center = invert_monochrome1(pixels, bits, slope, intercept, center)
    return Slice.from_array(
        pixels,
        geometry=_geometry(req.geometry),
        identity=SliceIdentity(
            series_uid=req.series,
            sop_instance_uid=req.instance,
            instance_number=req.index,
            modality=req.modality or "",
            study_uid=req.study,
            frame_of_reference_uid=req.frame_of_reference,
        ),
        rescale_slope=slope,
        rescale_intercept=intercept,
        window_center=center,
        window_width=width,
        limits=limits,
        acquisition=SliceAcquisition(body_part=req.body_part or "", photometric=req.photometric or ""),
    )


def overlay_options(req: Segment, defaults: OverlayConfig) -> OverlayConfig | None:
    """The request's overlay options over the runtime's defaults; None when it asked for none."""
    o = req.overlay_options
    if o is None:
        return None
    changes = {
        k: v for k, v in (("alpha", o.alpha), ("fill", o.fill), ("contours", o.contours), ("heatmap", o.heatmap))
    }
    return OverlayConfig(**{**defaults.__dict__, **{k: v for k, v in changes.items() if v is not None}})


def head_mask_frames(
    result: SliceResult, manifest: Manifest | None = None
) -> tuple[tuple[str, np.ndarray, tuple[HeadClass, ...]], ...]:
    """A result's further mask heads as ``head_masks`` frames: (frame name ``mask:LABEL``, uint8 labels on
    the slice's grid, the head's classes for the frame's entry), in manifest order (docs/protocol.md section 4).
    The classes (name and colour, at most :data:`FRAME_HEAD_CLASSES`) come from ``manifest``; none without it."""
    specs = {h.name: h for h in manifest.mask_heads} if manifest is not None else {}
    out = []
    for m in result.mask_heads:
        spec = specs.get(m.head)
        classes = (
            tuple(
                HeadClass(printable(c.name, FRAME_HEAD_CLASS_CHARS), c.color) for c in spec.classes[:FRAME_HEAD_CLASSES]
            )
            if spec is not None
            else ()
        )
        out.append((HEAD_MASK_PREFIX + (m.label or m.head), m.mask, classes))
    return tuple(out)


def head_masks_from_arrays(arrays: dict[str, Any]) -> dict[str, np.ndarray]:
    """The further mask heads among a RESULT's arrays (:func:`arrays_from_frames`), by head label, in frame
    order; a frame that is not a 2-D uint8 array is left out (a reader ignores what it cannot use)."""
    return {
        name[len(HEAD_MASK_PREFIX) :]: arr
        for name, arr in arrays.items()
        if name.startswith(HEAD_MASK_PREFIX) and isinstance(arr, np.ndarray) and arr.dtype == np.uint8 and arr.ndim == 2
    }


def result_frames(
    outputs: Sequence[str],
    arrays: dict[str, np.ndarray | None],
    overlay_encoding: str,
    head_masks: Sequence[tuple[str, np.ndarray] | tuple[str, np.ndarray, tuple[HeadClass, ...]]] = (),
    saliency_of: str = "",
) -> tuple[tuple[FrameInfo, ...], list[Any], float]:
    """The RESULT's ``frames`` entries, its payload frames in the same order, and the ms spent encoding
    (exactly 0 unless a JPEG/PNG overlay was asked for).

    An output asked for but missing from ``arrays`` or None there gets no frame: a ``change`` frame exists
    only once the series has been compared with a prior (docs/protocol.md section 4), so a console asking
    for it earlier, or of a runtime that compares nothing, gets the other outputs alone. ``head_masks``
    (:func:`head_mask_frames`) become one frame each where ``outputs`` names ``head_masks`` (their entries list
    the head's classes when given); none for a model
    without further mask heads. A ``saliency`` frame's entry names the
    score head it explains (``saliency_of``) in ``of``."""
    infos: list[FrameInfo] = []
    payload: list[Any] = []
    encode_ms = 0.0
    for name in dict.fromkeys(outputs):
        if name == "head_masks":
            for frame_name, labels, *listed in head_masks:
                classes = listed[0] if listed and listed[0] else None
                infos.append(
                    FrameInfo(
                        name=frame_name,
                        encoding="raw",
                        dtype=labels.dtype.name,
                        shape=list(labels.shape),
                        classes=classes,
                    )
                )
                payload.append(labels)
            continue
        arr = arrays.get(name)
        if arr is None:
            continue
        if name == "overlay" and overlay_encoding != "raw":
            t0 = time.perf_counter()
            data = encode_image(arr, overlay_encoding)  # type: ignore[arg-type]
            encode_ms += (time.perf_counter() - t0) * 1e3
            infos.append(FrameInfo(name=name, encoding=overlay_encoding, bytes=len(data)))
            payload.append(data)
            continue
        of = (saliency_of or None) if name == "saliency" else None
        infos.append(FrameInfo(name=name, encoding="raw", dtype=arr.dtype.name, shape=list(arr.shape), of=of))
        payload.append(arr)
    return tuple(infos), payload, encode_ms


def arrays_from_frames(infos: Sequence[FrameInfo], frames: Sequence[Any]) -> dict[str, Any]:
    """A RESULT's payload frames as read-only arrays (raw) or bytes (``NAME_encoded``), each checked
    against its ``frames`` entry; unknown encodings are skipped as the compatibility rules say. Entries
    written into shared memory (``region`` set) have no frame and are skipped here."""
    infos = [info for info in infos if info.region is None]
    if len(frames) != len(infos):
        raise ProtocolError(f"RESULT lists {len(infos)} frames but carries {len(frames)}")
    out: dict[str, Any] = {}
    for info, frame in zip(infos, frames):
        buffer = frame.buffer if hasattr(frame, "buffer") else memoryview(frame)
        if info.encoding == "raw":
            if info.dtype not in _DTYPES or info.shape is None:
                raise ProtocolError(f"frame {info.name!r} has an unknown dtype {info.dtype!r} or no shape")
            dtype = _DTYPES[info.dtype]
            if math.prod(info.shape) * dtype.itemsize != len(buffer):
                raise ProtocolError(
                    f"frame {info.name!r}: {info.shape} x {info.dtype} does not match its {len(buffer)} bytes"
                )
            out[info.name] = np.frombuffer(buffer, dtype=dtype).reshape(info.shape)
        elif info.encoding in ("jpeg", "png"):
            out[info.name + "_encoded"] = bytes(buffer)
    return out


def wire_array(pixels: np.ndarray) -> np.ndarray:
    """``pixels`` as a C-contiguous little-endian array a raw SEGMENT can carry (a view when it already is)."""
    if pixels.dtype.name not in _DTYPES or pixels.ndim not in (2, 3):
        raise InvalidSliceError(
            f"cannot send a {pixels.dtype} array of shape {pixels.shape}; "
            f"raw SEGMENTs carry 2-D or (rows, cols, 3) arrays of {', '.join(WIRE_DTYPES)}"
        )
    if pixels.dtype.byteorder == ">" or not pixels.flags.c_contiguous:
        return np.ascontiguousarray(pixels, pixels.dtype.newbyteorder("<"))
    return pixels


def geometry_from_slice(geometry: SliceGeometry) -> dict[str, Any] | None:
    """A SliceGeometry as SEGMENT ``geometry`` fields (None when nothing is known)."""
    fields = {
        k: v
        for k, v in (
            ("pixel_spacing", geometry.pixel_spacing),
            ("slice_thickness", geometry.slice_thickness),
            ("image_position", geometry.image_position),
            ("image_orientation", geometry.image_orientation),
        )
        if v is not None
    }
    return fields or None


def paired_inputs(role: str, reference: Slice, partners: Mapping[str, Slice]) -> PairedInputs:
    """What a multi-input RESULT says about its inputs (docs/protocol.md section 3.2): the reference ``role`` and,
    per partner role, the series, instance and place along the reference slice's normal (mm) of the slice it was
    paired with. The runtime's multi-input serving and the DICOM node both answer with it."""
    return PairedInputs(
        role=role,
        partners=tuple(
            Partner(
                role=name,
                series=s.identity.series_uid,
                instance=s.identity.sop_instance_uid,
                position_mm=_rounded_mm(pair_position(reference, s)),
            )
            for name, s in partners.items()
        ),
    )


def _rounded_mm(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def pipeline_reply(
    echo: Echo,
    result: SliceResult,
    *,
    model: str,
    backend: str,
    frames: Sequence[FrameInfo],
    queue_ms: float,
    decode_ms: float,
    encode_ms: float,
    received_mono: float,
    received_at: float,
    runtime: str,
    series_ms: float = 0.0,
    position_mm: float | None = None,
    series_load: LesionLoad | None = None,
    series_scores: Sequence[SeriesScore] = (),
    change: SeriesChange | None = None,
    inputs: PairedInputs | None = None,
) -> Result:
    """The RESULT header for one pipeline result: its findings, and the stage timings (ms) of the pipeline
    plus what the caller measured around it (queue, decode, encode, series); ``total`` runs from
    ``received_mono`` to now. The runtime's workers and the DICOM node both answer with it."""
    t = result.timings
    wire_scores, wire_series = for_wire(result.scores, series_scores)  # bounded: a header is at most 64 KiB
    return result_reply(
        echo,
        model=model,
        engine=backend,
        timings=Timings(
            queue=round(queue_ms, 4),
            decode=round(decode_ms + t.decode_ms, 4),
            preprocess=round(t.preprocess_ms, 4),
            infer=round(t.infer_ms, 4),
            postprocess=round(t.postprocess_ms, 4),
            overlay=round(t.overlay_ms, 4),
            encode=round(encode_ms, 4),
            series=round(series_ms, 4),
            total=round((time.monotonic() - received_mono) * 1e3, 4),
        ),
        findings=[Finding(**f.to_dict()) for f in result.findings],  # type: ignore[arg-type]
        frames=frames,
        received_at=received_at,
        runtime=runtime,
        position_mm=None if position_mm is None else round(position_mm, 4),
        series_load=series_load,
        scores=wire_scores,
        series_scores=wire_series,
        change=change,
        inputs=inputs,
        scope=result.scope.status,
        scope_detail=result.scope.detail,
    )
