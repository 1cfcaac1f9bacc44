"""One exception tree for everything scanedge raises.

Every error carries a stable ``code`` (an upper-case string) so that the same failure reads the same
in a Python traceback, in a log line and in an ERROR reply over the wire. Library errors from pydicom,
onnx, ONNX Runtime or ZeroMQ are mapped at the boundary with ``raise ... from``, so callers only ever
need to catch :class:`ScanedgeError` (or one of its families)::

    ScanedgeError
    ├── ConfigError                   a setting that cannot work (bind address, key files, limits, options)
    ├── InputError                    the caller's data cannot be used
    │   ├── InvalidSliceError           zero-size, wrong rank, wrong dtype, NaN/Inf pixels
    │   ├── ImageTooLargeError          more pixels (or decoded bytes) than the configured limit
    │   ├── OutOfScopeError             an image the model was not made for (its manifest's ``applies_to``)
    │   ├── PriorMismatchError          a prior series of another patient or modality than the current one
    │   ├── MissingInputError           a multi-input model's partner slice or series did not come in time
    │   └── DicomError                  DICOM that cannot become a slice
    │       ├── NotDicomError             truncated or non-DICOM bytes
    │       ├── NotAnImageError           a DICOM object that is not an image (SEG, SR, RTSTRUCT, ...)
    │       ├── FrameCountError           more frames than the caller takes (BAD_DICOM)
    │       ├── MissingPixelDataError     a DICOM object without Pixel Data
    │       ├── CodecUnavailableError     compressed pixels, codec plugin not installed
    │       ├── UnsupportedPhotometricError
    │       ├── SopClassError             a SOP class the DICOM node does not segment, or not the one it was sent as
    │       ├── SeriesConflictError       an instance whose patient or study contradicts the rest of its series
    │       └── NoFrameGeometryError      a multi-frame image without per-frame patient coordinates (no SEG can cite it)
    ├── ModelError                    the model or its manifest cannot be used
    │   ├── ModelFileError              the file is not a readable ONNX model (or TensorRT plan)
    │   ├── ManifestMissingError        no manifest in the ONNX file and no sidecar
    │   ├── ManifestInvalidError        a manifest that does not validate
    │   └── ManifestMismatchError       the ONNX graph contradicts its manifest
    ├── EngineError                   an inference backend failed
    │   ├── ProviderUnavailableError    the requested execution provider is not active
    │   ├── EngineStateError            infer() before activate(), or after deactivate()
    │   ├── EngineInputError            feeds that do not match the engine's input specs
    │   ├── NonFiniteOutputError        the model produced NaN or infinite values for this input
    │   ├── EngineTimeoutError          inference ran past the runtime's job timeout (a wedged worker)
    │   ├── DeviceUnavailableError      no GPU / no TensorRT / an engine built for another GPU
    │   ├── CudaError                   a CUDA call failed on a GPU that is present
    │   └── RemoteEngineError           a serving engine (Open Inference Protocol) failed the request
    │       ├── RemoteUnavailableError    not reachable, or no answer in time, after the retries
    │       ├── RemoteModelError          that model or version is not loaded, or not ready, there
    │       └── RemoteRejectedError       the server refused the request (tensors, size, credentials)
    ├── ConversionError               building or verifying an engine failed
    ├── ProtocolError                 a wire message that breaks docs/protocol.md
    │   ├── UnsupportedVersionError     protocol version not spoken
    │   ├── UnknownMessageTypeError
    │   ├── BadFramesError              wrong number of frames
    │   ├── BadPayloadError             payload bytes contradict dtype x shape
    │   ├── UnsupportedDtypeError
    │   ├── MessageTooLargeError
    │   ├── UnknownModelError           the runtime does not serve that model
    │   └── SharedMemoryError           a shared-memory region that cannot be used (SHM_UNAVAILABLE)
    │       ├── SharedMemoryRefusedError  shared memory is not accepted on this connection
    │       ├── UnknownRegionError        a region this connection has not registered
    │       └── BadRegionError            a range outside its region, overlapping ranges, too small
    ├── RuntimeStateError             the runtime could not start, or did not stop cleanly
    ├── CapacityError                 the DICOM node holds all it may (series, bytes, busy pipelines)
    │   └── SpoolError                  a received image could not be made durable (disk full, I/O error)
    ├── DicomNetworkError             a DICOM association could not be made or failed (listening, forwarding)
    └── RequestError                  the runtime answered without a result, or did not answer
        ├── SupersededError             a newer slice of the series replaced this one
        ├── ExpiredError                the deadline passed before inference
        ├── BusyError                   the runtime's in-flight cap was reached
        ├── ShuttingDownError
        ├── RequestTimeoutError         no reply within the caller's timeout
        ├── RuntimeUnavailableError     no runtime reachable after the retries
        ├── UnauthorizedError           the runtime refused this console's CurveZMQ key
        ├── ClientClosedError           the client was closed before the reply arrived
        └── RemoteError                 any other failure reported by the runtime (``code`` says which)

Outside the tree, on purpose: programmer errors from Python callers (a wrong argument type, an
unknown keyword), which stay ``TypeError`` / ``ValueError`` so that they are fixed, not handled.

Over the wire a failure travels as its ``code``; :func:`error_for_code` turns it back into the same
class on the client, so ``except NotDicomError`` works for local and remote calls alike.
"""

