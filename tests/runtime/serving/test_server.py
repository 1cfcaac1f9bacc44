import json
import logging
import threading
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
import zmq

from scanedge.errors import (
    BusyError,
    ConfigError,
    ExpiredError,
    ImageTooLargeError,
    InvalidSliceError,
    NotDicomError,
    ScanedgeError,
    ShuttingDownError,
    SupersededError,
    UnknownModelError,
)
from scanedge.imaging.dicom import slices_from_dicom
from scanedge.imaging.overlay import OverlayConfig
from scanedge.imaging.slices import SliceLimits
from scanedge.runtime.console.client import AsyncClient, Client, ClientConfig
from scanedge.runtime.core.model_spec import ModelSpec
from scanedge.runtime.core.pipeline import Pipeline
from scanedge.runtime.serving.server import Server, ServerConfig
from scanedge.runtime.wire.protocol import decode_reply
from tests.conftest import dicom_file
from tests.runtime.conftest import Gate, gated_factory, local_config, running_server, subscriber
from tests.waiting import wait_until


def demo_files(demo_series: Path, n: int = 4) -> list[Path]:
    return sorted(demo_series.glob("*.dcm"))[10 : 10 + n]


def test_round_trip_equals_the_in_process_pipeline_bit_for_bit(server, demo_series):
    files = demo_files(demo_series)
    with Pipeline.open() as pipe, Client(server.endpoint) as client:
        for path in files:
            data = path.read_bytes()
            local = pipe.run(data)
            (s,) = slices_from_dicom(data)
            for remote in (
                client.segment(data),  # DICOM bytes on the wire
                client.segment(s, outputs=("mask", "overlay", "probabilities")),  # raw pixels + geometry
            ):
                np.testing.assert_array_equal(remote.mask, local.mask)
                np.testing.assert_array_equal(remote.overlay, local.overlay)
                assert remote.findings == local.findings
                assert remote.series == s.identity.series_uid and remote.model == "ms-lesion-demo@1.0.0"
            np.testing.assert_array_equal(remote.probabilities, local.probabilities)
            assert set(remote.timings_ms) == {
                "queue",
                "decode",
                "preprocess",
                "infer",
                "postprocess",
                "overlay",
                "encode",
                "series",
                "total",
            }
            assert remote.timings_ms["encode"] == 0.0  # raw overlay: nothing is encoded (spec section 4)


def test_large_real_mr_and_jpeg_overlay_over_the_wire(server):
    data = Path(dicom_file("MR2_UNCR.dcm")).read_bytes()  # 1024x1024
    with Pipeline.open() as pipe, Client(server.endpoint) as client:
        local = pipe.run(data)
        remote = client.segment(data, overlay_encoding="jpeg", overlay_options=OverlayConfig(contours=True))
        no_overlay = client.segment(data, outputs=("mask",))
    np.testing.assert_array_equal(remote.mask, local.mask)
    assert remote.overlay is None and remote.overlay_encoded[:2] == b"\xff\xd8"
    assert remote.timings_ms["encode"] > 0 and no_overlay.timings_ms["encode"] == 0.0


def test_many_requests_in_flight_on_one_connection(server, demo_series):
    files = sorted(demo_series.glob("*.dcm"))
    with Pipeline.open() as pipe, Client(server.endpoint) as client:
        futures = [client.submit(p.read_bytes(), outputs=("mask",)) for p in files]  # no series: none superseded
        results = [f.result(timeout=60) for f in futures]
        for path, r in zip(files, results):
            np.testing.assert_array_equal(r.mask, pipe.run(path.read_bytes(), overlay=False).mask)
    assert len({r.id for r in results}) == len(files)


def test_ping_stats_and_asyncio_client(server, demo_series):
    import asyncio

    async def go():
        async with AsyncClient(server.endpoint) as client:
            pong = await client.ping()
            result = await client.segment(demo_files(demo_series, 1)[0].read_bytes())
            return pong, result, await client.stats()

    pong, result, stats = asyncio.run(go())
    assert pong.protocols == (1,) and pong.default_model == "ms-lesion-demo" and pong.engine == "ort"
    assert pong.models[0].classes == ("background", "lesion")
    assert pong.models[0].activation == "softmax" and pong.models[0].output_kind == "logits"
    assert pong.runtime == server.runtime_id and pong.workers.configured == pong.workers.alive == 1
    assert pong.limits.max_pixels == SliceLimits().max_pixels and pong.limits.max_message_bytes == 64 * 1024 * 1024
    assert result.mask.shape == (256, 256) and result.header.runtime == server.runtime_id
    assert stats.counters["ok"] == 1 and stats.counters["received"] == 4  # greeting PING, PING, SEGMENT, STATS
    hist = stats.histograms["ms-lesion-demo"]["latency_ms"]
    assert hist.count == 1 and hist.p50 > 0 and sum(hist.counts) == 1


