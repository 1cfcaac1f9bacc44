"""The GPU as TensorRT needs it, through cuda-python: is there one, and which one.

TensorRT's ``deserialize_cuda_engine`` crashes the process (segfault) on a machine without a usable GPU,
so nothing touches TensorRT before :func:`gpu_info` has confirmed a device; every way of not having one
(no cuda-python, no driver, no device) is a :class:`DeviceUnavailableError` that says what is missing.

A CUDA call that fails on a GPU that is there (out of memory, a failed launch, an illegal address) is a
different matter: the machine can run the model, this call did not. :func:`cuda_failure` tells the two
apart by the CUDA error's name, so the first reads ``DEVICE_UNAVAILABLE`` (use another backend or
machine) and the second ``CUDA_ERROR`` (retry, free memory, or report a bug), with the CUDA name in it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from scanedge.errors import CudaError, DeviceUnavailableError

__all__ = ["DEVICE_UNAVAILABLE_ERRORS", "GpuInfo", "check", "cuda_failure", "cudart", "gpu_info", "tensorrt_module"]

_INSTALL_GPU = "pip install 'scanedge[gpu]'"


def cudart() -> Any:
    """cuda-python's runtime bindings (new ``cuda.bindings.runtime`` or the older ``cuda.cudart``)."""
    try:
        from cuda.bindings import runtime

        return runtime
    except ImportError:
        pass
    try:
        from cuda import cudart as runtime  # cuda-python < 12.6

        return runtime
    except ImportError as exc:
        raise DeviceUnavailableError(f"cuda-python is not installed, so no GPU can be used: {_INSTALL_GPU}") from exc


#: CUDA runtime errors that mean "no usable GPU here" rather than "this call failed": no device or
#: driver (or one too old, a stub library, a driver/library mismatch), devices taken or not ready, and
#: code built for another GPU or toolkit (no kernel image for this device, unsupported PTX)
DEVICE_UNAVAILABLE_ERRORS = frozenset(
    {
        "cudaErrorNoDevice",
        "cudaErrorInvalidDevice",
        "cudaErrorInsufficientDriver",
        "cudaErrorCallRequiresNewerDriver",
        "cudaErrorStubLibrary",
        "cudaErrorSystemDriverMismatch",
        "cudaErrorCompatNotSupportedOnDevice",
        "cudaErrorSystemNotReady",
        "cudaErrorDevicesUnavailable",
        "cudaErrorDeviceNotLicensed",
        "cudaErrorSoftwareValidityNotEstablished",
        "cudaErrorStartupFailure",
        "cudaErrorInitializationError",
        "cudaErrorNoKernelImageForDevice",
        "cudaErrorUnsupportedPtxVersion",
        "cudaErrorJitCompilerNotFound",
    }
)


def cuda_failure(error: Any, what: str) -> DeviceUnavailableError | CudaError:
    """The scanedge error for CUDA runtime error ``error`` (a ``cudaError_t``) returned by call ``what``."""
    name = getattr(error, "name", None) or str(error)
    if name in DEVICE_UNAVAILABLE_ERRORS:
        return DeviceUnavailableError(f"CUDA call {what} failed with {name}: no usable NVIDIA GPU for TensorRT here")
    return CudaError(f"CUDA call {what} failed with {name}")


def tensorrt_module() -> Any:
    """The ``tensorrt`` module, or DeviceUnavailableError saying how to install it."""
    try:
        import tensorrt
    except ImportError as exc:
        raise DeviceUnavailableError(
            f"TensorRT is not installed ({_INSTALL_GPU}, from NVIDIA's package index); use --backend ort here"
        ) from exc
    return tensorrt


def check(result: Any, what: str) -> Any:
    """cuda-python calls return (error, value...); raise on error (see :func:`cuda_failure`), return the value(s)."""
    rt = cudart()
    err, *values = result if isinstance(result, tuple) else (result,)
    if err != rt.cudaError_t.cudaSuccess:
        raise cuda_failure(err, what)
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)


@dataclass(frozen=True)
class GpuInfo:
    """The facts about a GPU that a TensorRT plan depends on (its key is built from them).

    Attributes:
        index: the CUDA device ordinal.
        name: the device name as CUDA reports it (``NVIDIA H100 80GB HBM3``).
        compute_capability: (major, minor), e.g. (9, 0).
        sm_count: streaming multiprocessors.
    """

    index: int
    name: str
    compute_capability: tuple[int, int]
    sm_count: int

    @property
    def slug(self) -> str:
        """File-name-safe GPU name, e.g. 'nvidia-h100-80gb-hbm3'."""
        return "".join(c if c.isalnum() else "-" for c in self.name.lower()).strip("-")


def gpu_info(device: int = 0) -> GpuInfo:
    """The CUDA device ``device``, or DeviceUnavailableError saying why there is none."""
    rt = cudart()
    result = rt.cudaGetDeviceCount()
    err, count = result[0], (result[1] if len(result) > 1 else None)
    if err != rt.cudaError_t.cudaSuccess or not count:
        reason = getattr(err, "name", str(err)) if err != rt.cudaError_t.cudaSuccess else "no devices"
        raise DeviceUnavailableError(
            f"no usable NVIDIA GPU on this machine ({reason}); TensorRT engines need one. Use --backend ort"
        )
    if device >= count:
        raise DeviceUnavailableError(f"GPU {device} requested but only {count} present")
    props = check(rt.cudaGetDeviceProperties(device), "cudaGetDeviceProperties")
    name = props.name.decode(errors="replace").rstrip("\x00") if isinstance(props.name, bytes) else str(props.name)
    return GpuInfo(device, name, (int(props.major), int(props.minor)), int(props.multiProcessorCount))
