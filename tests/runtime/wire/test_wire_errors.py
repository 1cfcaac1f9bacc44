"""Every bad message gets a typed ERROR reply (where one is possible), a counter and a log line; the runtime
never dies and other consoles' requests are unaffected. Raw DEALER sockets send exactly the bad frames."""

import json
from pathlib import Path

import numpy as np
import pytest
import zmq

from scanedge.runtime.console.client import Client
from scanedge.runtime.wire.protocol import WIRE_DTYPES
from tests.conftest import dicom_file
from tests.runtime.conftest import Gate, gated_factory, running_server, subscriber
from tests.waiting import wait_until


@pytest.fixture(scope="module")
def small_limit_server():
    with running_server(max_message_bytes=600_000, publish="tcp://127.0.0.1:*") as srv:
        yield srv


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
HUGE = "1" + "0" * 400  # an integer >= 1e309: no float can hold it
DIGITS = "7" * 5000  # more digits than Python's int() accepts by default


def raw(text: str) -> bytes:
    return text.encode()


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
        ([seg(overlay_options={"gamma": 1}), PIXELS], "BAD_MESSAGE", "r1"),
        ([seg(geometry={"pixel_spacing": [1]}), PIXELS], "BAD_MESSAGE", "r1"),
        ([seg(dtype="uint8", shape=[1000, 1000]), bytes(1_000_000)], "TOO_LARGE", "r1"),
        ([json.dumps({"version": 1, "type": "PING", "id": 5}).encode(), b"x"], "BAD_FRAMES", 5),
        ([b""], "BAD_MESSAGE", None),
        ([b'{"versi\xff\xffon":1,"type":"SEGMENT","id":"r1"}', PIXELS], "BAD_MESSAGE", "r1"),  # found by fuzzing
        # [G] finding 1: each of these ended the process
        (
            [raw('{"version":1,"type":"SEGMENT","id":"r1","x":' + "[" * 1000 + "]" * 1000 + "}"), PIXELS],
            "BAD_MESSAGE",
            None,
        ),
        (
            [raw('{"version":1,"type":"SEGMENT","id":"r1","x":' + "[" * 100000 + "]" * 100000 + "}"), PIXELS],
            "BAD_MESSAGE",
            None,
        ),
        ([raw('{"version":1,"type":"SEGMENT","id":"r1","x":' + DIGITS + "}"), PIXELS], "BAD_MESSAGE", "r1"),
        ([raw('{"version":1,"type":"SEGMENT","id":' + DIGITS + "}"), PIXELS], "BAD_MESSAGE", None),
        ([raw('{"version":' + DIGITS + ',"type":"SEGMENT","id":"r1"}'), PIXELS], "BAD_MESSAGE", "r1"),
        ([seg(deadline_ms=HUGE).replace(b'"' + HUGE.encode() + b'"', HUGE.encode()), PIXELS], "BAD_MESSAGE", "r1"),
        (
            [raw('{"version":1,"type":"SEGMENT","id":"r1","dtype":"uint8","shape":[8,8],"deadline_ms":1e999}'), PIXELS],
            "BAD_MESSAGE",
            "r1",
        ),
        (
            [
                raw(
                    f'{{"version":1,"type":"SEGMENT","id":"r1","dtype":"uint8","shape":[8,8],"rescale":{{"slope":{HUGE}}}}}'
                ),
                PIXELS,
            ],
            "BAD_MESSAGE",
            "r1",
        ),
        (
            [
                raw(
                    f'{{"version":1,"type":"SEGMENT","id":"r1","dtype":"uint8","shape":[8,8],"rescale":{{"intercept":-{HUGE}}}}}'
                ),
                PIXELS,
            ],
            "BAD_MESSAGE",
            "r1",
        ),
        (
            [
                raw(
                    f'{{"version":1,"type":"SEGMENT","id":"r1","dtype":"uint8","shape":[8,8],"window":{{"center":{HUGE},"width":1}}}}'
                ),
                PIXELS,
            ],
            "BAD_MESSAGE",
            "r1",
        ),
        (
            [
                raw(
                    f'{{"version":1,"type":"SEGMENT","id":"r1","dtype":"uint8","shape":[8,8],"window":{{"center":1,"width":{HUGE}}}}}'
                ),
                PIXELS,
            ],
            "BAD_MESSAGE",
            "r1",
        ),
        (
            [
                raw(
                    f'{{"version":1,"type":"SEGMENT","id":"r1","dtype":"uint8","shape":[8,8],"geometry":{{"pixel_spacing":[{HUGE},1]}}}}'
                ),
                PIXELS,
            ],
            "BAD_MESSAGE",
            "r1",
        ),
        (
            [
                raw(
                    f'{{"version":1,"type":"SEGMENT","id":"r1","dtype":"uint8","shape":[8,8],"geometry":{{"image_position":[0,0,{HUGE}]}}}}'
                ),
                PIXELS,
            ],
            "BAD_MESSAGE",
            "r1",
        ),
        (
            [
                raw(
                    f'{{"version":1,"type":"SEGMENT","id":"r1","dtype":"uint8","shape":[8,8],"geometry":{{"slice_thickness":{HUGE}}}}}'
                ),
                PIXELS,
            ],
            "BAD_MESSAGE",
            "r1",
        ),
        (
            [raw('{"version":1,"type":"SEGMENT","id":"r1","dtype":"uint8","shape":[8,' + DIGITS + "]}"), PIXELS],
            "BAD_PAYLOAD",
            "r1",
        ),
        ([seg(bits_stored=100_000_000, photometric="MONOCHROME1"), PIXELS], "BAD_MESSAGE", "r1"),
        ([seg(bits_stored=16, photometric="MONOCHROME1"), PIXELS], "INVALID_SLICE", "r1"),  # 16 bits in uint8
        (
            [raw('{"version":1,"type":"SEGMENT","id":"r1","series":"\\ud800","dtype":"uint8","shape":[8,8]}'), PIXELS],
            "BAD_MESSAGE",
            None,
        ),
        # [G] finding 2: an area of 1e200^2 mm² per pixel would be infinite
        ([seg(geometry={"pixel_spacing": [1e200, 1e200]}), PIXELS], "BAD_MESSAGE", "r1"),
    ],
)
def test_bad_messages_get_typed_errors_and_the_runtime_carries_on(small_limit_server, frames, code, reply_id):
    sock = dealer(small_limit_server.endpoint)
    try:
        reply = ask(sock, frames)
        assert (reply["type"], reply["status"], reply["code"], reply["id"]) == ("ERROR", "error", code, reply_id)
        assert reply["message"] and reply["runtime"] == small_limit_server.runtime_id
        assert {"series", "instance", "index", "sent_at", "received_at", "replied_at"} <= set(reply)
        ok = ask(sock, [seg(id="good"), PIXELS])  # the same connection keeps working
        assert ok["type"] == "RESULT" and ok["id"] == "good"
    finally:
        sock.close(0)


