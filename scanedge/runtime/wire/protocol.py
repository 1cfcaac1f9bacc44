"""The wire protocol of docs/protocol.md as code: every message type, built and parsed in both directions.

This module is the specification's executable twin. Headers are typed, bounded msgspec Structs, so a
header is decoded straight into validated fields: no recursion past a fixed depth, no 4300-digit
integers, no infinities, no lone surrogates, every number inside a range the spec states. Everything
a peer can get wrong maps to one typed error with a wire code. Sockets live elsewhere (the server's
I/O loop, the client); pixel frames are handled by :mod:`scanedge.runtime.wire.payloads`.

Who uses what:

- consoles build requests with :func:`segment_request`, :func:`ping_request`, :func:`stats_request`,
  :func:`shm_register_request` (and its unregister/status siblings), and read replies with
  :func:`decode_reply`;
- the runtime reads requests with :func:`decode_request` (and :func:`request_echo` when that fails),
  and builds :class:`Result`, :class:`Error` (:func:`error_reply`), :class:`Pong`, :class:`StatsReply`,
  :class:`ShmRegions`;
- both encode with :func:`encode`.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from typing import Annotated, Any, Literal, cast

import msgspec
from msgspec import Meta, Struct

from scanedge._moved import forward_names
from scanedge.errors import (
    BadFramesError,
    BadPayloadError,
    MessageTooLargeError,
    ProtocolError,
    ScanedgeError,
    UnknownMessageTypeError,
    UnsupportedDtypeError,
    UnsupportedVersionError,
)
from scanedge.imaging.followup import SeriesChange
from scanedge.imaging.heads import HeadScore, SeriesScore
from scanedge.imaging.lesion_load import LesionLoad
from scanedge.safe_text import printable

__all__ = [
    "FRAME_HEAD_CLASSES",
    "FRAME_HEAD_CLASS_CHARS",
    "HEAD_MASK_PREFIX",
    "MAX_HEADER_BYTES",
    "MESSAGE_TYPES",
    "NAME_PATTERN",
    "OUTPUT_NAMES",
    "PONG_HEAD_CLASS_CHARS",
    "PROTOCOL_VERSION",
    "SHM_DIR",
    "STATUS_FOR_CODE",
    "SUPPORTED_VERSIONS",
    "WIRE_DTYPES",
    "Echo",
    "EngineStatus",
    "Error",
    "Finding",
    "FrameInfo",
    "Geometry",
    "HeadClass",
    "Histogram",
    "Limits",
    "MaskHeadInfo",
    "ModelInfo",
    "ModelInput",
    "OutputsAt",
    "OverlayRequest",
    "PairedInputs",
    "Partner",
    "Ping",
    "Pong",
    "RegionInfo",
    "RegionSlice",
    "Reply",
    "Request",
    "Rescale",
    "Result",
    "Segment",
    "SeriesModelInfo",
    "ShmRegions",
    "ShmRegister",
    "ShmStatus",
    "ShmUnregister",
    "Stats",
    "StatsReply",
    "Timings",
    "Window",
    "WorkerHealth",
    "decode_reply",
    "decode_request",
    "encode",
    "error_reply",
    "ping_request",
    "publish_topic",
    "request_echo",
    "result_reply",
    "segment_request",
    "shm_register_request",
    "shm_status_request",
    "shm_unregister_request",
    "stats_request",
]

PROTOCOL_VERSION = 1
SUPPORTED_VERSIONS = (1,)
MAX_HEADER_BYTES = 64 * 1024
REQUEST_TYPES = ("SEGMENT", "PING", "STATS", "SHM_REGISTER", "SHM_UNREGISTER", "SHM_STATUS")
REPLY_TYPES = ("RESULT", "ERROR", "PONG", "STATS_REPLY", "SHM_REGIONS")
MESSAGE_TYPES = REQUEST_TYPES + REPLY_TYPES
OUTPUT_NAMES = ("mask", "overlay", "probabilities", "image", "saliency", "change", "head_masks")
#: the frame name of a further mask head's labels is this prefix and the head's label (``mask:organs``)
HEAD_MASK_PREFIX = "mask:"
#: most characters of class names PONG lists over one model's further mask heads (a header is at most
#: 64 KiB); classes past it are counted in ``omitted``
PONG_HEAD_CLASS_CHARS = 16 * 1024
#: dtypes a raw pixel frame may carry (always little-endian on the wire)
WIRE_DTYPES = ("uint8", "int8", "uint16", "int16", "uint32", "int32", "float32", "float64")
#: reply ``status`` of the scheduling outcomes; every other error code has status "error"
STATUS_FOR_CODE = {"SUPERSEDED": "superseded", "EXPIRED": "expired", "BUSY": "busy"}

# --- bounded field types (the ranges docs/protocol.md states) -------------------------------------------

RequestId = Annotated[int, Meta(ge=0, le=2**53 - 1)] | Annotated[str, Meta(min_length=1, max_length=64)]
Version = Annotated[int, Meta(ge=0, le=2**31 - 1)]
Key = Annotated[str, Meta(max_length=256)]
InstanceNumber = Annotated[int, Meta(ge=-(2**31), le=2**31 - 1)]
Dim = Annotated[int, Meta(ge=0, le=2**24)]
Millimetres = Annotated[float, Meta(ge=0.0, le=1e4)]  # spacing, thickness: 0 = unknown
Position = Annotated[float, Meta(ge=-1e7, le=1e7)]
Cosine = Annotated[float, Meta(ge=-1.5, le=1.5)]
Slope = Annotated[float, Meta(ge=-1e6, le=1e6)]
Level = Annotated[float, Meta(ge=-1e9, le=1e9)]
Width = Annotated[float, Meta(gt=0.0, le=1e10)]
Fraction = Annotated[float, Meta(ge=0.0, le=1.0)]
Epoch = Annotated[float, Meta(ge=0.0, le=1e11)]
DeadlineMs = Annotated[float, Meta(gt=0.0, le=86_400_000.0)]
OutputName = Literal["mask", "overlay", "probabilities", "image", "saliency", "change", "head_masks"]
Count = Annotated[int, Meta(ge=0, le=2**63 - 1)]
ShmName = Annotated[str, Meta(min_length=1, max_length=255)]  # its form is checked where it is opened
ByteCount = Annotated[int, Meta(ge=0, le=2**48)]
CodeString = Annotated[str, Meta(min_length=1, max_length=16, pattern=r"^[A-Za-z0-9_ ]+$")]  # DICOM CS
RoleName = Annotated[str, Meta(min_length=1, max_length=32, pattern=r"^[a-z][a-z0-9_]*$")]  # manifest inputs


#: where Linux keeps POSIX shared-memory objects: shm_open("/NAME") is open("/dev/shm/NAME")
SHM_DIR = "/dev/shm"
#: the names a console may register: ``/scanedge-`` and 1-200 of ``A-Z a-z 0-9 . _ -``
NAME_PATTERN = re.compile(r"/scanedge-[A-Za-z0-9._-]{1,200}")


class Geometry(Struct, frozen=True, omit_defaults=True):
    """Where the slice lies (DICOM LPS, mm). A spacing or thickness of 0 means unknown."""

    pixel_spacing: tuple[Millimetres, Millimetres] | None = None
    slice_thickness: Millimetres | None = None
    image_position: tuple[Position, Position, Position] | None = None
    image_orientation: tuple[Cosine, Cosine, Cosine, Cosine, Cosine, Cosine] | None = None


class Rescale(Struct, frozen=True, omit_defaults=True):
    """A SEGMENT's DICOM rescale (section 3): modality value = stored value x ``slope`` + ``intercept``."""

    slope: Slope = 1.0
    intercept: Level = 0.0