from __future__ import annotations

__all__ = [
    "BadFramesError",
    "BadPayloadError",
    "BadRegionError",
    "BusyError",
    "CapacityError",
    "ClientClosedError",
    "CodecUnavailableError",
    "ConfigError",
    "ConversionError",
    "CudaError",
    "DeviceUnavailableError",
    "DicomError",
    "DicomNetworkError",
    "EngineError",
    "EngineInputError",
    "EngineStateError",
    "EngineTimeoutError",
    "ExpiredError",
    "FrameCountError",
    "ImageTooLargeError",
    "InputError",
    "InvalidSliceError",
    "ManifestInvalidError",
    "ManifestMismatchError",
    "ManifestMissingError",
    "MessageTooLargeError",
    "MissingInputError",
    "MissingPixelDataError",
    "ModelError",
    "ModelFileError",
    "NoFrameGeometryError",
    "NonFiniteOutputError",
    "NotAnImageError",
    "NotDicomError",
    "OutOfScopeError",
    "PriorMismatchError",
    "ProtocolError",
    "ProviderUnavailableError",
    "RemoteEngineError",
    "RemoteError",
    "RemoteModelError",
    "RemoteRejectedError",
    "RemoteUnavailableError",
    "RequestError",
    "RequestTimeoutError",
    "RuntimeStateError",
    "RuntimeUnavailableError",
    "ScanedgeError",
    "SeriesConflictError",
    "SharedMemoryError",
    "SharedMemoryRefusedError",
    "ShuttingDownError",
    "SopClassError",
    "SpoolError",
    "SupersededError",
    "UnauthorizedError",
    "UnknownMessageTypeError",
    "UnknownModelError",
    "UnknownRegionError",
    "UnsupportedDtypeError",
    "UnsupportedPhotometricError",
    "UnsupportedVersionError",
    "error_for_code",
    "redacted_traceback",
]


class ScanedgeError(Exception):
    """Root of every error scanedge raises on purpose."""

    code = "INTERNAL"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConfigError(ScanedgeError):
    """A configuration value or command-line option that cannot work; the message says which and why."""

    code = "BAD_CONFIG"


class InputError(ScanedgeError):
    """The caller's data cannot be turned into a slice the model can read."""

    code = "BAD_INPUT"


class InvalidSliceError(InputError):
    """Pixels that cannot be a slice: zero-size, wrong rank or channel count, unsupported dtype, NaN/Inf."""

    code = "INVALID_SLICE"


