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
    │   └── DicomError                  DICOM that cannot become a slice
    │       ├── NotDicomError             truncated or non-DICOM bytes
    │       ├── NotAnImageError           a DICOM object that is not an image (SEG, SR, RTSTRUCT, ...)
    │       ├── MissingPixelDataError     a DICOM object without Pixel Data
    │       ├── CodecUnavailableError     compressed pixels, codec plugin not installed
    │       └── UnsupportedPhotometricError
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
    │   └── UnknownModelError           the runtime does not serve that model
    ├── RuntimeStateError             the runtime could not start, or did not stop cleanly
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
    "BusyError",
    "ClientClosedError",
    "CodecUnavailableError",
    "ConfigError",
    "ConversionError",
    "CudaError",
    "DeviceUnavailableError",
    "DicomError",
    "EngineError",
    "EngineInputError",
    "EngineStateError",
    "EngineTimeoutError",
    "ExpiredError",
    "ImageTooLargeError",
    "InputError",
    "InvalidSliceError",
    "ManifestInvalidError",
    "ManifestMismatchError",
    "ManifestMissingError",
    "MessageTooLargeError",
    "MissingPixelDataError",
    "ModelError",
    "ModelFileError",
    "NonFiniteOutputError",
    "NotAnImageError",
    "NotDicomError",
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
    "ShuttingDownError",
    "SupersededError",
    "UnauthorizedError",
    "UnknownMessageTypeError",
    "UnknownModelError",
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
    code = "INVALID_SLICE"


class ImageTooLargeError(InputError):
    code = "IMAGE_TOO_LARGE"


class DicomError(InputError):
    code = "BAD_DICOM"


class NotDicomError(DicomError):
    code = "NOT_DICOM"


class NotAnImageError(DicomError):
    code = "NOT_AN_IMAGE"


class MissingPixelDataError(DicomError):
    code = "NO_PIXEL_DATA"


class CodecUnavailableError(DicomError):
    code = "CODEC_UNAVAILABLE"


class UnsupportedPhotometricError(DicomError):
    code = "UNSUPPORTED_PHOTOMETRIC"


class ModelError(ScanedgeError):
    code = "BAD_MODEL"


class ModelFileError(ModelError):
    code = "BAD_MODEL_FILE"


class ManifestMissingError(ModelError):
    code = "MANIFEST_MISSING"


class ManifestInvalidError(ModelError):
    code = "MANIFEST_INVALID"


class ManifestMismatchError(ModelError):
    code = "MANIFEST_MISMATCH"


class EngineError(ScanedgeError):
    code = "ENGINE_FAILED"


class ProviderUnavailableError(EngineError):
    code = "PROVIDER_UNAVAILABLE"


class EngineStateError(EngineError):
    code = "ENGINE_STATE"


class EngineInputError(EngineError):
    code = "ENGINE_INPUT"


class NonFiniteOutputError(EngineError):
    code = "NON_FINITE_OUTPUT"


class EngineTimeoutError(EngineError):
    code = "ENGINE_TIMEOUT"


class DeviceUnavailableError(EngineError):
    code = "DEVICE_UNAVAILABLE"


class CudaError(EngineError):
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
    code = "CONVERSION_FAILED"


class ProtocolError(ScanedgeError):
    code = "BAD_MESSAGE"


class UnsupportedVersionError(ProtocolError):
    code = "UNSUPPORTED_VERSION"


class UnknownMessageTypeError(ProtocolError):
    code = "UNKNOWN_TYPE"


class BadFramesError(ProtocolError):
    code = "BAD_FRAMES"


class BadPayloadError(ProtocolError):
    code = "BAD_PAYLOAD"


class UnsupportedDtypeError(ProtocolError):
    code = "UNSUPPORTED_DTYPE"


class MessageTooLargeError(ProtocolError):
    code = "TOO_LARGE"


class UnknownModelError(ProtocolError):
    code = "UNKNOWN_MODEL"


class RuntimeStateError(ScanedgeError):
    code = "RUNTIME_STATE"


class RequestError(ScanedgeError):
    code = "REQUEST_FAILED"


class SupersededError(RequestError):
    code = "SUPERSEDED"


class ExpiredError(RequestError):
    code = "EXPIRED"


class BusyError(RequestError):
    code = "BUSY"


class ShuttingDownError(RequestError):
    code = "SHUTTING_DOWN"


class RequestTimeoutError(RequestError):
    code = "TIMEOUT"


class RuntimeUnavailableError(RequestError):
    code = "UNAVAILABLE"


class UnauthorizedError(RequestError):
    code = "UNAUTHORIZED"


class ClientClosedError(RequestError):
    code = "CLIENT_CLOSED"


class RemoteError(RequestError):
    """A failure the runtime reported with a code this client has no class for."""

    def __init__(self, message: str, code: str = "INTERNAL") -> None:
        super().__init__(message)
        self.code = code


def _all_subclasses(cls: type) -> list[type]:
    out = []
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