class Window(Struct, frozen=True, omit_defaults=True):
    """A SEGMENT's display window in modality values (section 3): ``center`` and ``width`` > 0."""

    center: Level | None = None
    width: Width | None = None


class OverlayRequest(Struct, frozen=True, omit_defaults=True, forbid_unknown_fields=True):
    """How the overlay is drawn; omitted fields take the runtime's defaults."""

    alpha: Fraction | None = None
    fill: bool | None = None
    contours: bool | None = None
    heatmap: bool | None = None


class RegionSlice(Struct, frozen=True):
    """A byte range of a registered shared-memory region (section 12): ``nbytes`` bytes from ``offset`` of the
    region the console registered as ``region`` (its shm_open name)."""

    region: ShmName
    nbytes: ByteCount
    offset: ByteCount = 0


class OutputsAt(Struct, frozen=True, omit_defaults=True):
    """Where a SEGMENT's outputs are to be written instead of sent as frames (section 12); ``nbytes`` of each
    is the room given, at least the output's size."""

    mask: RegionSlice | None = None
    overlay: RegionSlice | None = None
    probabilities: RegionSlice | None = None


class _Message(Struct, frozen=True, kw_only=True, tag_field="type"):
    version: Version  # required in every header, so omit_defaults can never drop it


class Segment(_Message, tag="SEGMENT", omit_defaults=True, frozen=True):
    """A SEGMENT header (section 3); its one payload frame holds the pixels or the DICOM object."""

    id: RequestId
    encoding: Literal["raw", "dicom"] = "raw"
    dtype: Annotated[str, Meta(max_length=32)] | None = None
    shape: Annotated[list[Dim], Meta(min_length=2, max_length=3)] | None = None
    series: Key = ""
    instance: Key = ""
    index: InstanceNumber | None = None
    model: Annotated[str, Meta(min_length=1, max_length=128)] | None = None
    geometry: Geometry | None = None
    rescale: Rescale | None = None
    window: Window | None = None
    photometric: Literal["MONOCHROME1", "MONOCHROME2", "RGB"] | None = None
    bits_stored: Annotated[int, Meta(ge=1, le=64)] | None = None
    deadline_ms: DeadlineMs | None = None
    outputs: Annotated[tuple[OutputName, ...], Meta(max_length=8)] = ("mask", "overlay")
    overlay_encoding: Literal["raw", "jpeg", "png"] = "raw"
    overlay_options: OverlayRequest | None = None
    publish: bool = True
    sent_at: Epoch | None = None
    pixels_at: RegionSlice | None = None  # section 12: the pixels are in shared memory, no payload frame
    outputs_at: OutputsAt | None = None  # section 12: outputs written into shared memory instead of frames
    modality: CodeString | None = None  # DICOM Modality of raw pixels, checked against the model's scope
    body_part: CodeString | None = None  # DICOM Body Part Examined, likewise
    ignore_scope: bool = False  # research use: segment a slice outside the model's scope anyway
    role: RoleName | None = None  # section 3.2: which input of a multi-input model this slice is
    study: Key = ""  # section 3.2: Study Instance UID of raw pixels (pairs series of one study)
    frame_of_reference: Key = ""  # section 3.2: Frame of Reference UID of raw pixels
    last: bool = False  # the series' last slice: the series is complete (a series model runs on it, section 4)


