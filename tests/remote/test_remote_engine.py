"""The remote engine against a live Seldon MLServer serving the exported demo model over gRPC.

Each test says what a console operator would see: the same masks as the local engine, and a typed error
that names the server for each way the server side can be wrong.
"""

from __future__ import annotations

import concurrent.futures
import socket
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from scanedge.engines import EngineConfig, OnnxRuntimeEngine, RemoteConfig, open_engine
from scanedge.engines.remote import RemoteEngine
from scanedge.errors import (
    ConfigError,
    EngineInputError,
    ManifestMismatchError,
    RemoteModelError,
    RemoteRejectedError,
    RemoteUnavailableError,
)
from scanedge.manifest import OutputSpec, load_manifest
from scanedge.runtime.core.pipeline import Pipeline
from tests.conftest import simple_manifest
from tests.remote.conftest import DEMO_NAME
from tests.remote.mlserver import MLServer, free_port


def remote(url: str, **changes) -> EngineConfig:
    return EngineConfig(backend="remote", remote=RemoteConfig(url, **changes), warmup_runs=0)


def test_the_remote_engine_segments_exactly_as_the_local_engine(mlserver: MLServer, demo_series: Path):
    files = sorted(demo_series.glob("*.dcm"))[8:20]  # slices with and without lesions
    with (
        Pipeline.open(options=remote(mlserver.url)) as far,
        Pipeline.open(options=EngineConfig(backend="ort", threads=1)) as near,
    ):
        assert far.engine.backend == "remote" and far.engine.name == f"{mlserver.url}/{DEMO_NAME}"
        lesions = 0
        for path in files:
            a, b = far.run(path.read_bytes()), near.run(path.read_bytes())
            # the same float32 graph on the same ONNX Runtime build: the probabilities agree bit for bit
            assert np.array_equal(a.probabilities, b.probabilities), path.name
            assert np.array_equal(a.mask, b.mask) and a.findings == b.findings, path.name
            lesions += a.finding("lesion").pixels
        assert lesions > 0  # the comparison covered real findings, not only empty masks


def test_tensor_specs_come_from_the_servers_metadata(mlserver: MLServer):
    with (
        open_engine("unused.onnx", remote(mlserver.url), name=DEMO_NAME) as far,
        OnnxRuntimeEngine(load_manifest_path(), EngineConfig(threads=1)) as near,
    ):
        assert far.input_specs == near.input_specs and far.output_specs == near.output_specs
        info = far.describe()
        assert info["server"]["name"] == "mlserver" and info["transport"] == "grpc"
        assert far.health().status == "ok" and far.health().target == far.name
        with pytest.raises(EngineInputError, match="shape"):  # checked here, before a byte is sent
            far.infer({"image": np.zeros((1, 1, 128, 128), np.float32)})
    assert far.health().status == "inactive"


def load_manifest_path() -> Path:
    from scanedge.demo.assets import DEMO_MODEL_PATH

    return DEMO_MODEL_PATH


def test_a_model_the_server_does_not_have_is_refused_at_start_naming_it(mlserver: MLServer):
    with pytest.raises(RemoteModelError, match="'no-such-model'") as info:
        Pipeline.open(options=remote(f"{mlserver.url}/no-such-model"))
    assert info.value.code == "REMOTE_MODEL_UNAVAILABLE" and mlserver.address in info.value.message


def test_a_version_the_server_does_not_have_is_refused_at_start(mlserver: MLServer):
    with pytest.raises(RemoteModelError, match="version 7") as info:
        Pipeline.open(options=remote(f"{mlserver.url}/{DEMO_NAME}/7"))
    assert info.value.code == "REMOTE_MODEL_UNAVAILABLE"
    with Pipeline.open(options=remote(f"{mlserver.url}/{DEMO_NAME}/1")) as pipe:  # the version it has
        assert pipe.engine.name.endswith(f"/{DEMO_NAME}/1")


def test_a_server_that_is_not_there_is_unavailable_after_the_retries_naming_its_address(grpc_support):
    port = free_port()  # nothing listens on it
    with pytest.raises(RemoteUnavailableError, match="after 3 attempts") as info:
        Pipeline.open(options=remote(f"grpc://127.0.0.1:{port}", retries=2, retry_backoff_s=0.01))
    assert info.value.code == "REMOTE_UNAVAILABLE" and f"127.0.0.1:{port}" in info.value.message