class ImageTooLargeError(InputError):
    """More pixels, a longer side or more decoded bytes than the configured limits allow."""

    code = "IMAGE_TOO_LARGE"


class OutOfScopeError(InputError):
    """An image outside the model's declared scope (manifest ``applies_to``): another modality, body part,
    photometric interpretation, spacing, ... Its findings would mean nothing, so it is not segmented unless
    the caller overrides the scope for research use."""

    code = "OUT_OF_SCOPE"


class MissingInputError(InputError):
    """A model with several inputs (manifest ``inputs``) lacks one of them for a slice: the partner series
    or the slice at that position did not arrive within the bounded wait, or could not be paired (another
    study or frame of reference). The message names the role, the series and the position."""

    code = "MISSING_INPUT"


class DicomError(InputError):
    """A DICOM object that cannot become a slice (the family of the DICOM-specific errors)."""

    code = "BAD_DICOM"


class NotDicomError(DicomError):
    """Bytes that are not DICOM, or a DICOM file truncated before its pixels."""

    code = "NOT_DICOM"


class FrameCountError(DicomError):
    """More frames than the caller takes (a SEGMENT carries one slice); code BAD_DICOM."""


class NotAnImageError(DicomError):
    """A DICOM object that is not an image (SEG, SR, RTSTRUCT, ...), so there is nothing to segment."""

    code = "NOT_AN_IMAGE"


class MissingPixelDataError(DicomError):
    """An image object without Pixel Data."""

    code = "NO_PIXEL_DATA"


class CodecUnavailableError(DicomError):
    """Compressed pixels whose codec plugin is not installed (install the ``dicom`` extra)."""

    code = "CODEC_UNAVAILABLE"


class UnsupportedPhotometricError(DicomError):
    """A photometric interpretation scanedge does not read (imaging.dicom.SUPPORTED_PHOTOMETRIC lists those it does)."""

    code = "UNSUPPORTED_PHOTOMETRIC"


class SopClassError(DicomError):
    """A DICOM object of a SOP class the DICOM node does not segment, or one whose dataset names another
    SOP class than the one it was sent as."""

    code = "UNSUPPORTED_SOP_CLASS"


class SeriesConflictError(DicomError):
    """An instance whose Patient ID or Study Instance UID differs from the instances of its series the DICOM
    node already holds: one SEG must never reference two patients or two studies."""

    code = "SERIES_CONFLICT"


class NoFrameGeometryError(DicomError):
    """A multi-frame image without per-frame patient coordinates (plane position and orientation): a SEG can
    reference such an image only as one frame, so the DICOM node does not take it."""

    code = "NO_FRAME_GEOMETRY"


class PriorMismatchError(InputError):
    """A prior series given for comparison that is not of the current series' patient (Patient ID) or
    modality: a follow-up of two patients would report lesions that never changed."""

    code = "PRIOR_MISMATCH"


class ModelError(ScanedgeError):
    """The model file or its manifest cannot be used."""

    code = "BAD_MODEL"


class ModelFileError(ModelError):
    """The file is not a readable ONNX model (or TensorRT plan)."""

    code = "BAD_MODEL_FILE"


class ManifestMissingError(ModelError):
    """No manifest embedded in the ONNX file and no sidecar file next to it."""

    code = "MANIFEST_MISSING"


class ManifestInvalidError(ModelError):
    """A manifest that does not validate (wrong field, value out of range, bad JSON)."""

    code = "MANIFEST_INVALID"


class ManifestMismatchError(ModelError):
    """The ONNX graph contradicts its manifest (tensor names, ranks, channels, classes, hash)."""

    code = "MANIFEST_MISMATCH"


class EngineError(ScanedgeError):
    """An inference backend failed (the family of the engine errors)."""

    code = "ENGINE_FAILED"