class Ping(_Message, tag="PING", frozen=True):
    """A PING header (section 5): answered at once by PONG, never queued behind inference."""

    id: RequestId


class Stats(_Message, tag="STATS", frozen=True):
    """A STATS header (section 5): answered by STATS_REPLY."""

    id: RequestId


class ShmRegister(_Message, tag="SHM_REGISTER", frozen=True):
    """An SHM_REGISTER header (section 12): the console's POSIX shared-memory object ``name``, ``size`` bytes,
    for this connection's SEGMENTs; or, with ``fd``, the console's memfd of that number, known as ``name``.
    Answered by SHM_REGIONS."""

    id: RequestId
    name: ShmName
    size: Annotated[int, Meta(ge=1, le=2**48)]
    fd: Annotated[int, Meta(ge=0, le=2**31 - 1)] | None = None  # a memfd of the console's, ipc:// only


class ShmUnregister(_Message, tag="SHM_UNREGISTER", frozen=True):
    """An SHM_UNREGISTER header (section 12): forget region ``name`` (all of this connection's when null)."""

    id: RequestId
    name: ShmName | None = None


class ShmStatus(_Message, tag="SHM_STATUS", frozen=True):
    """An SHM_STATUS header (section 12): answered by SHM_REGIONS, listing this connection's regions."""

    id: RequestId


Request = Segment | Ping | Stats | ShmRegister | ShmUnregister | ShmStatus

# --- replies ----------------------------------------------------------------------------------------------


class Timings(Struct, frozen=True):
    """Runtime-side milliseconds per stage (section 4)."""

    queue: float = 0.0
    decode: float = 0.0
    preprocess: float = 0.0
    infer: float = 0.0
    postprocess: float = 0.0
    overlay: float = 0.0
    encode: float = 0.0
    total: float = 0.0
    series: float = 0.0  # added within version 1: updating the series' lesion load


