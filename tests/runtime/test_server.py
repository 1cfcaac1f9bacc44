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
    ExpiredError,
    ImageTooLargeError,
    InvalidSliceError,
    NotDicomError,
    RequestTimeoutError,
    RuntimeUnavailableError,
    ScanedgeError,
    ShuttingDownError,
    SupersededError,
    UnknownModelError,
)
from scanedge.imaging.dicom import slices_from_dicom
from scanedge.imaging.overlay import OverlayOptions
from scanedge.runtime.client import AsyncClient, Client, ClientConfig
from scanedge.runtime.pipeline import Pipeline
from scanedge.runtime.security import CurveClientKeys, CurveServerKeys, generate_keys
from scanedge.runtime.server import Server, ServerConfig
from tests.conftest import dicom_file
from tests.runtime.conftest import local_config, slow_factory


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
                "total",
            }


def test_large_real_mr_and_jpeg_overlay_over_the_wire(server):
    data = Path(dicom_file("MR2_UNCR.dcm")).read_bytes()  # 1024x1024
    with Pipeline.open() as pipe, Client(server.endpoint) as client:
        local = pipe.run(data)
        remote = client.segment(data, overlay_encoding="jpeg", overlay_options=OverlayOptions(contours=True))
    np.testing.assert_array_equal(remote.mask, local.mask)
    assert remote.overlay is None and remote.overlay_encoded[:2] == b"\xff\xd8"


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
    assert pong["type"] == "PONG" and pong["protocols"] == [1] and pong["default_model"] == "ms-lesion-demo"
    assert pong["models"][0]["classes"] == ["background", "lesion"] and pong["engine"] == "ort"
    assert result.mask.shape == (256, 256)
    assert stats["counters"]["ok"] >= 1
    hist = stats["histograms"]["ms-lesion-demo"]["latency_ms"]
    assert hist["count"] >= 1 and hist["p50"] > 0


def test_results_are_published_by_series_to_viewers(server, demo_series):
    ctx = zmq.Context.instance()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"series-A")
    sub.connect(server.publish_endpoint)
    time.sleep(0.3)  # slow joiner: let the subscription reach the PUB
    data = demo_files(demo_series, 1)[0].read_bytes()
    with Client(server.endpoint) as client:
        client.segment(data, series="series-B")  # not subscribed
        remote = client.segment(data, series="series-A")
    assert sub.poll(5000)
    topic, header, mask, overlay = sub.recv_multipart()
    sub.close(0)
    head = json.loads(header)
    assert topic == b"series-A" and head["type"] == "RESULT" and head["series"] == "series-A"
    np.testing.assert_array_equal(np.frombuffer(mask, np.uint8).reshape(256, 256), remote.mask)
    assert len(overlay) == 256 * 256 * 3


@pytest.mark.parametrize("slow_server", [{}], indirect=True)
def test_newer_slice_of_a_series_supersedes_the_waiting_one(slow_server, demo_series):
    files = demo_files(demo_series, 4)
    with Client(slow_server.endpoint) as client:
        first = client.submit(files[0].read_bytes(), series="s1")
        time.sleep(0.1)  # first is now running
        waiting = [client.submit(p.read_bytes(), series="s1") for p in files[1:]]
        other = client.submit(files[0].read_bytes(), series="s2")  # another series is not affected
        assert first.result(10).mask is not None
        for f in waiting[:-1]:
            with pytest.raises(SupersededError):
                f.result(10)
        assert waiting[-1].result(10).instance == pydicom.dcmread(files[-1]).SOPInstanceUID
        assert other.result(10).series == "s2"
        assert client.stats()["counters"]["superseded"] == 2


