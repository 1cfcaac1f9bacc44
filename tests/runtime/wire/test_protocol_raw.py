"""A console written only from docs/protocol.md: raw pyzmq frames, json and struct, no scanedge imports.

The runtime is the real `scanedge serve` command in a subprocess. If this test needs to import scanedge
to pass, the protocol document is incomplete.
"""

import json
import signal
import struct

import pytest
import zmq

from tests.runtime.processes import start_runtime, stop_runtime


@pytest.fixture(scope="module")
def runtime():
    proc, sock, pong = start_runtime()
    yield proc, sock, pong
    stop_runtime(proc, sock)


def test_pong_describes_the_runtime(runtime):
    _, _, pong = runtime
    assert pong["type"] == "PONG" and pong["id"] == "hello" and 1 in pong["protocols"]
    model = pong["models"][0]
    assert model["name"] == pong["default_model"] and model["classes"][0] == "background"


def test_worked_example_of_section_11(runtime):
    _, sock, _ = runtime
    header = {
        "version": 1,
        "type": "SEGMENT",
        "id": "c1-42",
        "series": "1.2.3",
        "index": 7,
        "encoding": "raw",
        "dtype": "int16",
        "shape": [2, 3],
        "geometry": {"pixel_spacing": [0.5, 0.5]},
        "deadline_ms": 100,
        "outputs": ["mask"],
    }
    pixels = struct.pack("<6h", 0, 100, 200, 300, 400, 500)
    assert pixels.hex(" ") == "00 00 64 00 c8 00 2c 01 90 01 f4 01"
    sock.send_multipart([json.dumps(header).encode(), pixels])
    assert sock.poll(10_000)
    head, *frames = sock.recv_multipart()
    reply = json.loads(head)
    assert reply["type"] == "RESULT" and reply["status"] == "ok" and reply["code"] is None
    assert (reply["id"], reply["series"], reply["index"]) == ("c1-42", "1.2.3", 7)
    assert reply["frames"] == [{"name": "mask", "encoding": "raw", "dtype": "uint8", "shape": [2, 3]}]
    assert len(frames) == 1 and len(frames[0]) == 6
    assert set(frames[0]) <= {0, 1}
    lesion = reply["findings"][0]
    assert lesion["name"] == "lesion" and lesion["area_mm2"] == lesion["pixels"] * 0.25
    assert reply["timings_ms"]["total"] >= reply["timings_ms"]["infer"] > 0


def test_full_slice_with_overlay_and_probabilities(runtime):
    _, sock, pong = runtime
    rows, cols = 300, 200
    pixels = bytes(range(256)) * (rows * cols // 256) + bytes(rows * cols % 256)
    header = {
        "version": 1,
        "type": "SEGMENT",
        "id": 99,
        "dtype": "uint8",
        "shape": [rows, cols],
        "outputs": ["overlay", "mask", "probabilities"],
        "window": {"center": 128, "width": 256},
    }
    sock.send_multipart([json.dumps(header).encode(), pixels])
    assert sock.poll(10_000)
    head, *frames = sock.recv_multipart()
    reply = json.loads(head)
    assert reply["id"] == 99 and [f["name"] for f in reply["frames"]] == ["overlay", "mask", "probabilities"]
    sizes = {"uint8": 1, "float32": 4}
    for meta, frame in zip(reply["frames"], frames):
        n = 1
        for d in meta["shape"]:
            n *= d
        assert len(frame) == n * sizes[meta["dtype"]]
    assert reply["frames"][0]["shape"] == [rows, cols, 3] and reply["frames"][1]["shape"] == [rows, cols]
    classes = len(pong["models"][0]["classes"])
    assert reply["frames"][2]["shape"][0] == classes
    probs = struct.unpack(f"<{len(frames[2]) // 4}f", frames[2])
    assert all(0.0 <= p <= 1.0 for p in probs[:1000])


def test_error_reply_for_a_wrong_payload_length(runtime):
    _, sock, _ = runtime
    header = {"version": 1, "type": "SEGMENT", "id": "c1-43", "dtype": "int16", "shape": [2, 4]}
    sock.send_multipart([json.dumps(header).encode(), bytes(12)])
    assert sock.poll(10_000)
    reply = json.loads(sock.recv_multipart()[0])
    assert (reply["type"], reply["status"], reply["code"], reply["id"]) == ("ERROR", "error", "BAD_PAYLOAD", "c1-43")


def stats(sock: zmq.Socket) -> dict:
    sock.send(json.dumps({"version": 1, "type": "STATS", "id": "s"}).encode())
    assert sock.poll(10_000)
    return json.loads(sock.recv())


def test_stats_reply_counts_and_histograms_as_section_5_says(runtime):
    _, sock, pong = runtime
    before = stats(sock)
    header = {"version": 1, "type": "SEGMENT", "id": "st", "dtype": "uint8", "shape": [8, 8], "outputs": ["mask"]}
    sock.send_multipart([json.dumps(header).encode(), bytes(64)])
    assert sock.poll(10_000) and json.loads(sock.recv_multipart()[0])["type"] == "RESULT"
    sock.send_multipart([json.dumps({**header, "id": "bad", "dtype": "complex64"}).encode(), bytes(64)])
    assert sock.poll(10_000) and json.loads(sock.recv_multipart()[0])["code"] == "UNSUPPORTED_DTYPE"
    after = stats(sock)
    assert after["type"] == "STATS_REPLY" and after["id"] == "s"
    counters = after["counters"]
    assert counters["ok"] == before["counters"].get("ok", 0) + 1
    assert counters["error.UNSUPPORTED_DTYPE"] == before["counters"].get("error.UNSUPPORTED_DTYPE", 0) + 1
    assert counters["received"] == before["counters"]["received"] + 3  # SEGMENT, SEGMENT, STATS
    hist = after["histograms"][pong["default_model"]]["latency_ms"]
    assert hist["count"] == sum(hist["counts"]) == counters["ok"]
    assert len(hist["buckets_ms"]) == len(hist["counts"]) and hist["buckets_ms"] == sorted(hist["buckets_ms"])
    assert hist["p50"] <= hist["p90"] <= hist["p99"] and hist["max"] > 0


def test_sigterm_answers_in_flight_requests_and_exits_zero():
    proc, sock, _ = start_runtime()
    try:
        header = {"version": 1, "type": "SEGMENT", "dtype": "uint8", "shape": [512, 512], "outputs": ["mask"]}
        for i in range(5):
            sock.send_multipart([json.dumps({**header, "id": f"last-{i}"}).encode(), bytes(512 * 512)])
        proc.send_signal(signal.SIGTERM)
        replies = []
        while len(replies) < 5 and sock.poll(10_000):
            replies.append(json.loads(sock.recv_multipart()[0]))
        assert sorted(r["id"] for r in replies) == [f"last-{i}" for i in range(5)]
        assert all(r["type"] == "RESULT" or r["code"] == "SHUTTING_DOWN" for r in replies)
        assert proc.wait(30) == 0
    finally:
        stop_runtime(proc, sock)