class Finding(Struct, frozen=True):
    """One foreground class's findings in a RESULT (section 4), as
    :class:`~scanedge.imaging.postprocess.ClassFindings` has them."""

    label: int
    name: str
    pixels: int
    area_mm2: float | None
    components: int
    max_probability: float
    mean_probability: float


_Channel = Annotated[int, Meta(ge=0, le=255)]
#: classes a ``mask:<label>`` frame entry lists (background first; a head with more lists its first ones)
FRAME_HEAD_CLASSES = 16
#: characters of a class name in a ``mask:<label>`` frame entry
FRAME_HEAD_CLASS_CHARS = 32


class HeadClass(Struct, frozen=True):
    """A further mask head's class as its ``mask:<label>`` frame entry lists it (section 4): its name (one
    printable line, at most :data:`FRAME_HEAD_CLASS_CHARS` characters) and its manifest colour (RGB), so a
    subscriber that never sent a PING (a viewer) can name and colour the head's label values."""

    name: Annotated[str, Meta(max_length=256)]
    color: tuple[
        Annotated[int, Meta(ge=0, le=255)], Annotated[int, Meta(ge=0, le=255)], Annotated[int, Meta(ge=0, le=255)]
    ]


class FrameInfo(Struct, frozen=True, omit_defaults=True):
    """One output of a RESULT: raw frames have dtype and shape, encoded ones their byte count. An output
    written into shared memory (section 12) has ``region`` and ``offset`` (and ``bytes``) and no frame."""

    name: str
    encoding: str
    dtype: str | None = None
    shape: list[int] | None = None
    bytes: int | None = None
    region: str | None = None
    offset: int | None = None
    of: str | None = None  # a ``saliency`` frame: the score head it explains (section 4)
    # a ``mask:<label>`` frame: the head's classes, background first (section 4; at most FRAME_HEAD_CLASSES)
    classes: Annotated[tuple[HeadClass, ...], Meta(max_length=256)] | None = None


class Partner(Struct, frozen=True, omit_defaults=True):
    """One partner slice a multi-input RESULT was computed with (section 3.2)."""

    role: str
    series: str = ""
    instance: str = ""
    position_mm: float | None = None


class PairedInputs(Struct, frozen=True, omit_defaults=True):
    """What a RESULT of a multi-input model says about its inputs (section 3.2).

    ``held``: the slice was a partner role's, kept for pairing; such a RESULT has no findings or frames.
    """

    role: str
    held: bool = False
    partners: tuple[Partner, ...] = ()


class Result(_Message, tag="RESULT", frozen=True):
    """A RESULT header (section 4); its payload frames follow in the order of ``frames``."""

    id: RequestId
    status: str = "ok"
    code: str | None = None
    message: str = ""
    series: str = ""
    instance: str = ""
    index: int | None = None
    model: str = ""
    engine: str = ""
    timings_ms: Timings = Timings()
    findings: tuple[Finding, ...] = ()
    frames: tuple[FrameInfo, ...] = ()
    sent_at: float | None = None
    received_at: float | None = None
    replied_at: float | None = None
    runtime: str = ""
    scope: str = ""  # "in", "unchecked" or "outside" (the last only with ignore_scope); "" from older runtimes
    scope_detail: str = ""  # for "outside": what the model expects and what the slice is
    position_mm: float | None = None  # added within version 1: the slice's place along its normal
    series_load: LesionLoad | None = None  # added within version 1: the series' lesion load so far
    scores: tuple[HeadScore, ...] = ()  # added within version 1: per score head, this slice's classes
    series_scores: tuple[SeriesScore, ...] = ()  # added within version 1: per score head, the series so far
    change: SeriesChange | None = None  # added within version 1: the series against its prior so far
    inputs: PairedInputs | None = None  # added within version 1: the roles of a multi-input model (section 3.2)
    update: bool = False  # added within version 1: a published change update of a slice already published (9)


class Error(_Message, tag="ERROR", frozen=True):
    """An ERROR header (section 4): ``code`` from section 7, ``id`` null only when the request's id was unreadable."""

    id: RequestId | None
    status: str = "error"
    code: str = "INTERNAL"
    message: str = ""
    series: str = ""
    instance: str = ""
    index: int | None = None
    sent_at: float | None = None
    received_at: float | None = None
    replied_at: float | None = None
    runtime: str = ""