@pytest.mark.parametrize(
    "frames",
    [
        [seg(series="s-9", instance="i-9", index=9, sent_at=123.5, shape=[8, 9]), PIXELS],  # BAD_PAYLOAD
        [seg(series="s-9", instance="i-9", index=9, sent_at=123.5, dtype="complex64"), PIXELS],  # UNSUPPORTED_DTYPE
        [seg(series="s-9", instance="i-9", index=9, sent_at=123.5)],  # BAD_FRAMES
        [seg(series="s-9", instance="i-9", index=9, sent_at=123.5, deadline_ms=-1), PIXELS],  # BAD_MESSAGE
    ],
)
def test_every_error_reply_echoes_what_it_can_of_the_request(small_limit_server, frames):
    sock = dealer(small_limit_server.endpoint)
    try:
        reply = ask(sock, frames)
    finally:
        sock.close(0)
    assert reply["type"] == "ERROR"
    assert (reply["id"], reply["series"], reply["instance"], reply["index"], reply["sent_at"]) == (
        "r1",
        "s-9",
        "i-9",
        9,
        123.5,
    )


def test_a_lone_surrogate_in_a_published_series_cannot_stop_the_runtime(small_limit_server):
    """Before: the reply went out, then encoding the PUB topic killed the process."""
    sock = dealer(small_limit_server.endpoint)
    try:
        with subscriber(small_limit_server, b"") as sub:
            bad = ask(
                sock,
                [
                    raw('{"version":1,"type":"SEGMENT","id":"r1","series":"a\\udfff","dtype":"uint8","shape":[8,8]}'),
                    PIXELS,
                ],
            )
            assert bad["code"] == "BAD_MESSAGE"
            ok = ask(sock, [seg(id="ok", series="série-ü-雪"), PIXELS])
            assert ok["type"] == "RESULT" and ok["series"] == "série-ü-雪"
            assert sub.poll(5000)
            assert sub.recv_multipart()[0] == "série-ü-雪".encode()
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


def test_errors_are_counted_by_code():
    with running_server() as srv:
        sock = dealer(srv.endpoint)
        try:
            ask(sock, [seg(shape=[8, 9]), PIXELS])
            ask(sock, [seg(dtype="complex64"), PIXELS])
            ask(sock, [seg(dtype="complex64"), PIXELS])
        finally:
            sock.close(0)
        with Client(srv.endpoint) as client:
            counters = client.stats().counters
    assert counters["error.BAD_PAYLOAD"] == 1 and counters["error.UNSUPPORTED_DTYPE"] == 2


def test_console_vanishing_mid_request_does_not_disturb_others():
    gate = Gate()
    with running_server(pipeline_factory=gated_factory(gate)) as srv:
        gone = dealer(srv.endpoint)
        gone.send_multipart([seg(id="orphan", series="a"), PIXELS])
        gate.wait_entered()
        gone.close(0)  # disconnects while its request is being segmented
        with Client(srv.endpoint) as client:
            other = client.submit(np.zeros((8, 8), np.uint8), series="b")
            gate.open()
            assert other.result(10).mask.shape == (8, 8)
            counters = wait_until(lambda: (c := client.stats().counters)["ok"] == 2 and c)
        assert counters["client_gone"] == 1


def test_fifty_vanished_consoles_are_all_counted_and_their_queued_work_dropped():
    gate = Gate()
    with running_server(pipeline_factory=gated_factory(gate)) as srv, Client(srv.endpoint) as client:
        socks = [dealer(srv.endpoint) for _ in range(50)]
        for i, sock in enumerate(socks):
            sock.send_multipart([seg(id=f"v{i}", series=f"s{i}"), PIXELS])
        wait_until(lambda: client.ping().queue_depth == 49, what="one running, 49 queued")
        for sock in socks:
            sock.close(0)
        wait_until(lambda: client.ping().queue_depth == 0, what="queued work of vanished consoles dropped")
        gate.open()
        counters = wait_until(lambda: (c := client.stats().counters)["client_gone"] == 50 and c)
        assert counters.get("ok", 0) == 1  # only the one already running was computed
        assert client.ping().in_flight_bytes == 0


@pytest.mark.parametrize("dtype", WIRE_DTYPES)
def test_every_wire_dtype_is_accepted(small_limit_server, dtype):
    pixels = np.arange(64, dtype=dtype).reshape(8, 8)
    with Client(small_limit_server.endpoint) as client:
        assert client.segment(pixels, outputs=("mask",)).mask.shape == (8, 8)
