"""The scope guard over the wire: DICOM and raw frames checked alike, OUT_OF_SCOPE as a typed ERROR, and the
research override stated in the RESULT."""

import json
from pathlib import Path

import numpy as np
import pytest
import zmq

from scanedge.errors import OutOfScopeError
from scanedge.imaging.dicom import slices_from_dicom
from scanedge.runtime.console.client import Client
from scanedge.runtime.serving.server import Server
from tests.conftest import dicom_file
from tests.runtime.conftest import local_config


@pytest.fixture(scope="module")
def server():
    srv = Server(config=local_config()).start()  # the shipped demo model: brain MR only
    yield srv
    srv.stop()


@pytest.fixture
def sock(server):
    s = zmq.Context.instance().socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(server.endpoint)
    yield s
    s.close(0)


def ask(sock: zmq.Socket, payload: bytes, **fields) -> dict:
    header = {"version": 1, "type": "SEGMENT", "id": "s1", "outputs": ["mask"], **fields}
    sock.send_multipart([json.dumps(header).encode(), payload])
    assert sock.poll(20_000), "no reply"
    return json.loads(sock.recv_multipart()[0])


def test_a_ct_slice_is_refused_out_of_scope(sock):
    reply = ask(sock, Path(dicom_file("CT_small.dcm")).read_bytes(), encoding="dicom")
    assert (reply["type"], reply["status"], reply["code"]) == ("ERROR", "error", "OUT_OF_SCOPE"), reply
    assert "made for MR images" in reply["message"] and "modality CT" in reply["message"]


def test_ignore_scope_runs_it_and_the_result_says_outside(sock):
    reply = ask(sock, Path(dicom_file("CT_small.dcm")).read_bytes(), encoding="dicom", ignore_scope=True)
    assert reply["type"] == "RESULT" and reply["scope"] == "outside", reply
    assert "modality CT" in reply["scope_detail"]


def test_raw_frames_carrying_a_modality_are_checked(sock):
    pixels = np.zeros((32, 32), "<i2").tobytes()
    raw = {"dtype": "int16", "shape": [32, 32]}
    refused = ask(sock, pixels, **raw, modality="US")
    assert refused["code"] == "OUT_OF_SCOPE" and "modality US" in refused["message"]
    assert ask(sock, pixels, **raw, modality="MR", body_part="HEAD")["scope"] == "in"
    assert ask(sock, pixels, **raw)["scope"] == "unchecked"  # an older console: nothing to test


def test_a_scope_attribute_that_is_not_a_code_string_is_a_bad_message(sock):
    reply = ask(sock, np.zeros((4, 4), "<u1").tobytes(), dtype="uint8", shape=[4, 4], modality="M^R" * 10)
    assert reply["code"] == "BAD_MESSAGE" and "modality" in reply["message"]


def test_the_client_sends_a_slices_modality_and_raises_the_typed_error(server):
    ct = slices_from_dicom(dicom_file("CT_small.dcm"))[0]
    with Client(server.endpoint) as client:
        with pytest.raises(OutOfScopeError, match="modality CT"):
            client.segment(ct)  # sent as raw pixels: the modality travels in the header
        assert client.segment(ct, ignore_scope=True).header.scope == "outside"