class ModelInput(Struct, frozen=True):
    """A served model's input in PONG (section 5): ``height``/``width`` null for models that take any size."""

    channels: int
    height: int | None
    width: int | None


class MaskHeadInfo(Struct, frozen=True):
    """A served model's further mask head in PONG (section 5): its ``label`` (the name its RESULT frames
    carry after ``mask:``), its ``classes`` (background first; label value k is ``classes[k]``), its
    ``activation``, and ``omitted``: classes left off the end of ``classes`` to keep PONG small."""

    label: str
    classes: tuple[str, ...]
    activation: str = "softmax"
    omitted: int = 0


class SeriesModelInfo(Struct, frozen=True):
    """PONG ``models[].series_model`` (section 5): the score head whose series score a 3-D series model gives
    when a SEGMENT says ``last`` (section 4), and that model's input (depth, height, width)."""

    head: str
    input: tuple[int, int, int]


class ModelInfo(Struct, frozen=True):
    """A served model as PONG describes it (section 5)."""

    name: str
    version: str
    classes: tuple[str, ...]
    input: ModelInput
    precision: str = "fp32"
    onnx_sha256: str | None = None
    output_kind: str = "logits"
    activation: str = "softmax"
    threads: int | None = None  # intra-op threads per worker; null: the backend's default (or not ORT)
    threads_probe_ms: dict[str, float] | None = None  # --threads auto: median ms per thread count measured
    roles: tuple[str, ...] = ()  # section 3.2: the input roles of a multi-input model, reference first
    mask_heads: tuple[MaskHeadInfo, ...] = ()  # section 4: further mask heads (output and frames "head_masks")
    series_model: SeriesModelInfo | None = None  # section 4: a score head's 3-D series model (SEGMENT "last")


class WorkerHealth(Struct, frozen=True):
    """PONG ``workers`` (section 5): inference workers configured, running, busy now, replaced, set aside as wedged."""

    configured: int = 0
    alive: int = 0
    busy: int = 0
    restarted: int = 0
    wedged: int = 0


class Limits(Struct, frozen=True):
    """The runtime's limits in bytes and pixels, so a console can size its requests."""

    max_header_bytes: int = MAX_HEADER_BYTES
    max_message_bytes: int = 0
    max_inflight_bytes: int = 0
    max_pixels: int = 0
    max_side: int = 0
    max_decoded_bytes: int = 0  # bytes one DICOM object may decode or inflate to
    max_shm_regions: int = 0  # shared-memory regions one connection may register (section 12)


class EngineStatus(Struct, frozen=True):
    """Whether a served model's inference backend can run it now (PONG ``engine_health``, section 5):
    ``ok``, ``unavailable`` (e.g. its remote server is down; ``code`` and ``message`` say why) or
    ``inactive`` (no worker has it open)."""

    status: str = "ok"
    code: str | None = None
    message: str = ""
    since: float | None = None
    target: str = ""


class Pong(_Message, tag="PONG", frozen=True):
    """A PONG header (section 5): what the runtime serves, how loaded it is, and its limits."""

    id: RequestId
    server: str = ""
    protocols: tuple[int, ...] = SUPPORTED_VERSIONS
    models: tuple[ModelInfo, ...] = ()
    default_model: str = ""
    engine: str = ""
    queue_depth: int = 0
    in_flight_bytes: int = 0
    runtime: str = ""
    started_at: float | None = None
    workers: WorkerHealth = WorkerHealth()
    limits: Limits = Limits()
    engine_health: dict[str, EngineStatus] = {}
    shared_memory: bool = False  # section 12: whether the connection this PONG answers may register regions


class Histogram(Struct, frozen=True):
    """Fixed log-spaced buckets: ``counts[i]`` samples fell at or below ``buckets_ms[i]`` and above the
    previous bound (``None``: above the top bound). Percentiles are bucket upper bounds."""

    buckets_ms: tuple[float | None, ...] = ()
    counts: tuple[int, ...] = ()
    count: int = 0
    p50: float | None = None
    p90: float | None = None
    p99: float | None = None
    max: float | None = None


