"""The protocol module on its own: every message built and parsed back, and hostile headers refused with
typed errors. Property-based (hypothesis) for structure, bounded so CI stays fast."""

from __future__ import annotations

import json
import math

import hypothesis.strategies as st
import msgspec
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings

from scanedge.errors import ProtocolError, ScanedgeError
from scanedge.fuzz import TARGETS
from scanedge.imaging.slices import SliceLimits
from scanedge.runtime.wire.payloads import check_raw_payload, slice_from_request
from scanedge.runtime.wire.protocol import (
    MAX_HEADER_BYTES,
    Echo,
    Error,
    Finding,
    FrameInfo,
    Histogram,
    Limits,
    ModelInfo,
    ModelInput,
    Ping,
    Pong,
    Result,
    Segment,
    Stats,
    StatsReply,
    Timings,
    WorkerHealth,
    decode_reply,
    decode_request,
    encode,
    error_reply,
    ping_request,
    publish_topic,
    request_echo,
    result_reply,
    segment_request,
    stats_request,
)

LIMIT = 1 << 20
CODES = {
    "BAD_MESSAGE",
    "UNSUPPORTED_VERSION",
    "UNKNOWN_TYPE",
    "BAD_FRAMES",
    "BAD_PAYLOAD",
    "UNSUPPORTED_DTYPE",
    "TOO_LARGE",
}


def test_every_request_round_trips_through_its_builder_and_the_decoder():
    seg = segment_request(
        "c1-42",
        dtype="int16",
        shape=[2, 3],
        series="1.2.3",
        index=7,
        geometry={"pixel_spacing": [0.5, 0.5], "image_position": [1, 2, 3]},
        rescale={"slope": 2.0, "intercept": -1024},
        window={"center": 40, "width": 400},
        deadline_ms=100,
        outputs=["mask", "probabilities"],
        overlay_options={"alpha": 0.3},
        sent_at=1795000000.5,
    )
    for request in (seg, ping_request(5), stats_request("s")):
        frames = [encode(request)] + ([bytes(12)] if isinstance(request, Segment) else [])
        assert decode_request(frames, LIMIT) == request
        assert json.loads(frames[0])["version"] == 1


def test_every_reply_round_trips():
    echo = Echo("x", "s", "i", 3, 12.5)
    replies = [
        result_reply(
            echo,
            model="m@1",
            engine="ort",
            timings=Timings(total=4.5),
            findings=[Finding(1, "lesion", 3, 0.75, 1, 0.9, 0.8)],
            frames=[FrameInfo("mask", "raw", "uint8", [2, 3])],
            received_at=1.0,
            runtime="r",
        ),
        error_reply(echo, "SUPERSEDED", "newer slice", runtime="r"),
        Pong(
            version=1,
            id=1,
            models=(ModelInfo("m", "1", ("bg", "x"), ModelInput(1, None, None)),),
            workers=WorkerHealth(1, 1),
            limits=Limits(max_pixels=10),
        ),
        StatsReply(version=1, id=2, counters={"ok": 3}, histograms={"m": {"latency_ms": Histogram(count=1)}}),
    ]
    for reply in replies:
        assert decode_reply(encode(reply)) == reply
    error = replies[1]
    assert isinstance(error, Error) and (error.status, error.series, error.sent_at) == ("superseded", "s", 12.5)
    assert isinstance(replies[0], Result) and json.loads(encode(replies[0]))["code"] is None


def test_builder_refuses_values_outside_the_spec_before_they_leave_the_console():
    with pytest.raises(ProtocolError, match="deadline_ms"):
        segment_request("a", dtype="uint8", shape=[1, 1], deadline_ms=-1)
    with pytest.raises(ProtocolError, match="series"):
        segment_request("a", dtype="uint8", shape=[1, 1], series="x" * 300)


@pytest.mark.parametrize(
    "header",
    [
        b'{"version":1,"type":"SEGMENT","id":"a","x":' + b"[" * 5000 + b"]" * 5000 + b"}",
        b'{"version":1,"type":"SEGMENT","id":"a","x":' + b'{"a":' * 5000 + b"1" + b"}" * 5000 + b"}",
        b'{"version":1,"type":"SEGMENT","id":' + b"9" * 5000 + b"}",
        b'{"version":1,"type":"SEGMENT","id":"a","dtype":"uint8","shape":[1,1],"deadline_ms":' + b"9" * 400 + b"}",
        b'{"version":1,"type":"SEGMENT","id":"a","dtype":"uint8","shape":[1,1],"sent_at":1e309}',
        b'{"version":1,"type":"SEGMENT","id":"\\ud800","dtype":"uint8","shape":[1,1]}',
        b'{"version":1,"type":"SEGMENT","id":"a","dtype":"uint8","shape":[1,1],"bits_stored":100000000}',
        b'{"version":1,"type":"SEGMENT","id":"a","dtype":"uint8","shape":[1,1],"index":' + b"9" * 30 + b"}",
        b"\xef\xbb\xbf{}",
        # found by `python -m scanedge.fuzz header`: invalid UTF-8 inside an object key
        b'{"versi\xff\xff\xf7\xffon":1,"type":"\xacING","id":1}',
        b"null",
        b"",
    ],
)
def test_hostile_headers_are_typed_errors(header):
    with pytest.raises(ProtocolError) as info:
        decode_request([header, b"\0"], LIMIT)
    assert info.value.code in CODES
    request_echo(header)  # the echo of a refused header never fails either


