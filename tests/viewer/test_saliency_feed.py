"""The viewer's feed keeps a model's own saliency map with the slice it belongs to, compactly and bounded."""

from __future__ import annotations

import numpy as np
import pytest

from scanedge.imaging.heads import ClassScore, HeadScore
from scanedge.runtime.wire.payloads import result_frames
from scanedge.runtime.wire.protocol import Echo, Finding, FrameInfo, Timings, encode, result_reply
from scanedge.viewer import FeedLimits, LiveFeed
from scanedge.viewer.feed import Watcher, pack_slice, quantised_saliency

ROWS, COLS = 16, 24
SCORES = [HeadScore("lesion_present", (ClassScore("lesion", 0.9, 0.5, True),), "lesion", "")]


def _message(
    z: int,
    *,
    mask: bool = True,
    saliency: np.ndarray | None = None,
    instance: str | None = None,
    model: str = "seg@1",
    frames: tuple[FrameInfo, ...] | None = None,
    payload: list | None = None,
    findings: bool = True,
) -> list:
    """A published RESULT of slice ``z`` of series ``s``: the segmentation's (mask and image), or with
    ``mask=False`` a classifier's (scores, and its map when given)."""
    arrays = {"saliency": saliency}
    outputs: tuple[str, ...] = ("saliency",)
    if mask:
        arrays |= {"mask": np.zeros((ROWS, COLS), np.uint8), "image": np.full((ROWS, COLS), 50, np.uint8)}
        outputs = ("mask", "image", "saliency")
    infos, data, _ = result_frames(outputs, arrays, "raw", saliency_of="lesion_present")
    header = result_reply(
        Echo(z, "s", instance if instance is not None else f"s.{z}", z, None),
        model=model,
        engine="ort",
        timings=Timings(total=1.0, infer=1.0),
        findings=[Finding(1, "lesion", 0, None, 0, 0.0, 0.0)] if mask and findings else [],
        frames=frames if frames is not None else infos,
        received_at=1.0,
        runtime="r",
        position_mm=float(z),
        scores=SCORES if not mask or not findings else [],
    )
    return [b"s", encode(header), *(payload if payload is not None else [np.asarray(a).tobytes() for a in data])]


def _map(value: float = 0.5, shape: tuple[int, int] = (ROWS, COLS)) -> np.ndarray:
    return np.full(shape, value, np.float32)


def test_a_map_is_kept_quantised_counted_and_sent_after_the_other_frames():
    info = FrameInfo(name="saliency", encoding="raw", dtype="float32", shape=[1, 6])
    values = np.array([0.0, 0.5, 1.0, np.nan, 2.0, -1.0], np.float32)
    data, shape = quantised_saliency(info, values.tobytes())
    assert shape == (1, 6) and list(data) == [0, 128, 255, 0, 255, 0]  # NaN as 0, clipped to 0-1
    feed = LiveFeed("tcp://127.0.0.1:1")
    item = feed.handle(_message(1, saliency=_map(0.5)))
    assert item is not None and item.saliency == bytes([128]) * (ROWS * COLS)
    assert item.meta["saliency"] == {"model": "seg@1", "of": "lesion_present", "top": ""}
    assert item.nbytes == 3 * ROWS * COLS  # image, mask and the map: a quarter of the float32 frame
    assert pack_slice(item).endswith(item.saliency)
    plain = feed.handle(_message(2))
    assert plain is not None and plain.saliency is None and plain.meta["saliency"] is None
    assert not pack_slice(plain).endswith(bytes([128]) * 8)


@pytest.mark.parametrize("classifier_first", [False, True])
def test_a_classifiers_map_joins_the_slice_of_its_place_whichever_comes_first(classifier_first):
    feed = LiveFeed("tcp://127.0.0.1:1")
    page = Watcher(feed.limits)
    feed.watchers.add(page)
    seg, cls = _message(3), _message(3, mask=False, saliency=_map(1.0), model="cls@1")
    for message in (cls, seg) if classifier_first else (seg, cls):
        feed.handle(message)
    kept = feed.retained("s", "3.000")
    assert kept is not None and kept.saliency == bytes([255]) * (ROWS * COLS)
    assert kept.meta["saliency"] == {"model": "cls@1", "of": "lesion_present", "top": "lesion"}
    assert feed.series["s"].slices["3.000"]["saliency"]["model"] == "cls@1"  # what a page connecting later gets
    assert page.pixels is not None and page.pixels.saliency == kept.saliency  # the page is sent the joined slice
    assert feed.series["s"].scores["cls@1"]  # the classifier's scores stay beside the slice as before
    assert feed.saliency_refused == 0
    again = feed.handle(_message(3))  # the same image segmented again (a replay's next pass): the map holds
    assert again is not None and again.saliency == kept.saliency and again.meta["saliency"] == kept.meta["saliency"]
    other = feed.handle(_message(3, instance="another image"))  # another image at that place: not its map
    assert other is not None and other.saliency is None and other.meta["saliency"] is None