class StatsReply(_Message, tag="STATS_REPLY", frozen=True):
    """A STATS_REPLY header (section 5): counters since start and latency histograms per model."""

    id: RequestId
    counters: dict[str, int] = {}
    histograms: dict[str, dict[str, Histogram]] = {}
    runtime: str = ""


class RegionInfo(Struct, frozen=True):
    """A registered shared-memory region in SHM_REGIONS: its ``name`` and registered ``size`` in bytes."""

    name: str
    size: int


class ShmRegions(_Message, tag="SHM_REGIONS", frozen=True):
    """An SHM_REGIONS header (section 12): the regions registered on this connection after the request."""

    id: RequestId
    regions: tuple[RegionInfo, ...] = ()
    runtime: str = ""


Reply = Result | Error | Pong | StatsReply | ShmRegions


def _plain(value: Any) -> Any:
    """Encoder hook: str subclasses (pydicom's UID and PersonName-free text values) as plain strings."""
    if isinstance(value, str):
        return value[:]
    raise NotImplementedError(f"cannot encode {type(value).__name__} in a header")


_encoder = msgspec.json.Encoder(enc_hook=_plain)
_request_decoder = msgspec.json.Decoder(Request)
_reply_decoder = msgspec.json.Decoder(Reply)


class Echo(Struct, frozen=True):
    """What a reply echoes from its request; best effort when the request itself is invalid."""

    id: RequestId | None = None
    series: str = ""
    instance: str = ""
    index: int | None = None
    sent_at: float | None = None

    @classmethod
    def of(cls, request: Request) -> Echo:
        """What a reply to a decoded ``request`` echoes."""
        if isinstance(request, Segment):
            return cls(request.id, request.series, request.instance, request.index, request.sent_at)
        return cls(request.id)


class _Envelope(Struct):
    """Every field a reply echoes, undecoded: each is checked on its own so one bad field spoils nothing else."""

    version: msgspec.Raw = msgspec.Raw()
    type: msgspec.Raw = msgspec.Raw()
    id: msgspec.Raw = msgspec.Raw()
    series: msgspec.Raw = msgspec.Raw()
    instance: msgspec.Raw = msgspec.Raw()
    index: msgspec.Raw = msgspec.Raw()
    sent_at: msgspec.Raw = msgspec.Raw()


_envelope_decoder = msgspec.json.Decoder(_Envelope)
_field_decoders: dict[Any, msgspec.json.Decoder] = {}


def _field(raw: msgspec.Raw, kind: Any, default: Any) -> Any:
    if not raw:
        return default
    decoder = _field_decoders.get(kind)
    if decoder is None:
        decoder = _field_decoders[kind] = msgspec.json.Decoder(kind)
    try:
        return decoder.decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError, UnicodeDecodeError):
        return default


def _envelope(frame: bytes | memoryview) -> _Envelope | None:
    if len(frame) > MAX_HEADER_BYTES:
        return None
    try:
        return _envelope_decoder.decode(frame)
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError, UnicodeDecodeError):
        return None


def request_echo(frame: bytes | memoryview) -> Echo:
    """The id and echo fields of a request whose validation failed, so its ERROR can still be attributed."""
    env = _envelope(frame)
    if env is None:
        return Echo()
    return Echo(
        id=_field(env.id, RequestId, None),
        series=_field(env.series, Key, ""),
        instance=_field(env.instance, Key, ""),
        index=_field(env.index, InstanceNumber, None),
        sent_at=_field(env.sent_at, Epoch, None),
    )


# --- decoding -------------------------------------------------------------------------------------------


