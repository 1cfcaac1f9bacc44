"""RESULT ``change`` (the series against its prior) and the ``change`` frame: built by the protocol's builders from
a real comparison of a synthetic follow-up pair, decoded by consoles old and new (docs/protocol.md sections 4, 10)."""

from __future__ import annotations

import json
import subprocess
import sys

import msgspec
import numpy as np
import pytest

from scanedge.demo.followup import make_pair
from scanedge.imaging.followup import (
    CHANGE_CODES,
    PriorVolume,
    SeriesChange,
    SeriesComparison,
    change_image,
    compare_series,
)
from scanedge.imaging.lesion_change import initial_tracking
from scanedge.runtime.console.client import _remote_result
from scanedge.runtime.wire.payloads import arrays_from_frames, result_frames
from scanedge.runtime.wire.protocol import (
    OUTPUT_NAMES,
    Echo,
    FrameInfo,
    Result,
    Timings,
    decode_reply,
    encode,
    result_reply,
    segment_request,
)


@pytest.fixture(scope="module")
def compared() -> SeriesComparison:
    pair = make_pair(3)
    tracking, uids = initial_tracking(pair.prior_mask, pair.geometry.spacing)
    prior = PriorVolume("1.2.3", "1.2.3.4", "20250101", pair.prior, pair.geometry, tracking, uids, "prior store", "r")
    comparison = compare_series(pair.current, pair.geometry, pair.current_mask, prior)
    assert comparison.status == "compared"
    return comparison


def _reply(comparison: SeriesComparison, z: int, outputs=("mask", "change")) -> tuple[Result, list]:
    arrays = {
        "mask": (comparison.report.tracking[z] > 0).astype(np.uint8),
        "change": change_image(comparison.report.tracking[z], comparison.report),
    }
    infos, payload, _ = result_frames(outputs, arrays, "raw")
    header = result_reply(
        Echo(1, "1.2.840.1", "1.2.840.1.13", 13, None),
        model="m@1",
        engine="ort",
        timings=Timings(total=1.0),
        findings=[],
        frames=infos,
        received_at=1.0,
        runtime="node",
        change=comparison.summary(z),
    )
    return header, [np.ascontiguousarray(a).tobytes() for a in payload]


def test_a_result_carries_the_change_and_its_frame_through_encode_and_decode(compared):
    z = 13  # a slice through a new lesion
    header, frames = _reply(compared, z)
    wire = encode(header)
    back = decode_reply(wire)
    assert back == header and isinstance(back, Result) and isinstance(back.change, SeriesChange)
    change = back.change
    assert (change.status, change.prior_date, change.source) == ("compared", "20250101", "prior store")
    assert change.counts is not None and change.counts.new == 2 and change.counts.enlarging == 1
    assert change.slice_counts is not None and change.slice_counts.new == 1
    assert change.load_change_percent is not None and change.load_change_percent > 0
    assert json.loads(wire)["change"]["status"] == "compared"  # omit_defaults: what is unset is left out
    arrays = arrays_from_frames(back.frames, frames)
    expected = change_image(compared.report.tracking[z], compared.report)
    assert arrays["change"].dtype == np.uint8 and np.array_equal(arrays["change"], expected)
    assert set(np.unique(arrays["change"])) == {0, CHANGE_CODES["new"]}


def test_a_console_gets_the_change_and_the_change_plane_as_numpy(compared):
    header, frames = _reply(compared, 10)  # through the enlarging lesion
    result = _remote_result(decode_reply(encode(header)), frames, 1.0)  # type: ignore[arg-type]
    assert result.change == compared.summary(10)
    assert result.change_image is not None and result.change_image.shape == (128, 128)
    assert int((result.change_image == CHANGE_CODES["enlarging"]).sum()) > 0
    assert np.array_equal(result.mask > 0, result.change_image > 0)


def test_an_output_asked_for_with_nothing_to_send_gets_no_frame():
    arrays = {"mask": np.zeros((2, 3), np.uint8), "change": None}
    infos, payload, _ = result_frames(("mask", "change", "image"), arrays, "raw")  # "image": not even computed
    assert [i.name for i in infos] == ["mask"] and len(payload) == 1
    header = result_reply(
        Echo(2), model="m", engine="ort", timings=Timings(), findings=[], frames=infos, received_at=1.0, runtime="r"
    )
    result = _remote_result(decode_reply(encode(header)), [p.tobytes() for p in payload], 1.0)  # type: ignore[arg-type]
    assert result.change is None and result.change_image is None and result.mask is not None


def test_change_is_an_output_a_console_may_ask_for():
    assert "change" in OUTPUT_NAMES
    assert segment_request(1, dtype="uint8", shape=[2, 2], outputs=["mask", "change"]).outputs == ("mask", "change")


class _OldResult(msgspec.Struct, tag="RESULT", tag_field="type"):
    """A RESULT as a console built before ``change`` decodes it (msgspec skips unknown fields, as the rules ask)."""

    version: int
    id: int | str
    status: str = "ok"
    series: str = ""
    frames: tuple[FrameInfo, ...] = ()


def test_a_console_that_predates_change_reads_the_rest_and_skips_the_frame(compared):
    header, frames = _reply(compared, 13)
    old = msgspec.json.decode(encode(header), type=_OldResult)
    assert (old.status, old.series) == ("ok", "1.2.840.1")
    # an old console keeps the frames it knows by name and can skip the unknown one by its entry
    arrays = arrays_from_frames(old.frames, frames)
    assert set(arrays) == {"mask", "change"} and arrays["mask"].shape == (128, 128)
    # and a RESULT of an older runtime (no change at all) decodes with change None
    older = json.loads(encode(header))
    del older["change"]
    assert decode_reply(json.dumps(older).encode()).change is None  # type: ignore[union-attr]


def test_the_change_fields_of_a_newer_peer_are_ignored_too():
    wire = {"type": "RESULT", "version": 1, "id": 3, "change": {"status": "no_prior", "reason": "none", "later": 1}}
    result = decode_reply(json.dumps(wire).encode())
    assert isinstance(result, Result) and result.change == SeriesChange(status="no_prior", reason="none")


def test_the_wire_protocol_needs_no_scipy():
    """Consoles install scanedge without the follow-up extra: carrying SeriesChange must not pull scipy in."""
    code = "import sys, scanedge.runtime.console.client; print(sorted(m for m in sys.modules if m.startswith('scipy')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "[]"


def test_a_runtime_that_compares_nothing_answers_a_change_request_without_the_frame():
    """A console may ask any runtime for ``change``: before (or without) a comparison it gets its other outputs."""
    from scanedge.runtime.console.client import Client
    from tests.runtime.conftest import running_server

    with running_server() as srv, Client(srv.endpoint) as client:
        result = client.segment(np.zeros((64, 64), np.uint8), series="1.2.3", outputs=("mask", "change"))
    assert [f.name for f in result.header.frames] == ["mask"] and result.mask is not None
    assert result.change is None and result.change_image is None
