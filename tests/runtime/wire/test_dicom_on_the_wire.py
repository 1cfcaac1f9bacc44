"""Hostile DICOM sent to a real runtime: a typed ERROR reply (never INTERNAL), no element value in the reply
or the log, and the runtime goes on serving. The reader's own cases are in tests/imaging/dicom/test_hostile.py."""

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import zmq

from scanedge.runtime.serving.server import Server
from tests.conftest import dicom_file
from tests.imaging.dicom.test_hostile import deflated, name_in_number_of_frames, rle_with_a_stray_segment_offset
from tests.runtime.conftest import local_config


@pytest.fixture(scope="module")
def runtime():
    srv = Server(config=local_config()).start()
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(srv.endpoint)
    yield sock
    sock.close(0)
    srv.stop()


def ask(sock: zmq.Socket, payload: bytes, **fields) -> dict:
    header = {"version": 1, "type": "SEGMENT", "id": "d1", "encoding": "dicom", "outputs": ["mask"], **fields}
    sock.send_multipart([json.dumps(header).encode(), payload])
    assert sock.poll(20_000), "no reply"
    return json.loads(sock.recv_multipart()[0])


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        pytest.param(lambda: Path(dicom_file("liver.dcm")).read_bytes(), "NOT_AN_IMAGE", id="segmentation"),
        pytest.param(lambda: deflated(b"", zero_mib=1024), "BAD_DICOM", id="deflate-bomb"),
        pytest.param(name_in_number_of_frames, "BAD_DICOM", id="name-in-an-integer"),
        pytest.param(rle_with_a_stray_segment_offset, "BAD_DICOM", id="rle-decoder-panic"),
    ],
)
def test_hostile_dicom_gets_a_typed_error_and_the_runtime_carries_on(runtime, payload, code, caplog):
    with caplog.at_level(logging.DEBUG, logger="scanedge"):
        reply = ask(runtime, payload())
    assert (reply["type"], reply["code"]) == ("ERROR", code), reply
    assert "Doe" not in reply["message"] and "Doe" not in caplog.text
    good = ask(runtime, Path(dicom_file("MR_small.dcm")).read_bytes(), id="good")
    assert good["type"] == "RESULT" and good["id"] == "good"


def test_a_raw_monochrome1_slice_with_absurd_bits_stored_is_refused(runtime):
    """2**(10**8 - 1) held the worker for seconds before the value was checked."""
    header = {
        "version": 1,
        "type": "SEGMENT",
        "id": "m1",
        "dtype": "uint16",
        "shape": [8, 8],
        "photometric": "MONOCHROME1",
        "bits_stored": 10**8,
    }
    runtime.send_multipart([json.dumps(header).encode(), np.zeros((8, 8), "<u2").tobytes()])
    assert runtime.poll(20_000)
    reply = json.loads(runtime.recv_multipart()[0])
    assert (reply["type"], reply["code"]) == ("ERROR", "BAD_MESSAGE"), reply  # bits_stored is 1..64 on the wire
    assert "bits_stored" in reply["message"]