def decode_request(frames: Sequence[bytes | memoryview | Any], max_message_bytes: int) -> Request:
    """Validate a request (header frame plus payload frames) against sections 2-3 and 5.

    Raises a :class:`ProtocolError` subclass naming what is wrong; the checks run in the order the
    spec's error table implies (size, JSON, version, type, fields, frame count).
    """
    if not frames:
        raise BadFramesError("empty message: a header frame is required")
    size = sum(len(f) for f in frames)
    if size > max_message_bytes:
        raise MessageTooLargeError(f"message of {size} bytes exceeds the runtime's limit of {max_message_bytes} bytes")
    head = frames[0]
    if len(head) > MAX_HEADER_BYTES:
        raise ProtocolError(f"header frame of {len(head)} bytes exceeds {MAX_HEADER_BYTES}")
    try:
        request = _request_decoder.decode(head)
    except msgspec.ValidationError as exc:
        raise _classify(head, exc) from None
    except msgspec.DecodeError as exc:
        raise ProtocolError(f"header frame is not a UTF-8 JSON object: {exc}") from None
    except UnicodeDecodeError as exc:  # msgspec lets invalid UTF-8 inside object keys through as this
        raise ProtocolError(f"header frame is not valid UTF-8 (byte {exc.start})") from None
    except RecursionError:
        raise ProtocolError("header frame is nested too deeply") from None
    if request.version not in SUPPORTED_VERSIONS:
        raise UnsupportedVersionError(
            f"protocol version {request.version} is not spoken here (supported: {list(SUPPORTED_VERSIONS)})"
        )
    payload = len(frames) - 1
    if isinstance(request, Segment):
        if request.pixels_at is not None:
            if payload:
                raise BadFramesError(f"a SEGMENT with pixels_at carries no payload frame, got {payload}")
        elif payload != 1:
            raise BadFramesError(f"SEGMENT carries exactly one pixel frame after the header, got {payload}")
        _check_segment(request)
    elif payload:
        raise BadFramesError(f"{_type_name(request)} carries no payload frames, got {payload}")
    return request


def _type_name(request: Request) -> str:
    return type(request).__struct_config__.tag  # type: ignore[return-value]


def _classify(head: bytes | memoryview, exc: msgspec.ValidationError) -> ScanedgeError:
    """Which error a header that failed validation deserves: version first, then type, then the field."""
    env = _envelope(head)
    if env is None:
        return ProtocolError(f"header frame is not a JSON object: {exc}")
    version = _field(env.version, Version, None)
    if version is None:
        return ProtocolError("header 'version' must be an integer")
    if version not in SUPPORTED_VERSIONS:
        return UnsupportedVersionError(
            f"protocol version {version} is not spoken here (supported: {list(SUPPORTED_VERSIONS)})"
        )
    kind = _field(env.type, Annotated[str, Meta(max_length=32)], None)
    if kind not in MESSAGE_TYPES:
        shown = kind if kind is not None else "(missing or not a string)"
        return UnknownMessageTypeError(f"unknown message type {shown!r}; known: {', '.join(MESSAGE_TYPES)}")
    if kind in REPLY_TYPES:
        return UnknownMessageTypeError(f"{kind} is a reply type; a runtime accepts {', '.join(REQUEST_TYPES)}")
    text = str(exc)
    if text.endswith("`$.shape`") or "`$.shape[" in text:
        return BadPayloadError(f"shape must be [rows, cols] or [rows, cols, 3] of integers 0..2^24: {text}")
    return ProtocolError(f"invalid {kind} header: {text}")


def _check_segment(req: Segment) -> None:
    """What the types cannot say: raw pixels need dtype and shape, colour has 3 samples."""
    if req.encoding != "raw":
        return
    if req.dtype is None:
        raise ProtocolError("raw SEGMENT needs 'dtype'")
    if req.dtype not in WIRE_DTYPES:
        raise UnsupportedDtypeError(f"dtype {req.dtype!r} is not supported; use one of {', '.join(WIRE_DTYPES)}")
    if req.shape is None or (len(req.shape) == 3 and req.shape[2] != 3):
        raise BadPayloadError(f"shape must be [rows, cols] or [rows, cols, 3], got {req.shape!r}")


def decode_reply(frame: bytes | memoryview) -> Reply:
    """A reply header as the runtime sent it; :class:`ProtocolError` for anything malformed."""
    if len(frame) > MAX_HEADER_BYTES:
        raise ProtocolError(f"reply header of {len(frame)} bytes exceeds {MAX_HEADER_BYTES}")
    try:
        return _reply_decoder.decode(frame)
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"malformed reply from the runtime: {exc}") from None
    except RecursionError:
        raise ProtocolError("malformed reply from the runtime: nested too deeply") from None


# --- building -------------------------------------------------------------------------------------------


def encode(message: Struct) -> bytes:
    """A header frame: compact UTF-8 JSON. Non-finite floats cannot occur (every field is bounded or
    computed from bounded values); msgspec would write them as null rather than fail."""
    return _encoder.encode(message)