@pytest.mark.parametrize("slow_server", [{}], indirect=True)
def test_request_past_its_deadline_is_answered_expired_without_inference(slow_server, demo_series):
    data = demo_files(demo_series, 1)[0].read_bytes()
    with Client(slow_server.endpoint) as client:
        running = client.submit(data, series="a")
        time.sleep(0.05)
        t0 = time.monotonic()
        late = client.submit(data, series="b", deadline_ms=50)
        with pytest.raises(ExpiredError, match="deadline"):
            late.result(10)
        answered_after = time.monotonic() - t0
        assert not running.done() or answered_after < 0.25  # answered by the sweep, not after inference
        running.result(10)
        counters = client.stats()["counters"]
    assert counters["expired"] == 1 and counters["ok"] == 1


@pytest.mark.parametrize("slow_server", [{"max_inflight_bytes": 200_000}], indirect=True)
def test_busy_when_the_in_flight_byte_cap_would_be_passed(slow_server):
    img = np.zeros((256, 256), np.int16)  # 131 072 bytes: one fits under the cap, two do not
    with Client(slow_server.endpoint) as client:
        first = client.submit(img, series="a")
        with pytest.raises(BusyError, match="cap"):
            client.segment(img, series="b")
        first.result(10)
        assert client.segment(img, series="c").mask is not None  # capacity is back once answered


@pytest.mark.parametrize("slow_server", [{}], indirect=True)
def test_stop_answers_everything_in_flight_then_refuses_new_work(slow_server, demo_series):
    data = demo_files(demo_series, 1)[0].read_bytes()
    with Client(slow_server.endpoint, ClientConfig(timeout_s=10)) as client:
        futures = [client.submit(data, series=f"s{i}") for i in range(3)]
        time.sleep(0.1)
        stopper = threading.Thread(target=slow_server.stop)
        stopper.start()
        time.sleep(0.05)
        refused = client.submit(data, series="late")
        assert all(f.result(10).mask is not None for f in futures)
        with pytest.raises(ShuttingDownError):
            refused.result(10)
        stopper.join(10)
    assert not stopper.is_alive()


def test_client_reconnects_across_a_runtime_restart_and_delivers_once(demo_series):
    data = demo_files(demo_series, 1)[0].read_bytes()
    first = Server(config=local_config()).start()
    endpoint = first.endpoint  # a fixed port for the restarted runtime
    config = ClientConfig(timeout_s=30, heartbeat_s=0.2, liveness=3, retries=20)
    with Client(endpoint, config) as client:
        assert client.segment(data).mask is not None
        first.stop()
        pending = client.submit(data, series="x")
        time.sleep(1.0)  # the runtime is down: the client notices the silence and reconnects
        second = Server(config=local_config(bind=endpoint)).start()
        try:
            result = pending.result(30)
            assert result.mask is not None and client.reconnects >= 1
        finally:
            second.stop()


def test_a_reply_received_twice_is_delivered_once():
    """A peer answering the same id twice (as a restarted runtime may) must not confuse the client."""
    ctx = zmq.Context.instance()
    router = ctx.socket(zmq.ROUTER)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    got: list = []

    def peer():
        ident, header = router.recv_multipart()
        request_id = json.loads(header)["id"]
        reply = {
            "version": 1,
            "type": "RESULT",
            "id": request_id,
            "status": "ok",
            "code": None,
            "frames": [],
            "findings": [],
        }
        for _ in range(2):
            router.send_multipart([ident, json.dumps(reply).encode()])
        ident, header = router.recv_multipart()  # a second request on the same connection still works
        router.send_multipart([ident, json.dumps({**reply, "id": json.loads(header)["id"], "type": "PONG"}).encode()])

    t = threading.Thread(target=peer)
    t.start()
    with Client(f"tcp://127.0.0.1:{port}") as client:
        future = client.request("STATS")  # any request id works for the peer
        got.append(future.result(5))
        got.append(client.ping(timeout=5))
    t.join(5)
    router.close(0)
    assert got[0].id != got[1]["id"] and got[1]["type"] == "PONG"  # the duplicate was dropped, not misdelivered