def test_results_are_published_by_series_to_viewers_unless_asked_not_to(server, demo_series):
    data = demo_files(demo_series, 1)[0].read_bytes()
    with subscriber(server, b"series-A") as sub, Client(server.endpoint) as client:
        client.segment(data, series="series-B")  # not subscribed
        client.segment(data, series="series-A", publish=False)  # asked not to be published
        remote = client.segment(data, series="series-A")
        assert sub.poll(5000)
        topic, header, mask, overlay = sub.recv_multipart()
        assert not sub.poll(200)  # exactly one message reached this subscriber
    head = decode_reply(header)
    assert topic == b"series-A" and head.series == "series-A" and head.id == remote.id
    np.testing.assert_array_equal(np.frombuffer(mask, np.uint8).reshape(256, 256), remote.mask)
    assert len(overlay) == 256 * 256 * 3


def test_newer_slice_of_a_series_supersedes_the_waiting_one(demo_series):
    files = demo_files(demo_series, 4)
    gate = Gate()
    with running_server(pipeline_factory=gated_factory(gate)) as srv, Client(srv.endpoint) as client:
        first = client.submit(files[0].read_bytes(), series="s1")
        gate.wait_entered()  # the first slice is now running, held at the gate
        waiting = [client.submit(p.read_bytes(), series="s1") for p in files[1:]]
        other = client.submit(files[0].read_bytes(), series="s2")  # another series is not affected
        for f in waiting[:-1]:
            with pytest.raises(SupersededError):
                f.result(10)  # answered while the first is still held: superseding needs no worker
        assert not first.done()
        gate.open()
        assert first.result(10).mask is not None
        assert waiting[-1].result(10).instance == pydicom.dcmread(files[-1]).SOPInstanceUID
        assert other.result(10).series == "s2"
        counters = client.stats().counters
    assert counters["superseded"] == 2 and counters["ok"] == 3


def test_request_past_its_deadline_is_answered_expired_by_the_sweep_without_inference(demo_series):
    data = demo_files(demo_series, 1)[0].read_bytes()
    gate = Gate()
    with running_server(pipeline_factory=gated_factory(gate)) as srv, Client(srv.endpoint) as client:
        running = client.submit(data, series="a")
        gate.wait_entered()
        late = client.submit(data, series="b", deadline_ms=50)
        with pytest.raises(ExpiredError, match="deadline"):
            late.result(10)
        assert not running.done()  # answered by the sweep while the only worker is still busy
        gate.open()
        running.result(10)
        counters = client.stats().counters
    assert counters["expired"] == 1 and counters["ok"] == 1 and gate.entered_count == 1


def test_request_that_expires_while_queued_is_answered_by_the_worker(demo_series):
    """A sweep interval longer than the deadline: the worker finds it expired and skips inference."""
    data = demo_files(demo_series, 1)[0].read_bytes()
    gate = Gate()
    with (
        running_server(pipeline_factory=gated_factory(gate), sweep_interval_s=30.0) as srv,
        Client(srv.endpoint) as client,
    ):
        running = client.submit(data, series="a")
        gate.wait_entered()
        late = client.submit(data, series="b", deadline_ms=20)
        wait_until(lambda: client.ping().queue_depth == 1)
        queued_at = time.monotonic()
        wait_until(lambda: time.monotonic() > queued_at + 0.05, what="the 20 ms deadline to pass")
        gate.open()
        running.result(10)
        with pytest.raises(ExpiredError, match="in the queue"):
            late.result(10)
    assert gate.entered_count == 1  # the expired slice never reached the model


