"""`scanedge serve` with a worker stuck inside inference: SIGTERM still ends it within the grace period.

The stuck inference is real: an ONNX model whose Loop runs as many MatMuls as its input's largest value
times a million (zeros, as in warm-up, run none; a real slice runs for hours).
"""

from __future__ import annotations

import json
import signal
import time

import numpy as np
import onnx
import pytest
import zmq
from onnx import TensorProto, helper, numpy_helper

from scanedge.manifest import embed_manifest
from tests.conftest import simple_manifest
from tests.runtime.processes import dealer, free_port, runtime_log, spawn_runtime
from tests.waiting import wait_until


def hanging_model() -> onnx.ModelProto:
    w = numpy_helper.from_array(np.stack([-np.ones(1), np.ones(1)]).astype(np.float32).reshape(2, 1, 1, 1), "w")
    k = numpy_helper.from_array(np.array([1e6], np.float32), "k")
    shape = numpy_helper.from_array(np.array([256, 256], np.int64), "shape2d")
    zero = numpy_helper.from_array(np.array(0.0, np.float32), "zero")
    cond = numpy_helper.from_array(np.array(True), "cond")
    body = helper.make_graph(
        [
            helper.make_node("MatMul", ["v_in", "v_in"], ["mm"]),
            helper.make_node("Tanh", ["mm"], ["v_out"]),
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
        ],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("v_in", TensorProto.FLOAT, [256, 256]),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("v_out", TensorProto.FLOAT, [256, 256]),
        ],
    )
    nodes = [
        helper.make_node("Conv", ["image", "w"], ["conv"], kernel_shape=[1, 1]),
        helper.make_node("ReduceMax", ["image"], ["mx"], keepdims=0),
        helper.make_node("Mul", ["mx", "k"], ["scaled"]),
        helper.make_node("Floor", ["scaled"], ["fl"]),
        helper.make_node("Relu", ["fl"], ["pos"]),
        helper.make_node("Cast", ["pos"], ["m1"], to=TensorProto.INT64),
        helper.make_node("Squeeze", ["m1"], ["m"]),
        helper.make_node("Reshape", ["image", "shape2d"], ["v0"]),
        helper.make_node("Loop", ["m", "cond", "v0"], ["vfinal"], body=body),
        helper.make_node("ReduceSum", ["vfinal"], ["s"], keepdims=0),
        helper.make_node("Mul", ["s", "zero"], ["z"]),
        helper.make_node("Add", ["conv", "z"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "hang",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 1, 256, 256])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 2, 256, 256])],
        initializer=[w, k, shape, zero, cond],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def ask(sock: zmq.Socket, header: dict, *payload: bytes) -> dict:
    sock.send_multipart([json.dumps(header).encode(), *payload])
    assert sock.poll(30_000), "no reply"
    return json.loads(sock.recv_multipart()[0])


@pytest.mark.slow
def test_sigterm_with_a_worker_stuck_in_inference_exits_within_the_grace_period(tmp_path):
    model = tmp_path / "hang.onnx"
    embed_manifest(hanging_model(), simple_manifest(), model)
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    proc = spawn_runtime(endpoint, "--model", str(model), "--shutdown-grace", "1")
    sock = dealer(endpoint)
    try:
        assert ask(sock, {"version": 1, "type": "PING", "id": "p0"})["type"] == "PONG"
        pixels = np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8).tobytes()
        sock.send_multipart(
            [
                json.dumps(
                    {
                        "version": 1,
                        "type": "SEGMENT",
                        "id": "stuck",
                        "dtype": "uint8",
                        "shape": [64, 64],
                        "outputs": ["mask"],
                    }
                ).encode(),
                pixels,
            ]
        )
        wait_until(lambda: ask(sock, {"version": 1, "type": "PING", "id": "p"})["workers"]["busy"] == 1)
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(30)
        took = time.monotonic() - started
        assert sock.poll(5000)
        reply = json.loads(sock.recv_multipart()[0])
    finally:
        sock.close(0)
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert (reply["id"], reply["code"]) == ("stuck", "SHUTTING_DOWN")
    assert code == 1 and took < 10  # the 1 s grace, then out, saying why
    assert "stuck in inference" in runtime_log(proc)