def test_a_header_over_64_kib_is_refused_before_parsing():
    header = b'{"version":1,"type":"PING","id":1,"pad":"' + b"x" * MAX_HEADER_BYTES + b'"}'
    with pytest.raises(ProtocolError, match="exceeds"):
        decode_request([header], LIMIT)
    assert request_echo(header) == Echo()


def test_the_echo_keeps_each_readable_field():
    header = json.dumps({"version": 1, "type": "SEGMENT", "id": 9, "series": "s", "index": "seven", "sent_at": 5})
    assert request_echo(header.encode()) == Echo(9, "s", "", None, 5.0)


def test_publish_topic_never_fails():
    assert publish_topic("1.2.3") == b"1.2.3"
    assert publish_topic("a\udfffb") == b"a?b"


def test_raw_payload_checks_and_monochrome1_bits():
    req = segment_request("a", dtype="uint16", shape=[2, 2])
    check_raw_payload(req, 8, SliceLimits())
    with pytest.raises(ScanedgeError, match="needs 8 bytes"):
        check_raw_payload(req, 6, SliceLimits())
    inverted = segment_request("b", dtype="uint16", shape=[2, 2], photometric="MONOCHROME1", bits_stored=12)
    s = slice_from_request(inverted, np.array([0, 1, 4094, 4095], "<u2").tobytes(), SliceLimits())
    assert s.pixels.ravel().tolist() == [4095, 4094, 1, 0]


# --- properties ------------------------------------------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)
field_names = st.sampled_from(
    [
        "version",
        "type",
        "id",
        "encoding",
        "dtype",
        "shape",
        "series",
        "instance",
        "index",
        "model",
        "geometry",
        "rescale",
        "window",
        "photometric",
        "bits_stored",
        "deadline_ms",
        "outputs",
        "overlay_encoding",
        "overlay_options",
        "publish",
        "sent_at",
    ]
)
headers = st.dictionaries(field_names | st.text(max_size=6), json_values, max_size=12).map(
    lambda d: {"version": 1, "type": "SEGMENT", "id": "h", **d}
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(headers, st.integers(min_value=0, max_value=3))
def test_any_json_header_is_accepted_or_refused_with_a_spec_code(header, payload_frames):
    raw = json.dumps(header).encode()
    try:
        request = decode_request([raw] + [b"\0" * 16] * payload_frames, LIMIT)
    except ScanedgeError as exc:
        assert exc.code in CODES
        return
    # what is accepted is within the spec: re-encodes, and every number is finite
    again = json.loads(encode(request))
    numbers = [v for v in _leaves(again) if isinstance(v, float)]
    assert all(math.isfinite(v) for v in numbers)
    if isinstance(request, Segment):
        assert payload_frames == 1 and len(request.series) <= 256
    else:
        assert isinstance(request, (Ping, Stats)) and payload_frames == 0


def _leaves(value):
    if isinstance(value, dict):
        for v in value.values():
            yield from _leaves(v)
    elif isinstance(value, list):
        for v in value:
            yield from _leaves(v)
    else:
        yield value


@settings(max_examples=600, deadline=None)
@given(st.binary(max_size=300))
def test_the_header_fuzz_target_survives_random_bytes(data):
    TARGETS["header"].run(data)  # raises only for an untyped failure


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(["uint8", "int16", "uint16", "float32", "int32"]),
    st.lists(st.integers(min_value=0, max_value=40), min_size=2, max_size=3),
    st.integers(min_value=0, max_value=6000),
    st.sampled_from([None, "MONOCHROME1", "MONOCHROME2", "RGB"]),
    st.integers(min_value=1, max_value=64),
)
def test_the_segment_validator_and_slice_builder_never_fail_untyped(dtype, shape, nbytes, photometric, bits):
    fields = {"dtype": dtype, "shape": shape, "bits_stored": bits}
    if photometric:
        fields["photometric"] = photometric
    try:
        req = segment_request("p", **fields)
        request = decode_request([encode(req), bytes(nbytes)], LIMIT)
        slice_from_request(request, bytes(nbytes), SliceLimits(max_pixels=1600, max_side=40))
    except ScanedgeError:
        pass


def test_the_lesion_load_on_the_wire_is_the_imaging_floors_own_object():
    """One name per idea: RESULT's ``series_load`` decodes into :class:`LesionLoad`; the old wire names
    still resolve, with a warning that names the new home."""
    from scanedge.imaging.lesion_load import ClassLesionLoad, LesionLoad
    from scanedge.runtime.wire import protocol

    load = LesionLoad(3, 1.23456, "positions", (ClassLesionLoad(1, "lesion", 2, 40, 12.34567, 10.0001, 30, 2, 2),))
    wire = protocol.encode(protocol.Result(version=protocol.PROTOCOL_VERSION, id=1, series_load=load.rounded()))
    back = msgspec.json.decode(wire, type=protocol.Result).series_load
    assert isinstance(back, LesionLoad) and back.spacing_mm == 1.235 and back.classes[0].volume_mm3 == 12.346
    with pytest.warns(DeprecationWarning, match="scanedge.imaging.lesion_load.LesionLoad"):
        assert protocol.SeriesLoad is LesionLoad
    with pytest.warns(DeprecationWarning, match="ClassLesionLoad"):
        assert protocol.LesionClassLoad is ClassLesionLoad