def test_busy_when_the_in_flight_byte_cap_would_be_passed():
    img = np.zeros((256, 256), np.int16)  # 131 072 bytes: one fits under the cap, two do not
    gate = Gate()
    with (
        running_server(pipeline_factory=gated_factory(gate), max_inflight_bytes=200_000) as srv,
        Client(srv.endpoint) as client,
    ):
        first = client.submit(img, series="a")
        gate.wait_entered()
        with pytest.raises(BusyError, match="cap"):
            client.segment(img, series="b")
        gate.open()
        first.result(10)
        assert client.segment(img, series="c").mask is not None  # capacity is back once answered
        assert client.ping().in_flight_bytes == 0


def test_stop_answers_everything_in_flight_then_refuses_new_work(demo_series):
    data = demo_files(demo_series, 1)[0].read_bytes()
    gate = Gate()
    srv = Server(config=local_config(), pipeline_factory=gated_factory(gate)).start()
    with Client(srv.endpoint, ClientConfig(timeout_s=10)) as client:
        futures = [client.submit(data, series=f"s{i}") for i in range(3)]
        gate.wait_entered()
        wait_until(lambda: client.ping().queue_depth == 2, what="all three accepted: one running, two queued")
        stopper = threading.Thread(target=srv.stop)
        stopper.start()
        wait_until(lambda: srv._stop.is_set())
        refused = client.submit(data, series="late")
        with pytest.raises(ShuttingDownError):
            refused.result(10)
        gate.open()
        assert all(f.result(10).mask is not None for f in futures)
        stopper.join(10)
    assert not stopper.is_alive()


def test_non_loopback_bind_needs_curve_or_insecure():
    with pytest.raises(ConfigError, match="CurveZMQ"):
        ServerConfig(bind="tcp://0.0.0.0:5555")
    with pytest.raises(ConfigError, match="CurveZMQ"):
        ServerConfig(publish="tcp://*:5556")
    assert ServerConfig(bind="tcp://0.0.0.0:5555", insecure=True).insecure
    assert ServerConfig(bind="tcp://localhost:5555").bind


@pytest.mark.parametrize(
    "bind",
    [
        "tcp://127.0.0.1:1;0.0.0.0:5555",  # libzmq's SOURCE;ADDRESS: would listen on every interface
        "tcp://127.0.0.1;0.0.0.0:5555",
        "tcp://127.0.0.1:5555 ",
        "localhost:5555",
        "tcp://127.0.0.1",
        "tcp://127.0.0.1:99999",
        "udp://127.0.0.1:5555",
        "tcp://[::1:5555",
    ],
)
def test_only_plain_endpoints_are_accepted(bind):
    with pytest.raises(ConfigError, match="endpoint"):
        ServerConfig(bind=bind)
    with pytest.raises(ConfigError, match="endpoint"):
        ServerConfig(bind=bind, insecure=True)  # refused for its form, not for where it points


def test_a_host_port_without_scheme_suggests_tcp():
    with pytest.raises(ConfigError, match="did you mean tcp://localhost:5568"):
        ServerConfig(bind="localhost:5568")


def test_errors_come_back_as_the_same_exception_classes(server):
    with Client(server.endpoint) as client:
        with pytest.raises(NotDicomError):
            client.segment(b"this is not a DICOM object at all")
        with pytest.raises(InvalidSliceError, match="NaN"):
            client.segment(np.full((64, 64), np.nan, np.float32))
        with pytest.raises(UnknownModelError, match="ms-lesion-demo"):
            client.segment(np.zeros((64, 64), np.uint8), model="brain-tumour")
        assert client.segment(np.zeros((64, 64), np.uint8)).mask.shape == (64, 64)


def test_image_limit_is_enforced_before_queueing():
    with running_server(limits=SliceLimits(max_pixels=100 * 100)) as srv:
        with Client(srv.endpoint) as client, pytest.raises(ImageTooLargeError):
            client.segment(np.zeros((200, 200), np.uint8))


def test_logs_never_contain_patient_identifiers(server, caplog, demo_series):
    ds = pydicom.dcmread(demo_files(demo_series, 1)[0])
    ds.PatientName, ds.PatientID, ds.PatientBirthDate = "DOE^JANE", "PID-998877", "19700101"
    import io

    buf = io.BytesIO()
    ds.save_as(buf)
    good = buf.getvalue()
    ds.Rows = 999  # inconsistent with the pixel data: an error that gets logged
    buf = io.BytesIO()
    ds.save_as(buf)
    bad = buf.getvalue()
    caplog.set_level(logging.DEBUG)
    with Client(server.endpoint) as client:
        client.segment(good, series=ds.SeriesInstanceUID)
        with pytest.raises(ScanedgeError):
            client.segment(bad)
    text = caplog.text + json.dumps([r.getMessage() for r in caplog.records])
    assert "failed" in text or "rejected" in text  # the error was logged ...
    for secret in ("DOE", "JANE", "PID-998877", "19700101"):
        assert secret not in text  # ... without who it was