def test_curve_allows_listed_clients_and_ignores_others(tmp_path, demo_series):
    keys = tmp_path / "keys"
    clients = tmp_path / "allowed"
    _, server_secret = generate_keys(keys, "server")
    allowed_public, allowed_secret = generate_keys(keys, "console-1")
    _, stranger_secret = generate_keys(keys, "stranger")
    clients.mkdir()
    (clients / allowed_public.name).write_bytes(allowed_public.read_bytes())
    config = local_config(curve=CurveServerKeys(server_secret, clients))
    data = demo_files(demo_series, 1)[0].read_bytes()
    with Server(config=config) as srv:
        server_public = keys / "server.key"
        stranger = Client(
            srv.endpoint, ClientConfig(timeout_s=1.5, retries=0, curve=CurveClientKeys(stranger_secret, server_public))
        )
        with pytest.raises((RequestTimeoutError, RuntimeUnavailableError)):
            stranger.segment(data)  # the handshake is refused: nothing ever comes back
        stranger.close()
        with Client(srv.endpoint, ClientConfig(curve=CurveClientKeys(allowed_secret, server_public))) as friend:
            assert friend.segment(data).mask is not None
        plain = Client(srv.endpoint, ClientConfig(timeout_s=1.0, retries=0))
        with pytest.raises((RequestTimeoutError, RuntimeUnavailableError)):
            plain.ping()  # an unencrypted client cannot talk to a CURVE server at all
        plain.close()


def test_non_loopback_bind_needs_curve_or_insecure():
    with pytest.raises(ValueError, match="CurveZMQ"):
        ServerConfig(bind="tcp://0.0.0.0:5555")
    with pytest.raises(ValueError, match="CurveZMQ"):
        ServerConfig(publish="tcp://*:5556")
    assert ServerConfig(bind="tcp://0.0.0.0:5555", insecure=True).insecure
    assert ServerConfig(bind="tcp://localhost:5555").bind


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
    with Server(config=local_config(limits=__import__("scanedge").SliceLimits(max_pixels=100 * 100))) as srv:
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


def test_offered_far_more_than_capacity_memory_and_latency_stay_bounded(demo_series):
    """3x capacity on one series: served slices wait at most ~one slice, the rest are superseded."""
    data = demo_files(demo_series, 1)[0].read_bytes()
    with Server(config=local_config(), pipeline_factory=slow_factory(0.1)) as srv, Client(srv.endpoint) as client:
        futures = []
        for _ in range(30):  # 30 slices/s against ~10/s capacity
            futures.append(client.submit(data, series="one"))
            time.sleep(1 / 30)
        served, superseded = [], 0
        for f in futures:
            try:
                served.append(f.result(10))
            except SupersededError:
                superseded += 1
        assert superseded >= 15 and len(served) >= 5
        assert max(r.timings_ms["queue"] for r in served) < 2 * 100 + 50  # never more than ~one slice of wait
        assert client.ping()["in_flight_bytes"] == 0 and client.ping()["queue_depth"] == 0


def test_several_models_are_served_by_name(conv_model_path, demo_series):
    from scanedge.runtime.server import ModelSpec

    data = demo_files(demo_series, 1)[0].read_bytes()
    with Server(
        [ModelSpec(Path(__file__).parents[2] / "scanedge/models/ms_lesion_demo.onnx"), ModelSpec(conv_model_path)],
        local_config(),
    ) as srv:
        with Client(srv.endpoint) as client:
            pong = client.ping()
            assert [m["name"] for m in pong["models"]] == ["ms-lesion-demo", "test-model"]
            assert pong["models"][0]["onnx_sha256"] and pong["models"][0]["precision"] == "fp32"
            assert client.segment(data).model == "ms-lesion-demo@1.0.0"  # the first is the default
            other = client.segment(data, model="test-model")
            assert other.model == "test-model@0.0.1" and other.findings[0].name == "finding"


def test_an_address_in_use_is_a_clear_startup_error(server):
    with pytest.raises(ValueError, match="cannot listen on"):
        Server(config=local_config(bind=server.endpoint)).start()
    with Client(server.endpoint) as client:  # the running one is unaffected
        assert client.ping()["type"] == "PONG"
