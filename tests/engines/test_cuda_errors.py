"""CUDA failures get the code that says what to do: DEVICE_UNAVAILABLE (no usable GPU here: use another
backend or machine) or CUDA_ERROR (a call failed on a GPU that is there). Checked with cuda-python's own
error enum, without a GPU and without faking one."""

import pytest

from scanedge.engines.cuda import DEVICE_UNAVAILABLE_ERRORS, check, cuda_failure, gpu_info
from scanedge.errors import CudaError, DeviceUnavailableError

runtime = pytest.importorskip("cuda.bindings.runtime", reason="cuda-bindings is not installed")
Err = runtime.cudaError_t


def test_every_name_in_the_unavailable_set_is_a_real_cuda_error():
    assert DEVICE_UNAVAILABLE_ERRORS <= {e.name for e in Err}  # a typo would silently map to CUDA_ERROR


@pytest.mark.parametrize(
    "error",
    [Err.cudaErrorNoDevice, Err.cudaErrorInsufficientDriver, Err.cudaErrorNoKernelImageForDevice],
)
def test_no_usable_gpu_is_device_unavailable(error):
    exc = cuda_failure(error, "cudaSetDevice")
    assert isinstance(exc, DeviceUnavailableError) and exc.code == "DEVICE_UNAVAILABLE"
    assert error.name in exc.message and "cudaSetDevice" in exc.message


@pytest.mark.parametrize(
    "error",
    [
        Err.cudaErrorMemoryAllocation,
        Err.cudaErrorLaunchFailure,
        Err.cudaErrorIllegalAddress,
        Err.cudaErrorECCUncorrectable,
    ],
)
def test_a_failing_call_on_a_present_gpu_is_a_cuda_error_named_after_the_failure(error):
    exc = cuda_failure(error, "cudaMalloc")
    assert isinstance(exc, CudaError) and not isinstance(exc, DeviceUnavailableError)
    assert exc.code == "CUDA_ERROR" and exc.message == f"CUDA call cudaMalloc failed with {error.name}"


def test_check_returns_values_on_success_and_raises_the_mapped_error_on_failure():
    assert check((Err.cudaSuccess, 7), "cudaGetDeviceCount") == 7
    assert check((Err.cudaSuccess, 1, 2), "two values") == (1, 2)
    assert check((Err.cudaSuccess,), "cudaSetDevice") is None
    with pytest.raises(CudaError, match="cudaErrorLaunchFailure"):
        check((Err.cudaErrorLaunchFailure,), "cudaStreamSynchronize")
    with pytest.raises(DeviceUnavailableError, match="cudaErrorNoDevice"):
        check((Err.cudaErrorNoDevice, None), "cudaGetDeviceProperties")


def test_this_machine_without_a_gpu_reports_device_unavailable_not_a_cuda_error():
    count_error = runtime.cudaGetDeviceCount()[0]
    if count_error == Err.cudaSuccess:
        pytest.skip("this machine has a working CUDA driver")
    with pytest.raises(DeviceUnavailableError, match=count_error.name):
        gpu_info()