def test_offered_far_more_than_capacity_latency_stays_bounded(demo_series):
    """3x capacity on one series: served slices wait at most ~one slice, the rest are superseded."""
    from tests.runtime.conftest import slow_factory

    data = demo_files(demo_series, 1)[0].read_bytes()
    with running_server(pipeline_factory=slow_factory(0.1)) as srv, Client(srv.endpoint) as client:
        futures = []
        for _ in range(30):  # 30 slices/s against ~10/s capacity: pacing is what this test is about
            futures.append(client.submit(data, series="one"))
            time.sleep(1 / 30)
        served, superseded = [], 0
        for f in futures:
            try:
                served.append(f.result(10))
            except SupersededError:
                superseded += 1
        assert superseded + len(served) == 30 and superseded >= 10 and len(served) >= 5
        assert max(r.timings_ms["queue"] for r in served) < 2 * 100 + 50  # never more than ~one slice of wait
        pong = client.ping()
        assert pong.in_flight_bytes == 0 and pong.queue_depth == 0


def test_several_models_are_served_by_name(conv_model_path, demo_series):
    data = demo_files(demo_series, 1)[0].read_bytes()
    demo = Path(__file__).parents[3] / "scanedge/models/ms_lesion_demo.onnx"
    with running_server([ModelSpec(demo), ModelSpec(conv_model_path)]) as srv, Client(srv.endpoint) as client:
        pong = client.ping()
        assert [m.name for m in pong.models] == ["ms-lesion-demo", "test-model"]
        assert pong.models[0].onnx_sha256 and pong.models[0].precision == "fp32"
        assert client.segment(data).model == "ms-lesion-demo@1.0.0"  # the first is the default
        other = client.segment(data, model="test-model")
        assert other.model == "test-model@0.0.1" and other.findings[0].name == "finding"


def test_an_address_in_use_is_a_clear_startup_error(server):
    with pytest.raises(ConfigError, match="cannot listen on"):
        Server(config=local_config(bind=server.endpoint)).start()
    with Client(server.endpoint) as client:  # the running one is unaffected
        assert client.ping().runtime == server.runtime_id


def test_two_workers_serve_in_parallel_and_each_request_once(demo_series):
    data = demo_files(demo_series, 1)[0].read_bytes()
    gate = Gate()
    with running_server(pipeline_factory=gated_factory(gate), workers=2) as srv, Client(srv.endpoint) as client:
        a = client.submit(data, series="a")
        b = client.submit(data, series="b")
        wait_until(lambda: gate.entered_count == 2, what="both workers inside inference at once")
        assert client.ping().workers.busy == 2
        gate.open()
        assert a.result(10).series == "a" and b.result(10).series == "b"
        futures = [client.submit(data) for _ in range(20)]
        assert all(f.result(30).mask is not None for f in futures)
        counters = client.stats().counters
    assert counters["ok"] == 22 and counters["received"] == 25


def test_zmq_frames_for_a_raw_console_are_unchanged_by_a_python_client(server):
    """The Python client and a raw console see the same RESULT header (one builder, one parser)."""
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(server.endpoint)
    try:
        header = {"version": 1, "type": "SEGMENT", "id": 7, "dtype": "uint8", "shape": [8, 8], "outputs": ["mask"]}
        sock.send_multipart([json.dumps(header).encode(), bytes(64)])
        assert sock.poll(10_000)
        head, mask = sock.recv_multipart()
    finally:
        sock.close(0)
    raw = json.loads(head)
    parsed = decode_reply(head)
    assert raw["id"] == parsed.id == 7 and raw["frames"] == [
        {"name": "mask", "encoding": "raw", "dtype": "uint8", "shape": [8, 8]}
    ]
    assert raw["version"] == 1 and raw["runtime"] == server.runtime_id and len(mask) == 64