def error_reply(
    echo: Echo,
    error: ScanedgeError | str,
    message: str = "",
    *,
    received_at: float | None = None,
    runtime: str = "",
) -> Error:
    """An ERROR reply for a typed error, or for a bare code such as ``"SUPERSEDED"`` with ``message``."""
    code = error.code if isinstance(error, ScanedgeError) else error
    text = error.message if isinstance(error, ScanedgeError) else message
    return Error(
        version=PROTOCOL_VERSION,
        id=echo.id,
        status=STATUS_FOR_CODE.get(code, "error"),
        code=code,
        message=printable(text),  # it may quote a peer's or a server's words: one plain line
        series=echo.series,
        instance=echo.instance,
        index=echo.index,
        sent_at=echo.sent_at,
        received_at=received_at,
        replied_at=time.time(),
        runtime=runtime,
    )


def result_reply(
    echo: Echo,
    *,
    model: str,
    engine: str,
    timings: Timings,
    findings: Sequence[Finding],
    frames: Sequence[FrameInfo],
    received_at: float,
    runtime: str,
    scope: str = "",
    scope_detail: str = "",
    position_mm: float | None = None,
    series_load: LesionLoad | None = None,
    scores: Sequence[HeadScore] = (),
    series_scores: Sequence[SeriesScore] = (),
    change: SeriesChange | None = None,
    inputs: PairedInputs | None = None,
) -> Result:
    """A RESULT header; the payload frames follow it in the order of ``frames``."""
    return Result(
        version=PROTOCOL_VERSION,
        id=cast("int | str", echo.id),  # a job's request always has an id
        series=echo.series,
        instance=echo.instance,
        index=echo.index,
        model=model,
        engine=engine,
        timings_ms=timings,
        findings=tuple(findings),
        frames=tuple(frames),
        sent_at=echo.sent_at,
        received_at=received_at,
        replied_at=time.time(),
        runtime=runtime,
        scope=scope,
        scope_detail=scope_detail,
        position_mm=position_mm,
        series_load=series_load,
        scores=tuple(scores),
        series_scores=tuple(series_scores),
        change=change,
        inputs=inputs,
    )


def segment_request(request_id: RequestId, **fields: Any) -> Segment:
    """A SEGMENT header; ``fields`` are section 3's (values outside the spec's ranges raise here, in the
    console, instead of coming back as an ERROR)."""
    try:
        return msgspec.convert({"type": "SEGMENT", "version": PROTOCOL_VERSION, "id": request_id, **fields}, Segment)
    except msgspec.ValidationError as exc:
        raise ProtocolError(f"invalid SEGMENT field: {exc}") from None


def ping_request(request_id: RequestId) -> Ping:
    """A PING header with ``request_id``."""
    return Ping(version=PROTOCOL_VERSION, id=request_id)


def stats_request(request_id: RequestId) -> Stats:
    """A STATS header with ``request_id``."""
    return Stats(version=PROTOCOL_VERSION, id=request_id)


def shm_register_request(request_id: RequestId, name: str, size: int, fd: int | None = None) -> ShmRegister:
    """An SHM_REGISTER header: region ``name`` (the shm_open name, ``/scanedge-...``) of ``size`` bytes; with
    ``fd``, the console's memfd of that number instead, registered under ``name``."""
    return ShmRegister(version=PROTOCOL_VERSION, id=request_id, name=name, size=size, fd=fd)


def shm_unregister_request(request_id: RequestId, name: str | None = None) -> ShmUnregister:
    """An SHM_UNREGISTER header for region ``name`` (None: every region of the connection)."""
    return ShmUnregister(version=PROTOCOL_VERSION, id=request_id, name=name)


def shm_status_request(request_id: RequestId) -> ShmStatus:
    """An SHM_STATUS header with ``request_id``."""
    return ShmStatus(version=PROTOCOL_VERSION, id=request_id)


def publish_topic(series: str) -> bytes:
    """The PUB topic frame (section 9): the series as UTF-8. Never fails, whatever the string holds."""
    return series.encode("utf-8", "replace")


#: names this module had before the wire carried the imaging floor's own lesion-load objects
__getattr__ = forward_names(
    __name__,
    {
        "LesionClassLoad": ("scanedge.imaging.lesion_load", "ClassLesionLoad"),
        "SeriesLoad": ("scanedge.imaging.lesion_load", "LesionLoad"),
    },
)
