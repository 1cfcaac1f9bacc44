"""A served model whose output dims are dynamic is held to the manifest on every reply, and what a server says
reaches neither the log nor the console with its escape sequences.

The models are built here as ONNX graphs with the demo model's input (``image``, 1x1x256x256) and an output
``logits`` whose dims are symbolic, so the server declares ``[-1, -1, -1, -1]`` and the check at start
passes; each returns another shape: the testers' ``[1, 1, 256, 256]`` (an IndexError in postprocessing
before), ``[1, 5, 256, 256]`` and ``[1, 2, 1, 1]`` (plausible masks read from the wrong data before). They
run on a real Seldon MLServer, next to the exported demo model.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from scanedge.demo.assets import DEMO_MODEL_PATH
from scanedge.engines import EngineConfig, RemoteConfig, open_engine
from scanedge.errors import ManifestMismatchError, RemoteEngineError, ScanedgeError
from scanedge.manifest import load_manifest
from scanedge.runtime.console.client import Client, ClientConfig
from scanedge.runtime.core.pipeline import Pipeline
from tests.remote.conftest import exported_repo
from tests.remote.mlserver import MLServer
from tests.runtime.conftest import running_server

SYMBOLIC = ["n", "c", "h", "w"]
#: a node name that is an escape sequence: ONNX Runtime quotes it in its error, MLServer passes that on
EVIL_NODE = "\x1b[2J\x1b[31mEVIL\x1b[0m\nFAKE LOG LINE"


def _graph_model(
    name: str, nodes: list, output_dims: list, initializers: list, input_dims: list | None = None
) -> bytes:
    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, input_dims or [1, 1, 256, 256])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, output_dims)],
        initializer=initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model.SerializeToString()


def _tiled(name: str, channels: int, *, pooled: bool = False, half: bool = False) -> bytes:
    """``image`` repeated ``channels`` times along C: averaged to 1x1 first when ``pooled``, its top-left
    quarter when ``half``. The input dims are symbolic (the demo manifest takes that), so ONNX Runtime, and
    with it the server's metadata, knows no output dim either; ``half`` keeps a fixed input, so its output
    is declared [1, 2, 128, 128]."""
    inits = [numpy_helper.from_array(np.array([1, channels, 1, 1], np.int64), "repeats")]
    nodes, source = [], "image"
    if pooled:
        nodes.append(helper.make_node("AveragePool", ["image"], ["pooled"], kernel_shape=[256, 256]))
        source = "pooled"
    if half:
        inits += [numpy_helper.from_array(np.array(v, np.int64), n) for n, v in [("s", [0, 0]), ("e", [128, 128])]]
        inits.append(numpy_helper.from_array(np.array([2, 3], np.int64), "axes"))
        nodes.append(helper.make_node("Slice", ["image", "s", "e", "axes"], ["quarter"]))
        source = "quarter"
    nodes.append(helper.make_node("Tile", [source, "repeats"], ["logits"]))
    return _graph_model(name, nodes, SYMBOLIC, inits, input_dims=None if half else SYMBOLIC)


def _failing(name: str) -> bytes:
    """A Reshape that cannot succeed (65536 values into rows of 7), in a node whose name is escape codes."""
    shape = numpy_helper.from_array(np.array([1, 2, -1, 7], np.int64), "shape")
    nodes = [helper.make_node("Reshape", ["image", "shape"], ["logits"], name=EVIL_NODE)]
    return _graph_model(name, nodes, SYMBOLIC, [shape], input_dims=SYMBOLIC)  # symbolic: it loads, then fails


MODELS = {
    "one-channel": _tiled("one-channel", 1),  # [1, 1, 256, 256]
    "five-channels": _tiled("five-channels", 5),  # [1, 5, 256, 256]
    "pooled": _tiled("pooled", 2, pooled=True),  # [1, 2, 1, 1]
    "right-shape": _tiled("right-shape", 2),  # [1, 2, 256, 256], declared dynamic: must pass
    "half-size": _tiled("half-size", 2, half=True),  # fixed dims that contradict the input
    "escapes": _failing("escapes"),
}


@pytest.fixture(scope="module")
def shapes_server(mlserver_executable: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MLServer]:
    repo = exported_repo(tmp_path_factory.mktemp("shapes-repo"))
    for name, model in MODELS.items():
        (repo / name / "1").mkdir(parents=True)
        (repo / name / "1" / "model.onnx").write_bytes(model)
        (repo / name / "config.pbtxt").write_text(f'name: "{name}"\n')
    server = MLServer(mlserver_executable, repo, log_path=repo.parent / "mlserver.log").start()
    try:
        yield server
    finally:
        server.stop()


def remote(url: str) -> EngineConfig:
    return EngineConfig(backend="remote", remote=RemoteConfig(url, retries=0), warmup_runs=0)


@pytest.fixture(scope="module")
def slice_bytes(demo_series: Path) -> bytes:
    return sorted(demo_series.glob("*.dcm"))[14].read_bytes()


def demo_pipeline(server: MLServer, model: str) -> Pipeline:
    """The demo manifest over the served ``model`` (its name in the URL)."""
    manifest, _ = load_manifest(DEMO_MODEL_PATH)
    return Pipeline(open_engine("unused.onnx", remote(f"{server.url}/{model}")), manifest, owns_engine=True)


@pytest.mark.parametrize(
    ("model", "got"),
    [("one-channel", [1, 1, 256, 256]), ("five-channels", [1, 5, 256, 256]), ("pooled", [1, 2, 1, 1])],
)
def test_a_reply_of_another_shape_than_the_manifest_needs_is_refused_naming_both(
    shapes_server: MLServer, slice_bytes: bytes, model: str, got: list[int]
):
    with demo_pipeline(shapes_server, model) as pipe:
        assert pipe.engine.output_specs[0].shape == (None, None, None, None)  # the start-up check cannot tell
        with pytest.raises(ManifestMismatchError) as info:
            pipe.run(slice_bytes)
        assert info.value.code == "MANIFEST_MISMATCH"
        message = info.value.message
        assert f"float32 {got}" in message and "[1, 2, 256, 256]" in message, message
        assert f"{shapes_server.url}/{model}" in message  # which server and model
        # the pipeline carries on: the next slice gets the same typed error, not a crash or stale data
        with pytest.raises(ManifestMismatchError):
            pipe.run(slice_bytes)


def test_dynamic_dims_that_come_back_right_give_a_result(shapes_server: MLServer, slice_bytes: bytes):
    with demo_pipeline(shapes_server, "right-shape") as pipe:
        result = pipe.run(slice_bytes)
    assert result.probabilities.shape == (2, 256, 256) and result.mask.shape == (256, 256)


def test_fixed_output_dims_that_contradict_the_input_are_refused_at_start(shapes_server: MLServer):
    engine = open_engine("unused.onnx", remote(f"{shapes_server.url}/half-size"))
    manifest, _ = load_manifest(DEMO_MODEL_PATH)
    with pytest.raises(ManifestMismatchError, match=r"declared \[1, 2, 128, 128\].*\[1, 2, 256, 256\]"):
        Pipeline(engine, manifest, owns_engine=True)
    assert not engine.is_active


def test_the_runtime_answers_a_wrong_shape_with_a_typed_error_not_internal(shapes_server: MLServer, slice_bytes):
    options = remote(f"{shapes_server.url}/one-channel")
    with running_server(engine=options) as srv, Client(srv.endpoint, ClientConfig(timeout_s=30.0)) as client:
        for _ in range(2):
            with pytest.raises(ScanedgeError) as info:
                client.segment(slice_bytes)
            assert info.value.code == "MANIFEST_MISMATCH", info.value
            assert "[1, 1, 256, 256]" in str(info.value) and "[1, 2, 256, 256]" in str(info.value)
        assert client.ping().engine == "remote"  # still serving


def test_escape_sequences_in_the_servers_error_reach_neither_log_nor_reply(
    shapes_server: MLServer, slice_bytes: bytes, caplog: pytest.LogCaptureFixture
):
    options = remote(f"{shapes_server.url}/escapes")
    with (
        caplog.at_level(logging.DEBUG),
        running_server(engine=options) as srv,
        Client(srv.endpoint, ClientConfig(timeout_s=30.0)) as client,
    ):
        with pytest.raises(ScanedgeError) as info:
            client.segment(slice_bytes)
    text = str(info.value)
    assert info.value.code.startswith("REMOTE_"), text
    assert "EVIL" in text, text  # the server's words are quoted ...
    logged = [r.getMessage() for r in caplog.records if "EVIL" in r.getMessage()]
    assert logged  # the failed request was logged, quoting the server
    for bad in ("\x1b", "\n", "\r", "\x07"):  # ... as plain text on one line
        assert bad not in text and not any(bad in m for m in logged), repr(bad)


def test_the_engine_quotes_the_server_as_plain_text(shapes_server: MLServer):
    with open_engine("unused.onnx", remote(f"{shapes_server.url}/escapes")) as engine:
        with pytest.raises(RemoteEngineError) as info:
            engine.infer({"image": np.zeros((1, 1, 256, 256), np.float32)})
    assert "EVIL" in info.value.message and "\x1b" not in info.value.message and "[31m" not in info.value.message