def test_a_port_that_accepts_but_never_speaks_grpc_is_unavailable_promptly(grpc_support):
    with socket.socket() as wedged:  # the kernel accepts connections; nothing ever answers on them
        wedged.bind(("127.0.0.1", 0))
        wedged.listen(8)
        port = wedged.getsockname()[1]
        t0 = time.monotonic()
        with pytest.raises(RemoteUnavailableError, match=f"127.0.0.1:{port}"):
            Pipeline.open(options=remote(f"grpc://127.0.0.1:{port}", timeout_s=2.0, retry_backoff_s=0.01))
        assert time.monotonic() - t0 < 10


def test_a_server_that_never_answers_the_call_times_out_as_unavailable(grpc_support):
    import grpc

    release = threading.Event()

    def hang(request: bytes, context) -> bytes:  # the fault: a server wedged inside the call
        release.wait(30)
        return b""

    handler = grpc.method_handlers_generic_handler(
        "inference.GRPCInferenceService", {"ModelMetadata": grpc.unary_unary_rpc_method_handler(hang)}
    )
    server = grpc.server(concurrent.futures.ThreadPoolExecutor(2), handlers=[handler])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        t0 = time.monotonic()
        with pytest.raises(RemoteUnavailableError, match=r"did not answer within 0\.3 s") as info:
            Pipeline.open(options=remote(f"grpc://127.0.0.1:{port}", timeout_s=0.3))
        assert time.monotonic() - t0 < 5 and info.value.code == "REMOTE_UNAVAILABLE"
    finally:
        release.set()
        server.stop(0)


def test_the_servers_own_refusal_of_a_tensor_is_rejected_not_unavailable(mlserver: MLServer):
    with open_engine("unused.onnx", remote(mlserver.url), name=DEMO_NAME) as engine:
        assert isinstance(engine, RemoteEngine)
        # past the engine's own check (a fault injected on purpose): the server must refuse this shape
        with pytest.raises(RemoteRejectedError, match="INVALID_ARGUMENT") as info:
            engine._infer_impl({"image": np.zeros((1, 1, 128, 128), np.float32)})
        assert info.value.code == "REMOTE_REJECTED" and engine.health().status == "ok"  # the server is fine


def test_a_tensor_over_the_message_limit_is_refused_before_it_is_sent(mlserver: MLServer):
    with open_engine("unused.onnx", remote(mlserver.url, max_message_bytes=64 * 1024), name=DEMO_NAME) as engine:
        with pytest.raises(RemoteRejectedError, match="RESOURCE_EXHAUSTED"):
            engine.infer({"image": np.zeros((1, 1, 256, 256), np.float32)})  # 256 KiB of pixels


def test_the_served_models_metadata_is_checked_against_the_manifest(mlserver: MLServer):
    engine = open_engine("unused.onnx", remote(mlserver.url), name=DEMO_NAME)
    wrong = simple_manifest(name=DEMO_NAME, output=OutputSpec(name="probabilities"))  # the server says "logits"
    with pytest.raises(ManifestMismatchError, match="logits"):
        Pipeline(engine, wrong, owns_engine=True)
    assert not engine.is_active


def test_without_grpc_support_the_error_names_the_extra(monkeypatch, mlserver: MLServer):
    monkeypatch.setitem(sys.modules, "tritonclient.grpc", None)  # as if tritonclient[grpc] were not installed
    with pytest.raises(ConfigError, match=r"scanedge\[remote\]"):
        Pipeline.open(options=remote(mlserver.url))


def test_the_cli_segments_through_the_remote_engine(mlserver: MLServer, demo_series: Path, tmp_path: Path):
    import json

    from scanedge.cli import main

    files = [str(p) for p in sorted(demo_series.glob("*.dcm"))[12:15]]
    assert main(["segment", *files, "--remote", mlserver.url, "--out", str(tmp_path / "far")]) == 0
    assert main(["segment", *files, "--backend", "ort", "--out", str(tmp_path / "near")]) == 0
    far = json.loads((tmp_path / "far" / "results.json").read_text())
    near = json.loads((tmp_path / "near" / "results.json").read_text())

    def findings(report):
        return [s["findings"] for s in report["slices"]]

    assert findings(far) == findings(near)
    assert load_manifest(load_manifest_path())[0].name == DEMO_NAME
