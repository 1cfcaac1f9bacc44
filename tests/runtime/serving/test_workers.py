"""A job taken is a job answered, exactly once, whatever happens at whatever stage, and workers that die or
wedge are replaced. Raw DEALER sockets count every reply that arrives."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import numpy as np
import onnx
import pydicom
import pytest
import zmq
from onnx import numpy_helper

from scanedge.errors import RuntimeStateError
from scanedge.manifest import embed_manifest
from scanedge.runtime.console.client import Client
from scanedge.runtime.serving.server import Server
from tests.conftest import conv_model, simple_manifest
from tests.runtime.conftest import local_config, running_server
from tests.runtime.faults import KINDS, STAGES, injected
from tests.waiting import wait_until


def dealer(endpoint: str) -> zmq.Socket:
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    return sock


def segment(request_id: str, series: str, **fields) -> list[bytes]:
    header = {"version": 1, "type": "SEGMENT", "id": request_id, "series": series, "dtype": "uint8", "shape": [16, 16]}
    return [json.dumps({**header, **fields}).encode(), bytes(range(256))]


def replies(sock: zmq.Socket, count: int, timeout_s: float = 20.0) -> list[dict]:
    """Exactly ``count`` replies, then silence (a second reply to any id would show up here)."""
    got = []
    while len(got) < count:
        assert sock.poll(int(timeout_s * 1000)), f"only {len(got)} of {count} replies"
        got.append(json.loads(sock.recv_multipart()[0]))
    assert not sock.poll(300), "a reply too many"
    return got


@pytest.fixture(scope="module")
def faulty():
    with injected() as faults, running_server(job_timeout_s=1.0) as srv:
        yield srv, faults


@pytest.mark.parametrize("kind", [k for k in KINDS if k != "hang"])
@pytest.mark.parametrize("stage", STAGES)
def test_a_fault_at_any_stage_gets_exactly_one_reply_and_serving_goes_on(faulty, stage, kind):
    srv, _ = faulty
    sock = dealer(srv.endpoint)
    try:
        encoding = {"overlay_encoding": "jpeg"} if stage == "encode" else {}
        sock.send_multipart(segment("bad", f"{stage}:{kind}", **encoding))
        sock.send_multipart(segment("good", "healthy", **encoding))
        by_id = {r["id"]: r for r in replies(sock, 2)}
    finally:
        sock.close(0)
    expected = "INVALID_SLICE" if kind == "typed" else "INTERNAL"
    assert (by_id["bad"]["type"], by_id["bad"]["code"]) == ("ERROR", expected)
    assert by_id["good"]["type"] == "RESULT"
    with Client(srv.endpoint) as client:
        health = wait_until(lambda: (w := client.ping().workers).alive == w.configured == 1 and w)
    assert health.wedged == 0


def test_a_dead_worker_is_replaced_and_pong_says_so(faulty):
    srv, _ = faulty
    with Client(srv.endpoint) as client:
        before = client.ping().workers.restarted
        sock = dealer(srv.endpoint)
        try:
            sock.send_multipart(segment("kill", "infer:death"))
            assert replies(sock, 1)[0]["code"] == "INTERNAL"
        finally:
            sock.close(0)
        health = wait_until(lambda: (w := client.ping().workers).restarted == before + 1 and w.alive == 1 and w)
        assert health.configured == 1
        assert client.segment(np.zeros((16, 16), np.uint8)).mask.shape == (16, 16)


def test_internal_errors_are_logged_without_the_exception_text(faulty, caplog):
    srv, _ = faulty
    caplog.set_level(logging.DEBUG)
    sock = dealer(srv.endpoint)
    try:
        sock.send_multipart(segment("bug", "postprocess:bug"))
        assert replies(sock, 1)[0]["code"] == "INTERNAL"
    finally:
        sock.close(0)
    text = caplog.text
    assert "RuntimeError" in text and "postprocess" in text  # where it happened ...
    assert "DOE" not in text  # ... but not what the exception said (it could quote patient data)


def test_a_wedged_worker_is_set_aside_its_job_answered_and_a_replacement_serves(faulty):
    srv, faults = faulty
    sock = dealer(srv.endpoint)
    try:
        sock.send_multipart(segment("stuck", "infer:hang"))
        assert replies(sock, 1)[0]["code"] == "ENGINE_TIMEOUT"  # after job_timeout_s, not never
        sock.send_multipart(segment("next", "healthy"))
        assert replies(sock, 1)[0]["type"] == "RESULT"  # served by the replacement
        with Client(srv.endpoint) as client:
            assert client.ping().workers.wedged == 1
            faults.release.set()  # the stuck inference finally returns ...
            wait_until(lambda: client.ping().workers.wedged == 0)
        assert not sock.poll(300)  # ... and its late outcome is dropped: still one reply for "stuck"
    finally:
        faults.release.clear()
        sock.close(0)


def test_stop_with_a_wedged_worker_returns_within_the_grace_period_and_says_so():
    with injected() as faults:
        srv = Server(config=local_config(shutdown_grace_s=0.5, job_timeout_s=60.0)).start()
        sock = dealer(srv.endpoint)
        try:
            sock.send_multipart(segment("stuck", "infer:hang"))
            with Client(srv.endpoint) as client:
                wait_until(lambda: client.ping().workers.busy == 1)
            with pytest.raises(RuntimeStateError, match="stuck in inference"):
                srv.stop(timeout=10)
            reply = replies(sock, 1)[0]
            assert (reply["id"], reply["code"]) == ("stuck", "SHUTTING_DOWN")
        finally:
            faults.release.set()
            sock.close(0)


def nan_model(tmp_path: Path) -> Path:
    model = conv_model()
    weights = numpy_helper.to_array(model.graph.initializer[0]).copy()
    weights[1] = np.nan
    model.graph.initializer[0].CopyFrom(numpy_helper.from_array(weights, "w"))
    path = tmp_path / "nan.onnx"
    embed_manifest(model, simple_manifest(), path)
    onnx.checker.check_model(str(path))
    return path


def test_a_model_that_outputs_nan_gets_a_typed_error_and_the_runtime_carries_on(tmp_path):
    with running_server([nan_model(tmp_path)]) as srv:
        sock = dealer(srv.endpoint)
        try:
            for i in range(3):
                sock.send_multipart(segment(f"n{i}", "s"))
                reply = replies(sock, 1)[0]
                assert (reply["type"], reply["code"]) == ("ERROR", "NON_FINITE_OUTPUT")
        finally:
            sock.close(0)
        with Client(srv.endpoint) as client:
            assert client.ping().workers.alive == 1


def test_absurd_geometry_in_a_dicom_file_is_refused_not_propagated(server, demo_series):
    ds = pydicom.dcmread(sorted(demo_series.glob("*.dcm"))[0])
    ds.PixelSpacing = [1e200, 1e200]
    buf = io.BytesIO()
    ds.save_as(buf)
    with Client(server.endpoint) as client:
        with pytest.raises(Exception) as info:
            client.segment(buf.getvalue())
        assert info.value.code == "INVALID_SLICE" and "pixel_spacing" in str(info.value)
        assert client.segment(np.zeros((16, 16), np.uint8)).mask is not None


def test_a_model_that_fails_to_load_fails_the_start_and_leaves_nothing_open(tmp_path, conv_model_path):
    opened = []

    def factory(spec, manifest, config):
        from scanedge.engines import EngineConfig
        from scanedge.runtime.core.pipeline import Pipeline

        if len(opened) == 2:
            raise RuntimeError("the third pipeline cannot load")
        pipe = Pipeline.open(spec.path, manifest=manifest, options=EngineConfig(threads=1), config=config)
        opened.append(pipe)
        return pipe

    srv = Server([conv_model_path], config=local_config(workers=3), pipeline_factory=factory)
    with pytest.raises(RuntimeError, match="cannot load"):
        srv.start()
    assert len(opened) == 2 and not any(p.engine.is_active for p in opened)
    with pytest.raises(RuntimeStateError):
        srv.endpoint  # noqa: B018  (nothing is listening)


def test_warmup_failure_deactivates_the_engine(conv_model_path):
    from scanedge.engines import EngineConfig, OnnxRuntimeEngine

    class FailingWarmup(OnnxRuntimeEngine):
        def warmup(self, runs: int = 2) -> None:
            raise RuntimeError("warm-up failed")

    engine = FailingWarmup(conv_model_path, EngineConfig(threads=1))
    with pytest.raises(RuntimeError, match="warm-up failed"):
        engine.activate()
    assert not engine.is_active and engine._session is None
