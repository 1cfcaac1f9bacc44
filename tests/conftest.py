"""Shared fixtures: small real ONNX models built with onnx.helper, real DICOM test files, the demo assets."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from scanedge.manifest import ClassSpec, InputSpec, IntensityPolicy, Manifest, OutputSpec, SizePolicy, embed_manifest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--full",
        action="store_true",
        help="also run the tests marked slow (fuzzing, soaks, crash and flood tests): the tier CI runs",
    )


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """The demo series is written into a per-run cache, never the user's home."""
    os.environ["SCANEDGE_CACHE"] = str(tmp_path_factory.mktemp("scanedge-cache"))


def conv_model(
    in_channels: int = 1,
    weights: np.ndarray | None = None,
    *,
    height: int | str = 256,
    width: int | str = 256,
    input_name: str = "image",
    output_name: str = "logits",
) -> onnx.ModelProto:
    """A real ONNX graph: a 1x1 convolution (per-pixel linear map from input to output channels).

    With the default weights, output channel 0 is -sum(x) and channel 1 is +sum(x): a two-class softmax
    then calls "finding" exactly where the normalised input is >= 0, which tests can compute by hand.
    """
    if weights is None:
        weights = np.stack([-np.ones(in_channels), np.ones(in_channels)]).astype(np.float32)
    weights = np.asarray(weights, np.float32)
    out_channels = weights.shape[0]
    w = numpy_helper.from_array(weights.reshape(out_channels, in_channels, 1, 1), "w")
    node = helper.make_node("Conv", [input_name, "w"], [output_name], kernel_shape=[1, 1])
    graph = helper.make_graph(
        [node],
        "conv1x1",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, [1, in_channels, height, width])],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, [1, out_channels, height, width])],
        initializer=[w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def simple_manifest(**changes) -> Manifest:
    base = Manifest(
        name="test-model",
        version="0.0.1",
        input=InputSpec(name="image", channels=1),
        size=SizePolicy(mode="fixed", height=256, width=256, interpolation="area"),
        intensity=IntensityPolicy(mode="zscore"),
        output=OutputSpec(name="logits"),
        classes=(ClassSpec("background", (0, 0, 0)), ClassSpec("finding", (255, 0, 0))),
    )
    return base.replace(**changes)


@pytest.fixture
def conv_model_path(tmp_path: Path) -> Path:
    """A 256x256 two-class conv model with a manifest embedded."""
    path = tmp_path / "conv.onnx"
    embed_manifest(conv_model(), simple_manifest(), path)
    return path


def dicom_file(name: str) -> str:
    """Path of a file from pydicom's test files or the pydicom-data package."""
    from pydicom.data import get_testdata_file

    path = get_testdata_file(name)
    if path is None:
        pytest.fail(f"pydicom test file {name} is not installed (pip install pydicom-data)")
    return str(path)


@pytest.fixture(scope="session")
def demo_series(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from scanedge.demo.series import demo_series_dir

    return demo_series_dir()


def _gpu_unavailable_reason() -> str | None:
    from scanedge.engines.cuda import gpu_info, tensorrt_module
    from scanedge.errors import DeviceUnavailableError

    try:
        tensorrt_module()
        gpu_info()
    except DeviceUnavailableError as exc:
        return exc.message
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The quick tier (no ``--full``, no ``-m``) leaves the slow tests out, deselected and counted so; GPU
    tests skip with the reason where there is no GPU with TensorRT."""
    if not config.getoption("--full") and not config.getoption("-m"):
        slow = [item for item in items if item.get_closest_marker("slow")]
        if slow:
            config.hook.pytest_deselected(items=slow)
            items[:] = [item for item in items if not item.get_closest_marker("slow")]
    gpu_items = [item for item in items if "gpu" in item.keywords]
    if not gpu_items:
        return
    reason = _gpu_unavailable_reason()
    if reason:
        for item in gpu_items:
            item.add_marker(pytest.mark.skip(reason=f"needs an NVIDIA GPU with TensorRT: {reason}"))
