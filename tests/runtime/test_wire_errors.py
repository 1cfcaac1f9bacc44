"""Every bad message gets a typed ERROR reply (where one is possible), a counter and a log line; the runtime
never dies and other consoles' requests are unaffected. Raw DEALER sockets send exactly the bad frames."""

import json
import time
from pathlib import Path

import numpy as np
import pytest
import zmq

from scanedge.runtime.client import Client
from scanedge.runtime.server import Server
from tests.conftest import dicom_file
from tests.runtime.conftest import local_config, slow_factory


@pytest.fixture(scope="module")
def small_limit_server():
    srv = Server(config=local_config(max_message_bytes=600_000)).start()
    yield srv
    srv.stop()


def dealer(endpoint: str) -> zmq.Socket:
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    return sock


def ask(sock: zmq.Socket, frames: list[bytes]) -> dict:
    sock.send_multipart(frames)
    assert sock.poll(10_000), "no reply"
    reply = sock.recv_multipart()
    return json.loads(reply[0])


def seg(**fields) -> bytes:
    header = {"version": 1, "type": "SEGMENT", "id": "r1", "dtype": "uint8", "shape": [8, 8], **fields}
    return json.dumps({k: v for k, v in header.items() if v is not None}).encode()


PIXELS = bytes(64)
NAN = np.full((8, 8), np.nan, "<f4").tobytes()


@pytest.mark.parametrize(
    ("frames", "code", "reply_id"),
    [
        ([seg()], "BAD_FRAMES", "r1"),  # no pixel frame
        ([seg(), PIXELS, PIXELS], "BAD_FRAMES", "r1"),  # one too many
        ([b"{not json", PIXELS], "BAD_MESSAGE", None),
        ([b"[1, 2, 3]", PIXELS], "BAD_MESSAGE", None),
        ([b"\xff\xfe\x00", PIXELS], "BAD_MESSAGE", None),
        ([seg(version=2), PIXELS], "UNSUPPORTED_VERSION", "r1"),
        ([seg(version="1"), PIXELS], "BAD_MESSAGE", "r1"),
        ([seg(type="SEGMENTS"), PIXELS], "UNKNOWN_TYPE", "r1"),
        ([seg(type="RESULT"), PIXELS], "UNKNOWN_TYPE", "r1"),
        ([seg(id=None), PIXELS], "BAD_MESSAGE", None),
        ([seg(id=""), PIXELS], "BAD_MESSAGE", None),
        ([seg(shape=[8, 9]), PIXELS], "BAD_PAYLOAD", "r1"),  # 72 bytes expected, 64 sent
        ([seg(dtype="uint16"), PIXELS], "BAD_PAYLOAD", "r1"),
        ([seg(shape=[8, 8, 2]), PIXELS], "BAD_PAYLOAD", "r1"),
        ([seg(shape="8x8"), PIXELS], "BAD_PAYLOAD", "r1"),
        ([seg(dtype="complex64"), PIXELS], "UNSUPPORTED_DTYPE", "r1"),
        ([seg(dtype="float16"), PIXELS], "UNSUPPORTED_DTYPE", "r1"),
        ([seg(dtype="float32"), NAN], "INVALID_SLICE", "r1"),
        ([seg(shape=[0, 8]), b""], "INVALID_SLICE", "r1"),
        ([seg(model="no-such-model"), PIXELS], "UNKNOWN_MODEL", "r1"),
        ([seg(encoding="dicom", dtype=None, shape=None), b"\x00" * 200], "NOT_DICOM", "r1"),
        ([seg(encoding="png"), PIXELS], "BAD_MESSAGE", "r1"),
        ([seg(deadline_ms=-5), PIXELS], "BAD_MESSAGE", "r1"),
        ([seg(outputs=["mask", "everything"]), PIXELS], "BAD_MESSAGE", "r1"),
        ([seg(overlay_options={"alpha": 7}), PIXELS], "BAD_MESSAGE", "r1"),
        ([seg(geometry={"pixel_spacing": [1]}), PIXELS], "BAD_MESSAGE", "r1"),
        ([seg(dtype="uint8", shape=[1000, 1000]), bytes(1_000_000)], "TOO_LARGE", "r1"),
        ([json.dumps({"version": 1, "type": "PING", "id": 5}).encode(), b"x"], "BAD_FRAMES", 5),
        ([b""], "BAD_MESSAGE", None),
    ],
)
def test_bad_messages_get_typed_errors_and_the_runtime_carries_on(small_limit_server, frames, code, reply_id):
    sock = dealer(small_limit_server.endpoint)
    try:
        reply = ask(sock, frames)
        assert (reply["type"], reply["status"], reply["code"], reply["id"]) == ("ERROR", "error", code, reply_id)
        assert reply["message"]
        ok = ask(sock, [seg(id="good"), PIXELS])  # the same connection keeps working
        assert ok["type"] == "RESULT" and ok["id"] == "good"
    finally:
        sock.close(0)


def test_corrupt_and_multiframe_dicom(small_limit_server):
    sock = dealer(small_limit_server.endpoint)
    ct = Path(dicom_file("MR_small.dcm")).read_bytes()
    try:
        assert ask(sock, [seg(encoding="dicom", dtype=None, shape=None), ct[: len(ct) - 700]])["code"] == "BAD_DICOM"
        multi = Path(dicom_file("emri_small.dcm")).read_bytes()
        assert ask(sock, [seg(encoding="dicom", dtype=None, shape=None), multi])["code"] == "BAD_DICOM"
        assert ask(sock, [seg(encoding="dicom", dtype=None, shape=None), ct])["type"] == "RESULT"
    finally:
        sock.close(0)


def test_errors_are_counted(small_limit_server):
    with Client(small_limit_server.endpoint) as client:
        counters = client.stats()["counters"]
    assert counters["error.BAD_PAYLOAD"] >= 1 and counters["error.UNSUPPORTED_DTYPE"] >= 1


def test_console_vanishing_mid_request_does_not_disturb_others():
    with Server(config=local_config(), pipeline_factory=slow_factory(0.3)) as srv:
        gone = dealer(srv.endpoint)
        gone.send_multipart([seg(id="orphan", series="a"), PIXELS])
        time.sleep(0.1)
        gone.close(0)  # disconnects while its request is being segmented
        with Client(srv.endpoint) as client:
            result = client.segment(np.zeros((8, 8), np.uint8), series="b")
            assert result.mask.shape == (8, 8)
            time.sleep(0.4)
            counters = client.stats()["counters"]
        assert counters["client_gone"] == 1 and counters["ok"] == 2