class ProviderUnavailableError(EngineError):
    """A requested ONNX Runtime execution provider is not available in this installation."""

    code = "PROVIDER_UNAVAILABLE"


class EngineStateError(EngineError):
    """``infer()`` before ``activate()`` or after ``deactivate()``."""

    code = "ENGINE_STATE"


class EngineInputError(EngineError):
    """Feeds that do not match the engine's inputs (names, dtypes, ranks, fixed dims)."""

    code = "ENGINE_INPUT"


class NonFiniteOutputError(EngineError):
    """The model produced NaN or infinite values for this input."""

    code = "NON_FINITE_OUTPUT"


class EngineTimeoutError(EngineError):
    """Inference ran past the runtime's job timeout; the worker is considered wedged and replaced."""

    code = "ENGINE_TIMEOUT"


class DeviceUnavailableError(EngineError):
    """No usable GPU for this engine: no device, driver, cuda-python or TensorRT, or a plan built for another GPU."""

    code = "DEVICE_UNAVAILABLE"


class CudaError(EngineError):
    """A CUDA call failed on a GPU that is present (out of memory, a failed launch): this call, not the machine."""

    code = "CUDA_ERROR"


class RemoteEngineError(EngineError):
    """A serving engine (Triton, KServe, MLServer) that runs the model for this runtime failed; the
    message names its address and what it said."""

    code = "REMOTE_FAILED"


class RemoteUnavailableError(RemoteEngineError):
    """The serving engine cannot be reached, or did not answer within the timeout, after the retries: the
    remote counterpart of DEVICE_UNAVAILABLE."""

    code = "REMOTE_UNAVAILABLE"


class RemoteModelError(RemoteEngineError):
    """The serving engine is up but does not have this model (or version) loaded and ready."""

    code = "REMOTE_MODEL_UNAVAILABLE"


class RemoteRejectedError(RemoteEngineError):
    """The serving engine refused the request itself: tensor names, types or shapes, size, or credentials."""

    code = "REMOTE_REJECTED"


class ConversionError(ScanedgeError):
    """Building, quantizing or verifying an engine failed; the message names the step."""

    code = "CONVERSION_FAILED"


class ProtocolError(ScanedgeError):
    """A wire message that breaks docs/protocol.md (the family of the protocol errors)."""

    code = "BAD_MESSAGE"


class UnsupportedVersionError(ProtocolError):
    """A protocol version this side does not speak."""

    code = "UNSUPPORTED_VERSION"


class UnknownMessageTypeError(ProtocolError):
    """A header whose ``type`` is not one docs/protocol.md defines."""

    code = "UNKNOWN_TYPE"


class BadFramesError(ProtocolError):
    """A message with the wrong number of frames for its type."""

    code = "BAD_FRAMES"


class BadPayloadError(ProtocolError):
    """Payload bytes that contradict the header (dtype times shape, encoding)."""

    code = "BAD_PAYLOAD"


class UnsupportedDtypeError(ProtocolError):
    """A raw pixel dtype outside the protocol's list."""

    code = "UNSUPPORTED_DTYPE"


class MessageTooLargeError(ProtocolError):
    """A header or message above the runtime's size limits."""

    code = "TOO_LARGE"


class UnknownModelError(ProtocolError):
    """A request for a model the runtime does not serve."""

    code = "UNKNOWN_MODEL"


class SharedMemoryError(ProtocolError):
    """A shared-memory region the runtime cannot use: no such object, no access, smaller than declared, a
    name outside ``/scanedge-*``, too many regions, or an I/O error on it (docs/protocol.md section 12)."""

    code = "SHM_UNAVAILABLE"


class SharedMemoryRefusedError(SharedMemoryError):
    """Shared memory is not accepted on this connection: the runtime has it off, or the console is not on
    the same host as far as the runtime can tell (a tcp peer that is not loopback)."""

    code = "SHM_REFUSED"