def test_a_map_of_another_instance_or_shape_is_not_joined():
    feed = LiveFeed("tcp://127.0.0.1:1")
    feed.handle(_message(4, mask=False, saliency=_map(), instance="another image", model="cls@1"))
    feed.handle(_message(4))
    kept = feed.retained("s", "4.000")
    assert kept is not None and kept.saliency is None  # an image sent again at that place is not the one mapped
    feed.handle(_message(4, mask=False, saliency=_map(shape=(ROWS // 2, COLS // 2)), model="cls@1"))
    kept = feed.retained("s", "4.000")
    assert kept is not None and kept.saliency is None
    assert kept.meta["saliency"] is None and "8x12 is not the image's 16x24" in kept.meta["saliency_refused"]
    own = feed.handle(_message(5, saliency=_map(shape=(ROWS, COLS + 1))))  # in the slice's own RESULT
    assert own is not None and own.saliency is None and "16x25" in own.meta["saliency_refused"]
    assert feed.saliency_refused == 2 and feed.malformed == 0


def test_a_malformed_map_is_refused_and_the_slice_kept():
    feed = LiveFeed("tcp://127.0.0.1:1")
    good = _message(6, saliency=_map())
    header_frames = list(__import__("msgspec").json.decode(good[1])["frames"])
    assert [f["name"] for f in header_frames] == ["mask", "image", "saliency"]
    frames = (
        FrameInfo(name="mask", encoding="raw", dtype="uint8", shape=[ROWS, COLS]),
        FrameInfo(name="image", encoding="raw", dtype="uint8", shape=[ROWS, COLS]),
        FrameInfo(name="saliency", encoding="raw", dtype="uint8", shape=[ROWS, COLS]),  # not float32
    )
    item = feed.handle(_message(6, frames=frames, payload=[good[2], good[3], b"\x01" * (ROWS * COLS)]))
    assert item is not None and item.saliency is None and item.mask is not None
    assert "float32" in item.meta["saliency_refused"] and feed.saliency_refused == 1
    short = (*frames[:2], FrameInfo(name="saliency", encoding="raw", dtype="float32", shape=[ROWS, COLS]))
    item = feed.handle(_message(7, frames=short, payload=[good[2], good[3], b"\0" * 8]))
    assert item is not None and item.saliency is None and "does not match" in item.meta["saliency_refused"]


def test_maps_count_against_retain_bytes():
    limit = 10 * 3 * ROWS * COLS  # ten slices with their maps
    feed = LiveFeed("tcp://127.0.0.1:1", FeedLimits(retain_bytes=limit))
    for z in range(40):
        feed.handle(_message(z, mask=False, saliency=_map(), model="cls@1"))
        feed.handle(_message(z))
        assert feed._retained_bytes + feed._saliency_bytes <= limit
    kept = [z for z in range(40) if feed.retained("s", f"{z}.000") is not None]
    assert kept == list(range(40 - len(kept), 40)) and len(kept) >= 6  # the newest, each with its map
    assert all(feed.retained("s", f"{z}.000").saliency for z in kept)  # type: ignore[union-attr]


def test_a_classifier_with_an_empty_mask_is_kept_beside_the_slices():
    """The DICOM node publishes every output for a model without a mask output (its mask all background, no
    findings): its RESULT is the classifier's scores and map, never the slice drawn at that place."""
    feed = LiveFeed("tcp://127.0.0.1:1")
    feed.handle(_message(8))
    feed.handle(_message(8, findings=False, saliency=_map(1.0), model="cls@1"))
    assert feed.series["s"].latest is not None and feed.series["s"].latest["model"] == "seg@1"
    kept = feed.retained("s", "8.000")
    assert kept is not None and kept.meta["model"] == "seg@1" and kept.saliency == bytes([255]) * (ROWS * COLS)