class UnknownRegionError(SharedMemoryError):
    """A SEGMENT or SHM_UNREGISTER names a region this connection has not registered (or no longer has:
    regions belong to the connection that registered them, and a new connection starts without any)."""

    code = "UNKNOWN_REGION"


class BadRegionError(SharedMemoryError):
    """A byte range outside its region, ranges that overlap, an output larger than the room given for it,
    a region that shrank under the runtime, or an output asked into a region the runtime may only read."""

    code = "BAD_REGION"


class RuntimeStateError(ScanedgeError):
    """The runtime could not start (the message says why) or did not stop cleanly."""

    code = "RUNTIME_STATE"


class CapacityError(ScanedgeError):
    """The DICOM node already holds as many series or bytes as it may, or no pipeline came free in time."""

    code = "OUT_OF_RESOURCES"


class SpoolError(CapacityError):
    """A received image could not be written durably to the DICOM node's spool (disk full, I/O error), so it
    is not taken: the sender keeps it and may send it again."""

    code = "SPOOL_FAILED"


class DicomNetworkError(ScanedgeError):
    """A DICOM association could not be made or failed: listening on a port, or forwarding a result."""

    code = "DICOM_NETWORK"


class RequestError(ScanedgeError):
    """The runtime answered without a result, or did not answer (the family of request outcomes)."""

    code = "REQUEST_FAILED"


class SupersededError(RequestError):
    """A newer slice of the same series arrived while this one waited, so only the newer one is computed."""

    code = "SUPERSEDED"


class ExpiredError(RequestError):
    """The request's deadline passed before inference started; nothing was computed."""

    code = "EXPIRED"


class BusyError(RequestError):
    """The runtime's cap on bytes in flight was reached; send again later."""

    code = "BUSY"


class ShuttingDownError(RequestError):
    """The runtime is stopping and did not compute this request."""

    code = "SHUTTING_DOWN"


class RequestTimeoutError(RequestError):
    """No reply within the caller's timeout."""

    code = "TIMEOUT"


class RuntimeUnavailableError(RequestError):
    """No runtime reachable at the endpoint after the client's retries."""

    code = "UNAVAILABLE"


class UnauthorizedError(RequestError):
    """The runtime refused this console's CurveZMQ key."""

    code = "UNAUTHORIZED"


class ClientClosedError(RequestError):
    """The client was closed before the reply arrived."""

    code = "CLIENT_CLOSED"


class RemoteError(RequestError):
    """A failure the runtime reported with a code this client has no class for."""

    def __init__(self, message: str, code: str = "INTERNAL") -> None:
        super().__init__(message)
        self.code = code


def _all_subclasses(cls: type[ScanedgeError]) -> list[type[ScanedgeError]]:
    out: list[type[ScanedgeError]] = []
    for sub in cls.__subclasses__():
        out.append(sub)
        out.extend(_all_subclasses(sub))
    return out


def error_for_code(code: str, message: str) -> ScanedgeError:
    """The scanedge error class whose ``code`` is ``code``, instantiated; RemoteError for unknown codes."""
    for cls in _all_subclasses(ScanedgeError):
        if cls is not RemoteError and cls.__dict__.get("code") == code:
            return cls(message)
    return RemoteError(message, code)


def redacted_traceback(exc: BaseException, limit: int = 12) -> str:
    """Where an unexpected exception came from, without its message.

    Type, then ``file:line function`` innermost first (``<-`` reads "called from"). The message is left
    out on purpose: library exceptions can quote data (a DICOM value, raw bytes), and logs must never
    hold patient identifiers."""
    import traceback

    frames = traceback.extract_tb(exc.__traceback__, limit=-limit) if exc.__traceback__ else []
    where = " <- ".join(f"{f.filename.rsplit('/', 1)[-1]}:{f.lineno} {f.name}" for f in reversed(frames))
    return f"{type(exc).__module__}.{type(exc).__qualname__}" + (f" at {where}" if where else "")
